"""Each simulated call's clock: when it starts and ends, and whether it is pending, active or completed now.

All times are on trio's clock. The simulator's own clock starts when it starts serving (``Calls.begin``); a call
with a scripted ``start`` starts that many seconds later (divided by ``speed``), whoever subscribes; a call without
one starts at its first successful subscription (``Calls.start_on_subscription``), as it always has. The
``/events`` route, the conversation listing and the webhook deliveries all read the same clocks, so they agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import trio

from hookrunner._simulator.script import Script, SimCall

__all__ = ["CallState", "Calls", "Phase", "SentFrame"]

#: pending: a scripted start not reached (the call does not exist yet); active: may be subscribed to;
#: completed: over, or declared ``status = "completed"``.
Phase = Literal["pending", "active", "completed"]


@dataclass(frozen=True)
class SentFrame:
    """One frame a connection wrote (handed to the server, before the client read it), for tests.

    ``connection`` is the call's successful subscription it went out on (1 = the first); ``kind`` is ``"event"``
    (sse_init, a script event, sse_close), or a fault's: ``"malformed"``, ``"oversized"`` (an event too, with its
    id), ``"partial"`` (half a line); ``size`` is its length in bytes, framing included.
    """

    connection: int
    kind: Literal["event", "malformed", "oversized", "partial"]
    size: int
    event_type: str | None = None
    event_id: str | None = None  # None for sse_init, which has none on the wire either


@dataclass
class CallState:
    """A call's clock and bookkeeping, shared by all its connections."""

    call: SimCall
    start: float | None = None  # trio time the call's clock starts (None: no subscription yet, no scripted start)
    start_wall: float = 0.0  # time.time() at the same moment, for generated ids and timestamps
    failed: int = 0  # answers given under fail_first
    refailed: int = 0  # answers given under fail_reconnects
    streams: int = 0  # successful subscriptions so far
    subscribed: list[float] = field(default_factory=list)  # trio time of each successful subscription
    sent: list[SentFrame] = field(default_factory=list)  # every frame written, all connections, in order
    #: How each successful subscription's stream ended, by connection number (see ``Simulator.ends``).
    ends: dict[int, str] = field(default_factory=dict)
    clock_started: trio.Event = field(default_factory=trio.Event)  # set once ``start`` is known
    #: Script events the first stream got through (sent, or left out by a live join) when it ended; None while it
    #: is open or before it. Where the connection after it resumes under ``reconnect_skips``.
    first_passed: int | None = None
    #: ``reconnect_skips``: the script indexes no stream sends, and their event ids, in order; set when the
    #: connection that resumes after them starts (None before).
    skip_window: range | None = None
    skipped: list[str] = field(default_factory=list)
    conversation_failed: int = 0  # answers given under conversation_fail_first


class Calls:
    """The clocks of one script's calls, in script order."""

    def __init__(self, script: Script, speed: float) -> None:
        self.speed = speed
        self.states = {call.id: CallState(call) for call in script.calls}
        self.serving_start: float | None = None  # trio time the simulator started serving
        self.serving_wall = 0.0

    def __iter__(self) -> Iterator[CallState]:
        return iter(self.states.values())

    def get(self, call_id: str) -> CallState | None:
        return self.states.get(call_id)

    def add(self, call: SimCall) -> CallState:
        """A call started while serving (``on_demand.py``): its clock starts at its ``start``."""
        assert self.serving_start is not None and call.start is not None and call.id not in self.states
        state = self.states[call.id] = CallState(call)
        offset = call.start / self.speed
        self._start(state, self.serving_start + offset, self.serving_wall + offset)
        return state

    def begin(self) -> None:
        """Start the simulator's clock (once; later calls do nothing) and with it every scripted start."""
        if self.serving_start is not None:
            return
        self.serving_start, self.serving_wall = trio.current_time(), time.time()
        for state in self:
            if state.call.start is not None:
                offset = state.call.start / self.speed
                self._start(state, self.serving_start + offset, self.serving_wall + offset)

    def start_on_subscription(self, state: CallState, now: float) -> None:
        """A call without a scripted start: its clock starts at ``now``, its first successful subscription."""
        if state.start is None:
            self._start(state, now, time.time())

    def _start(self, state: CallState, at: float, wall: float) -> None:
        state.start, state.start_wall = at, wall
        state.clock_started.set()

    def at_time(self, state: CallState, offset: float) -> float:
        """The trio time at which something scripted ``offset`` seconds into the call happens."""
        assert state.start is not None
        return state.start + offset / self.speed

    def end_time(self, state: CallState) -> float | None:
        """When the call ends (sse_close, completed), or None while its clock has not started."""
        return None if state.start is None else self.at_time(state, state.call.end_at)

    def phase(self, state: CallState, now: float | None = None) -> Phase:
        now = trio.current_time() if now is None else now
        if state.call.status == "completed":
            return "completed"
        if state.start is None:
            return "active"  # no scripted start: active, waiting for its first subscriber
        if now < state.start:
            return "pending"
        return "active" if now < self.at_time(state, state.call.end_at) else "completed"

    def listed_from(self, state: CallState) -> float:
        """The trio time from which the call exists: its scripted start, else when the simulator started serving."""
        assert self.serving_start is not None
        if state.call.start is None:
            return self.serving_start
        return self.serving_start + state.call.start / self.speed

    def listed_from_wall(self, state: CallState) -> float:
        """``listed_from`` as ``time.time()``, for createdAt."""
        assert self.serving_start is not None
        return self.serving_wall + (self.listed_from(state) - self.serving_start)

    def since_serving(self, moment: float) -> float:
        """Seconds from the simulator's start of serving to the trio time ``moment``."""
        assert self.serving_start is not None
        return moment - self.serving_start
