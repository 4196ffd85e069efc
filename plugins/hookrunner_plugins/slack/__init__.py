"""The ``slack`` plugin: tell the right channel, at once, without flooding it.

Each ``[[plugins.slack.routes]]`` entry picks triggers (and optionally events) by type, severity and labels, renders
them with its template, and posts them through an outbox (``app.open_outbox``): retries, order, bounds and dead
letters come from there. Posts to one channel are paced (Slack allows about one a second); triggers that arrive
faster are grouped into one message, like Alertmanager's ``group_wait``. A route with ``transcript = "thread"`` also
opens a thread per call and posts the call's final turns into it as they happen.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from hookrunner import App, CallContext, Event, Trigger, TtsCompleted, UserTranscription, hookimpl, redact_in_logs
from hookrunner.delivery import Deliverer, Outbox, OutboxMessage, Outcome, Pacing, RetryPolicy

from .delivery import Pacer, Poster
from .formatting import escape, event_fields, message_payload, render, trigger_fields
from .settings import SETTINGS, RouteSettings, SlackSettings, parse_settings

__all__ = ["plugin", "SlackPlugin", "Threads"]

log = logging.getLogger("hookrunner.plugins.slack")


def alert_deliverer(poster: Poster) -> Deliverer:
    """Posts a batch of rendered alerts (one, or several gathered while the channel was busy) as one message."""

    async def deliver(batch: list[OutboxMessage]) -> Outcome:
        outcome, _ = await poster.post(message_payload([message.body["text"] for message in batch]))
        return outcome

    return deliver


class Threads:
    """Each call's thread (the opening's ``ts``), and the replies still waiting to learn it.

    A reply's body carries its ``thread_ts`` as soon as it is known, also while the reply waits in the queue: a
    reply dead-lettered at shutdown, before it was tried, then still names its thread, and ``redeliver`` posts it
    there rather than into the channel. At most ``MAX_WAITING_CALLS`` calls wait for their opening (the oldest
    forgotten first: an opening that never went out leaves nothing to thread onto anyway).
    """

    MAX_WAITING_CALLS = 10_000

    def __init__(self) -> None:
        self.ts: dict[str, str] = {}
        self._waiting: dict[str, list[dict[str, Any]]] = {}

    def reply(self, call_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with its thread's ``ts`` when known; otherwise it gets it when the opening is posted."""
        if call_id in self.ts:
            body["thread_ts"] = self.ts[call_id]
        else:
            if call_id not in self._waiting and len(self._waiting) >= self.MAX_WAITING_CALLS:
                del self._waiting[next(iter(self._waiting))]
            self._waiting.setdefault(call_id, []).append(body)
        return body

    def opened(self, call_id: str, ts: str) -> None:
        self.ts[call_id] = ts
        for body in self._waiting.pop(call_id, []):
            body["thread_ts"] = ts

    def closed(self, call_id: str) -> None:
        self.ts.pop(call_id, None)
        self._waiting.pop(call_id, None)


def transcript_deliverer(poster: Poster, threads: Threads) -> Deliverer:
    """Posts a call's opening message (remembering its ``ts``) and then its turns as replies in that thread."""

    async def deliver(batch: list[OutboxMessage]) -> Outcome:
        outcome = Outcome.delivered()
        for message in batch:
            body = message.body
            call_id = body["call_id"]
            if body["kind"] != "opening" and call_id in threads.ts:
                body["thread_ts"] = threads.ts[call_id]  # kept in a dead letter, so a redelivery finds the thread
            outcome, answer = await poster.post(message_payload([body["text"]]), body.get("thread_ts"), urgent=False)
            if outcome.kind != "delivered":
                return outcome
            if body["kind"] == "opening" and answer.get("ts"):
                threads.opened(call_id, str(answer["ts"]))
            elif body["kind"] == "closing":
                threads.closed(call_id)
        return outcome

    return deliver


class _Route:
    def __init__(self, settings: RouteSettings, alerts: Outbox, transcript: Outbox | None, threads: Threads) -> None:
        self.settings = settings
        self.alerts = alerts
        self.transcript = transcript
        self.threads = threads


