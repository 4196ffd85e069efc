"""Typed, immutable events decoded from the Atoms live call events stream.

The wire format in the vendor's reference and the one real streams carry differ (epoch-number timestamps, float
latencies, extra fields, ``event_time`` instead of ``timestamp``, lifecycle events without ids). The decoder
accepts every shape seen and never drops an event for carrying a field it does not know: ``raw`` keeps the JSON
object exactly as received, so a plugin can always reach what the typed attributes do not expose.

Decoding is the hot path (one call per stream line): the JSON is parsed once by msgspec into a plain dict, and
the typed object is a frozen ``msgspec.Struct`` filled from that dict, with no second pass over the bytes. The
structs are not tracked by the garbage collector (``gc=False``): an event holds JSON values and nothing that can
point back at it, and thousands of live calls keep many events (in transcripts, outboxes) that collections would
otherwise scan again and again.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, ClassVar

import msgspec

from hookrunner._core.text import encodable

__all__ = [
    "Event",
    "SseInit",
    "SseClose",
    "UserInterimTranscription",
    "UserTranscription",
    "TtsCompleted",
    "CallStart",
    "CallEnd",
    "TurnLatency",
    "Metrics",
    "UnknownEvent",
    "EVENT_CLASSES",
    "KNOWN_EVENT_TYPES",
    "type_label",
    "MalformedEvent",
    "decode_event",
]

_json_decoder = msgspec.json.Decoder()


class MalformedEvent(ValueError):
    """A stream line that is not a JSON object with a string ``event_type``; ``line`` holds its text."""

    def __init__(self, reason: str, line: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Fields every event has, whatever its type.

    ``timestamp`` is always a timezone-aware UTC datetime: taken from ``timestamp`` (ISO 8601 string or Unix epoch
    seconds), else from ``event_time``, else the moment the line was received (lifecycle events may carry neither).
    ``event_id`` is ``None`` when the server sent none (``sse_init``/``sse_close`` may lack one); treat it as opaque.
    ``call_id`` falls back to the subscribed call's id when the event omits it.
    ``raw`` is the JSON object as received; do not mutate it, other plugins see the same dict.
    ``backfilled`` is True for an event the live stream skipped (a reconnect that resumed past it, a call that
    ended while hookrunner was down) and that was found afterwards in the call's stored conversation
    (``[backfill]``): it is dispatched after the call's live events, before ``on_call_finished``, so a plugin that
    acts on what is said live may want to treat it as history. False for every event read from the stream.
    """

    event_type: str
    event_id: str | None
    call_id: str
    timestamp: datetime
    raw: dict[str, Any]
    backfilled: bool = False

    #: The ``event_type`` this class stands for (``None`` on the generic class).
    TYPE: ClassVar[str | None] = None
    #: Name of the hook called with events of this class, besides ``on_event``.
    HOOK: ClassVar[str | None] = None


class SseInit(Event, frozen=True, kw_only=True):
    """Sent once the connection is established; after a reconnect a new one arrives (see ``Subscription``)."""

    TYPE = "sse_init"
    HOOK = "on_sse_init"


class SseClose(Event, frozen=True, kw_only=True):
    """The call ended; the server closes the stream right after it."""

    TYPE = "sse_close"
    HOOK = "on_sse_close"


class UserInterimTranscription(Event, frozen=True, kw_only=True):
    """Partial text while the caller speaks; superseded by later interims and by the final transcription."""

    text: str
    TYPE = "user_interim_transcription"
    HOOK = "on_user_interim_transcription"


class UserTranscription(Event, frozen=True, kw_only=True):
    """The final text of a completed caller turn."""

    text: str
    TYPE = "user_transcription"
    HOOK = "on_user_transcription"


class TtsCompleted(Event, frozen=True, kw_only=True):
    """The agent finished speaking a segment.

    ``latency_ms`` is ``tts_latency`` as sent: documented as integer milliseconds, seen as a float on real streams,
    possibly absent. An integral float becomes an int; any other float is kept as it is rather than guessed at.
    """

    text: str
    latency_ms: int | float | None
    TYPE = "tts_completed"
    HOOK = "on_tts_completed"


class CallStart(Event, frozen=True, kw_only=True):
    """The call started (``telephony_id`` when the server sends one)."""

    telephony_id: str | None = None
    TYPE = "call_start"
    HOOK = "on_call_start"


class CallEnd(Event, frozen=True, kw_only=True):
    """The call ended; ``metadata`` is the object the server attached, or an empty dict."""

    metadata: dict[str, Any] = {}
    TYPE = "call_end"
    HOOK = "on_call_end"


class TurnLatency(Event, frozen=True, kw_only=True):
    """Per-stage latency breakdown of one turn; the stages stay in ``raw`` (their set varies)."""

    turn_index: int | None = None
    total_turn_ms: int | float | None = None
    TYPE = "turn_latency"
    HOOK = "on_turn_latency"


class Metrics(Event, frozen=True, kw_only=True):
    """A list of ``{processor, model, value}`` entries; ``value`` may be a number or an object."""

    metrics: list[Any] = []
    TYPE = "metrics"
    HOOK = "on_metrics"


class UnknownEvent(Event, frozen=True, kw_only=True):
    """Any ``event_type`` without a class of its own; everything it carried is in ``raw``."""


EVENT_CLASSES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        SseInit,
        SseClose,
        UserInterimTranscription,
        UserTranscription,
        TtsCompleted,
        CallStart,
        CallEnd,
        TurnLatency,
        Metrics,
    )
}


