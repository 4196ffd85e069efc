"""A service on every core (``runner.workers`` > 1): one supervisor process, and worker processes that follow calls.

One Python process uses one core, and past a few hundred busy calls that core is the limit (issue 16: splitting
1,000 calls over two processes by hand brought p99 from 370 ms to 95 ms). So the supervisor keeps what must be one
for the whole service (the listing, the server, the signals, the call book with ``runner.max_calls``) and starts
``count`` workers (``worker.py``), each a full runner with its plugins and its own journal. What is global and how:

- **A call belongs to one worker**, chosen by a stable hash of its id (a worker that resumed a call from its
  journal keeps it), so one process dispatches its events, in order; keyword cooldowns are per call, so per worker.
- **The call book** is the supervisor's: a call is followed once, ``max_calls`` counts all workers' calls, and
  calls over it wait here until a worker reports one over.
- **Atoms webhooks** are checked by the supervisor's server and handed to a worker (the call's), which queues
  them for its plugins and writes them to its journal; the server answers Atoms only then.
- **/metrics** sums the workers' pages (counters, histograms and the plugins' own metrics alike; ``process_*``
  get a ``worker`` label); **/healthz** is the supervisor's, with each worker's pid and restarts.
- **Signals**: SIGHUP reaches every worker (each re-reads its plugins' settings); SIGTERM/SIGINT stop every
  worker, each draining within ``runner.shutdown_grace``, and the supervisor exits once all have; again: at once.
- **A worker that dies** (killed, out of memory) is started again after ``runner.worker_restart_delay`` (doubling
  while it keeps dying) and resumes its calls from its journal; calls routed to it meanwhile wait for it.

Workers run in their own session, so a Ctrl-C at a terminal reaches the supervisor alone, which passes it on
once. A worker dies with its supervisor: at end-of-file on its link it exits at once, so a kill -9 of the service
is one of all its processes and the next run resumes from every journal.
"""

from __future__ import annotations

import logging
import signal
import socket
import sqlite3
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from hookrunner._core.api import __version__
from hookrunner._core.callids import call_id_problem
from hookrunner._core.config import Config
from hookrunner._core.errors import AuthError, ConfigError, HookrunnerError
from hookrunner._core.limits import raise_open_file_limit
from hookrunner._core.logs import redact_in_logs
from hookrunner._core.platform_delivery import PlatformDelivery
from hookrunner._core.stats import Stats
from hookrunner._run.callbook import CallBook, Offer
from hookrunner._run.intake import Intake
from hookrunner._run.metrics import RunnerMetrics
from hookrunner._run.runner import EXIT_OK, EXIT_USAGE, call_id_refused, waiting_for_a_slot
from hookrunner._service.metrics_sum import CounterFloors, summed_page
from hookrunner._service.worker import rest_rate_share
from hookrunner._service.worker_link import Link, LinkClosed
from hookrunner._state.journal import JournalReader, journal_files, worker_journal
from hookrunner._stream.ratelimit import RateLimiter

__all__ = ["Supervisor", "worker_for"]

log = logging.getLogger("hookrunner.supervisor")

#: A worker that ran this long before dying starts again after the first delay, not a doubled one.
STEADY_AFTER = 60.0
MAX_RESTART_DELAY = 30.0
#: How long /metrics waits for a worker's page (a worker that busy is left out of that scrape).
PAGE_TIMEOUT = 5.0
#: Families the supervisor's call book answers for: the workers' own would count each call twice.
SUPERVISOR_FAMILIES = frozenset({"hookrunner_calls_active", "hookrunner_calls_waiting"})


def worker_for(call_id: str, count: int) -> int:
    """The worker a new call goes to: the same for an id in every run with as many workers (CRC-32, not
    Python's ``hash``, which changes per process)."""
    return zlib.crc32(call_id.encode("utf-8", "surrogatepass")) % count


