"""A local simulator of Atoms' "subscribe to live call events" SSE API, for tests, demos and load runs.

It serves ``GET {base_url}/events?callId=ID`` over real HTTP on loopback (hypercorn on trio) from a script, so the
code under test goes through the same httpx, SSE parsing, reconnects and error answers as against the real
service, including the faults the real service and the proxies in front of it produce. For a runner that finds
calls by itself it also serves the conversation listing (``GET {base_url}/conversation``, ``listing.py``) and
POSTs signed pre-/post-conversation webhooks to a push URL (``push.py``); for one that backfills what a stream
skipped, each call's stored conversation (``GET {base_url}/conversation/{callId}``, ``conversation.py``); and for
a dev loop, new calls on demand (``POST {base_url}/simulator/calls``, ``--loop``: ``on_demand.py``). See
``script.py`` for the script format, ``calls.py`` for when a call exists, and ``app.py`` for what goes on the
wire.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from urllib.parse import quote

import trio

from hookrunner._core.asgi import serve_asgi
from hookrunner._simulator.app import SimulatorApp
from hookrunner._simulator.calls import SentFrame
from hookrunner._simulator.conversation import ConversationRequest
from hookrunner._simulator.listing import ListingRequest
from hookrunner._simulator.on_demand import PATH as ON_DEMAND_PATH
from hookrunner._simulator.on_demand import loop_calls
from hookrunner._simulator.push import Delivery, Pusher, PushResult
from hookrunner._simulator.script import ListingFault, Script, ScriptError, SimCall, SimEvent, default_script_path, load_script, parse_script

__all__ = [
    "Script",
    "SimCall",
    "ScriptError",
    "SimEvent",
    "ListingFault",
    "ListingRequest",
    "ConversationRequest",
    "SentFrame",
    "Delivery",
    "PushResult",
    "load_script",
    "parse_script",
    "default_script_path",
    "Simulator",
    "running_simulator",
    "run_simulator_cli",
]

_log = logging.getLogger("hookrunner.simulator.server")


class Simulator:
    """Owns one script's live state. ``app`` is the ASGI callable; ``serve()`` puts it on a port.

    Constructor arguments override the script's ``api_key``, ``speed``, ``keepalive``, ``push_url``,
    ``push_secret`` and ``push_signature`` when not ``None``; ``push_timeout`` bounds each webhook delivery (Atoms:
    30 s). ``connections`` counts GET /events per call id (any answer); ``statuses`` lists ``(call id, status)``
    in order.

    Times the simulator reports are seconds after it started serving (the zero of scripted ``start`` offsets and
    listing fault windows), on trio's clock: ``subscriptions``, ``call_start``, ``call_end``, ``listing_log``,
    ``conversation_log``.
    """

    def __init__(
        self,
        script: Script,
        *,
        api_key: str | None = None,
        speed: float | None = None,
        keepalive: float | None = None,
        push_url: str | None = None,
        push_secret: str | None = None,
        push_signature: str | None = None,
        push_timeout: float = 30.0,
        loop: float | None = None,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be above 0, got {speed!r}")
        if keepalive is not None and not keepalive >= 0:
            raise ValueError(f"keepalive must be 0 (off) or more seconds, got {keepalive!r}")
        if not push_timeout > 0:
            raise ValueError(f"push_timeout must be above 0 seconds, got {push_timeout!r}")
        if loop is not None and not loop >= 0:
            raise ValueError(f"loop must be 0 or more seconds between a call's end and its copy, got {loop!r}")
        self.loop = loop
        self.script = script
        self.app = SimulatorApp(
            script,
            api_key=script.api_key if api_key is None else api_key,
            speed=script.speed if speed is None else speed,
            keepalive=script.keepalive if keepalive is None else keepalive,
        )
        self.pusher = Pusher(
            script.push_url if push_url is None else push_url,
            script.push_secret if push_secret is None else push_secret,
            script.push_signature if push_signature is None else push_signature,
            timeout=push_timeout,
            event_fields=self.app.event_fields,
        )
        self.app.on_demand.started = self.pusher.follow
        self.base_url = ""
        self.connections: dict[str, int] = self.app.connections
        self.statuses: list[tuple[str, int]] = self.app.statuses

    @property
    def api_key(self) -> str:
        return self.app.api_key

    def events_url(self, call_id: str) -> str:
        return f"{self.base_url}/events?callId={call_id}"

    def conversation_url(self, call_id: str) -> str:
        """``GET`` it for the call's stored conversation (the id percent-encoded)."""
        return f"{self.base_url}/conversation/{quote(call_id, safe='')}"

    @property
    def on_demand_url(self) -> str:
        """``POST`` it (with the key) to start a new call now: ``on_demand.py``."""
        return f"{self.base_url}{ON_DEMAND_PATH}"

    def start_call(self, like: str | None = None, call_id: str | None = None) -> str:
        """Start a copy of script call ``like`` (default: the next in turn) now, as ``POST /simulator/calls``
        does; returns its id. Only while serving."""
        return self.app.on_demand.start(like, call_id).call.id

    @property
    def started_on_demand(self) -> list[tuple[str, str]]:
        """``(call id, template id)`` of every call started on demand or by ``loop``, in order."""
        return list(self.app.on_demand.log)

    @property
    def listing_url(self) -> str:
        """``GET`` it with ``statusFilter``, ``limit``, ``page``, ``agentIds``, ``campaignIds``."""
        return f"{self.base_url}/conversation"

    # -- what happened, for tests ----------------------------------------------------------------------------

    @property
    def started_at(self) -> float | None:
        """trio time at which the simulator started serving (None before ``serve``)."""
        return self.app.calls.serving_start

    @property
    def subscriptions(self) -> dict[str, list[float]]:
        """Per call id (every call of the script): when each successful (200) GET /events arrived, in order."""
        calls = self.app.calls
        if calls.serving_start is None:
            return {state.call.id: [] for state in calls}
        return {state.call.id: [calls.since_serving(t) for t in state.subscribed] for state in calls}

    @property
    def sent(self) -> dict[str, list[SentFrame]]:
        """Per call id (every call of the script): each frame its connections wrote, in order (``SentFrame``:
        connection, kind, size, event type and id), keep-alive comments left out. A frame counts once the server
        took it, which is when a client that stays connected reads it."""
        return {state.call.id: list(state.sent) for state in self.app.calls}

    @property
    def ends(self) -> dict[str, dict[int, str]]:
        """Per call id: how each of its streams ended, by connection number (1 = the first): ``"closed"``
        (sse_close written, body finished), ``"ended"`` (``end_after``), ``"cut"`` (``drop_after``,
        ``partial_after``) or ``"client"`` (the client went away first, so it may not have read the last frames
        written: an idle timeout, or a client that stopped). A stream still open is not listed."""
        return {state.call.id: dict(state.ends) for state in self.app.calls}

    def call_start(self, call_id: str) -> float | None:
        """When the call started: its scripted ``start`` / speed, or its first successful subscription; None if
        neither has happened (KeyError for an id not in the script)."""
        state = self.app.calls.states[call_id]
        return None if state.start is None else self.app.calls.since_serving(state.start)

    def call_end(self, call_id: str) -> float | None:
        """When the call ends (sse_close, then completed); None while its clock has not started."""
        end = self.app.calls.end_time(self.app.calls.states[call_id])
        return None if end is None else self.app.calls.since_serving(end)

    @property
    def listing_log(self) -> list[ListingRequest]:
        """Every GET /conversation in arrival order: ``(at, status, stalled)``."""
        return self.app.listing.requests

    @property
    def listing_requests(self) -> int:
        """How many GET /conversation requests arrived, whatever the answer."""
        return len(self.app.listing.requests)

    @property
    def listing_errors(self) -> int:
        """How many of them were answered with an error status (401, 400, a fault) or held by a stall."""
        return sum(request.failed for request in self.app.listing.requests)

    @property
    def conversation_log(self) -> list[ConversationRequest]:
        """Every GET /conversation/{id} in arrival order: ``(call_id, status, at, call_status)``."""
        return self.app.conversation.requests

    @property
    def conversation_requests(self) -> int:
        """How many GET /conversation/{id} requests arrived, whatever the answer."""
        return len(self.app.conversation.requests)

    @property
    def skipped(self) -> dict[str, list[str]]:
        """Per call id (every call of the script): the ids of the events ``reconnect_skips`` kept off every stream,
        in script order; empty until the connection that resumes after them has started."""
        return {state.call.id: list(state.skipped) for state in self.app.calls}

    @property
    def push_url(self) -> str | None:
        return self.pusher.url

    @property
    def pushes(self) -> list[PushResult]:
        """Every webhook send that has ended, in that order: ``(delivery_id, event, call_id, status, error, how)``."""
        return self.pusher.results

    @property
    def deliveries(self) -> dict[str, Delivery]:
        """Every delivery built so far by id: its exact body bytes and X-Signature."""
        return self.pusher.deliveries

    async def push_again(self, delivery_id: str, *, wrong_signature: bool = False) -> PushResult:
        """Send a delivery again with the same bytes and signature (a replay), or with a signature made with
        another key; waits for the answer (or the push timeout) and returns how it went."""
        return await self.pusher.send_again(delivery_id, wrong_signature=wrong_signature)

    async def wait_for_pushes(self, count: int, timeout: float = 5.0) -> list[PushResult]:
        """Wait until ``count`` webhook sends have ended (trio.TooSlowError after ``timeout`` s); returns them all."""
        return await self.pusher.wait(count, timeout)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started(base_url)`` once listening (port 0 picks a free one)."""
        serve = partial(
            serve_asgi,
            self.app,
            host,
            port,
            log=_log,
            graceful_timeout=0.5,  # open streams are cut on shutdown anyway
            backlog=1024,  # hypercorn's 100 refuses a burst of hundreds of subscriptions
        )
        async with trio.open_nursery() as nursery:
            self.app.calls.begin()  # the zero of scripted starts: just before listening, so none is missed
            self.base_url = await nursery.start(serve)  # e.g. "http://127.0.0.1:54321"
            nursery.start_soon(self.pusher.run, self.app.calls)
            if self.loop is not None:
                nursery.start_soon(loop_calls, self.app.on_demand, self.loop / self.app.speed)
            task_status.started(self.base_url)


@asynccontextmanager
async def running_simulator(script: Script | str | Path | None = None, **kwargs: object) -> AsyncIterator[Simulator]:
    """Run a simulator on a free loopback port for the ``async with`` block; ``None`` = the default script."""
    if not isinstance(script, Script):
        script = load_script(default_script_path() if script is None else script)
    simulator = Simulator(script, **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(simulator.serve)
        try:
            yield simulator
        finally:
            nursery.cancel_scope.cancel()


def run_simulator_cli(
    port: int,
    script_path: str | None,
    api_key: str | None,
    speed: float | None,
    host: str = "127.0.0.1",
    *,
    push_url: str | None = None,
    push_secret_env: str | None = None,
    push_signature: str | None = None,
    loop: float | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; print one "listening" line first. Returns 0, 2 for a bad script or option, 1 if
    it cannot listen. ``None`` for an option means the script's own value. The push secret is read from the
    environment variable named ``push_secret_env``, so it never appears on a command line."""
    try:
        script = load_script(script_path or default_script_path())
    except ScriptError as error:
        print(error, file=sys.stderr, flush=True)
        return 2
    push_secret = None
    if push_secret_env is not None:
        push_secret = os.environ.get(push_secret_env)
        if not push_secret:
            print(f"simulator: --push-secret-env: {push_secret_env} is not set or empty", file=sys.stderr, flush=True)
            return 2
    try:
        simulator = Simulator(
            script,
            api_key=api_key,
            speed=speed,
            push_url=push_url,
            push_secret=push_secret,
            push_signature=push_signature,
            loop=loop,
        )
    except ValueError as error:
        print(f"simulator: {error}", file=sys.stderr, flush=True)
        return 2

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                base_url = await nursery.start(simulator.serve, host, port)
                pushing = f", webhooks to {simulator.push_url}" if simulator.push_url else ""
                again = f"; each call starts again {loop:g} s after it ends" if loop is not None else ""
                print(
                    f"simulator listening on {base_url} ({_describe_calls(script)}){pushing}{again}; "
                    f"another call: POST {simulator.on_demand_url}",
                    flush=True,
                )
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except* OSError as group:  # cannot bind: port in use, bad host
        cause: BaseException = group
        while isinstance(cause, BaseExceptionGroup):  # trio nests the group once per nursery
            cause = cause.exceptions[0]
        print(f"simulator: cannot listen on {host}:{port}: {cause}", file=sys.stderr, flush=True)
        failed = True
    else:
        failed = False
    return 1 if failed else 0


def _describe_calls(script: Script, shown: int = 10) -> str:
    ids = [call.id for call in script.calls]
    listed = ", ".join(ids[:shown]) + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")
    return f"{len(ids)} call{'' if len(ids) == 1 else 's'}: {listed}" if ids else "0 calls"