#: Every type the vendor documents (typed classes or not). Counters and metrics labels use these names and fold
#: any other ``event_type`` into ``"other"``: a stream of made-up types cannot grow them without limit.
KNOWN_EVENT_TYPES: frozenset[str] = frozenset(EVENT_CLASSES) | {
    "agent_error", "agent_log", "agent_node_state", "hopping", "knowledgebase", "variable_extraction",
    "pre_call_api", "post_call_api", "tool_call_start", "tool_call_end", "tool_call_error", "call_cancelled",
    "call_recording", "llm_full_response_end", "generic_call_error",
}  # fmt: skip
OTHER_TYPE = "other"


def type_label(event_type: str) -> str:
    """``event_type`` when it is a known type, else ``"other"``: the name a counter or metrics label may use."""
    return event_type if event_type in KNOWN_EVENT_TYPES else OTHER_TYPE


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            try:  # epoch seconds sent as a string
                return datetime.fromtimestamp(float(value), timezone.utc)
            except (ValueError, OverflowError):
                return None
        zone = parsed.tzinfo
        if zone is timezone.utc:  # (what a "Z" or "+00:00" gives: the usual case, already as wanted)
            return parsed
        return parsed.replace(tzinfo=timezone.utc) if zone is None else parsed.astimezone(timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 1e11:  # milliseconds rather than seconds
            value = value / 1000
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (ValueError, OverflowError, OSError):
            return None
    return None


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _as_id(value: Any) -> str | None:
    """Ids are opaque strings; a number sent as an id is kept as its text so it can still deduplicate."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _as_int(value: Any) -> int | None:
    number = _as_number(value)
    return number if isinstance(number, int) else None


#: The field that holds the words of each event type that has any: an event of these types without it is decoded
#: with empty text (it still reaches plugins, in order), and counted and logged as ``events_without_text``.
TEXT_FIELDS = {
    "user_transcription": "user_transcription_text",
    "user_interim_transcription": "interim_transcription_text",
    "tts_completed": "tts_text",
}


def event_from_dict(
    raw: dict[str, Any], call_id: str, received_at: datetime | None = None, *, line: str | bytes | None = None
) -> Event:
    """Build the typed event for an already-parsed JSON object (``raw`` is kept as the event's ``raw``).

    ``line`` is the text it was parsed from, quoted in the ``MalformedEvent`` raised when ``event_type`` is missing.
    """
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedEvent("no event_type", _line_text(line) if line is not None else repr(raw))
    cls = EVENT_CLASSES.get(event_type, UnknownEvent)
    timestamp = _as_datetime(raw.get("timestamp")) or _as_datetime(raw.get("event_time"))
    if timestamp is None:
        timestamp = received_at or datetime.now(timezone.utc)
    event_id = raw.get("event_id")
    if type(event_id) is not str or not event_id:  # (a non-empty string, the usual id, as it is: _as_id inline)
        event_id = _as_id(event_id)
    event_call = raw.get("call_id")
    if type(event_call) is not str or not event_call:
        event_call = _as_id(event_call) or call_id
    if cls is UserTranscription or cls is UserInterimTranscription:
        return cls(  # type: ignore[call-arg]
            event_type=event_type, event_id=event_id, call_id=event_call, timestamp=timestamp, raw=raw,
            text=_text(raw.get(TEXT_FIELDS[event_type])),
        )  # fmt: skip
    if cls is TtsCompleted:
        return cls(
            event_type=event_type, event_id=event_id, call_id=event_call, timestamp=timestamp, raw=raw,
            text=_text(raw.get("tts_text")), latency_ms=_as_number(raw.get("tts_latency")),
        )  # fmt: skip
    common: dict[str, Any] = {
        "event_type": event_type,
        "event_id": event_id,
        "call_id": event_call,
        "timestamp": timestamp,
        "raw": raw,
    }
    if cls is CallStart:
        telephony_id = raw.get("telephony_id")
        return cls(telephony_id=None if telephony_id is None else str(telephony_id), **common)
    if cls is CallEnd:
        metadata = raw.get("metadata")
        return cls(metadata=metadata if isinstance(metadata, dict) else {}, **common)
    if cls is TurnLatency:
        return cls(
            turn_index=_as_int(raw.get("turn_index")),
            total_turn_ms=_as_number(raw.get("total_turn_ms")),
            **common,
        )
    if cls is Metrics:
        metrics = raw.get("metrics")
        return cls(metrics=metrics if isinstance(metrics, list) else [], **common)
    return cls(**common)


def decode_event(data: str | bytes, call_id: str, received_at: datetime | None = None) -> Event:
    """Decode one SSE ``data`` payload into its typed event.

    Raises ``MalformedEvent`` for text that is not a JSON object with a non-empty string ``event_type``; the
    caller counts it and goes on with the stream.
    """
    try:
        raw = _json_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raw = _lenient_json(data, exc)
    if not isinstance(raw, dict):
        raise MalformedEvent("not a JSON object", _line_text(data))
    return event_from_dict(raw, call_id, received_at, line=data)


def _lenient_json(data: str | bytes, error: msgspec.DecodeError) -> Any:
    """msgspec refuses some JSON that the stdlib reads (a lone surrogate from text cut inside an emoji, a number
    beyond float range); such a line is still a real event, so it gets a second, slower chance. A lone surrogate
    becomes U+FFFD here, in ``raw`` too, so every sink can write the event (see ``hookrunner.text``)."""
    try:
        return encodable(json.loads(data))
    except (ValueError, RecursionError):
        raise MalformedEvent(f"not JSON ({error})", _line_text(data)) from None


def _line_text(data: str | bytes) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data
