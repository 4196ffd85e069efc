"""One worker process of a service run with ``runner.workers`` > 1: a full runner whose calls come over its link.

The supervisor (``supervisor.py``) starts ``python -m hookrunner._service.worker`` once per worker. The worker
loads the same config file and runs a ``Runner`` of its own (plugins, outboxes, the journal), with what must be
one for the whole service left to the supervisor: no server, no listing, and the config's calls not its own. Its
journal is ``worker_journal(state.path, index)``, so a worker started again after it died resumes its calls from
it. Its link (``SupervisorLink``, an intake) takes the calls and Atoms webhooks the supervisor routes to it and
reports the calls it is done with. End-of-file on the link means the supervisor died: the worker exits at once, as
a lone runner killed with it would, and the next run resumes from the journals.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from hookrunner._core.config import Config, load_config
from hookrunner._core.errors import HookrunnerError
from hookrunner._core.logs import LEVELS, bind_log_fields, command_line, setup_logging
from hookrunner._core.platform_delivery import BadDelivery, parse_delivery
from hookrunner._core.text import json_bytes
from hookrunner._run.gc_tuning import tune_gc
from hookrunner._run.intake import RunnerView
from hookrunner._run.plugin_setup import prepare_plugins
from hookrunner._run.runner import Runner
from hookrunner._service.worker_link import Link, LinkClosed
from hookrunner._state.journal import worker_journal

__all__ = ["worker_config", "rest_rate_share", "SupervisorLink", "main"]


def worker_config(config: Config, index: int, count: int) -> Config:
    """What worker ``index`` of ``count`` runs with: ``config`` without what the supervisor owns (the server, the
    listing, the config's calls), its own journal, and its share of the Atoms REST rate (the supervisor's listing
    and every worker's backfill draw on one limit)."""
    state = config.state
    return dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, enabled=False),
        discovery=dataclasses.replace(config.discovery, poll=False),
        runner=dataclasses.replace(config.runner, calls=(), workers=1),
        state=state if state.path is None else dataclasses.replace(state, path=worker_journal(state.path, index)),
        atoms=dataclasses.replace(config.atoms, max_requests_per_second=rest_rate_share(config, count)),
    )


def rest_rate_share(config: Config, count: int) -> float:
    """Each process's share of ``atoms.max_requests_per_second`` in a run of ``count`` workers: the supervisor's
    listing and every worker's backfill draw on the one limit Atoms sets for the key."""
    return config.atoms.max_requests_per_second / (count + 1)


#: A worker's exit status when its supervisor vanished.
EXIT_SUPERVISOR_GONE = 3


class SupervisorLink:
    """The worker's intake: follows the calls the supervisor sends, queues the Atoms webhooks it forwards, answers
    its requests for the metrics page, and reports each call this worker is done with (``call_over``)."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self._link = Link(sock)
        self._index = index
        self._runner: RunnerView | None = None

    def call_over(self, call_id: str, final: bool) -> None:
        self._link.post({"t": "over", "call": call_id, "final": final})

    async def start(self, runner: RunnerView, nursery: trio.Nursery) -> None:
        self._runner = runner
        nursery.start_soon(self._link.run)
        # the calls it resumed from its journal: the supervisor routes them here from now on
        self._link.post({"t": "ready", "pid": os.getpid(), "calls": runner.calls.followed()})
        nursery.start_soon(self._serve, runner)

    async def _serve(self, runner: RunnerView) -> None:
        why = "the supervisor is gone"
        try:
            while (message := await self._link.receive()) is not None:
                await self._handle(runner, message)
        except LinkClosed as exc:
            why = f"the link to the supervisor broke ({exc})"
        # The supervisor died (a kill -9, the OOM killer): the service dies with it, as one process would, and the
        # next run resumes from every journal. A worker draining on beside the next run's would follow its calls
        # twice from the same journal.
        command_line(f"worker {self._index}: {why}: exiting at once (the next run resumes from its journal)")
        logging.shutdown()
        os._exit(EXIT_SUPERVISOR_GONE)

    async def _handle(self, runner: RunnerView, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "follow":
            runner.follow(message["call"], message.get("source", "supervisor"))
        elif kind == "platform":
            # answered once kept (journal written), so the supervisor answers Atoms' POST only then
            try:
                delivery = parse_delivery(json_bytes(message["body"]))
            except BadDelivery:
                kept = False
            else:
                kept = await runner.take_platform_webhook(delivery)
            self._link.post({"t": "taken", "n": message["n"], "kept": kept})
        elif kind == "metrics":
            page = await runner.metrics_page()
            self._link.post({"t": "page", "n": message["n"], "text": page.decode("utf-8")})


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hookrunner-worker", description="one worker of `hookrunner run` (internal)")
    parser.add_argument("config")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--pacing-dir", type=Path, required=True)
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    setup_logging(args.log_level, args.log_format)
    sock = socket.socket(fileno=args.link_fd)
    try:
        config = worker_config(load_config(Path(args.config)), args.index, args.count)
        loaded = prepare_plugins(config)
        api_key = config.api_key()
    except HookrunnerError as exc:  # the supervisor checked the same config: the file changed in between
        for line in str(exc).splitlines():
            command_line(f"worker {args.index}: {line}")
        return exc.exit_code
    link = SupervisorLink(sock, args.index)
    runner = Runner(
        config,
        loaded,
        api_key=api_key,
        intakes=[link],
        service=True,
        call_over=link.call_over,
        pacing_dir=args.pacing_dir,
        reread=lambda path: worker_config(load_config(path), args.index, args.count),
    )

    async def run() -> int:
        bind_log_fields(worker=args.index)  # every line of this process names its worker
        return await runner.run()

    tune_gc()
    return trio.run(run)


if __name__ == "__main__":
    sys.exit(main())
