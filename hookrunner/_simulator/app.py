"""The simulator's ASGI app: the ``GET /events?callId=`` route and its streams; ``GET /conversation`` (the
listing) is ``listing.py``'s and ``GET /conversation/{callId}`` (one call's stored events and transcript)
``conversation.py``'s.

A plain ASGI callable rather than a web framework, because the whole point is control over the bytes on the
wire: SSE framing, keep-alive comments, malformed and oversized lines, a stall, half a line, and a connection cut
mid-body. One trio task serves each connection (hypercorn starts it) and sleeps with ``trio.sleep_until`` on the
call's clock between events, so 500 subscriptions cost 500 sleeping tasks and nothing else. Every frame written
is noted in the call's ``sent`` (``SentFrame``), so tests can hold a client to what really went out.

A call without a scripted ``start`` starts its clock at its first successful subscription, and every connection
replays the script from the start: what is already due is sent at once (as the real server may do after a
reconnect), the rest on time. A call with ``start`` runs on its own clock (``calls.py``): before its start it is
not found (404); a subscriber that connects late gets sse_init, the call's ``call_start`` (see ``script.py``)
and then only the events not yet due (``late_join = "live"``, the default, like the real service's live stream)
or everything due so far at once
(``late_join = "replay"``). Faults hit the first connection(s) only; faults keyed to an event count
(``drop_after``...) count the script's events, sent or skipped by a late join.

``reconnect_skips = N`` is the exception to replaying: the first connection opened after the first stream ended
(cut, ended, or left by its client) sends sse_init, leaves out the script events the first stream got through
(those it wrote, or passed over by a live join) and the N after them, and goes on with the rest on the call's
clock. The N are recorded in the call's ``skipped`` (``Simulator.skipped``) and left out by every later
connection too, so only ``GET /conversation/{id}`` has them; connections after that one replay the rest as usual.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import trio

from hookrunner._core.asgi import cancel_on_disconnect, lifespan
from hookrunner._simulator.calls import Calls, CallState, SentFrame
from hookrunner._simulator.conversation import PATH_PREFIX, Conversation
from hookrunner._simulator.listing import Listing
from hookrunner._simulator.on_demand import PATH as ON_DEMAND_PATH
from hookrunner._simulator.on_demand import OnDemand
from hookrunner._simulator.responses import Answer, encode, encode_lenient, error_answer, errors, iso, send_json
from hookrunner._simulator.script import Script, SimEvent

__all__ = ["SimulatorApp"]

_KEEPALIVE = b": keep-alive\n\n"
#: Scheduler passes before a stream's last write: hypercorn's reader sees the EOF, queues ``http.disconnect``, and
#: the app's watcher wakes on it (one pass each, with room to spare).
_SETTLE_PASSES = 8
_MALFORMED = (b"{this is not json", b'{"no_event_type": true}')


class _Ended(Exception):
    """Internal: how a stream's writer tells the handler whether to finish the body or cut the connection."""

    def __init__(self, clean: bool, how: str) -> None:
        self.clean = clean
        self.how = how  # what ``CallState.ends`` records


