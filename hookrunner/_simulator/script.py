"""Simulator scripts: what calls exist, which events they emit when, and which faults they inject.

A script is data, not code, so that a test, a demo and a load run can each describe the stream they need without
touching the simulator. Two formats are read:

* TOML, written by hand: top-level settings, ``[[calls]]`` with fault keys, ``[[calls.events]]`` each with ``at``
  (seconds from the call's start) and ``event_type`` plus any fields, sent unchanged.
* JSONL, one event object a line as captured from a real stream (the project's example streams in
  ``tests/streams`` are such files): events are grouped by ``call_id`` and timed by their own ``timestamp`` (else
  ``event_time``) relative to the call's first line.

Faults of a call's stream (``[[calls]]`` keys). Counts (``*_after``) are script events sent or skipped so far, and
every fault but ``reconnect_skips`` hits the call's first connection only, so a client that reconnects gets the
whole stream:

* ``fail_first`` (with ``fail_status``, default 503, and ``retry_after``): the first N subscriptions are answered
  that error, with a ``Retry-After`` header (and the rate-limit body for 429) when ``retry_after`` is given;
  ``fail_reconnects``: as many of the subscriptions after the first stream ended (a drop, a stall, a clean end)
  are answered the same way, a storm meeting the reconnect.
* ``drop_after``: the connection is cut (no chunked terminator, like a proxy); ``end_after``: the body ends
  cleanly without ``sse_close``; ``partial_after``: the first half of the next line is sent, with no newline,
  then the connection is cut.
* ``stall_after`` with ``stall_seconds`` (wall seconds): silence, not even keep-alives, then the stream goes on.
* ``malformed_after``: two lines that are not events (not JSON; JSON without ``event_type``);
  ``oversized_after``: one valid ``tts_completed`` event (id ``{call id}_oversized_{n}``) whose line is at least
  ``oversized_bytes`` long (default 8 MiB), to see that a client bounds what it buffers.
* ``reconnect_skips``: the first connection after the first stream ended (by ``drop_after``, ``end_after``,
  ``partial_after`` or the client going away) does not replay: after sse_init it leaves out the script events the
  first stream got through and the N after those, and goes on with the rest on the call's clock (what is due at
  once, the rest on time). Those N events are never sent on any stream, later connections' replays included;
  they are only in ``GET /conversation/{id}``, and their ids are in ``Simulator.skipped``. This is the real
  service's "after a reconnect the server may skip some" case, which the runner backfills.
* Duplicates need no key: two script events with the same ``event_id`` are both sent. A string field holding a
  lone surrogate (text cut inside an emoji, as captured streams have) is sent as its ``\\ud83d`` JSON escape.

What each connection wrote is recorded per call (``Simulator.sent``), and how it ended (``Simulator.ends``), so a
test can compare what a client passed on with what the server really sent.

Finding calls (for a runner that discovers calls by itself rather than being given their ids):

* ``[[calls]] start``: seconds after the simulator starts serving (divided by ``speed``) at which the call starts.
  Before then it does not exist (404, not listed); from then until ``start`` + its end time it is active (listed
  ``in_progress``, its events play on that clock whoever subscribes); after, completed (400, listed ``completed``).
  A late subscriber gets sse_init, the call's ``call_start`` and only the events not yet due (``late_join =
  "live"``, like the real service's live stream) or every event so far at once (``late_join = "replay"``).
  ``call_start`` is the exception to a live join because a runner learns of a call from its pre-conversation
  webhook or the listing, a moment after the call began, and it is the event that says which call and agent this
  is: dropping it would mean no ``on_call_start`` hook ever runs for a call found that way. With ``repeat``, ``start_every`` spaces the copies.
  A call without ``start`` keeps its clock at its first successful subscription and is listed ``in_progress``
  from the moment the simulator serves until that clock reaches its end.
* ``[[calls]] agent_id``, ``campaign_id``, ``conversation_type``, ``from_phone``, ``to_phone`` (E.164),
  ``variables`` (a table): what the listing, the stored conversation and the webhook deliveries say about the call,
  in the vendor's field names (``records.py``). ``agent_id`` and ``conversation_type`` default to the call's
  ``call_start`` event's ``agent_id`` and ``direction``, else ``"sim-agent"`` and ``"inbound"``;
  ``conversation_type`` may be ``inbound``, ``outbound``, ``web`` or the vendor's ``telephony_inbound``,
  ``telephony_outbound``, ``webcall``; phone numbers default to made-up ones.
* ``listing_lag``: seconds a call stays listed ``in_progress`` after its end (Atoms' status lags the stream).
* ``[[listing_faults]]``: ``from`` and ``until`` (seconds after serving start, divided by ``speed``) during which
  ``GET /conversation`` answers ``status`` (with ``retry_after``: a ``Retry-After`` header, and the rate-limit
  body for 429), or with ``stall = true`` hangs until ``until`` and then answers ``status``, or normally when
  ``status`` is not given.
* ``push_url``, ``push_secret``, ``push_signature`` (``"hex"``, ``"base64"`` or ``"sha256=hex"``): signed
  pre-/post-conversation webhook deliveries, see ``push.py``.

A call's stored conversation (``GET /conversation/{id}``, ``conversation.py``), ``[[calls]]`` keys:

* ``conversation_lag``: seconds (divided by ``speed``) after the call's end during which its conversation is
  ``processing``, with no events and no transcript yet (Atoms still writing the log after the stream ended);
  ``completed`` with everything after.
* ``conversation_fail_first`` (with ``conversation_fail_status``, default the call's ``fail_status``, itself 503 by
  default, and the call's ``retry_after``): the first N requests of the call's conversation are answered that
  error, with ``Retry-After`` (and the rate-limit body for 429) when ``retry_after`` is given.

Everything is checked at load time and a mistake becomes one ``ScriptError`` line naming the file and the key path
or line number, so a typo in a fault key cannot silently produce a fault-free run. The result is immutable: one
script can back many simulators and every connection of a call replays the same events.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "Script",
    "SimCall",
    "SimEvent",
    "ListingFault",
    "ScriptError",
    "load_script",
    "parse_script",
    "default_script_path",
    "staggered",
]

#: Event types the simulator generates itself on every connection; script lines of these types only set timing.
LIFECYCLE_TYPES = frozenset({"sse_init", "sse_close"})

#: How a webhook delivery's X-Signature header encodes the HMAC-SHA256 (Atoms does not document its encoding).
SIGNATURE_ENCODINGS = ("hex", "base64", "sha256=hex")

_TOP_KEYS = (
    "api_key", "speed", "keepalive", "timestamp_format", "framing", "calls",
    "listing_faults", "listing_lag", "push_url", "push_secret", "push_signature",
)  # fmt: skip
_CALL_KEYS = (
    "id", "status", "repeat", "events",
    "fail_first", "fail_status", "retry_after", "fail_reconnects",
    "drop_after", "end_after", "malformed_after", "stall_after", "stall_seconds",
    "oversized_after", "oversized_bytes", "partial_after",
    "start", "start_every", "late_join",
    "agent_id", "campaign_id", "conversation_type", "from_phone", "to_phone", "variables",
    "reconnect_skips", "conversation_lag", "conversation_fail_first", "conversation_fail_status",
)  # fmt: skip
_FAULT_KEYS = ("from", "until", "status", "retry_after", "stall")
_DEFAULT_AGENT = "sim-agent"
_DEFAULT_CONVERSATION_TYPE = "inbound"
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
#: How long an ``oversized_after`` line is unless ``oversized_bytes`` says otherwise.
DEFAULT_OVERSIZED_BYTES = 8 * 1024 * 1024


class ScriptError(ValueError):
    """A script that cannot be read or is invalid; the message is one line naming the file and where."""


@dataclass(frozen=True)
class SimEvent:
    """One scripted event: ``at`` seconds after the call's start (before ``speed``), and the JSON fields to send."""

    at: float
    fields: Mapping[str, Any]

    @property
    def event_type(self) -> str:
        return self.fields["event_type"]