class SlackPlugin:
    def __init__(self) -> None:
        self._routes: list[_Route] = []

    @hookimpl
    def settings_schema(self) -> dict[str, Any]:
        return SETTINGS

    @hookimpl
    def validate_settings(self, settings: dict[str, Any]) -> list[str]:
        return parse_settings(settings)[1]

    def _parse(self, app: App) -> SlackSettings:
        settings, problems = parse_settings(app.settings)
        if problems:  # validate_settings ran first: the environment changed in between
            raise ValueError("; ".join(problems))
        return settings

    def _posters(self, settings: SlackSettings, http: httpx.AsyncClient, pacing: Pacing) -> dict[str, Poster]:
        pacers: dict[str, Pacer] = {}
        posters = {}
        for route in settings.routes:
            redact_in_logs(route.webhook_url)  # a library's exception text must not show them either
            redact_in_logs(route.token)
            channel_key = f"channel:{route.channel}" if route.token else f"webhook:{route.name}"
            pacer = pacers.setdefault(channel_key, Pacer(settings.pace, pacing, channel_key))
            posters[route.name] = Poster(
                route, http, settings.api_base_url, settings.timeout, pacer, max_retry_after=settings.max_retry_after
            )
        return posters

    @hookimpl
    def on_startup(self, app: App) -> None:
        settings = self._parse(app)
        policy = RetryPolicy.from_settings(settings)
        posters = self._posters(settings, app.http, app.pacing)
        self._routes = []
        for route in settings.routes:
            poster = posters[route.name]
            alerts = app.open_outbox(
                route.name, alert_deliverer(poster), dead_letter=settings.dead_letter, policy=policy,
                max_in_flight=1, max_queue=settings.max_queue,
                batch_max_events=settings.group_max, batch_max_wait=settings.group_wait,
            )  # fmt: skip
            transcript, threads = None, Threads()
            if route.transcript:
                transcript = app.open_outbox(
                    f"{route.name}/transcript", transcript_deliverer(poster, threads), dead_letter=settings.dead_letter,
                    policy=policy, max_in_flight=1, max_queue=settings.max_queue,
                )  # fmt: skip
            self._routes.append(_Route(route, alerts, transcript, threads))
            log.info("slack %s", route.description)
        # Only the events a route posts reach on_event, and turns only when a route keeps a transcript thread.
        app.select_events("on_event", [pattern for route in self._routes for pattern in route.settings.events])
        turns: tuple[str, ...] | None = None if any(route.transcript is not None for route in self._routes) else ()
        app.select_events("on_user_transcription", turns)
        app.select_events("on_tts_completed", turns)

    # --- what goes where --------------------------------------------------------------------------------------

    @hookimpl
    def on_trigger(self, trigger: Trigger) -> None:
        fields = None
        for route in self._routes:
            settings = route.settings
            if not settings.takes(trigger):
                continue
            fields = fields or trigger_fields(trigger)
            mention = settings.mention if trigger.severity in settings.mention_severities else ""
            text = render(settings.template, fields, mention)
            message_id = f"slack_{trigger.call_id}_{trigger.rule}_{trigger.event_id or trigger.detected_at.timestamp()}"
            route.alerts.submit(OutboxMessage(id=message_id, key=trigger.call_id, body={"kind": "alert", "text": text}))

    @hookimpl
    def on_event(self, event: Event, call: CallContext) -> None:
        for route in self._routes:
            if route.settings.wants_type(event.event_type):
                text = render(route.settings.template, event_fields(event))
                body = {"kind": "alert", "text": text}
                route.alerts.submit(OutboxMessage(id=f"slack_{event.event_id}", key=call.id, body=body))

    @hookimpl
    def on_call_subscribed(self, call: CallContext) -> None:
        for route in self._routes:
            if route.transcript is not None:
                text = f":telephone_receiver: Call `{escape(call.id)}` — live transcript in this thread"
                body = {"kind": "opening", "call_id": call.id, "text": text}
                route.transcript.submit(OutboxMessage(id=f"slack_open_{call.id}", key=call.id, body=body))

    def _turn(self, event: UserTranscription | TtsCompleted, call: CallContext, speaker: str) -> None:
        for route in self._routes:
            if route.transcript is not None:
                body = route.threads.reply(
                    call.id, {"kind": "reply", "call_id": call.id, "text": f"*{speaker}:* {escape(event.text)}"}
                )
                route.transcript.submit(OutboxMessage(id=f"slack_turn_{event.event_id}", key=call.id, body=body))

    @hookimpl
    def on_user_transcription(self, event: UserTranscription, call: CallContext) -> None:
        self._turn(event, call, "caller")

    @hookimpl
    def on_tts_completed(self, event: TtsCompleted, call: CallContext) -> None:
        self._turn(event, call, "agent")

    @hookimpl
    def on_call_finished(self, call: CallContext, reason: str) -> None:
        for route in self._routes:
            if route.transcript is not None:
                text = f":checkered_flag: Call `{escape(call.id)}` {escape(reason)} after {len(call.turns)} turns"
                body = route.threads.reply(call.id, {"kind": "closing", "call_id": call.id, "text": text})
                route.transcript.submit(OutboxMessage(id=f"slack_end_{call.id}", key=call.id, body=body))

    # --- hookrunner check ------------------------------------------------------------------------------------

    @hookimpl
    def describe_settings(self, settings: dict[str, Any]) -> list[str]:
        routes = parse_settings(settings)[0].routes
        if not routes:
            return ["no routes ([[plugins.slack.routes]]): nothing is posted"]
        return [route.description for route in routes]

    @hookimpl
    def routes_for_trigger(self, trigger: Trigger, settings: dict[str, Any]) -> list[str]:
        """The routes ``on_trigger`` would post ``trigger`` to (``RouteSettings.takes``, as it asks)."""
        return [route.description for route in parse_settings(settings)[0].routes if route.takes(trigger)]

    # --- redeliver and replay --------------------------------------------------------------------------------

    @hookimpl
    def outbox_deliverers(self, app: App) -> dict[str, Deliverer]:
        settings = self._parse(app)
        posters = self._posters(settings, app.http, app.pacing)
        deliverers: dict[str, Deliverer] = {}
        for route in settings.routes:
            deliverers[route.name] = alert_deliverer(posters[route.name])
            if route.transcript:
                deliverers[f"{route.name}/transcript"] = transcript_deliverer(posters[route.name], Threads())
        return deliverers
