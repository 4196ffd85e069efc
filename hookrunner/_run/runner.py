"""The runner: one nursery that owns every call's subscription and dispatch tasks, the trigger queue, plugins'
background tasks, and the way all of them stop.

Data flows one way: a call's ``Subscription`` decodes lines into events and sends them down a bounded channel
(full channel = the socket waits); the call's dispatch task takes them one at a time and calls every plugin's
hooks, so a plugin sees a call's events in order and never two at once, while calls run side by side.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from typing import Any

import httpx
import msgspec
import trio

from hookrunner._core.api import __version__
from hookrunner._core.config import Config, load_config
from hookrunner._run.callbook import CallBook, Offer
from hookrunner._core.callids import call_id_problem
from hookrunner._run.context import App, CallContext
from hookrunner._stream.backfill import Backfiller
from hookrunner._state.journal import CallJournal, Journal
from hookrunner._stream.ratelimit import RateLimiter
from hookrunner._core.limits import raise_open_file_limit
from hookrunner._core.logs import logged_at, redact_in_logs
from hookrunner._run.metrics import RunnerMetrics
from hookrunner._run.outboxes import RunOutboxes
from hookrunner._core.platform_delivery import BadDelivery, PlatformDelivery, parse_delivery
from hookrunner._core.failures import first_leaf, is_cancellation
from hookrunner._core.finish import FinishReason
from hookrunner._run.dispatch import HookDispatcher
from hookrunner._run.hook_queue import HookQueue, left_in
from hookrunner._run.intake import Intake
from hookrunner._core.errors import AuthError, HookrunnerError
from hookrunner._core.events import Event, MalformedEvent, decode_event, type_label
from hookrunner._run.plugin_setup import checked_settings, plugin_apps
from hookrunner._run.plugins import LoadedPlugins
from hookrunner._state.spool import spool_events, spool_platform_webhooks
from hookrunner._core.stats import Stats
from hookrunner._stream.subscription import AUTH_FAILED, COMPLETED, ENDED, FAILED, NOT_FOUND, SHUTDOWN, Subscribed, Subscription, event_key
from hookrunner._core.text import json_bytes, one_line, shown
from hookrunner._core.triggers import Trigger

log = logging.getLogger("hookrunner.runner")

OK_REASONS = frozenset({ENDED, COMPLETED, SHUTDOWN})
#: Ends after which the journal forgets a call: it is over, or cannot be followed (a refused key, a stream that
#: gave up may leave a call still live: the next run follows it again).
FORGOTTEN_REASONS = frozenset({ENDED, COMPLETED, NOT_FOUND, FAILED})
#: Ends after which the call's stored conversation is compared with what was dispatched (``[backfill]``): the call
#: is over (a stream that gave up or was not found may still be live, and comes back).
BACKFILLED_REASONS = frozenset({ENDED, COMPLETED})
#: Sources of call ids that may name a call before its stream exists (a pre-conversation webhook, POST /calls).
PUSHED = frozenset({"push", "api"})
#: Ends after which a call is never followed again; after the others (not found, given up) a later listing or
#: push may bring it back (CallBook's retry_after), since the call may still be live.
FINAL_REASONS = frozenset({ENDED, COMPLETED, SHUTDOWN, AUTH_FAILED, FAILED})  # (failed: again would replay it)
EXIT_OK, EXIT_SOME_CALLS_FAILED, EXIT_USAGE = 0, 1, 2


DRAIN, SUBSCRIPTION, FINAL = "drain", "subscription", "final"
#: Config fields SIGHUP applies (and those that only say where the config came from).

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
    ) -> None:
        self.config = config
        self.plugins = plugins
        self.stats = Stats()
        self.dispatcher = HookDispatcher(plugins.pm, config.runner.hook_timeout, self.stats)
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
        # Every scope a stop must reach, with its kind: subscriptions are cancelled, the rest get deadlines.
        self._scopes: dict[trio.CancelScope, str] = {}
        self._stopping = False
        self._deadlines = {DRAIN: math.inf, FINAL: math.inf}
        self._triggers = HookQueue[Trigger]()  # emitted by plugins, for on_trigger
        self._platform_webhooks = HookQueue[PlatformDelivery]()  # accepted by the server, for on_platform_webhook
        self._background: trio.Nursery | None = None
        self._shutdown_deadline: float | None = None
        self._apps: dict[str, App] = {}
        self._journal: Journal | None = None  # opened by run(): [state] path
        self._resumed_calls: dict[str, None] = {}  # what the journal said was followed when this run began, in order
        #: Every Atoms REST request (listings, backfill) waits here: one limit, atoms.max_requests_per_second.
        self._rest_limiter: RateLimiter | None = None
        self._backfiller: Backfiller | None = None

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
            async with trio.open_nursery() as watcher:  # signals are watched from on_startup to on_shutdown
                watcher.start_soon(self._watch_signals)
                await self._run_plugins_and_calls()
                watcher.cancel_scope.cancel()
        finally:
            if self._journal is not None:
                self._journal.close()  # what the last interval gathered (deliveries, dead letters at close)
        self.state = "stopped"
        log.info("finished: %s", self.stats.summary())
        if self._auth_error is not None or self._fatal_error is not None:
            log.error("%s", self._auth_error or self._fatal_error)
            return EXIT_USAGE
        if self.config.service:
            return EXIT_OK  # a service ends by a signal; calls that failed are in the log and the metrics
        if any(reason not in OK_REASONS for reason in self.stats.calls_finished.elements()):
            return EXIT_SOME_CALLS_FAILED
        return EXIT_OK

    async def _run_plugins_and_calls(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)  # one stream per call, no queue
        # Plugins' deliveries: keep as many connections alive as may be busy, so bursts do not reconnect each time.
        plugin_limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        headers = {"User-Agent": f"hookrunner/{__version__}"}
        async with (
            httpx.AsyncClient(limits=limits, headers=headers, follow_redirects=False) as stream_client,
            httpx.AsyncClient(limits=plugin_limits, headers=headers, timeout=httpx.Timeout(30.0)) as plugin_http,
            trio.open_nursery() as background,
        ):
            self._background = background
            self._rest_limiter = RateLimiter(self.config.atoms.max_requests_per_second)
            if self.config.backfill.enabled:
                self._backfiller = Backfiller(
                    self.config.backfill,
                    client=stream_client,
                    base_url=self.config.atoms.base_url,
                    api_key=self._api_key,
                    limiter=self._rest_limiter,
                    stats=self.stats,
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
            )
            await self.dispatcher.call("on_startup", lambda name: {"app": self._apps[name]})
            self._restore_platform_webhooks()
            self._restore_triggers()
            async with trio.open_nursery() as core:
                core.start_soon(self._dispatch_triggers)
                core.start_soon(self._dispatch_platform_webhooks)
                async with trio.open_nursery() as calls:
                    self._calls_nursery, self._stream_client = calls, stream_client
                    if not self._stopping:
                        self.state = "serving"
                    for call_id in self._call_ids:
                        self.follow(call_id, "config")
                    for call_id in self._resumed_calls:
                        self.follow(call_id, "journal")  # followed when the last run stopped: still live?
                    for intake in self._intakes:
                        await intake.start(self, background)
                    if self.config.service:
                        calls.start_soon(self._until_stopped)  # a service takes calls until it is stopped
                self._calls_nursery = None
                for call_id in self.calls.drop_waiting():
                    self.stats.calls_never_followed += 1
                    log.warning("%s: never followed: the runner stopped while it waited for a free slot", call_id)
                self._triggers.close()  # no call can emit any more: the trigger queue drains and ends
                self._platform_webhooks.close()  # deliveries from now on are refused (503): plugins are shutting down
            with self._stoppable(FINAL):
                # on_shutdown flushes what plugins hold (outboxes): it gets shutdown_grace, or what a stop left of it
                self._shutdown_deadline = trio.current_time() + self.config.runner.shutdown_grace
                if self._stopping:
                    self._shutdown_deadline = min(self._shutdown_deadline, self._deadlines[FINAL])
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
            config = load_config(path)
            settings = checked_settings(config, self.plugins)
        except HookrunnerError as exc:
            problems = str(exc).splitlines()
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
        if self._stopping:
            return
        self._stopping = True
        self.state = "draining"
        now = trio.current_time()
        self._deadlines = {DRAIN: now + self.config.runner.shutdown_grace / 2, FINAL: now + self.config.runner.shutdown_grace}
        for scope, kind in self._scopes.items():
            self._apply_stop(scope, kind)

    def _apply_stop(self, scope: trio.CancelScope, kind: str) -> None:
        if kind == SUBSCRIPTION:
            scope.cancel()
        else:
            scope.deadline = min(scope.deadline, self._deadlines[kind])

    @contextmanager
    def _stoppable(self, kind: str) -> Iterator[trio.CancelScope]:
        """A cancel scope that a stop reaches, even one begun before the scope was entered."""
        scope = trio.CancelScope()
        self._scopes[scope] = kind
        if self._stopping:
            self._apply_stop(scope, kind)
        try:
            with scope:
                yield scope
        finally:
            del self._scopes[scope]

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                elif not self._stopping:
                    log.warning(
                        "%s: stopping; draining received events for up to %g s (again to stop at once)",
                        signal.Signals(signum).name,
                        self.config.runner.shutdown_grace,
                    )
                    self.stop()
                else:
                    log.warning("%s again: stopping at once", signal.Signals(signum).name)
                    self._deadlines = {DRAIN: trio.current_time(), FINAL: trio.current_time()}
                    for scope in self._scopes:
                        scope.cancel()

    # --- which calls ------------------------------------------------------------------------------------------

    def follow(self, call_id: str, source: str) -> Offer | None:
        """Follow ``call_id`` unless it is followed, over, or waiting already; ``source`` says who found it
        (config, listing, push, api). Returns what was decided, or None when the runner no longer takes calls."""
        if self._calls_nursery is None or (self._stopping and source != "config"):
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
            self.stats.calls_over_capacity += 1  # QUEUED comes once per id: later offers are WAITING
            log.warning(
                "%s: waiting: runner.max_calls (%d) calls are followed already; it is followed when one ends "
                "(%d waiting)",
                call_id,
                self.config.runner.max_calls,
                self.calls.waiting,
            )
        return offer

    def refuse_call_id(self, source: str, problem: str) -> None:
        """Count a call id refused at an intake (``source``) in ``hookrunner_call_ids_refused``; log it at
        ``logged_at`` counts only, so a sender repeating a bad id cannot grow the log."""
        self.stats.call_ids_refused[source] += 1
        count = self.stats.call_ids_refused[source]
        if logged_at(count):
            log.warning("%s: refused a call id (%s); %d refused from %s so far", source, problem, count, source)

    async def _until_stopped(self) -> None:
        with self._stoppable(SUBSCRIPTION):
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
        return self._stoppable(SUBSCRIPTION)

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

        with self._stoppable(DRAIN):
            await self._platform_webhooks.dispatch_each(dispatch)
        left = self._platform_webhooks.left()
        self.stats.platform_webhooks["not_dispatched"] += len(left)
        if self._journal is not None and left:
            log.warning("atoms webhook: %d deliveries not dispatched stay in the journal for the next run", len(left))
        else:
            spool_platform_webhooks(self.config.runner.spool_file, left)

    # --- one call ---------------------------------------------------------------------------------------------

    async def _follow_call(self, call_id: str, source: str) -> None:
        reason = SHUTDOWN
        journal = self._journal.for_call(call_id) if self._journal is not None else None
        try:
            reason = await self._follow_one(call_id, source, journal)
        except BaseException as exc:  # a failure while following one call is that call's, never the runner's
            if is_cancellation(exc):
                raise
            reason = self._call_failed(call_id, exc)
            self.stats.calls_finished[reason] += 1
        finally:
            # A stop, or events left undispatched, leave the call in the journal for the next run to resume.
            owed = journal is not None and (journal.undispatched or journal.unfinished)
            if journal is not None and reason in FORGOTTEN_REASONS and not owed:
                journal.over()
            taking_calls = self._calls_nursery is not None and not self._stopping
            next_id = self.calls.finish(
                call_id, final=reason in FINAL_REASONS, now=trio.current_time(), promote=taking_calls
            )
            if next_id is not None:
                log.info("%s: a slot is free: following it", next_id)
                self._calls_nursery.start_soon(self._follow_call, next_id, "waiting")  # type: ignore[union-attr]

    def _call_failed(self, call_id: str, exc: BaseException) -> FinishReason:
        leaf = first_leaf(exc)
        log.error("%s: failed: %s: %s", call_id, type(leaf).__name__, one_line(str(leaf), 300))
        log.debug("%s: traceback", call_id, exc_info=exc)
        return FAILED

    async def _follow_one(self, call_id: str, source: str, journal: CallJournal | None) -> FinishReason:
        """Follow one call to its end; the reason it ended."""
        assert self._stream_client is not None
        call = CallContext(call_id)
        dispatched_before = self._journal.dispatched_keys(call_id) if self._journal is not None else []
        subscription = Subscription(
            call_id,
            client=self._stream_client,
            base_url=self.config.atoms.base_url,
            api_key=self._api_key,
            connect_timeout=self.config.atoms.connect_timeout,
            idle_timeout=self.config.runner.idle_timeout,
            reconnect=self.config.runner.reconnect,
            stats=self.stats,
            not_found_grace=self.config.discovery.not_found_grace if source in PUSHED else 0.0,
            max_event_size=self.config.runner.max_event_bytes,
            seen_before=dispatched_before,
            on_received=journal.received if journal is not None else None,
        )
        send, receive = trio.open_memory_channel[Event | Subscribed](self.config.runner.buffer)
        reason = SHUTDOWN
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dispatch_call, call, receive, journal)
            async with send:
                with self._stoppable(SUBSCRIPTION):
                    try:
                        if journal is not None:
                            await self._restore_events(journal, subscription, send)
                        reason = await subscription.run(send)
                        # (a call never streamed to us, in this run or one before, is owed nothing)
                        followed_before = call_id in self._resumed_calls or bool(dispatched_before)
                        if reason in BACKFILLED_REASONS and (subscription.subscribed or followed_before):
                            await self._backfill(call_id, subscription, send, journal)
                    except AuthError as exc:
                        self.key_refused(exc)
                    except BaseException as exc:  # what was received is still dispatched, and the call finished
                        if is_cancellation(exc):
                            raise
                        reason = self._call_failed(call_id, exc)
                if subscription.pending is not None:  # a stop caught the stream waiting on a full buffer
                    with self._stoppable(DRAIN):
                        await send.send(subscription.pending)
                        subscription.pending = None
        if journal is not None and journal.unfinished:  # a stop cut its backfill short: the next run finishes it
            reason = SHUTDOWN
        if subscription.pending is not None and journal is None:  # after the buffer the dispatch task spooled
            self.stats.events_spooled += spool_events(self.config.runner.spool_file, call_id, [subscription.pending])
        if reason == SHUTDOWN and self._auth_error is not None:
            reason = AUTH_FAILED
        elif reason == SHUTDOWN:
            log.info("%s: stopped by shutdown after %d events", call_id, call.events_dispatched)
        call.finished_reason = reason
        self.stats.calls_finished[reason] += 1
        with self._stoppable(DRAIN):
            await self.dispatcher.call("on_call_finished", {"call": call, "reason": reason}, call_id=call_id)
        return reason

    def key_refused(self, exc: AuthError) -> None:
        """Atoms refused the API key: it is wrong for every call, so the runner stops and exits with it."""
        if self._auth_error is None:
            self._auth_error = exc
            self.stop()

    async def _restore_events(
        self, journal: CallJournal, subscription: Subscription, send: trio.MemorySendChannel[Event | Subscribed]
    ) -> None:
        """Put first in the call's buffer the events a previous run received and did not dispatch."""
        assert self._journal is not None
        rows = self._journal.undispatched_events(journal.call_id)
        for seq, data, received, backfilled in rows:
            try:
                event = decode_event(data, journal.call_id, datetime.fromtimestamp(received, timezone.utc))
            except MalformedEvent:  # (it was decoded once: only a damaged file could do this)
                journal.restored(seq, None)
                journal.dispatched()
                continue
            if backfilled:
                event = msgspec.structs.replace(event, backfilled=True)
            journal.restored(seq, subscription.passed_on_before(event, data))
            await send.send(event)
        if rows:
            log.info("%s: %d events a previous run received are dispatched first", journal.call_id, len(rows))

    async def _backfill(
        self,
        call_id: str,
        subscription: Subscription,
        send: trio.MemorySendChannel[Event | Subscribed],
        journal: CallJournal | None,
    ) -> None:
        """Queue after the call's live events those its stored conversation holds and the stream never passed on
        (unless ``[backfill]`` is off). Until that is done, a stop leaves the call owed to the next run."""
        if self._backfiller is None:
            return
        if journal is not None:
            journal.unfinished = True
        for event in await self._backfiller.missing(call_id, subscription.passed_on):
            if journal is not None:
                journal.received(json_bytes(event.raw).decode(), time.time(), event_key(event), backfilled=True)
            await send.send(event)
        if journal is not None:
            journal.unfinished = False

    async def _dispatch_call(
        self,
        call: CallContext,
        receive: trio.MemoryReceiveChannel[Event | Subscribed],
        journal: CallJournal | None = None,
    ) -> None:
        current: Event | None = None
        async with receive:
            try:
                with self._stoppable(DRAIN):
                    async for item in receive:
                        if isinstance(item, Subscribed):
                            await self.dispatcher.call("on_call_subscribed", {"call": call}, call_id=call.id)
                            continue
                        current = item
                        await self._dispatch_event(call, item)
                        current = None
                        if journal is not None:
                            journal.dispatched()
            finally:
                # Items are left (or one half dispatched) only when the grace ran out, or a stop at once, or a
                # bug cut this task: in every case they are kept where they can be replayed from (the journal,
                # whose next run dispatches them, or else the spool file).
                left = [current] if current is not None else []
                left += [item for item in left_in(receive) if isinstance(item, Event)]
                if journal is not None:
                    if left:
                        log.warning("%s: %d events not dispatched stay in the journal for the next run", call.id, len(left))
                else:
                    self.stats.events_spooled += spool_events(self.config.runner.spool_file, call.id, left)

    async def _dispatch_event(self, call: CallContext, event: Event) -> None:
        self.stats.events_by_type[type_label(event.event_type)] += 1
        call.record_turn(event)
        arguments = {"event": event, "call": call}
        if event.HOOK is not None:
            await self.dispatcher.call(event.HOOK, arguments, call_id=call.id, event_id=event.event_id)
        await self.dispatcher.call("on_event", arguments, call_id=call.id, event_id=event.event_id)
        call.events_dispatched += 1

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

        with self._stoppable(DRAIN):
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
                    "plugin %s: background task %s raised %s: %s",
                    plugin,
                    getattr(fn, "__name__", fn),
                    type(exc).__name__,
                    one_line(str(exc), 500),
                    exc_info=exc,
                )

        self._background.start_soon(guarded, name=f"{plugin}:{getattr(fn, '__name__', 'task')}")


def _parsed_delivery(body: bytes) -> PlatformDelivery | None:
    try:
        return parse_delivery(body)
    except BadDelivery:
        return None
