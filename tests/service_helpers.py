"""What the service-mode tests share (``from service_helpers import ...``): the secrets their runners read, the
service config, a runner in service mode with its server up, and a call long enough to push or post while it runs.

``test_service.py`` and ``test_connection_flood.py`` use them: here, no test module imports another, so each keeps
its own helpers to itself. A module apart from ``helpers.py`` because these belong to service mode only, and
``journal_helpers.py`` has a ``SECRET`` of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from hookrunner._run.runner import Runner
from hookrunner._simulator import running_simulator

from helpers import build_runner, call_events, make_config, script, server_url_of

#: The Atoms webhook secret (``HR_TEST_WEBHOOK_SECRET``) and the server's token (``HR_TEST_TOKEN``) that
#: ``service_config`` names: the tests set both variables to these, and sign and authorise with them.
SECRET = "whsec-atoms-test-secret"
TOKEN = "service-token-123"


def service_config(base_url: str, spool: Path | None = None, **server: Any) -> dict[str, Any]:
    """``make_config`` with the server on a free port (``server`` merged over it), its token from
    ``HR_TEST_TOKEN`` and the Atoms webhook secret from ``HR_TEST_WEBHOOK_SECRET``."""
    config = make_config(base_url, **({"spool_file": str(spool)} if spool else {}))
    config["server"] = {"enabled": True, "port": 0, "token_env": "HR_TEST_TOKEN", **server}
    config["discovery"] = {"webhook_secret_env": "HR_TEST_WEBHOOK_SECRET"}
    return config


@asynccontextmanager
async def running_service(
    calls: list[dict[str, Any]], *plugins: Any, spool: Path | None = None, **server: Any
) -> AsyncIterator[tuple[Runner, httpx.AsyncClient, Any]]:
    """A simulator with ``calls`` and a runner in service mode (no call listed) with its server on a free port."""
    async with running_simulator(script(calls)) as sim, trio.open_nursery() as nursery:
        runner = build_runner(service_config(sim.base_url, spool, **server), [], *plugins)
        done = trio.Event()

        async def run() -> None:
            runner.exit_code = await runner.run()
            done.set()

        nursery.start_soon(run)
        async with httpx.AsyncClient(base_url=await server_url_of(runner), timeout=5) as client:
            yield runner, client, sim
            runner.stop()
            with trio.fail_after(10):
                await done.wait()


def long_call(call_id: str, n: int = 6, spacing: float = 0.1) -> dict[str, Any]:
    """A call of ``n`` turns ``spacing`` s apart: still live while a test pushes, posts or scrapes."""
    return {"id": call_id, "events": call_events(n, spacing)}