@dataclass(frozen=True)
class SimCall:
    """One call's timeline and faults. Faults (``*_after`` counts script events) hit the first connection only."""

    id: str
    events: tuple[SimEvent, ...]
    end_at: float  # seconds after start when sse_close is sent and the call becomes completed
    status: Literal["active", "completed"] = "active"
    fail_first: int = 0
    fail_status: int = 503
    retry_after: float | None = None
    drop_after: int | None = None
    end_after: int | None = None
    malformed_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    fail_reconnects: int = 0
    oversized_after: int | None = None
    oversized_bytes: int = DEFAULT_OVERSIZED_BYTES
    partial_after: int | None = None
    #: Seconds after the simulator starts serving (before ``speed``); None: the clock starts at the first
    #: successful subscription instead, and the call is active (listed ``in_progress``) until then.
    start: float | None = None
    #: With ``start``: what a subscriber that connects after some events were due gets. "live": only the events
    #: not yet due (the real service streams live events only); "replay": the past ones at once, then the rest.
    late_join: Literal["live", "replay"] = "live"
    agent_id: str = _DEFAULT_AGENT
    campaign_id: str | None = None
    conversation_type: str = _DEFAULT_CONVERSATION_TYPE
    from_phone: str | None = None  # E.164; None: made up per call (records.phones)
    to_phone: str | None = None
    #: The agent variables the post-conversation webhook and the stored conversation carry, over made-up ones.
    variables: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    #: Script events the first connection after the first stream ended leaves out beyond those the first stream
    #: got through; no stream ever sends them (only ``GET /conversation/{id}`` has them).
    reconnect_skips: int = 0
    #: Seconds (before ``speed``) after the call's end during which its conversation is ``processing`` and empty.
    conversation_lag: float = 0.0
    #: The first N ``GET /conversation/{id}`` of the call are answered ``conversation_fail_status`` (with the call's
    #: ``retry_after``); the status defaults to the call's ``fail_status``.
    conversation_fail_first: int = 0
    conversation_fail_status: int = 503


