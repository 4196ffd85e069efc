"""A local simulator of Atoms' "subscribe to live call events" SSE API, for tests, demos and load runs.

It serves ``GET {base_url}/events?callId=ID`` over real HTTP on loopback (hypercorn on trio) from a script, so the
code under test goes through the same httpx, SSE parsing, reconnects and error answers as against the real
service, including the faults the real service and the proxies in front of it produce. See ``script.py`` for the
script format and ``app.py`` for what goes on the wire.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from hookrunner.asgi import serve_asgi
from hookrunner.simulator.app import SimulatorApp
from hookrunner.simulator.script import (
    Script,
    ScriptError,
    SimCall,
    SimEvent,
    default_script_path,
    load_script,
    parse_script,
)

__all__ = [
    "Script",
    "SimCall",
    "ScriptError",
    "SimEvent",
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

    Constructor arguments override the script's ``api_key``, ``speed`` and ``keepalive`` when not ``None``.
    ``connections`` counts GET /events per call id (any answer); ``statuses`` lists ``(call id, status)`` in order.
    """

    def __init__(
        self,
        script: Script,
        *,
        api_key: str | None = None,
        speed: float | None = None,
        keepalive: float | None = None,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be above 0, got {speed!r}")
        if keepalive is not None and not keepalive >= 0:
            raise ValueError(f"keepalive must be 0 (off) or more seconds, got {keepalive!r}")
        self.script = script
        self.app = SimulatorApp(
            script,
            api_key=script.api_key if api_key is None else api_key,
            speed=script.speed if speed is None else speed,
            keepalive=script.keepalive if keepalive is None else keepalive,
        )
        self.base_url = ""
        self.connections: dict[str, int] = self.app.connections
        self.statuses: list[tuple[str, int]] = self.app.statuses

    @property
    def api_key(self) -> str:
        return self.app.api_key

    def events_url(self, call_id: str) -> str:
        return f"{self.base_url}/events?callId={call_id}"

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
            self.base_url = await nursery.start(serve)  # e.g. "http://127.0.0.1:54321"
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
) -> int:
    """Serve until SIGINT/SIGTERM; print one "listening" line first. Returns 0, 2 for a bad script, 1 if it
    cannot listen. ``None`` for api_key or speed means the script's own value."""
    try:
        script = load_script(script_path or default_script_path())
    except ScriptError as error:
        print(error, file=sys.stderr, flush=True)
        return 2
    try:
        simulator = Simulator(script, api_key=api_key, speed=speed)
    except ValueError as error:
        print(f"simulator: {error}", file=sys.stderr, flush=True)
        return 2

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                base_url = await nursery.start(simulator.serve, host, port)
                print(f"simulator listening on {base_url} ({_describe_calls(script)})", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except* OSError as group:  # cannot bind: port in use, bad host
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):  # trio nests the group once per nursery
            error = error.exceptions[0]
        print(f"simulator: cannot listen on {host}:{port}: {error}", file=sys.stderr, flush=True)
        failed = True
    else:
        failed = False
    return 1 if failed else 0


def _describe_calls(script: Script, shown: int = 10) -> str:
    ids = [call.id for call in script.calls]
    listed = ", ".join(ids[:shown]) + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")
    return f"{len(ids)} call{'' if len(ids) == 1 else 's'}: {listed}" if ids else "0 calls"