class _Worker:
    """One worker slot: its process while it runs, its link, the calls routed to it and not over."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: trio.Process | None = None
        self.link: Link | None = None
        self.ready = trio.Event()
        self.calls: dict[str, str] = {}  # call id -> where it was found, while the worker has it
        self.restarts = 0
        self.waiting_answers: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def post(self, message: dict[str, Any]) -> bool:
        if self.link is None or not self.ready.is_set():
            return False
        self.link.post(message)
        return True

    def gone(self) -> None:
        """The process exited: what waited on an answer gets none, a new start gets a new link."""
        self.ready = trio.Event()
        self.process = None
        if self.link is not None:
            self.link.close()
        self.link = None
        for channel in self.waiting_answers.values():
            channel.close()
        self.waiting_answers.clear()


class Supervisor:
    """Runs ``count`` workers for ``config`` and the intakes in front of them; ``await run()`` is the exit code.

    It is the ``RunnerView`` its intakes see (the listing poller, the server), as a lone runner is.
    """

    def __init__(
        self,
        config: Config,
        *,
        api_key: str,
        count: int,
        calls: Sequence[str] = (),
        intakes: Sequence[Intake] = (),
        log_level: str = "info",
        log_format: str = "text",
    ) -> None:
        assert config.path is not None, "workers read the config file"
        self.config = config
        self.stats = Stats()
        self.calls = CallBook(config.runner.max_calls)
        self.metrics = RunnerMetrics(self.stats, self.calls)
        self.state = "starting"
        self.server_url: str | None = None
        self._api_key = api_key
        redact_in_logs(api_key)
        self._count = count
        self._call_ids = list(dict.fromkeys(calls))
        self._intakes = list(intakes)
        self._log_options = ["--log-level", log_level, "--log-format", log_format]
        self._workers = [_Worker(index) for index in range(count)]
        self._owner: dict[str, _Worker] = {}
        self._stopping = False
        self._stop_scopes: set[trio.CancelScope] = set()
        self._fatal_error: HookrunnerError | None = None
        self._client: httpx.AsyncClient | None = None
        self._rest_limiter = RateLimiter(rest_rate_share(config, count))
        self._requests = 0
        self._floors = CounterFloors()  # /metrics counters carry on past a worker's restart
        self._pacing_dir: Path | None = None  # made by run()

    # --- the whole run ----------------------------------------------------------------------------------------

    async def run(self) -> int:
        raise_open_file_limit()  # the server's connections; the workers raise their own
        self._warn_of_orphaned_journals()
        with tempfile.TemporaryDirectory(prefix="hookrunner-pacing-") as pacing_dir:  # the workers' shared turns
            self._pacing_dir = Path(pacing_dir)
            return await self._supervise()

    async def _supervise(self) -> int:
        headers = {"User-Agent": f"hookrunner/{__version__}"}
        async with httpx.AsyncClient(headers=headers, follow_redirects=False) as client, trio.open_nursery() as top:
            self._client = client
            top.start_soon(self._watch_signals)
            async with trio.open_nursery() as service:  # the intakes: they answer until every worker is done
                async with trio.open_nursery() as workers:
                    for worker in self._workers:
                        workers.start_soon(self._keep_running, worker)
                    for worker in self._workers:
                        with self.until_stop():
                            await worker.ready.wait()
                    if not self._stopping:
                        log.info("supervisor: %d workers ready (pids %s)", self._count, ", ".join(str(w.pid) for w in self._workers))
                        for call_id in self._call_ids:
                            self.follow(call_id, "config")
                        for intake in self._intakes:
                            await intake.start(self, service)
                    if not self._stopping:
                        self.state = "serving"
                self.state = "stopped"
                service.cancel_scope.cancel()
            top.cancel_scope.cancel()
        restarts = sum(worker.restarts for worker in self._workers)
        log.info("supervisor: %d workers stopped (%d restarts in this run)", self._count, restarts)
        if self._fatal_error is not None:
            log.error("%s", self._fatal_error)
            return EXIT_USAGE
        return EXIT_OK

    def _warn_of_orphaned_journals(self) -> None:
        path = self.config.state.path
        if path is None:
            return
        expected = {worker_journal(path, index) for index in range(self._count)}
        for orphan in (file for file in journal_files(path) if file not in expected):
            log.warning(
                "%s: a journal left by a run with more workers: its calls are not resumed by this run of %d "
                "(hookrunner replay still reads its delivered messages; run once with more runner.workers to finish them)",
                orphan,
                self._count,
            )

    async def _keep_running(self, worker: _Worker) -> None:
        """Start the worker, and again each time it dies, until the supervisor stops."""
        delay = self.config.runner.worker_restart_delay
        while not self._stopping:
            started = trio.current_time()
            code = await self._run_worker(worker)
            if self._stopping:
                return
            if code == EXIT_USAGE:  # its config, plugins or the API key were refused: again would change nothing
                self.cannot_go_on(
                    ConfigError(f"worker {worker.index} exited with {code} (its error is above): the service stops")
                )
                return
            if trio.current_time() - started > STEADY_AFTER:
                delay = self.config.runner.worker_restart_delay
            died = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            log.error(
                "worker %d %s while following %d calls; starting it again in %g s (it resumes them from its journal)",
                worker.index,
                died,
                len(worker.calls),
                delay,
                extra={"worker": worker.index},
            )
            worker.restarts += 1
            with self.until_stop():
                await trio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _run_worker(self, worker: _Worker) -> int:
        mine, theirs = socket.socketpair()
        command = [
            sys.executable, "-m", "hookrunner._service.worker", str(self.config.path),
            "--index", str(worker.index), "--count", str(self._count), "--link-fd", str(theirs.fileno()),
            "--pacing-dir", str(self._pacing_dir),
            *self._log_options,
        ]  # fmt: skip
        try:
            process = await trio.lowlevel.open_process(command, pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            theirs.close()
        worker.process, worker.link = process, Link(mine)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker.link.run)
                nursery.start_soon(self._read_reports, worker, worker.link)
                code = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:  # the supervisor itself is being torn down
                process.kill()
            worker.gone()
        return code

    async def _read_reports(self, worker: _Worker, link: Link) -> None:
        try:
            while (message := await link.receive()) is not None:
                self._report(worker, message)
        except LinkClosed as exc:
            log.error("worker %d: its link broke (%s)", worker.index, exc, extra={"worker": worker.index})

    def _report(self, worker: _Worker, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "ready":
            self._ready(worker, message)
        elif kind == "over":
            self._over(worker, message["call"], bool(message.get("final", True)))
        elif kind in ("taken", "page"):
            channel = worker.waiting_answers.pop(message["n"], None)
            if channel is not None:
                channel.send_nowait(message)
                channel.close()

    def _ready(self, worker: _Worker, message: dict[str, Any]) -> None:
        resumed = [call_id for call_id in message.get("calls", []) if isinstance(call_id, str)]
        for call_id in resumed:  # from its journal: those stay with it (its journal has their events)
            if call_id not in worker.calls:
                self.calls.offer(call_id, trio.current_time())
                worker.calls[call_id] = "journal"
                self._owner[call_id] = worker
        worker.ready.set()
        # routed to it while it was down (or lost with a process that died before its journal had them)
        for call_id, source in list(worker.calls.items()):
            if call_id not in resumed:
                worker.post({"t": "follow", "call": call_id, "source": source})

    def _over(self, worker: _Worker, call_id: str, final: bool) -> None:
        worker.calls.pop(call_id, None)
        if self._owner.get(call_id) is worker:
            del self._owner[call_id]
        next_id = self.calls.finish(call_id, final=final, now=trio.current_time(), promote=not self._stopping)
        if next_id is not None:
            log.info("%s: a slot is free: following it", next_id, extra={"call_id": next_id})
            self._route(next_id, "waiting")

    # --- signals and stopping ---------------------------------------------------------------------------------

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: every worker re-reads its plugins' settings")
                    self._signal_workers(signal.SIGHUP)
                elif not self._stopping:
                    log.warning(
                        "%s: stopping %d workers; each drains received events for up to %g s (again to stop at once)",
                        signal.Signals(signum).name,
                        self._count,
                        self.config.runner.shutdown_grace,
                    )
                    self.stop()
                else:
                    log.warning("%s again: stopping every worker at once", signal.Signals(signum).name)
                    self._signal_workers(signal.SIGTERM)  # a worker's second signal cuts its grace short

    def _signal_workers(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                try:
                    worker.process.send_signal(signum)
                except ProcessLookupError:  # exited this instant: its watcher sees it
                    pass

    def stop(self) -> None:
        """Stop taking calls, and stop every worker (each drains within its grace); the run ends when all have."""
        if self._stopping:
            return
        self._stopping = True
        self.state = "draining"
        for scope in self._stop_scopes:
            scope.cancel()
        for call_id in self.calls.drop_waiting():
            self.stats.calls_never_followed += 1
            log.warning("%s: never followed: the runner stopped while it waited for a free slot", call_id)
        self._signal_workers(signal.SIGTERM)

    @contextmanager
    def until_stop(self) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope()
        if self._stopping:
            scope.cancel()
        self._stop_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._stop_scopes.discard(scope)

    def key_refused(self, exc: AuthError) -> None:
        self.cannot_go_on(exc)

    def cannot_go_on(self, exc: HookrunnerError) -> None:
        if self._fatal_error is None:
            self._fatal_error = exc
        self.stop()

    # --- calls ------------------------------------------------------------------------------------------------

    def follow(self, call_id: str, source: str) -> Offer | None:
        """Follow ``call_id`` on its worker unless it is followed, over, or waiting already (see ``Runner.follow``)."""
        if self._stopping:
            return None
        problem = call_id_problem(call_id)
        if problem is not None:
            self.refuse_call_id(source, problem)
            return Offer.REFUSED
        offer = self.calls.offer(call_id, trio.current_time())
        if offer is Offer.NEW:
            self._route(call_id, source)  # (its worker logs that it follows it)
        elif offer is Offer.QUEUED:
            waiting_for_a_slot(call_id, self.calls, self.stats)
        return offer

    def _route(self, call_id: str, source: str) -> None:
        worker = self._owner.get(call_id) or self._workers[worker_for(call_id, self._count)]
        self._owner[call_id] = worker
        worker.calls[call_id] = source
        worker.post({"t": "follow", "call": call_id, "source": source})  # (down: sent when it is ready again)

    def refuse_call_id(self, source: str, problem: str) -> None:
        call_id_refused(source, problem, self.stats)

    # --- Atoms webhooks ---------------------------------------------------------------------------------------

    async def take_platform_webhook(self, delivery: PlatformDelivery) -> bool:
        """Hand the delivery to its call's worker (any call's: the first) and wait until that worker kept it."""
        if self._stopping:
            return False
        key = delivery.call_id or delivery.id
        worker = self._owner.get(key) or self._workers[worker_for(key, self._count)]
        answer = await self._ask(worker, {"t": "platform", "body": delivery.body}, timeout=30.0)
        if answer is None or not answer.get("kept"):
            self.stats.platform_webhooks["not_dispatched"] += 1
            log.warning("atoms webhook: delivery %s not kept: worker %d is down or stopping (503)", delivery.id, worker.index)
            return False
        return True

    def accepted_deliveries(self, limit: int) -> list[str]:
        """The ids every worker's journal accepted, read once as the server starts (a worker may be writing its
        journal meanwhile: SQLite's WAL lets a reader see its last commit)."""
        path = self.config.state.path
        if path is None:
            return []
        ids: list[str] = []
        for file in journal_files(path):
            try:
                with JournalReader.open_read_only(file) as journal:
                    ids += journal.accepted_deliveries(limit)
            except sqlite3.Error as exc:
                log.warning("%s: cannot read the delivery ids it accepted (%s)", file, exc)
        return ids[-limit:]

    async def _ask(self, worker: _Worker, message: dict[str, Any], *, timeout: float) -> dict[str, Any] | None:
        """Send a request to ``worker`` (waiting for it to be up) and wait for its answer; None if none came."""
        with trio.move_on_after(timeout):
            await worker.ready.wait()
            self._requests += 1
            number = self._requests
            send, receive = trio.open_memory_channel[dict[str, Any]](1)
            worker.waiting_answers[number] = send
            try:
                if not worker.post({**message, "n": number}):
                    return None
                return await receive.receive()
            except trio.EndOfChannel:  # the worker died before answering
                return None
            finally:
                worker.waiting_answers.pop(number, None)
        return None

    # --- what intakes see -------------------------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def atoms_client(self) -> httpx.AsyncClient:
        assert self._client is not None, "available once the supervisor runs"
        return self._client

    @property
    def rest_limiter(self) -> RateLimiter:
        return self._rest_limiter

    async def metrics_page(self) -> bytes:
        """The sum of every worker's page and the supervisor's own (its call book, listings, webhooks)."""
        pages: list[tuple[str, bytes]] = [("supervisor", self.metrics.render())]

        async def fetch(worker: _Worker) -> None:
            if not worker.ready.is_set():
                return
            answer = await self._ask(worker, {"t": "metrics"}, timeout=PAGE_TIMEOUT)
            if answer is not None:
                pages.append((str(worker.index), answer["text"].encode("utf-8")))

        async with trio.open_nursery() as nursery:
            for worker in self._workers:
                nursery.start_soon(fetch, worker)
        return summed_page(pages, owned_by_first=SUPERVISOR_FAMILIES, floors=self._floors)

    def health(self) -> dict[str, Any]:
        """What /healthz adds for a supervised service: each worker's pid, whether it is up, its restarts."""
        return {
            "workers": [
                {"index": worker.index, "pid": worker.pid, "up": worker.ready.is_set(), "restarts": worker.restarts,
                 "calls": len(worker.calls)}  # fmt: skip
                for worker in self._workers
            ]
        }