@dataclass(frozen=True)
class ListingFault:
    """A window (seconds after serving start, before ``speed``) in which ``GET /conversation`` fails.

    ``status`` with ``retry_after`` is answered at once; with ``stall`` the request hangs until ``until`` and is
    then answered ``status``, or normally when ``status`` is None (only allowed with ``stall``).
    """

    start: float  # the script's ``from``
    until: float
    status: int | None
    retry_after: float | None = None
    stall: bool = False


@dataclass(frozen=True)
class Script:
    """A loaded script: settings plus calls. ``source`` is the file name used in messages."""

    calls: tuple[SimCall, ...]
    api_key: str = "sim-key"
    speed: float = 1.0
    keepalive: float = 15.0
    timestamp_format: Literal["iso", "epoch"] = "iso"
    framing: Literal["data", "event-message"] = "data"
    source: str = "<script>"
    listing_faults: tuple[ListingFault, ...] = ()
    #: Seconds (before ``speed``) a call is still listed ``in_progress`` after its stream ended: Atoms updates a
    #: call's status after the call, so a poller sees finished calls as in progress for a while.
    listing_lag: float = 0.0
    push_url: str | None = None  # where pre-/post-conversation deliveries go; None: no deliveries
    push_secret: str | None = None  # the HMAC key (UTF-8); None: deliveries carry no X-Signature
    push_signature: Literal["hex", "base64", "sha256=hex"] = "hex"


def staggered(script: Script, every: float, late_join: Literal["live", "replay"] = "replay") -> Script:
    """The script with each call that has no ``start`` starting ``every`` seconds after the previous one (the
    first at once): calls that begin one after another, for a runner that finds them by itself. A runner finds a
    call up to one listing interval after it started; ``late_join = "replay"`` still shows it the whole call."""
    calls, next_start = [], 0.0
    for call in script.calls:
        if call.start is None and call.status != "completed":
            call = dataclasses.replace(call, start=next_start, late_join=late_join)
            next_start += every
        calls.append(call)
    return dataclasses.replace(script, calls=tuple(calls))


