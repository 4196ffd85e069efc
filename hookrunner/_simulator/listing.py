"""``GET /conversation``: the simulator's conversation listing, how a runner finds calls by polling.

Answers ``{"status": true, "data": {"logs": [...], "pagination": {...}}}`` over the calls that exist now, in
order of start (script order among equal starts), as Atoms' ``GET /conversation?statusFilter=in_progress`` does;
each log has the SDK's fields (``_id``, ``callId``, ``status``, ``duration``, ``from``, ``to``, ``type``,
``agentId``, ``recordingUrl``, ``createdAt``; ``records.py``).
A call is listed ``in_progress`` while active and ``completed`` after; a call whose scripted ``start`` has not come
is not listed; a call without ``start`` is listed ``in_progress`` from the moment the simulator serves until its
clock (started by its first subscription) reaches its end. See ``calls.py``.

Query: ``statusFilter`` (comma list; unknown statuses match nothing; absent or empty: every status),
``agentIds`` and ``campaignIds`` (comma lists; absent or empty: no filter), ``limit`` (whole number >= 1, default
10, above 500 served as 500), ``page`` (1-based, default 1; past the last page: no logs). A bad ``limit`` or
``page`` is a 400. The bearer key is checked first (401, as for ``/events``); then scripted ``[[listing_faults]]``
windows answer their error, or stall, whatever the query.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import trio

from hookrunner._core.asgi import cancel_on_disconnect
from hookrunner._simulator.calls import Calls, CallState
from hookrunner._simulator.records import log_id, phones, recording_url, rest_type
from hookrunner._simulator.responses import Answer, error_answer, errors, iso, send_json
from hookrunner._simulator.script import ListingFault

__all__ = ["Listing", "ListingRequest", "MAX_LIMIT", "DEFAULT_LIMIT"]

MAX_LIMIT = 500
DEFAULT_LIMIT = 10
_LISTED = {"active": "in_progress", "completed": "completed"}  # phase -> status shown; pending calls are not listed


class ListingRequest(NamedTuple):
    """One ``GET /conversation`` as the simulator saw it."""

    at: float  # seconds after the simulator started serving, when the request arrived
    status: int  # the answer's status (for a stall: the one sent when the window ends, if the client waited)
    stalled: bool  # held by a ``stall`` fault window

    @property
    def failed(self) -> bool:
        """Answered with an error, or held by a stall (a poller with a timeout gives up on it)."""
        return self.status != 200 or self.stalled


class Listing:
    """The listing route over a script's calls; ``requests`` records every request, in arrival order."""

    def __init__(self, calls: Calls, faults: tuple[ListingFault, ...], lag: float = 0.0) -> None:
        self.calls = calls
        self.faults = faults
        self.lag = lag
        self.requests: list[ListingRequest] = []
        self._ordered = sorted(calls, key=lambda state: state.call.start or 0.0)  # stable: script order on ties

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any, *, authorized: bool) -> None:
        arrived = self.calls.since_serving(trio.current_time())
        if not authorized:
            await self._answer(send, arrived, (401, errors("Unauthorized: invalid API key"), []))
            return
        fault = self._fault(arrived)
        if fault is not None and not fault.stall:
            assert fault.status is not None
            await self._answer(send, arrived, error_answer(fault.status, fault.retry_after))
            return
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        params = _params(query)
        if fault is None:
            answer = params if isinstance(params, tuple) else self._page(**params)
            await self._answer(send, arrived, answer)
            return
        # A stall: hold the request until the window ends, unless the client gives up first.
        planned = fault.status or (params[0] if isinstance(params, tuple) else 200)
        self.requests.append(ListingRequest(arrived, planned, stalled=True))
        with trio.CancelScope() as gone:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_disconnect, receive, gone)
                await trio.sleep_until(self._time(fault.until))
                nursery.cancel_scope.cancel()
        if gone.cancelled_caught:
            return
        if fault.status is not None:
            await send_json(send, *error_answer(fault.status, fault.retry_after))
        else:
            await send_json(send, *(params if isinstance(params, tuple) else self._page(**params)))

    async def _answer(self, send: Any, arrived: float, answer: Answer) -> None:
        self.requests.append(ListingRequest(arrived, answer[0], stalled=False))
        await send_json(send, *answer)

    def _fault(self, since_serving: float) -> ListingFault | None:
        """The first scripted fault window open ``since_serving`` seconds after serving started."""
        speed = self.calls.speed
        return next((f for f in self.faults if f.start / speed <= since_serving < f.until / speed), None)

    def _time(self, offset: float) -> float:
        assert self.calls.serving_start is not None
        return self.calls.serving_start + offset / self.calls.speed

    def _page(
        self,
        *,
        statuses: set[str] | None,
        agents: set[str] | None,
        campaigns: set[str] | None,
        limit: int,
        page: int,
    ) -> Answer:
        now = trio.current_time()
        if len(self._ordered) != len(self.calls.states):  # calls started on demand since the last page
            self._ordered = sorted(self.calls, key=lambda state: state.call.start or 0.0)
        logs = []
        lag = self.lag / self.calls.speed
        for state in self._ordered:
            phase = self.calls.phase(state, now)
            if phase == "completed" and lag and state.call.status != "completed":
                end = self.calls.end_time(state)
                if end is not None and now < end + lag:
                    phase = "active"  # ended, but not yet marked completed in the listing
            status = _LISTED.get(phase)
            if status is None or (statuses is not None and status not in statuses):
                continue
            call = state.call
            if agents is not None and call.agent_id not in agents:
                continue
            if campaigns is not None and call.campaign_id not in campaigns:
                continue
            logs.append(self._log(state, status))
        total = len(logs)
        total_pages = math.ceil(total / limit)
        pagination = {
            "total": total,
            "page": page,
            "limit": limit,
            "totalPages": total_pages,
            "hasMore": page < total_pages,
        }
        shown = logs[(page - 1) * limit : page * limit]
        return 200, {"status": True, "data": {"logs": shown, "pagination": pagination}}, []

    def _log(self, state: CallState, status: str) -> dict[str, Any]:
        """One log in the SDK's ``ListCallsResponseDataLogsItem`` fields (``records.py``)."""
        call = state.call
        from_phone, to_phone = phones(call)
        completed = status == "completed"
        return {
            "_id": log_id(call),
            "callId": call.id,
            "status": status,
            "duration": round(call.end_at / self.calls.speed, 3) if completed else None,
            "from": from_phone,
            "to": to_phone,
            "type": rest_type(call),
            "agentId": call.agent_id,
            "recordingUrl": recording_url(call) if completed else None,
            "createdAt": iso(round(self.calls.listed_from_wall(state) * 1000)),
        }


