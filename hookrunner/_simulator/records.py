"""How Atoms describes a call outside its event stream, in the vendor SDK's own field names and value sets.

The listing (``GET /conversation``), the stored conversation (``GET /conversation/{callId}``) and the pre- and
post-conversation webhooks all describe the same call; this module is the one place that renders it, so the four
cannot drift apart, and so a plugin written against the simulator reads the fields real answers have. The shapes
are those of the ``smallestai`` SDK's models (``ListCallsResponseDataLogsItem``, ``GetCallsResponseData``,
``WebhookEventPreConversationMetadata``, ``WebhookEventPostConversationMetadata``, ``WebhookEventCallData``,
``WebhookEventTranscriptTurn``); ``tests/test_simulator_vendor_models.py`` validates the simulator's answers with
them. Where the SDK's enums differ between places (``telephony_inbound`` in REST, ``telephonyInbound`` in webhooks)
each place gets its own spelling.

Phone numbers a script does not give are made up per call in E.164 from the fictional 555-01xx range, stable for a
call id. The recording URL is on the reserved ``.invalid`` domain: the simulator records no audio, and a URL that
cannot resolve says so instead of pointing at something that looks real.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from hookrunner._simulator.responses import iso
from hookrunner._simulator.script import SimCall, _epoch_seconds

__all__ = [
    "log_id",
    "rest_type",
    "webhook_conversation_type",
    "call_direction",
    "phones",
    "recording_url",
    "variables",
    "transcript_turn",
    "transcript",
]

#: A script's ``conversation_type`` (the simulator's own short words, or the vendor's) as the REST ``type``.
_REST_TYPES = {
    "inbound": "telephony_inbound",
    "telephony_inbound": "telephony_inbound",
    "telephonyinbound": "telephony_inbound",
    "outbound": "telephony_outbound",
    "telephony_outbound": "telephony_outbound",
    "telephonyoutbound": "telephony_outbound",
    "web": "webcall",
    "webcall": "webcall",
    "web_call": "webcall",
}
#: The REST ``type`` as the webhooks' ``conversationType`` (the SDK: "Known values: telephonyOutbound,
#: telephonyInbound"; a web call keeps its REST name, the SDK has no other).
_WEBHOOK_TYPES = {"telephony_inbound": "telephonyInbound", "telephony_outbound": "telephonyOutbound"}
#: Speakers of the events that finish a turn, and the field holding the text.
_SPEAKERS = {"user_transcription": ("user", "user_transcription_text"), "tts_completed": ("agent", "tts_text")}
#: The agent's own line, the ``to`` of an inbound call (and the ``from`` of an outbound one).
_AGENT_LINE = "+18005550100"


def rest_type(call: SimCall) -> str:
    """``type`` of the listing and the stored conversation: telephony_inbound, telephony_outbound or webcall;
    a type the simulator does not know passes unchanged (the SDK's enum is open too)."""
    return _REST_TYPES.get(call.conversation_type.lower(), call.conversation_type)


def webhook_conversation_type(call: SimCall) -> str:
    """``metadata.conversationType`` of both webhooks: telephonyInbound, telephonyOutbound, or the REST type."""
    kind = rest_type(call)
    return _WEBHOOK_TYPES.get(kind, kind)


def call_direction(call: SimCall) -> str | None:
    """``callData.callDirection`` (telephony_inbound or telephony_outbound); None for a web call (left out)."""
    kind = rest_type(call)
    return kind if kind in _WEBHOOK_TYPES else None


def phones(call: SimCall) -> tuple[str, str]:
    """``(from, to)`` in E.164: the script's, else the caller's made-up number and the agent's line, swapped for an
    outbound call (the agent dials)."""
    digits = int(hashlib.sha256(call.id.encode()).hexdigest()[:8], 16) % 100
    customer = f"+1415555{digits + 100:04d}"  # +1 415 555-01NN: reserved for fiction
    caller, callee = (_AGENT_LINE, customer) if rest_type(call) == "telephony_outbound" else (customer, _AGENT_LINE)
    return call.from_phone or caller, call.to_phone or callee


def log_id(call: SimCall) -> str:
    """The call log's own ``_id`` (24 hex digits, like a MongoDB ObjectId), stable per call id."""
    return hashlib.sha256(call.id.encode()).hexdigest()[:24]


def recording_url(call: SimCall) -> str:
    """Where the composite recording (``.wav``) would be; on ``.invalid``, as nothing is recorded."""
    return f"https://recordings.simulator.invalid/{call.id}.wav"


def variables(call: SimCall, start_wall: float) -> dict[str, Any]:
    """The agent variables in scope: made-up values of keys the SDK names as common platform keys, then the
    script's ``variables`` over them."""
    made_up = {
        "agent_name": call.agent_id,
        "current_date": datetime.fromtimestamp(start_wall, timezone.utc).date().isoformat(),
        "default_language": "en",
    }
    return {**made_up, **call.variables}


def transcript_turn(fields: Mapping[str, Any], scheduled: float) -> dict[str, str] | None:
    """``{role, content, timestamp}`` for a final user transcription or agent speech with its text, else None.

    ``fields`` is the event as the stream sends it; its timestamp (ISO or epoch, as sent) is the turn's, or
    ``scheduled`` (epoch seconds) when unreadable."""
    speaker = _SPEAKERS.get(fields.get("event_type", ""))
    if speaker is None or not isinstance(fields.get(speaker[1]), str):
        return None
    moment = _epoch_seconds(fields.get("timestamp"))
    return {
        "role": speaker[0],
        "content": fields[speaker[1]],
        "timestamp": iso(round((scheduled if moment is None else moment) * 1000)),
    }


def transcript(events: Iterable[tuple[Mapping[str, Any], float]]) -> list[dict[str, str]]:
    """The turns of ``(fields, scheduled)`` pairs, in order (see ``transcript_turn``)."""
    return [turn for fields, scheduled in events if (turn := transcript_turn(fields, scheduled)) is not None]