def default_script_path() -> Path:
    """The bundled demo script: three short support calls."""
    return Path(__file__).parent / "scripts" / "default.toml"


def load_script(path: str | Path) -> Script:
    """Read a ``.toml`` or ``.jsonl`` script; raise ``ScriptError`` with a one-line message on any problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ScriptError(f"{source}: cannot read: {reason}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ScriptError(f"{source}: invalid TOML: {error}") from None
        return parse_script(data, source=source)
    if suffix in (".jsonl", ".ndjson"):
        return _parse_jsonl(text, source)
    raise ScriptError(f"{source}: expected a .toml or .jsonl script, got {suffix or 'no extension'!r}")


def parse_script(data: Mapping[str, Any], *, source: str = "<script>") -> Script:
    """Validate a TOML-shaped mapping (as ``tomllib`` returns it) into a ``Script``."""
    v = _Validator(source)
    v.known_keys(data, _TOP_KEYS, "")
    calls_data = data.get("calls", [])
    if not isinstance(calls_data, list):
        v.fail("calls", "expected an array of tables ([[calls]])", calls_data)
    calls: list[SimCall] = []
    for index, call_data in enumerate(calls_data):
        calls.extend(_parse_call(v, call_data, f"calls[{index}]"))
    faults_data = data.get("listing_faults", [])
    if not isinstance(faults_data, list):
        v.fail("listing_faults", "expected an array of tables ([[listing_faults]])", faults_data)
    if v.number(data, "listing_lag", "", default=0.0) < 0:
        v.fail("listing_lag", "expected 0 or more seconds", data["listing_lag"])
    push_url = v.string(data, "push_url", "", default=None)
    if push_url is not None and not push_url.startswith(("http://", "https://")):
        v.fail("push_url", "expected an http:// or https:// URL", push_url)
    return Script(
        calls=v.unique_ids(calls),
        api_key=v.string(data, "api_key", "", default="sim-key"),
        speed=v.number(data, "speed", "", default=1.0, positive=True),
        keepalive=v.number(data, "keepalive", "", default=15.0),
        timestamp_format=v.choice(data, "timestamp_format", "", ("iso", "epoch"), default="iso"),
        framing=v.choice(data, "framing", "", ("data", "event-message"), default="data"),
        source=source,
        listing_faults=tuple(
            _parse_listing_fault(v, fault, f"listing_faults[{index}]") for index, fault in enumerate(faults_data)
        ),
        listing_lag=v.number(data, "listing_lag", "", default=0.0),
        push_url=push_url,
        push_secret=v.string(data, "push_secret", "", default=None),
        push_signature=v.choice(data, "push_signature", "", SIGNATURE_ENCODINGS, default="hex"),
    )


def _parse_listing_fault(v: _Validator, data: Any, where: str) -> ListingFault:
    if not isinstance(data, Mapping):
        v.fail(where, "expected a table", data)
    p = where + "."
    v.known_keys(data, _FAULT_KEYS, p)
    if "until" not in data:
        v.fail(p + "until", "required: seconds after serving start when the fault ends", None)
    start = v.number(data, "from", p, default=0.0, unit="a number of seconds")
    until = v.number(data, "until", p, default=None, unit="a number of seconds")
    if until <= start:
        v.fail(p + "until", f"expected a time after from ({start:g})", until)
    stall = v.boolean(data, "stall", p, default=False)
    if "status" not in data and not stall:
        v.fail(p + "status", "required unless stall = true (the HTTP error status to answer)", None)
    status = v.integer(data, "status", p, default=None)
    if status is not None and not 400 <= status <= 599:
        v.fail(p + "status", "expected an HTTP error status (400-599)", status)
    retry_after = v.number(data, "retry_after", p, default=None, unit="a number of seconds")
    if retry_after is not None and status is None:
        v.fail(p + "retry_after", "only with status (it is sent with the error answer)", retry_after)
    return ListingFault(start=start, until=until, status=status, retry_after=retry_after, stall=stall)


def _parse_call(v: _Validator, data: Any, where: str) -> list[SimCall]:
    if not isinstance(data, Mapping):
        v.fail(where, "expected a table", data)
    v.known_keys(data, _CALL_KEYS, where + ".")
    call_id = v.string(data, "id", where + ".", default=None)
    if not call_id:
        v.fail(f"{where}.id", "expected a non-empty call id", call_id)
    events_data = data.get("events", [])
    if not isinstance(events_data, list):
        v.fail(f"{where}.events", "expected an array of tables ([[calls.events]])", events_data)
    raw_events: list[SimEvent] = []
    previous = 0.0
    for index, event in enumerate(events_data):
        at_where = f"{where}.events[{index}]"
        if not isinstance(event, Mapping):
            v.fail(at_where, "expected a table", event)
        if "at" not in event:
            v.fail(f"{at_where}.at", "required: seconds from the call's start", None)
        at = v.number(event, "at", at_where + ".", default=None, unit="a number of seconds")
        if at < previous:
            v.fail(f"{at_where}.at", f"expected a time not before the previous event's {previous:g}", at)
        previous = at
        event_type = event.get("event_type")
        if not isinstance(event_type, str) or not event_type:
            v.fail(f"{at_where}.event_type", "expected a non-empty string", event_type)
        fields = {key: value for key, value in event.items() if key != "at"}
        raw_events.append(SimEvent(at=at, fields=MappingProxyType(fields)))
    events, end_at = _split_lifecycle(raw_events)

    p = where + "."
    counts = {}
    for key in ("drop_after", "end_after", "malformed_after", "stall_after", "oversized_after", "partial_after"):
        count = v.integer(data, key, p, default=None)
        if count is not None and count > len(events):
            v.fail(p + key, f"expected at most the call's {len(events)} events", count)
        counts[key] = count
    if counts["stall_after"] is not None and "stall_seconds" not in data:
        v.fail(p + "stall_seconds", "required with stall_after (wall seconds of silence)", None)
    if "oversized_bytes" in data and counts["oversized_after"] is None:
        v.fail(p + "oversized_bytes", "only with oversized_after (the size of that line)", data["oversized_bytes"])
    fail_status = v.integer(data, "fail_status", p, default=503)
    if not 400 <= fail_status <= 599:
        v.fail(p + "fail_status", "expected an HTTP error status (400-599)", fail_status)
    retry_after = v.number(data, "retry_after", p, default=None, unit="a number of seconds")
    status = v.choice(data, "status", p, ("active", "completed"), default="active")
    start = v.number(data, "start", p, default=None, unit="a number of seconds")
    if start is not None and status == "completed":
        v.fail(p + "start", 'cannot be combined with status = "completed" (a call with start completes by itself)', start)
    if "late_join" in data and start is None:
        v.fail(p + "late_join", "only with start (a call without start always replays to late subscribers)", None)
    conversation = _conversation_keys(v, data, p, fail_status)
    reconnect_skips = v.integer(data, "reconnect_skips", p, default=0)
    if reconnect_skips > len(events):
        v.fail(p + "reconnect_skips", f"expected at most the call's {len(events)} events", reconnect_skips)
    for key, value in (("reconnect_skips", reconnect_skips), ("conversation_lag", conversation["conversation_lag"])):
        if value and status == "completed":
            v.fail(p + key, 'cannot be combined with status = "completed" (the call is never streamed)', data[key])
    agent_id, conversation_type = _identity_defaults(events)
    identity = dict(
        late_join=v.choice(data, "late_join", p, ("live", "replay"), default="live"),
        agent_id=v.string(data, "agent_id", p, default=agent_id, non_empty=True),
        campaign_id=v.string(data, "campaign_id", p, default=None, non_empty=True),
        conversation_type=v.string(data, "conversation_type", p, default=conversation_type, non_empty=True),
        from_phone=v.phone(data, "from_phone", p),
        to_phone=v.phone(data, "to_phone", p),
        variables=MappingProxyType(v.table(data, "variables", p)),
    )
    template = dict(
        events=events,
        end_at=end_at,
        status=status,
        fail_first=v.integer(data, "fail_first", p, default=0),
        fail_reconnects=v.integer(data, "fail_reconnects", p, default=0),
        oversized_bytes=v.integer(data, "oversized_bytes", p, default=DEFAULT_OVERSIZED_BYTES, minimum=1),
        fail_status=fail_status,
        retry_after=retry_after,
        stall_seconds=v.number(data, "stall_seconds", p, default=0.0, unit="a number of seconds"),
        reconnect_skips=reconnect_skips,
        **conversation,
        **counts,
        **identity,
    )
    repeat = v.integer(data, "repeat", p, default=None, minimum=1)
    every = v.number(data, "start_every", p, default=None, unit="a number of seconds")
    if every is not None and (repeat is None or start is None):
        v.fail(p + "start_every", "only with repeat and start (the n-th copy starts at start + n * start_every)", every)
    if repeat is None:
        return [SimCall(id=call_id.replace("{n}", "0"), start=start, **template)]
    if "{n}" not in call_id:
        v.fail(p + "id", "expected {n} in the id of a call with repeat", call_id)
    return [
        SimCall(
            id=call_id.replace("{n}", str(n)),
            start=None if start is None else start + n * (every or 0.0),
            **template,
        )
        for n in range(repeat)
    ]


def _conversation_keys(v: _Validator, data: Mapping[str, Any], p: str, fail_status: int) -> dict[str, Any]:
    """``conversation_lag``, ``conversation_fail_first``, ``conversation_fail_status`` (default ``fail_status``)."""
    fail_first = v.integer(data, "conversation_fail_first", p, default=0)
    status = v.integer(data, "conversation_fail_status", p, default=fail_status)
    if "conversation_fail_status" in data:
        if not fail_first:
            expected = "only with conversation_fail_first (the status of those answers)"
            v.fail(p + "conversation_fail_status", expected, status)
        if not 400 <= status <= 599:
            v.fail(p + "conversation_fail_status", "expected an HTTP error status (400-599)", status)
    return {
        "conversation_lag": v.number(data, "conversation_lag", p, default=0.0, unit="a number of seconds"),
        "conversation_fail_first": fail_first,
        "conversation_fail_status": status,
    }


def _identity_defaults(events: tuple[SimEvent, ...]) -> tuple[str, str]:
    """agent_id and conversation_type from the call's call_start event (``agent_id``, ``direction``), if any."""
    start = next((event.fields for event in events if event.event_type == "call_start"), {})
    agent_id, direction = start.get("agent_id"), start.get("direction")
    return (
        agent_id if isinstance(agent_id, str) and agent_id else _DEFAULT_AGENT,
        direction if isinstance(direction, str) and direction else _DEFAULT_CONVERSATION_TYPE,
    )


