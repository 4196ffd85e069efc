"""The runner: one nursery that owns every call's task, the trigger and Atoms-webhook queues, plugins' background
tasks and outboxes, and the order in which all of them start and stop.

Calls reach it through ``follow`` (the config's list, the journal's, the intakes'); the call book decides which
run now and which wait for a slot; each call runs in the per-call pipeline (``call_pipeline.py``); a stop is
deadlines on cancel scopes (``stopping.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import trio

from hookrunner._core.api import __version__
from hookrunner._core.bounded_http import use_socket_pool
from hookrunner._core.callids import call_id_problem
from hookrunner._core.config import Config, load_config
from hookrunner._core.errors import AuthError, HookrunnerError
from hookrunner._core.failures import is_cancellation
from hookrunner._core.http1 import SocketPool, trusted_tls
from hookrunner._core.limits import raise_open_file_limit
from hookrunner._core.logs import bind_log_fields, logged_at, redact_in_logs
from hookrunner._core.platform_delivery import BadDelivery, PlatformDelivery, parse_delivery
from hookrunner._core.stats import Stats
from hookrunner._core.text import one_line, shown
from hookrunner._core.triggers import Trigger
from hookrunner._delivery.pacing import Pacing
from hookrunner._run.asyncio_hooks import asyncio_hint, asyncio_loop, refuse_asyncio_callers
from hookrunner._run.call_pipeline import CallPipeline, call_failed
from hookrunner._run.callbook import CallBook, Offer
from hookrunner._run.context import App
from hookrunner._run.dispatch import HookDispatcher
from hookrunner._run.hook_queue import HookQueue
from hookrunner._run.intake import Intake
from hookrunner._run.metrics import RunnerMetrics
from hookrunner._run.outboxes import RunOutboxes
from hookrunner._run.plugin_setup import checked_settings, plugin_apps
from hookrunner._run.plugins import LoadedPlugins
from hookrunner._run.stopping import DRAIN, FINAL, SUBSCRIPTION, Stopping, watch_signals
from hookrunner._state.journal import Journal
from hookrunner._state.spool import spool_platform_webhooks
from hookrunner._stream.backfill import Backfiller
from hookrunner._stream.event_stream import stream_opener
from hookrunner._stream.ratelimit import RateLimiter
from hookrunner._stream.subscription import AUTH_FAILED, COMPLETED, ENDED, FAILED, NOT_FOUND, SHUTDOWN

log = logging.getLogger("hookrunner.runner")

OK_REASONS = frozenset({ENDED, COMPLETED, SHUTDOWN})
#: Ends after which the journal forgets a call: it is over, or cannot be followed (a refused key, a stream that
#: gave up may leave a call still live: the next run follows it again).
FORGOTTEN_REASONS = frozenset({ENDED, COMPLETED, NOT_FOUND, FAILED})
#: Ends after which a call is never followed again; after the others (not found, given up) a later listing or
#: push may bring it back (CallBook's retry_after), since the call may still be live.
FINAL_REASONS = frozenset({ENDED, COMPLETED, SHUTDOWN, AUTH_FAILED, FAILED})  # (failed: again would replay it)
EXIT_OK, EXIT_SOME_CALLS_FAILED, EXIT_USAGE = 0, 1, 2


class Runner:
    """Follows calls to their end; ``await runner.run()`` returns the process exit code.

    Calls come from the config (``calls``) and, in service mode (``discovery.poll`` or ``server.enabled``), from
    listings, pushes and ``POST /calls``, all through ``follow``; a service runs until it is stopped, a runner with
    only listed calls until they are over.

    A stop (``stop()``, SIGINT/SIGTERM, or a refused API key) ends every subscription at once, then gives the first
    half of ``runner.shutdown_grace`` to dispatching what was already received (and ``on_call_finished``), and
    the rest to ``on_shutdown``. A second signal cuts everything short.
    """

    def __init__(
        self,
        config: Config,
        plugins: LoadedPlugins,
        *,
        api_key: str,
        calls: Sequence[str] = (),
        intakes: Sequence[Intake] = (),
        service: bool | None = None,
        call_over: Callable[[str, bool], None] | None = None,
        pacing_dir: Path | None = None,
        reread: Callable[[Path], Config] = load_config,
    ) -> None:
        self.config = config
        #: Runs until stopped (config.service, or a worker of a supervisor: its calls come over its link).
        self.service = config.service if service is None else service
        #: Told of every call this runner is done with, and whether for good (a worker tells its supervisor).
        self._call_over = call_over
        #: Plugins' turns at outside rate limits (``app.pacing``): in ``pacing_dir`` when workers share them.
        self.pacing = Pacing(pacing_dir)
        #: How SIGHUP re-reads the file (a worker: as its supervisor's config becomes its own).
        self._reread = reread
        self.plugins = plugins
        self.stats = Stats()
        self.dispatcher = HookDispatcher(
            plugins.pm, config.runner.hook_timeout, self.stats, asyncio_plugins=plugins.asyncio_names
        )
        self._api_key = api_key
        self._call_ids = list(dict.fromkeys(calls))
        self.calls = CallBook(config.runner.max_calls)
        self.metrics = RunnerMetrics(self.stats, self.calls)
        if config.server.enabled:  # only a scraped histogram is worth its cost per hook call
            self.dispatcher.observe = self.metrics.observe_hook
        #: "starting", "serving" (following calls), "draining" (a stop began), "stopped": what /healthz reports.
        self.state = "starting"
        self._calls_nursery: trio.Nursery | None = None
        self._stream_client: httpx.AsyncClient | None = None
        self._auth_error: AuthError | None = None
        self._fatal_error: HookrunnerError | None = None  # the runner cannot go on (the server cannot listen)
        redact_in_logs(api_key)
        #: What finds calls besides the config's list (the listing poller, the server): built by the service.
        self._intakes = list(intakes)
        #: The server's base URL once it listens (``[server]``), e.g. ``http://127.0.0.1:8787``.
        self.server_url: str | None = None
        # Every scope a stop must reach: subscriptions are cancelled, the rest get deadlines.
        self._stop = Stopping(config.runner.shutdown_grace)
        self._triggers = HookQueue[Trigger]()  # emitted by plugins, for on_trigger
        self._platform_webhooks = HookQueue[PlatformDelivery]()  # accepted by the server, for on_platform_webhook
        self._background: trio.Nursery | None = None
        self._shutdown_deadline: float | None = None
        self._apps: dict[str, App] = {}
        self._journal: Journal | None = None  # opened by run(): [state] path
        self._resumed_calls: dict[str, None] = {}  # what the journal said was followed when this run began, in order
        #: Every Atoms REST request (listings, backfill) waits here: one limit, atoms.max_requests_per_second.
        self._rest_limiter: RateLimiter | None = None
        self._pipeline: CallPipeline | None = None  # built once the run has its Atoms client

    # --- the whole run ----------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start plugins, follow every call until it is over (or a stop), stop plugins; return the exit code."""
        raise_open_file_limit()  # every call's stream and every server connection holds a file descriptor
        state = self.config.state
        if state.path is not None:
            self._journal = Journal(
                state.path,
                state.commit_interval,
                keep=state.keep,
                max_kept=state.max_kept,
                source=f"{self.config.source}: state.path",
            )
            self._resumed_calls = dict.fromkeys(self._journal.followed_calls())
            self._triggers.keep_in_journal(self._journal.trigger_emitted, self._journal.trigger_dispatched)
            self._platform_webhooks.keep_in_journal(self._journal.platform_received, self._journal.platform_dispatched)
        try:
            # (only when a plugin sets HOOKRUNNER_ASYNCIO: its hooks, from on_startup to on_shutdown, run on this loop)
            async with asyncio_loop(bool(self.dispatcher.asyncio_plugins)):
                async with trio.open_nursery() as watcher:  # signals are watched from on_startup to on_shutdown
                    watcher.start_soon(watch_signals, self.stop, self._stop, self.reload)
                    await self._run_plugins_and_calls()
                    watcher.cancel_scope.cancel()
        finally:
            self.pacing.close()
            if self._journal is not None:
                self._journal.close()  # what the last interval gathered (deliveries, dead letters at close)
        self.state = "stopped"
        log.info("finished: %s", self.stats.summary())
        if self._auth_error is not None or self._fatal_error is not None:
            log.error("%s", self._auth_error or self._fatal_error)
            return EXIT_USAGE
        if self.service:
            return EXIT_OK  # a service ends by a signal; calls that failed are in the log and the metrics
        if any(reason not in OK_REASONS for reason in self.stats.calls_finished.elements()):
            return EXIT_SOME_CALLS_FAILED
        return EXIT_OK

    async def _run_plugins_and_calls(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)  # one stream per call, no queue
        # Plugins' deliveries: keep as many connections alive as may be busy, so bursts do not reconnect each time.
        plugin_limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        headers = {"User-Agent": f"hookrunner/{__version__}"}
        # app.http is a trio client: with an asyncio loop open, a call from asyncio code is refused before it can
        # break the pool every plugin shares
        plugin_hooks = {"request": [refuse_asyncio_callers]} if self.dispatcher.asyncio_plugins else {}
        tls = trusted_tls()  # (one CA bundle loaded for every client of the run)
        async with (
            httpx.AsyncClient(limits=limits, headers=headers, follow_redirects=False, verify=tls) as stream_client,
            httpx.AsyncClient(
                limits=plugin_limits, headers=headers, timeout=httpx.Timeout(30.0), event_hooks=plugin_hooks, verify=tls
            ) as plugin_http,
            # hookrunner.delivery.request(app.http, ...), the bundled notifiers' one request per message, on kept-alive
            # sockets at a sixth or less of httpx's CPU (_core/http1.py); the same limits
            SocketPool(max_connections=200, max_idle=100) as plugin_sockets,
            trio.open_nursery() as background,
        ):
            use_socket_pool(plugin_http, plugin_sockets)
            self._background = background
            self._rest_limiter = RateLimiter(self.config.atoms.max_requests_per_second)
            backfiller = None
            if self.config.backfill.enabled:
                backfiller = Backfiller(
                    self.config.backfill,
                    client=stream_client,
                    base_url=self.config.atoms.base_url,
                    api_key=self._api_key,
                    limiter=self._rest_limiter,
                    stats=self.stats,
                )
            self._pipeline = CallPipeline(
                self.config,
                streams=stream_opener(self.config.atoms.base_url, stream_client, headers["User-Agent"]),
                api_key=self._api_key,
                stats=self.stats,
                dispatcher=self.dispatcher,
                stopping=self._stop,
                key_refused=self.key_refused,
                key_was_refused=lambda: self._auth_error is not None,
                journal=self._journal,
                resumed_calls=self._resumed_calls,
                backfiller=backfiller,
            )
            if self._journal is not None:
                background.start_soon(self._journal.run)
            outboxes = RunOutboxes(
                start_soon=self._start_background, config_path=self.config.path, metrics=self.metrics, journal=self._journal
            )
            self._apps = plugin_apps(
                self.config,
                self.plugins,
                plugin_http,
                self.plugins.active_names,
                start_soon=self._start_background,
                emit_trigger=self._emit_trigger,
                shutdown_time_left=self.shutdown_time_left,
                metrics=self.metrics,
                outboxes=outboxes,
                pacing=self.pacing,
                select_events=self.dispatcher.select_events,
            )
            await self.dispatcher.call("on_startup", lambda name: {"app": self._apps[name]})
            self._restore_platform_webhooks()
            self._restore_triggers()
            async with trio.open_nursery() as core:
                core.start_soon(self._dispatch_triggers)
                core.start_soon(self._dispatch_platform_webhooks)
                async with trio.open_nursery() as calls:
                    self._calls_nursery, self._stream_client = calls, stream_client
                    for call_id in self._call_ids:
                        self.follow(call_id, "config")
                    for call_id in self._resumed_calls:
                        self.follow(call_id, "journal")  # followed when the last run stopped: still live?
                    for intake in self._intakes:
                        await intake.start(self, background)
                    if not self._stop.begun:  # every intake is up (the server listens): ready for what they bring
                        self.state = "serving"
                    if self.service:
                        calls.start_soon(self._until_stopped)  # a service takes calls until it is stopped
                self._calls_nursery = None
                for call_id in self.calls.drop_waiting():
                    self.stats.calls_never_followed += 1
                    log.warning("%s: never followed: the runner stopped while it waited for a free slot", call_id)
                self._triggers.close()  # no call can emit any more: the trigger queue drains and ends
                self._platform_webhooks.close()  # deliveries from now on are refused (503): plugins are shutting down
            with self._stop.stoppable(FINAL):
                # on_shutdown flushes what plugins hold (outboxes): it gets shutdown_grace, or what a stop left of it
                self._shutdown_deadline = trio.current_time() + self.config.runner.shutdown_grace
                if self._stop.begun:
                    self._shutdown_deadline = min(self._shutdown_deadline, self._stop.deadline(FINAL))
                async with trio.open_nursery() as closing:  # the outboxes need not wait for any plugin's on_shutdown
                    closing.start_soon(outboxes.close_all, self.shutdown_time_left())
                    await self.dispatcher.call(
                        "on_shutdown", lambda name: {"app": self._apps[name]}, timeout=self.shutdown_time_left()
                    )
            background.cancel_scope.cancel()

    @property
    def journal(self) -> Journal | None:
        """The journal (``[state] path``) while the runner runs; None when it is off."""
        return self._journal

    def shutdown_time_left(self) -> float:
        """Seconds ``on_shutdown`` may still take (``shutdown_grace`` until it starts)."""
        if self._shutdown_deadline is None:
            return self.config.runner.shutdown_grace
        return max(0.0, self._shutdown_deadline - trio.current_time())

    async def reload(self) -> bool:
        """Re-read the config file's plugin settings (SIGHUP): all valid, or none applied. True when applied."""
        path = self.config.path
        if path is None:
            log.warning("reload: this run has no config file to re-read")
            return False
        try:
            config = self._reread(path)
            settings = checked_settings(config, self.plugins)
        except HookrunnerError as exc:
            # each problem names the file already ("PATH: key: ..."): said once, in front
            problems = [line.removeprefix(f"{path}: ") for line in str(exc).splitlines()]
            log.error("%s: reload refused, the running settings stay: %s", path, "; ".join(problems))
            return False
        ignored = self.config.needs_restart_for(config)
        if ignored:
            log.warning("%s: reload applies [plugins.NAME] tables only; restart to apply: %s", path, ", ".join(ignored))
        for name, app in self._apps.items():
            app.settings = settings.get(name, {})
        self.config = self.config.with_plugin_settings(config.plugins.settings)
        await self.dispatcher.call("on_reload", lambda name: {"app": self._apps[name]})
        log.info("%s: plugin settings reloaded", path)
        return True

    def stop(self) -> None:
        """Begin a graceful stop: no new events are read; what was received is dispatched within the grace."""
        if self._stop.stop():
            self.state = "draining"

    # --- which calls ------------------------------------------------------------------------------------------

    def follow(self, call_id: str, source: str) -> Offer | None:
        """Follow ``call_id`` unless it is followed, over, or waiting already; ``source`` says who found it
        (config, listing, push, api). Returns what was decided, or None when the runner no longer takes calls."""
        if self._calls_nursery is None or (self._stop.begun and source != "config"):
            return None  # (listed calls still start during a stop, to end as "shutdown" as they always have)
        problem = call_id_problem(call_id)
        if problem is not None:  # every intake checks first; this is the guard behind them
            self.refuse_call_id(source, problem)
            return Offer.REFUSED
        offer = self.calls.offer(call_id, trio.current_time())
        if offer in (Offer.NEW, Offer.QUEUED):
            self.stats.calls_discovered[source] += 1
            if self._journal is not None and source != "journal":
                self._journal.call_followed(call_id, source)
        if offer is Offer.NEW:
            if source != "config":
                log.info("%s: following (found by %s)", call_id, source)
            self._calls_nursery.start_soon(self._follow_call, call_id, source)
        elif offer is Offer.QUEUED:
            waiting_for_a_slot(call_id, self.calls, self.stats)
        return offer

    def refuse_call_id(self, source: str, problem: str) -> None:
        call_id_refused(source, problem, self.stats)

    async def _until_stopped(self) -> None:
        with self._stop.stoppable(SUBSCRIPTION):
            await trio.sleep_forever()

    # --- what intakes see (hookrunner._run.intake.RunnerView) -----------------------------------------------

    @property
    def api_key(self) -> str:
        return self._api_key

    @property
    def atoms_client(self) -> httpx.AsyncClient:
        """The client of every Atoms request (streams, listings, backfill), while calls are taken."""
        assert self._stream_client is not None, "available once the runner takes calls"
        return self._stream_client

    @property
    def rest_limiter(self) -> RateLimiter:
        """The one limit of Atoms REST requests (``atoms.max_requests_per_second``)."""
        assert self._rest_limiter is not None, "available once the runner runs"
        return self._rest_limiter

    def until_stop(self) -> AbstractContextManager[trio.CancelScope]:
        return self._stop.stoppable(SUBSCRIPTION)

    def health(self) -> dict[str, Any]:
        return {}

    async def metrics_page(self) -> bytes:
        """``GET /metrics``: this runner's registry, in Prometheus' text format."""
        return self.metrics.render()

    def cannot_go_on(self, exc: HookrunnerError) -> None:
        if self._fatal_error is None:
            self._fatal_error = exc
        self.stop()

    def dispatch_platform_webhook(self, delivery: PlatformDelivery) -> bool:
        """Queue a verified Atoms webhook delivery for plugins' ``on_platform_webhook`` (dispatched one at a time,
        in arrival order, drained like triggers at a stop); False once the runner no longer dispatches them.
        With the journal, it is written down until plugins had it (a restart hands it to them then)."""
        if self._platform_webhooks.put(delivery):
            return True
        self.stats.platform_webhooks["not_dispatched"] += 1
        log.warning(
            "atoms webhook: delivery %s (%s) refused (503): the runner is stopping", shown(delivery.id), shown(delivery.event)
        )
        return False

    async def take_platform_webhook(self, delivery: PlatformDelivery) -> bool:
        """``dispatch_platform_webhook``, and with the journal its id kept and both written before answering."""
        if not self.dispatch_platform_webhook(delivery):
            return False
        if self._journal is not None:
            self._journal.delivery_accepted(delivery.id)
            await self._journal.written()
        return True

    def accepted_deliveries(self, limit: int) -> list[str]:
        return self._journal.accepted_deliveries(limit) if self._journal is not None else []

    def _restore_platform_webhooks(self) -> None:
        """Queue first the platform webhooks a previous run accepted and did not hand to plugins."""
        if self._journal is not None:
            rows = [(seq, _parsed_delivery(body)) for seq, body in self._journal.undispatched_platform_webhooks()]
            self._platform_webhooks.restore(rows)
            if rows:
                log.info("atoms webhook: %d deliveries a previous run did not dispatch are dispatched first", len(rows))

    async def _dispatch_platform_webhooks(self) -> None:
        async def dispatch(delivery: PlatformDelivery) -> None:
            await self.dispatcher.call("on_platform_webhook", {"delivery": delivery}, call_id=delivery.call_id)

        with self._stop.stoppable(DRAIN):
            await self._platform_webhooks.dispatch_each(dispatch)
        left = self._platform_webhooks.left()
        self.stats.platform_webhooks["not_dispatched"] += len(left)
        if self._journal is not None and left:
            log.warning("atoms webhook: %d deliveries not dispatched stay in the journal for the next run", len(left))
        else:
            spool_platform_webhooks(self.config.runner.spool_file, left)

    # --- one call ---------------------------------------------------------------------------------------------

    async def _follow_call(self, call_id: str, source: str) -> None:
        bind_log_fields(call_id=call_id)  # every line of this call's task (its stream, its dispatch) names it
        reason = SHUTDOWN
        journal = self._journal.for_call(call_id) if self._journal is not None else None
        try:
            assert self._pipeline is not None
            reason = await self._pipeline.follow(call_id, source, journal)
        except BaseException as exc:  # a failure while following one call is that call's, never the runner's
            if is_cancellation(exc):
                raise
            reason = call_failed(call_id, exc)
            self.stats.calls_finished[reason] += 1
        finally:
            # A stop, or events left undispatched, leave the call in the journal for the next run to resume.
            owed = journal is not None and (journal.undispatched or journal.unfinished)
            if journal is not None and reason in FORGOTTEN_REASONS and not owed:
                journal.over()
            taking_calls = self._calls_nursery is not None and not self._stop.begun
            final = reason in FINAL_REASONS
            next_id = self.calls.finish(call_id, final=final, now=trio.current_time(), promote=taking_calls)
            if self._call_over is not None:
                self._call_over(call_id, final)
            if next_id is not None:
                log.info("%s: a slot is free: following it", next_id, extra={"call_id": next_id})
                self._calls_nursery.start_soon(self._follow_call, next_id, "waiting")  # type: ignore[union-attr]

    def key_refused(self, exc: AuthError) -> None:
        """Atoms refused the API key: it is wrong for every call, so the runner stops and exits with it."""
        if self._auth_error is None:
            self._auth_error = exc
            self.stop()

    # --- triggers and plugins' background work ------------------------------------------------------------

    def _emit_trigger(self, plugin: str, trigger: Trigger) -> None:
        if trigger.source is None:
            trigger = msgspec.structs.replace(trigger, source=plugin)
        if not self._triggers.put(trigger):
            log.error("plugin %s: emitted a trigger after the runner stopped dispatching: %s", plugin, trigger)

    async def _dispatch_triggers(self) -> None:
        """Triggers in the order emitted; ``on_trigger`` should hand work off (an outbox), not do it inline."""
        async def dispatch(trigger: Trigger) -> None:
            self.stats.triggers += 1
            await self.dispatcher.call("on_trigger", {"trigger": trigger}, call_id=trigger.call_id, event_id=trigger.event_id)

        with self._stop.stoppable(DRAIN):
            await self._triggers.dispatch_each(dispatch)
        left = self._triggers.left()
        if self._journal is not None:
            if left:
                log.warning("%d triggers not dispatched before runner.shutdown_grace ran out stay in the journal", len(left))
            return
        for trigger in left:
            self.stats.triggers_lost += 1
            log.error("%s: trigger not dispatched before runner.shutdown_grace ran out: %s", trigger.call_id, trigger)

    def _restore_triggers(self) -> None:
        """Queue first the triggers a previous run's plugins emitted and ``on_trigger`` never got."""
        if self._journal is not None:
            rows = [(seq, trigger) for seq, _, trigger in self._journal.undispatched_triggers()]
            self._triggers.restore(rows)
            if rows:
                log.info("%d triggers a previous run did not dispatch are dispatched first", len(rows))

    def _start_background(self, plugin: str, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        assert self._background is not None, "start_soon is available from on_startup on"

        async def guarded() -> None:
            try:
                await fn(*args)
            except BaseException as exc:  # a plugin's failure, sys.exit() included, is never the runner's
                if is_cancellation(exc):
                    raise
                self.stats.hook_errors[plugin] += 1
                log.error(
                    "plugin %s: background task %s raised %s: %s%s",
                    plugin,
                    getattr(fn, "__name__", fn),
                    type(exc).__name__,
                    one_line(str(exc), 500),
                    asyncio_hint(exc),
                    exc_info=exc,
                )

        self._background.start_soon(guarded, name=f"{plugin}:{getattr(fn, '__name__', 'task')}")


def waiting_for_a_slot(call_id: str, calls: CallBook, stats: Stats) -> None:
    """A call over ``runner.max_calls`` waits: counted once per id (later offers are WAITING), said once."""
    stats.calls_over_capacity += 1
    log.warning(
        "%s: waiting: runner.max_calls (%d) calls are followed already; it is followed when one ends (%d waiting)",
        call_id,
        calls.max_calls,
        calls.waiting,
    )


def call_id_refused(source: str, problem: str, stats: Stats) -> None:
    """Count a call id refused at an intake (``source``) in ``hookrunner_call_ids_refused``; log it at
    ``logged_at`` counts only, so a sender repeating a bad id cannot grow the log."""
    stats.call_ids_refused[source] += 1
    count = stats.call_ids_refused[source]
    if logged_at(count):
        log.warning("%s: refused a call id (%s); %d refused from %s so far", source, problem, count, source)


def _parsed_delivery(body: bytes) -> PlatformDelivery | None:
    try:
        return parse_delivery(body)
    except BadDelivery:
        return None