class SimulatorApp:
    """ASGI app over a script. ``connections`` and ``statuses`` record what clients asked and got, for tests;
    ``calls`` holds the clocks, ``listing`` the conversation listing and ``conversation`` the per-call
    conversation route, each with its request log."""

    def __init__(self, script: Script, *, api_key: str, speed: float, keepalive: float) -> None:
        self.script = script
        self.api_key = api_key
        self.speed = speed
        self.keepalive = keepalive
        self.connections: dict[str, int] = {}
        self.statuses: list[tuple[str, int]] = []
        self.calls = Calls(script, speed)
        self.listing = Listing(self.calls, script.listing_faults, script.listing_lag)
        self.conversation = Conversation(self.calls, self.event_fields)
        self.on_demand = OnDemand(self.calls, script.calls)
        self._prefix = b"event: message\ndata: " if script.framing == "event-message" else b"data: "

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        # websocket: returning without accepting makes hypercorn refuse it

    # -- routing and status answers -------------------------------------------------------------------------

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.begin()  # normally done by Simulator.serve before listening; this covers the app served alone
        if scope["method"] == "GET" and scope["path"] == "/conversation":
            await self.listing.handle(scope, receive, send, authorized=self._authorized(scope))
            return
        if scope["method"] == "GET" and scope["path"].startswith(PATH_PREFIX):
            await self.conversation.handle(scope, send, authorized=self._authorized(scope))
            return
        if scope["method"] == "POST" and scope["path"] == ON_DEMAND_PATH:
            await self.on_demand.handle(receive, send, authorized=self._authorized(scope), base_url=_base_url(scope))
            return
        if scope["path"] != "/events" or scope["method"] != "GET":
            await send_json(send, 404, {"status": False, "errors": ["Not found"]})
            return
        call_id = parse_qs(scope["query_string"].decode("latin-1")).get("callId", [""])[0]
        if call_id:
            self.connections[call_id] = self.connections.get(call_id, 0) + 1
        status, body, headers = self._admit(scope, call_id)
        self.statuses.append((call_id, status))
        if status != 200:
            await send_json(send, status, body, headers)
            return
        await self._stream(self.calls.states[call_id], receive, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        scheme, _, key = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(key.strip(), self.api_key.encode())

    def _admit(self, scope: dict[str, Any], call_id: str) -> Answer:
        """Decide the answer to a subscription. A 200 is recorded in the call's ``subscribed`` and starts the clock
        of a call without ``start`` (both at the same moment)."""
        if not self._authorized(scope):
            return 401, errors("Unauthorized: invalid API key"), []
        if not call_id:
            return 400, errors("callId is required"), []
        state = self.calls.get(call_id)
        if state is None or self.calls.phase(state) == "pending":  # a scripted start not reached: no such call yet
            return 404, errors("Call not found"), []
        call = state.call
        if state.failed < call.fail_first:
            state.failed += 1
            return error_answer(call.fail_status, call.retry_after)
        if state.streams and state.refailed < call.fail_reconnects:  # a stream was served: this is a reconnect
            state.refailed += 1
            return error_answer(call.fail_status, call.retry_after)
        if self.calls.phase(state) == "completed":
            return 400, errors("Only active calls can be subscribed to"), []
        now = trio.current_time()
        state.subscribed.append(now)
        self.calls.start_on_subscription(state, now)
        return 200, None, []

    # -- the event stream ------------------------------------------------------------------------------------

    async def _stream(self, state: CallState, receive: Any, send: Any) -> None:
        first = state.streams == 0  # decided before any await: two racing connections cannot both be first
        state.streams += 1
        connection = state.streams
        resume = 0 if first else self._resume_point(state)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        })  # fmt: skip
        clean, how = True, "closed"
        writer = _Writer(self, state, send, connection, faults=first, resume=resume)
        with trio.CancelScope() as disconnected:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_disconnect, receive, disconnected)
                try:
                    await writer.run()
                except _Ended as ended:
                    clean, how = ended.clean, ended.how
                nursery.cancel_scope.cancel()
        state.ends[connection] = "client" if disconnected.cancel_called else how
        if first:
            state.first_passed = writer.passed - writer.unflushed  # what went out, for ``reconnect_skips``
        if clean and not disconnected.cancel_called:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # Not clean (drop_after): return with the body unfinished. Hypercorn then closes the connection without
        # the chunked terminator, and the client sees an incomplete body, exactly like a proxy cutting a stream;
        # nothing is raised, so hypercorn logs no traceback.

    def _resume_point(self, state: CallState) -> int:
        """``reconnect_skips``: the script index the first connection opened after the first stream ended starts
        at, with the N events before it (after what the first stream got through) recorded as skipped for good;
        0 (replay from the start) for any other connection."""
        call = state.call
        if not call.reconnect_skips or state.first_passed is None or state.skip_window is not None:
            return 0
        window = range(state.first_passed, min(state.first_passed + call.reconnect_skips, len(call.events)))
        state.skip_window = window
        state.skipped = [self.event_fields(state, index, call.events[index])["event_id"] for index in window]
        return window.stop

    def at_time(self, state: CallState, offset: float) -> float:
        """The trio time at which something scripted ``offset`` seconds into the call happens."""
        return self.calls.at_time(state, offset)

    def frame(self, payload: bytes) -> bytes:
        return self._prefix + payload + b"\n\n"

    def event_frame(self, state: CallState, index: int, event: SimEvent) -> bytes:
        """The event as sent: script fields, with event_id, timestamp and call_id filled in when missing."""
        return self.frame(encode_lenient(self.event_fields(state, index, event)))

    def event_fields(self, state: CallState, index: int, event: SimEvent) -> dict[str, Any]:
        fields = event.fields
        out: dict[str, Any] = {"event_type": fields["event_type"]}
        out["event_id"] = fields.get("event_id") or self._event_id(state, index, event.at)
        out["timestamp"] = fields["timestamp"] if "timestamp" in fields else self._timestamp(state, event.at)
        out["call_id"] = fields.get("call_id") or state.call.id
        out.update((key, value) for key, value in fields.items() if key not in out)
        return out

    def close_frame(self, state: CallState) -> bytes:
        return self.frame(encode(self.close_fields(state)))

    def close_fields(self, state: CallState) -> dict[str, Any]:
        call = state.call
        return {
            "event_type": "sse_close",
            "event_id": self._event_id(state, len(call.events), call.end_at),
            "call_id": call.id,
            "timestamp": self._timestamp(state, call.end_at),
        }

    def oversized_fields(self, state: CallState, index: int) -> dict[str, Any]:
        """``oversized_after``'s event: an agent turn whose text makes the line ``oversized_bytes`` long."""
        call = state.call
        at = call.events[index - 1].at if index else 0.0
        out = {
            "event_type": "tts_completed",
            "event_id": f"{call.id}_oversized_{index}",
            "timestamp": self._timestamp(state, at),
            "call_id": call.id,
            "tts_text": "",
        }
        out["tts_text"] = "x" * max(0, call.oversized_bytes - len(self.frame(encode(out))))
        return out

    def init_frame(self, state: CallState) -> bytes:
        # Like the vendor SDK documents: event_time, no event_id, so clients must cope with that.
        payload = {"event_type": "sse_init", "event_time": iso(round(time.time() * 1000)), "call_id": state.call.id}
        return self.frame(encode(payload))

    def _event_id(self, state: CallState, index: int, at: float) -> str:
        """``{call_id}_{n}_{epoch_ms}``; epoch_ms is the event's scheduled time, so replays repeat the same id."""
        return f"{state.call.id}_{index}_{self._epoch_ms(state, at)}"

    def _timestamp(self, state: CallState, at: float) -> str | float:
        """The event's scheduled wall time: the sending time when live, the original time when replayed."""
        epoch_ms = self._epoch_ms(state, at)
        return epoch_ms / 1000 if self.script.timestamp_format == "epoch" else iso(epoch_ms)

    def _epoch_ms(self, state: CallState, at: float) -> int:
        return round((state.start_wall + at / self.speed) * 1000)