def _split_lifecycle(events: list[SimEvent]) -> tuple[tuple[SimEvent, ...], float]:
    """Drop scripted sse_init/sse_close (the simulator generates them); the call ends at the last event or at
    a scripted sse_close, whichever is later."""
    kept = tuple(event for event in events if event.event_type not in LIFECYCLE_TYPES)
    end_at = max((event.at for event in events), default=0.0)
    return kept, end_at


def _parse_jsonl(text: str, source: str) -> Script:
    """Group captured events by call; ``at`` is the event's timestamp minus its call's first timestamp.

    A timestamp earlier than the previous one of the same call is clamped to it, so line order (the order the
    stream carried) is kept. The events' own ``event_id`` and ``timestamp`` are sent as given.
    """
    by_call: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}: line {number}"
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            raise ScriptError(f"{where}: invalid JSON: {error.msg} (column {error.colno})") from None
        if not isinstance(event, dict):
            raise ScriptError(f"{where}: expected a JSON object, got {_show(event)}")
        if "platform_webhook" in event:
            continue  # a spooled Atoms webhook delivery (hookrunner.spool), not a stream event
        for key in ("event_type", "call_id"):
            if not isinstance(event.get(key), str) or not event[key]:
                raise ScriptError(f"{where}: {key}: expected a non-empty string, got {_show(event.get(key))}")
        moment = _epoch_seconds(event.get("timestamp", event.get("event_time")))
        if moment is None:
            raise ScriptError(
                f"{where}: timestamp: expected an ISO 8601 string or epoch seconds, "
                f"got {_show(event.get('timestamp'))}"
            )
        by_call.setdefault(event["call_id"], []).append((moment, event))
    calls = []
    for call_id, lines in by_call.items():
        first = lines[0][0]
        events, previous = [], 0.0
        for moment, event in lines:
            previous = max(previous, moment - first)
            events.append(SimEvent(at=round(previous, 6), fields=MappingProxyType(event)))
        kept, end_at = _split_lifecycle(events)
        agent_id, conversation_type = _identity_defaults(kept)
        calls.append(
            SimCall(id=call_id, events=kept, end_at=end_at, agent_id=agent_id, conversation_type=conversation_type)
        )
    return Script(calls=tuple(calls), source=source)