def _params(query: dict[str, list[str]]) -> dict[str, Any] | Answer:
    """The listing's query as ``_page`` keywords, or a 400 answer naming the bad parameter."""
    limit = _whole(query, "limit", DEFAULT_LIMIT)
    page = _whole(query, "page", 1)
    for name, value in (("limit", limit), ("page", page)):
        if value is None:
            got = query[name][0]
            return 400, errors(f"{name} must be a whole number of at least 1, got {got!r}"), []
    assert limit is not None and page is not None  # (for the type checker: the loop above returned otherwise)
    return {
        "statuses": _comma_set(query, "statusFilter"),
        "agents": _comma_set(query, "agentIds"),
        "campaigns": _comma_set(query, "campaignIds"),
        "limit": min(limit, MAX_LIMIT),
        "page": page,
    }


def _whole(query: dict[str, list[str]], name: str, default: int) -> int | None:
    if name not in query:
        return default
    text = query[name][0].strip()
    return int(text) if text.isascii() and text.isdigit() and int(text) >= 1 else None


def _comma_set(query: dict[str, list[str]], name: str) -> set[str] | None:
    """The union of every comma-separated value of ``name``; None when absent or empty (no filter)."""
    items = {item.strip() for value in query.get(name, ()) for item in value.split(",")} - {""}
    return items or None
