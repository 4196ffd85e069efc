"""Calls started on demand: ``POST /simulator/calls`` (the simulator's ``stripe trigger``) and ``--loop``.

A developer iterating on a plugin against a running service needs a new call each time, and a script's calls are
each served once (a second subscription answers 400, "completed", as Atoms does). Restarting the simulator would
also lose the webhooks it pushes. So a new call can be started while the simulator runs: a copy of one of the
script's calls under a fresh id, starting now. It behaves as a scripted call with ``start`` does: listed
``in_progress``, pre-conversation webhook at once, its events on its own clock, post-conversation webhook and
``completed`` at its end. The copy keeps its template's faults and settings; its events lose any scripted
``event_id``, ``call_id`` and ``timestamp`` so that each copy is a call of its own (the simulator generates them,
in the script's ``timestamp_format``).

``POST {base}/simulator/calls`` with the bearer key and an optional JSON object body:

* ``like``: the id of the script call to copy; without it, the script's streamable calls take turns;
* ``id``: the new call's id; without it, one shaped like Atoms' (``CALL-{epoch ms}-{6 hex}``).

It answers 201 ``{"status": true, "data": {"callId", "like", "eventsUrl"}}``; 401 without the key; 400 for a body
that is not a JSON object or an unknown ``like`` (the valid ones named); 409 for an ``id`` already taken; 413 past
``MAX_BODY`` bytes; 429 once ``MAX_ON_DEMAND`` calls were started, which bounds the memory a loop or a script
hammering the route can take.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import trio

from hookrunner._core.asgi import BodyTooLarge, read_body
from hookrunner._core.callids import call_id_problem
from hookrunner._simulator.calls import Calls, CallState
from hookrunner._simulator.responses import Answer, errors, send_json
from hookrunner._simulator.script import SimCall, SimEvent

__all__ = ["PATH", "MAX_BODY", "MAX_ON_DEMAND", "OnDemand", "copy_of"]

PATH = "/simulator/calls"
MAX_BODY = 16 * 1024
MAX_ON_DEMAND = 10_000
#: Fields a copy's events do not inherit: they name the template's call and moments.
_OWN_FIELDS = ("event_id", "call_id", "timestamp")


def copy_of(template: SimCall, call_id: str, start: float) -> SimCall:
    """``template`` as a new call ``call_id`` that starts ``start`` seconds after serving began (script time)."""
    events = tuple(
        SimEvent(at=event.at, fields=MappingProxyType({k: v for k, v in event.fields.items() if k not in _OWN_FIELDS}))
        for event in template.events
    )
    return dataclasses.replace(template, id=call_id, events=events, start=start, status="active")


def atoms_like_id() -> str:
    """A fresh call id in the shape Atoms gives (``CALL-1767225600101-5d2e7a``)."""
    return f"CALL-{round(time.time() * 1000)}-{secrets.token_hex(3)}"


class OnDemand:
    """Starts copies of the script's calls. ``started(state)`` is told of each (the pusher follows it);
    ``log`` holds ``(call id, template id)`` of each, in order."""

    def __init__(self, calls: Calls, templates: tuple[SimCall, ...]) -> None:
        self.calls = calls
        self.templates = {call.id: call for call in templates if call.status != "completed"}
        self.started: Callable[[CallState], None] = lambda state: None
        self.log: list[tuple[str, str]] = []
        self._turn = 0

    def start(self, like: str | None = None, call_id: str | None = None) -> CallState:
        """Start a copy of ``like`` (default: the next template in turn) as ``call_id`` (default: a fresh id), now.
        ``KeyError`` for an unknown template, ``ValueError`` for a bad or taken id, ``OverflowError`` past the
        bound."""
        if len(self.log) >= MAX_ON_DEMAND:
            raise OverflowError(f"{MAX_ON_DEMAND} calls were started on demand already: restart the simulator")
        if like is None:
            if not self.templates:
                raise KeyError("the script has no call that can be streamed (all are status = \"completed\")")
            like = list(self.templates)[self._turn % len(self.templates)]
            self._turn += 1
        template = self.templates.get(like)
        if template is None:
            known = ", ".join(self.templates) or "none"
            raise KeyError(f"like: no such call in the script: {like!r} (calls: {known})")
        call_id = call_id if call_id is not None else atoms_like_id()
        problem = call_id_problem(call_id)
        if problem:
            raise ValueError(f"id: {problem}")
        if self.calls.get(call_id) is not None:
            raise ValueError(f"id: {call_id} exists already")
        now = self.calls.since_serving(trio.current_time()) * self.calls.speed  # script seconds, as ``start`` is
        state = self.calls.add(copy_of(template, call_id, now))
        self.log.append((call_id, like))
        self.started(state)
        return state

    async def handle(self, receive: Any, send: Any, *, authorized: bool, base_url: str) -> None:
        status, body, headers = await self._answer(receive, authorized, base_url)
        await send_json(send, status, body, headers)

    async def _answer(self, receive: Any, authorized: bool, base_url: str) -> Answer:
        if not authorized:
            return 401, errors("Unauthorized: invalid API key"), []
        try:
            raw = await read_body(receive, MAX_BODY)
        except BodyTooLarge:
            return 413, errors(f"body: at most {MAX_BODY} bytes"), []
        if raw is None:
            return 400, errors("body: the client went away"), []
        try:
            request = json.loads(raw) if raw.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return 400, errors(f"body: not JSON: {error}"), []
        if not isinstance(request, dict):
            return 400, errors("body: expected a JSON object such as {\"like\": \"CALL-...\"}"), []
        unknown = set(request) - {"like", "id"}
        if unknown:
            return 400, errors(f"body: unknown keys {sorted(unknown)} (valid: like, id)"), []
        for key in ("like", "id"):
            if key in request and not isinstance(request[key], str):
                return 400, errors(f"{key}: expected a string"), []
        try:
            state = self.start(request.get("like"), request.get("id"))
        except KeyError as error:
            return 400, errors(str(error.args[0])), []
        except ValueError as error:
            return (409 if "exists already" in str(error) else 400), errors(str(error)), []
        except OverflowError as error:
            return 429, errors(str(error)), []
        call_id = state.call.id
        data = {"callId": call_id, "like": self.log[-1][1], "eventsUrl": f"{base_url}/events?callId={call_id}"}
        return 201, {"status": True, "data": data}, []


async def loop_calls(on_demand: OnDemand, pause: float) -> None:
    """``--loop``: whenever a call ends, a copy of its template starts ``pause`` seconds later, for ever, so a
    service pointed at the simulator always has calls to find."""
    async with trio.open_nursery() as nursery:
        for state in list(on_demand.calls):
            if state.call.id in on_demand.templates:
                nursery.start_soon(_again, on_demand, state, state.call.id, pause, nursery)


async def _again(on_demand: OnDemand, state: CallState, like: str, pause: float, nursery: trio.Nursery) -> None:
    await state.clock_started.wait()
    end = on_demand.calls.end_time(state)
    assert end is not None
    await trio.sleep_until(end + pause)
    try:
        copy = on_demand.start(like)
    except OverflowError:
        return  # bounded: the loop stops growing; the simulator goes on serving
    nursery.start_soon(_again, on_demand, copy, like, pause, nursery)