def _epoch_seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    return None


def _show(value: Any) -> str:
    """A found value as a person reads it in an error: JSON-ish, strings quoted."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


class _Validator:
    """Typed getters that raise ``ScriptError("file: key.path: expected ..., got ...")``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, expected: str, got: Any) -> None:
        suffix = "" if got is None else f", got {_show(got)}"
        raise ScriptError(f"{self.source}: {where}: {expected}{suffix}")

    def known_keys(self, data: Mapping[str, Any], valid: tuple[str, ...], prefix: str) -> None:
        for key in data:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(valid)})"
                raise ScriptError(f"{self.source}: {prefix}{key}: unknown key{hint}")

    def number(self, data, key, prefix, *, default, positive=False, unit="a number") -> Any:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(prefix + key, f"expected {unit}", value)
        if value < 0 or (positive and value == 0):
            self.fail(prefix + key, f"expected {unit} {'> 0' if positive else '>= 0'}", value)
        return float(value)

    def integer(self, data, key, prefix, *, default, minimum=0) -> Any:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(prefix + key, f"expected a whole number of at least {minimum}", value)
        return value

    def string(self, data, key, prefix, *, default, non_empty=False) -> Any:
        if key not in data:
            return default
        if not isinstance(data[key], str) or (non_empty and not data[key]):
            self.fail(prefix + key, "expected a non-empty string" if non_empty else "expected a string", data[key])
        return data[key]

    def phone(self, data, key, prefix) -> Any:
        """An E.164 number (``+`` and 2 to 15 digits, no leading 0), as the vendor's models want; None if absent."""
        value = self.string(data, key, prefix, default=None)
        if value is not None and not _E164.fullmatch(value):
            self.fail(prefix + key, "expected an E.164 phone number such as \"+14155550123\"", value)
        return value

    def table(self, data, key, prefix) -> Any:
        if key not in data:
            return {}
        if not isinstance(data[key], Mapping):
            self.fail(prefix + key, "expected a table of names to values", data[key])
        return dict(data[key])

    def boolean(self, data, key, prefix, *, default) -> Any:
        if key not in data:
            return default
        if not isinstance(data[key], bool):
            self.fail(prefix + key, "expected true or false", data[key])
        return data[key]

    def choice(self, data, key, prefix, choices, *, default) -> Any:
        if key not in data:
            return default
        if data[key] not in choices:
            self.fail(prefix + key, f"expected one of {', '.join(map(repr, choices))}", data[key])
        return data[key]

    def unique_ids(self, calls: list[SimCall]) -> tuple[SimCall, ...]:
        seen: set[str] = set()
        for call in calls:
            if call.id in seen:
                raise ScriptError(f"{self.source}: calls: duplicate call id {call.id!r}")
            seen.add(call.id)
        return tuple(calls)
