"""The plugin contract: every hook hookrunner calls, in the order a call's life calls them.

A plugin is a class, object or module with functions named after these hooks and marked with ``@hookimpl``::

    from hookrunner import hookimpl

    class CancelWatch:
        @hookimpl
        def on_startup(self, app):
            self.app = app  # this run's app: its settings, HTTP client, emit_trigger

        @hookimpl
        async def on_user_transcription(self, event, call):
            print(call.id, event.text)

An entry point (``[project.entry-points.hookrunner] NAME = "package.module:CancelWatch"``) that names a class
gets a new instance, made with no arguments, each time hookrunner loads its plugins: once per run. What a plugin
keeps on ``self`` is therefore its run's alone, while a module's globals are shared by every run in the process.
A constructor that raises or needs arguments is a one-line load error naming the plugin. A module or an object
is registered as it is.

The examples below are methods of such a class where they use ``self.app`` (kept by ``on_startup``), plain
functions where they need nothing but their arguments.

Rules that hold for every hook:

- An implementation may be a plain function or an ``async def``; the runner awaits whatever needs awaiting.
  Plain functions run on the event loop: keep them quick, and put slow or blocking work in an ``async def``
  (``trio.to_thread.run_sync`` for blocking libraries) or in a background task (``app.start_soon``).
- Hooks run on trio (``trio.sleep``, ``trio.to_thread.run_sync``, ``app.http``), where asyncio-only libraries
  (``asyncio.sleep``, aiohttp, an SDK's asyncio client) fail with ``RuntimeError: no running event loop``. A plugin
  whose module (or class) sets ``HOOKRUNNER_ASYNCIO = True`` has its ``async def`` hooks and background tasks run
  on an asyncio loop instead (trio-asyncio), behind the same timeouts and isolation; other plugins stay on trio
  (docs/writing-plugins.md, "Using asyncio libraries").
- An implementation may accept any subset of a hook's arguments, so new arguments can be added later without
  breaking plugins.
- Each implementation runs isolated: an exception (any ``BaseException`` but trio's cancellation, ``sys.exit()``
  included) or a run longer than ``runner.hook_timeout`` is logged with the plugin's name, the call id and
  the event id, counted, and never stops other plugins, the call or the runner.
- For one call, a plugin sees events in stream order and never two of that call's events at once; different
  calls run concurrently. Implementations run in pluggy's order (``tryfirst``/``trylast`` are respected).
- Return values are ignored, except where a hook says otherwise.

For each event the runner calls the hook named for its type (``on_user_transcription`` ...) and then
``on_event``, so a plugin implements whichever fits. A plugin sees one ``sse_init`` per call: the one of the first
connection. Reconnects are the runner's business; their ``sse_init`` lines and any event already dispatched
(same ``event_id``) are not dispatched again, also across a restart (the journal, ``[state]``).

Events the stream skipped (a reconnect that resumed past them, a call that ended while hookrunner was down) are
found in the call's stored conversation when it ends (``[backfill]``) and dispatched after its live events,
before ``on_call_finished``, with ``event.backfilled == True`` (False for every live event): a plugin that acts
on what is said live (an alert, a transfer) may want to skip those, one that keeps a record wants them.
After a kill -9, the events received but not dispatched are dispatched by the next run first; the bound on
repeats is the events dispatched within the last ``state.commit_interval`` before the kill, the one whose hook
was running included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from hookrunner._run.context import App, CallContext
    from hookrunner._core.platform_delivery import PlatformDelivery
    from hookrunner._core.settings import Setting
    from hookrunner._core.events import CallEnd, CallStart, Event, Metrics, SseClose, SseInit, TtsCompleted, TurnLatency, UserInterimTranscription, UserTranscription
    from hookrunner._core.finish import FinishReason
    from hookrunner._core.triggers import Trigger

PROJECT_NAME = "hookrunner"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- configuration -------------------------------------------------------------------------------------------


@hookspec
def settings_schema() -> dict[str, Setting] | None:
    """Declare this plugin's ``[plugins.NAME]`` keys: ``{"key": Setting(kind, default, ..., doc="...")}``.

    The runner checks the table against it before anything connects, with the same one-line key-path errors as
    the core's (wrong types, unknown keys with the nearest name suggested, missing required keys), and
    ``hookrunner plugins --settings NAME`` prints it with the defaults. Checks that need more than one key go in
    ``validate_settings``, which runs after the schema passed. Must be a plain function.

    Example::

        from hookrunner import Setting, at_least, hookimpl

        @hookimpl
        def settings_schema():
            return {
                "threshold": Setting("number", 3.0, check=at_least(0), doc="negative words before alerting"),
                "words": Setting("list[str]", ["refund", "cancel"], doc="what counts as negative"),
            }
    """


@hookspec
def validate_settings(settings: dict[str, Any]) -> list[str] | None:
    """Check this plugin's ``[plugins.NAME]`` table before anything connects.

    Called by ``hookrunner check`` and ``hookrunner run`` with the plugin's own table (an empty dict when the
    config has none), with its ``settings_schema`` defaults filled in as ``app.settings`` will have them, so
    ``settings["key"]`` works for a defaulted key. Return a list of problems, each ``"key.path: what was expected, got what"`` relative to
    the table; the runner prefixes the file and ``plugins.NAME.`` and refuses to start. Return ``None`` or ``[]``
    when all is well. Must be a plain function (it runs before the event loop starts).

    Example::

        @hookimpl
        def validate_settings(settings):
            if settings.get("report_url") and not settings.get("token_env"):
                return ["token_env: expected the variable holding report_url's token, got nothing"]
            return []
    """


# --- hookrunner check: what the settings do ---------------------------------------------------------------


@hookspec
def describe_settings(settings: dict[str, Any]) -> list[str] | None:
    """Say in a few lines what this plugin's settings make it do: ``hookrunner check`` prints them under the plugin.

    Called by ``hookrunner check`` (never during a run), after ``validate_settings`` passed, with the plugin's
    table, defaults filled in, as ``app.settings`` will have it. Return one line per thing a reader of the config
    wants to see (a rule, an endpoint, a route: ``"endpoint crm: trigger.* -> https://crm.example.com/in"``),
    or ``None`` for nothing. The lines are printed as they are: never put a secret in one (a token, a signing
    secret, a URL's query or credentials, a Slack webhook's URL). Log the same lines in ``on_startup``, so that
    ``run``'s start-up log and ``check`` say one thing in one wording. Must be a plain function.

    Example::

        @hookimpl
        def describe_settings(settings):
            words = ", ".join(settings["words"])
            return [f"alerts after {settings['threshold']:g} negative words ({words})"]
    """


@hookspec
def routes_for_trigger(trigger: Trigger, settings: dict[str, Any]) -> list[str] | None:
    """Say where this plugin's ``on_trigger`` would send ``trigger``, without sending it.

    Called by ``hookrunner check CONFIG --route TRIGGER.json`` (never during a run) with the trigger the file
    describes and the plugin's settings, validated and with defaults filled in. Return one line per route,
    endpoint or channel that would take it, named as ``describe_settings`` names it; ``[]`` when none would;
    ``None`` when the plugin does not send triggers anywhere. Decide with the very predicates ``on_trigger``
    uses, so that ``check`` and ``run`` cannot disagree, and post nothing, connect nowhere. ``check`` exits 0
    when some plugin named a route, 1 when none did. No secret in a line, as for ``describe_settings``. Must be
    a plain function.

    Example::

        @hookimpl
        def routes_for_trigger(trigger, settings):
            if trigger.severity in settings["page_on"]:
                return [f"pager {settings['service']}: severity {trigger.severity}"]
            return []
    """


# --- the runner's life ---------------------------------------------------------------------------------------


@hookspec
def on_startup(app: App) -> None:
    """The runner is starting, before any call is subscribed.

    ``app`` is this plugin's view of the runner: ``app.settings`` (its ``[plugins.NAME]`` table, defaults filled
    in), ``app.http`` (a shared ``httpx.AsyncClient``), ``app.config_dir``, ``app.start_soon(fn, *args)`` (a
    background task, cancelled after ``on_shutdown``), ``app.emit_trigger(trigger)``, ``app.open_outbox(...)``
    (an outbox the runner delivers in the background, its counts on ``/metrics``, closed at shutdown) and
    ``app.metrics.registry`` (for the plugin's own ``prometheus_client`` metrics). Keep it: event hooks do not
    receive it.

    Example::

        @hookimpl
        async def on_startup(self, app):
            self.app = app  # event hooks do not receive it: keep it on the plugin's instance (one per run)
            app.start_soon(report_every_minute, app)

        async def report_every_minute(app):
            while True:
                await trio.sleep(60)
                await app.http.post(app.settings["report_url"], json=collect_counts())
    """


@hookspec
def on_shutdown(app: App) -> None:
    """The runner is stopping: every call is finished or being drained. Flush and close what the plugin holds.

    Runs after the last event hook, before background tasks are cancelled. It has ``runner.shutdown_grace``
    seconds, or after a stop what is left of it (the first half drains received events); ``app.shutdown_time_left()``
    says how much remains, so a plugin can finish in time instead of being cut off.

    Example::

        @hookimpl
        async def on_shutdown(app):
            with trio.move_on_after(app.shutdown_time_left()):
                await app.http.post(app.settings["report_url"], json=collect_counts())
    """


@hookspec
def on_reload(app: App) -> None:
    """The config file was re-read (SIGHUP) and every plugin's settings validated; ``app.settings`` now holds this
    plugin's new table. Apply it. An invalid config never gets here: the runner refuses it with one error line and
    the old settings stay in force. Only ``[plugins.NAME]`` tables are reloaded; other changes need a restart.

    Example::

        @hookimpl
        def on_reload(app):
            global WORDS
            WORDS = frozenset(word.casefold() for word in app.settings.get("words", []))
    """


@hookspec
def on_call_subscribed(call: CallContext) -> None:
    """A call's stream answered 200 for the first time; its events follow.

    Example::

        @hookimpl
        def on_call_subscribed(call):
            call.state["myplugin"] = {"negative": 0, "since": time.monotonic()}
    """


@hookspec
def on_call_finished(call: CallContext, reason: FinishReason) -> None:
    """A call is over for the runner, after its last event was dispatched.

    ``reason`` (a ``hookrunner.FinishReason``, equal to its string) is one of ``"ended"`` (the stream sent ``sse_close``), ``"completed"`` (the call was over before it
    could be subscribed: 400), ``"not_found"`` (404), ``"gave_up"`` (reconnects exhausted) or ``"shutdown"``
    (the runner was stopped while the call was live) or ``"auth_failed"`` (Atoms refused the API key, which stops
    the runner).

    Example::

        @hookimpl
        async def on_call_finished(call, reason):
            if reason == "ended":
                await trio.Path(f"{call.id}.txt").write_text(call.transcript)
    """


# --- events, in stream order per call ------------------------------------------------------------------------


@hookspec
def on_sse_init(event: SseInit, call: CallContext) -> None:
    """The stream of a call was established (first connection only).

    Example::

        @hookimpl
        def on_sse_init(event, call):
            log.info("following %s since %s", call.id, event.timestamp)
    """


@hookspec
def on_call_start(event: CallStart, call: CallContext) -> None:
    """The call started (``event.telephony_id`` when sent).

    Example::

        @hookimpl
        def on_call_start(event, call):
            call.state["myplugin"] = {"agent": event.raw.get("agent_id"), "started": event.timestamp}
    """


@hookspec
def on_user_interim_transcription(event: UserInterimTranscription, call: CallContext) -> None:
    """Partial text while the caller is speaking (``event.text``); superseded by later interims and the final.

    Example::

        @hookimpl
        def on_user_interim_transcription(self, event, call):
            if "supervisor" in event.text.lower():  # act before the caller has finished the sentence
                self.app.emit_trigger(Trigger(type="escalation", call_id=call.id, rule="supervisor"))
    """


@hookspec
def on_user_transcription(event: UserTranscription, call: CallContext) -> None:
    """A caller finished a turn; ``event.text`` is final. ``call.turns`` already ends with this turn.

    Example::

        @hookimpl
        async def on_user_transcription(self, event, call):
            if "cancel" in event.text.lower():
                await self.app.http.post(self.app.settings["crm_url"], json={"call": call.id, "said": event.text})
    """


@hookspec
def on_tts_completed(event: TtsCompleted, call: CallContext) -> None:
    """The agent finished speaking ``event.text`` (``event.latency_ms`` as sent, or None).

    ``call.turns`` already ends with this turn.

    Example::

        @hookimpl
        def on_tts_completed(event, call):
            if event.latency_ms is not None and event.latency_ms > 1500:
                log.warning("%s: slow agent answer (%s ms): %s", call.id, event.latency_ms, event.text)
    """


@hookspec
def on_turn_latency(event: TurnLatency, call: CallContext) -> None:
    """Latency breakdown of one turn; the per-stage numbers are in ``event.raw``.

    Example::

        @hookimpl
        def on_turn_latency(event, call):
            STAGES.append({key: value for key, value in event.raw.items() if key.endswith("_latency")})
    """


@hookspec
def on_metrics(event: Metrics, call: CallContext) -> None:
    """Model and processor metrics (``event.metrics``).

    Example::

        @hookimpl
        def on_metrics(event, call):
            for name, value in event.metrics.items():
                TOTALS[name] = TOTALS.get(name, 0) + (value if isinstance(value, (int, float)) else 0)
    """


@hookspec
def on_call_end(event: CallEnd, call: CallContext) -> None:
    """The call ended (``event.metadata``); ``sse_close`` usually follows.

    Example::

        @hookimpl
        def on_call_end(event, call):
            call.state.setdefault("myplugin", {})["duration"] = event.metadata.get("duration")
    """


@hookspec
def on_sse_close(event: SseClose, call: CallContext) -> None:
    """The server is closing the stream because the call ended; ``on_call_finished`` follows.

    Example::

        @hookimpl
        def on_sse_close(event, call):
            log.info("%s closed after %d events", call.id, call.events_dispatched)
    """


@hookspec
def on_event(event: Event, call: CallContext) -> None:
    """Every event, of every type, known or not, after the type's own hook.

    Unknown types arrive as ``UnknownEvent`` with all their fields in ``event.raw``.

    Example::

        @hookimpl
        def on_event(event, call):
            if isinstance(event, UnknownEvent):  # a type hookrunner has no class for yet: all of it is in raw
                log.info("%s: new event type %s: %s", call.id, event.event_type, event.raw)
    """


@hookspec
def on_platform_webhook(delivery: PlatformDelivery) -> None:
    """Atoms sent one of its own webhooks to the runner's server (``POST /atoms/webhook``, signature verified).

    ``delivery.kind`` is ``"pre-conversation"``, ``"post-conversation"``, ``"analytics-completed"`` ...;
    ``delivery.call_id`` and ``delivery.agent_id`` come from its metadata, and ``delivery.body`` is the whole JSON
    envelope, in the shapes of the Atoms SDK's ``WebhookEventPreConversation`` / ``WebhookEventPostConversation``
    (post-conversation ``metadata``: ``recordingUrl``, ``callData``, ``transcript`` as ``[{role, content,
    timestamp}]``, ``variables``; the simulator sends the same). A pre-conversation delivery has already made the
    runner follow the call. Deliveries are dispatched
    one at a time in arrival order, after Atoms got its answer (a slow plugin delays later deliveries, never the
    answer), and drained at a stop like triggers. A repeated delivery id is acknowledged and dropped, but the
    runner remembers ids only in memory: after a restart a replayed delivery arrives again, so act idempotently
    by ``delivery.id``.

    Example::

        @hookimpl
        async def on_platform_webhook(self, delivery):
            if delivery.kind == "post-conversation":
                await self.app.http.post(self.app.settings["crm_url"], json={"call": delivery.call_id, **delivery.body})
    """


# --- delivery ------------------------------------------------------------------------------------------------


@hookspec
def outbox_deliverers(app: App) -> dict[str, Any] | None:
    """For ``hookrunner redeliver``: this plugin's delivery functions, by endpoint name, built from its settings.

    A notifier plugin that delivers through ``hookrunner.delivery.Outbox`` implements it so that its dead letters
    can be sent again outside a run. ``app`` is as in ``on_startup``, except that ``start_soon`` and
    ``emit_trigger`` are not available. Return ``{endpoint_name: deliverer}``; a deliverer is what the plugin
    gives its ``Outbox``.

    Example::

        @hookimpl
        def outbox_deliverers(app):
            return {name: make_deliverer(endpoint, app.http) for name, endpoint in endpoints(app.settings).items()}
    """


# --- derived events --------------------------------------------------------------------------------------------


@hookspec
def on_trigger(trigger: Trigger) -> None:
    """A detector plugin concluded something about a call (``app.emit_trigger``); notifiers act on it here.

    Triggers are dispatched in the order they were emitted, isolated like every hook, and drained at shutdown.

    Example::

        @hookimpl
        async def on_trigger(self, trigger):
            if trigger.severity == "critical":
                await self.app.http.post(self.app.settings["pager_url"], json={"call": trigger.call_id, "rule": trigger.rule})
    """
