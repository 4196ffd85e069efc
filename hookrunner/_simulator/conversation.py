"""``GET /conversation/{callId}``: one call's stored conversation, what the Atoms SDK's ``calls.get(id)`` reads and
what a runner reads to backfill the events a stream skipped.

Answers ``{"status": true, "data": {...}}`` with the SDK's field names (``GetCallsResponseData``, rendered by
``records.py`` as the listing and the webhooks are): ``_id`` (the log's own id, stable per call), ``callId``,
``status``, ``duration``, ``from``, ``to`` (E.164), ``type``, ``agent`` (``{"_id": agent_id}``), ``transcript``,
``events``, ``variables`` and ``recordingUrl`` (null until completed). It reads the same clocks as the stream and
the listing (``calls.py``):

* an id not in the script, or a call whose scripted ``start`` has not come: 404 ``Call not found``;
* until the call's clock reaches its end: ``in_progress``, with the script events due by now; a call without
  ``start`` that nobody has subscribed to has no clock yet: ``in_progress`` with no events (the listing, too,
  shows it in progress);
* for ``conversation_lag`` seconds (divided by ``speed``) after its end: ``processing``, with no events and no
  transcript, as Atoms may still be writing the log after the stream ended;
* then ``completed``, with every script event and ``duration`` (the call's length in seconds, after ``speed``).
  A call declared ``status = "completed"`` is completed from the start, timed as if it had ended when the
  simulator started serving (no stream ever sent its events).

``events`` are the call's script events exactly as a stream sends them (same ``event_id``, ``timestamp`` and
``call_id``: ``SimulatorApp.event_fields``), in script order, those ``reconnect_skips`` kept off every stream
included; never sse_init or sse_close, which belong to a connection, nor a fault's malformed or oversized lines.
``transcript`` has ``{"role": "user"|"agent", "content", "timestamp"}`` (ISO 8601 with milliseconds and ``Z``)
for each of those events that is a ``user_transcription`` or a ``tts_completed`` with its text.

The bearer key is checked first (401, as for ``/events``), then the call (404), then ``conversation_fail_first``
answers its error (``conversation_fail_status``, ``Retry-After`` when the call has ``retry_after``). Every request
is recorded in ``requests``, whatever the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import trio

from hookrunner._simulator.calls import Calls, CallState
from hookrunner._simulator.records import log_id, phones, recording_url, rest_type, transcript, variables
from hookrunner._simulator.responses import Answer, encode_lenient, error_answer, errors, send_body
from hookrunner._simulator.script import SimEvent

__all__ = ["PATH_PREFIX", "Conversation", "ConversationRequest"]

PATH_PREFIX = "/conversation/"

class ConversationRequest(NamedTuple):
    """One ``GET /conversation/{id}`` as the simulator saw it."""

    call_id: str  # as requested, percent-decoded
    status: int  # the HTTP status answered
    at: float  # seconds after the simulator started serving (trio's clock), when the request arrived
    call_status: str | None  # data.status of a 200 ("in_progress", "processing", "completed"), else None


class Conversation:
    """The conversation route over a script's calls; ``requests`` records every request, in arrival order.

    ``event_fields(state, index, event)`` is the stream's own rendering of a script event, so both agree.
    """

    def __init__(self, calls: Calls, event_fields: Callable[[CallState, int, SimEvent], dict[str, Any]]) -> None:
        self.calls = calls
        self.event_fields = event_fields
        self.requests: list[ConversationRequest] = []

    async def handle(self, scope: dict[str, Any], send: Any, *, authorized: bool) -> None:
        call_id = scope["path"][len(PATH_PREFIX) :]  # ASGI's path is already percent-decoded
        now = trio.current_time()
        status, body, headers = self._answer(call_id, now, authorized)
        call_status = body["data"]["status"] if status == 200 else None
        self.requests.append(ConversationRequest(call_id, status, self.calls.since_serving(now), call_status))
        await send_body(send, status, encode_lenient(body), "application/json", headers)

    def _answer(self, call_id: str, now: float, authorized: bool) -> Answer:
        if not authorized:
            return 401, errors("Unauthorized: invalid API key"), []
        state = self.calls.get(call_id)
        if state is None or self.calls.phase(state, now) == "pending":
            return 404, errors("Call not found"), []
        call = state.call
        if state.conversation_failed < call.conversation_fail_first:
            state.conversation_failed += 1
            return error_answer(call.conversation_fail_status, call.retry_after)
        return 200, {"status": True, "data": self._data(state, now)}, []

    def _data(self, state: CallState, now: float) -> dict[str, Any]:
        call, speed = state.call, self.calls.speed
        indexes: range | list[int]
        if call.status == "completed":  # declared: never streamed; timed to end as the simulator started serving
            state = dataclasses.replace(state, start_wall=self.calls.serving_wall - call.end_at / speed)
            status, indexes = "completed", range(len(call.events))
        elif state.start is None:  # no scripted start and no subscription yet: nothing has happened
            status, indexes = "in_progress", []
        elif now < (end := self.calls.at_time(state, call.end_at)):
            status = "in_progress"
            indexes = [i for i, event in enumerate(call.events) if self.calls.at_time(state, event.at) <= now]
        elif now < end + call.conversation_lag / speed:
            status, indexes = "processing", []
        else:
            status, indexes = "completed", range(len(call.events))
        events = [self.event_fields(state, index, call.events[index]) for index in indexes]
        scheduled = [state.start_wall + call.events[index].at / speed for index in indexes]
        completed = status == "completed"
        from_phone, to_phone = phones(call)
        return {
            "_id": log_id(call),
            "callId": call.id,
            "status": status,
            "duration": round(call.end_at / speed, 3) if completed else None,
            "from": from_phone,
            "to": to_phone,
            "type": rest_type(call),
            "agent": {"_id": call.agent_id},
            "transcript": transcript(zip(events, scheduled)),
            "events": events,
            "variables": variables(call, state.start_wall),
            "recordingUrl": recording_url(call) if completed else None,
        }