class _Writer:
    """Writes one connection's stream: sse_init, the script's events on the call's clock, faults, sse_close.

    Frames that are due together go out in one body message, so a replay is one write, not one per event.
    ``resume`` script events are left out at the start (``reconnect_skips``), and so is the call's skip window.
    """

    def __init__(
        self, app: SimulatorApp, state: CallState, send: Any, connection: int, *, faults: bool, resume: int = 0
    ) -> None:
        self.app, self.state, self.send, self.faults = app, state, send, faults
        self.connection = connection
        self.resume = resume
        self.passed = 0  # script events gone by: written to the buffer or passed over by a live join
        self.unflushed = 0  # of those, script events still in the buffer (not handed to the server yet)
        self.buffer: list[bytes] = []
        self.noted: list[SentFrame] = []  # what the buffer holds, recorded in ``state.sent`` once written
        self._note(app.init_frame(state), "event", "sse_init")
        self.last_write = trio.current_time()
        live = state.call.start is not None and state.call.late_join == "live"
        self.joined = self.last_write if live else -math.inf  # events due before this are skipped

    async def run(self) -> None:
        app, state, call = self.app, self.state, self.state.call
        for index, event in enumerate(call.events):
            await self._faults_before(index)
            if index < self.resume or index in (state.skip_window or ()):
                continue
            due = app.at_time(state, event.at)
            if due < self.joined and event.event_type != "call_start":
                self.passed = index + 1
                continue
            await self._wait_until(due)
            self._add_event(app.event_fields(state, index, event))
            self.passed, self.unflushed = index + 1, self.unflushed + 1
        await self._faults_before(len(call.events))
        await self._wait_until(app.at_time(state, call.end_at))
        self._add_event(app.close_fields(state))
        await self._last_flush()

    def _note(self, frame: bytes, kind: str, event_type: str | None = None, event_id: str | None = None) -> None:
        self.buffer.append(frame)
        self.noted.append(SentFrame(self.connection, kind, len(frame), event_type, event_id))  # type: ignore[arg-type]

    def _add_event(self, fields: dict[str, Any], kind: str = "event") -> None:
        self._note(self.app.frame(encode_lenient(fields)), kind, fields["event_type"], fields["event_id"])

    async def _faults_before(self, index: int) -> None:
        """Apply the first-connection faults that trigger after ``index`` script events."""
        if not self.faults:
            return
        call = self.state.call
        if call.malformed_after == index:
            for payload in _MALFORMED:
                self._note(self.app.frame(payload), "malformed")
        if call.oversized_after == index:
            self._add_event(self.app.oversized_fields(self.state, index), "oversized")
        if call.stall_after == index:
            await self._flush()
            await trio.sleep(call.stall_seconds)  # wall seconds, and deliberately no keep-alive
            self.last_write = trio.current_time()
        if call.end_after == index:
            await self._last_flush()
            raise _Ended(clean=True, how="ended")
        if call.drop_after == index:
            await self._last_flush()
            raise _Ended(clean=False, how="cut")
        if call.partial_after == index:
            if index < len(call.events):
                line = self.app.event_frame(self.state, index, call.events[index])
            else:
                line = self.app.close_frame(self.state)
            self._note(line[: len(line) // 2], "partial")  # no newline: the client holds an unfinished line
            await self._last_flush()
            raise _Ended(clean=False, how="cut")

    async def _wait_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` on the call's clock, sending keep-alives after ``keepalive`` s of silence."""
        if deadline <= trio.current_time():
            return
        await self._flush()
        keepalive = self.app.keepalive or math.inf
        while (next_keepalive := self.last_write + keepalive) < deadline:
            await trio.sleep_until(next_keepalive)
            self.buffer.append(_KEEPALIVE)
            await self._flush()
        await trio.sleep_until(deadline)

    async def _last_flush(self) -> None:
        """The stream's last write, after letting a client that has already left be noticed.

        On a loaded loop a subscriber can give up waiting for the answer before the server even reads its request;
        its close is then already in the socket, but hypercorn needs a few scheduler passes to turn it into
        ``http.disconnect``. A stream that ends at once (everything due, or a fault right after a live join)
        would otherwise be recorded as ended by the server, as if read, when nobody read it; these passes let the
        disconnect cancel the stream first, so ``ends`` says ``"client"`` and nothing is noted as sent into the void.
        """
        for _ in range(_SETTLE_PASSES):
            await trio.lowlevel.checkpoint()
        await self._flush()

    async def _flush(self) -> None:
        if self.buffer:
            body = b"".join(self.buffer)
            noted, self.noted = self.noted, []
            self.buffer.clear()
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
            self.state.sent.extend(noted)
            self.unflushed = 0
            self.last_write = trio.current_time()


def _base_url(scope: dict[str, Any]) -> str:
    """The URL the request reached the simulator at, for links in answers."""
    host, port = scope.get("server") or ("127.0.0.1", 0)
    return f"{scope.get('scheme', 'http')}://{host}:{port}{scope.get('root_path', '')}"
