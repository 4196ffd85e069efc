"""The ``webhook`` plugin: POST events and triggers to your HTTP endpoints, signed per Standard Webhooks.

Each endpoint gets its own outbox (``app.open_outbox``): the hook only builds the message and hands it over, so
a slow or dead receiver never slows the stream; retries, per-call order, bounds and dead letters are the outbox's.
Receivers check deliveries with ``hookrunner_plugins.webhook.verify`` or any Standard Webhooks library.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec

from hookrunner import App, CallContext, Event, Trigger, __version__, hookimpl, redact_in_logs
from hookrunner.delivery import Deliverer, Outbox, OutboxMessage, Outcome, RetryPolicy, json_bytes, parse_retry_after, request

from .settings import SETTINGS, EndpointSettings, parse_settings
from .signing import Signer, WebhookVerificationError, verify

__all__ = ["plugin", "verify", "WebhookVerificationError", "WebhookPlugin"]

log = logging.getLogger("hookrunner.plugins.webhook")

#: Message types whose filter result is kept (the known ones and then some; a made-up type is matched each time).
TYPE_CACHE_SIZE = 256
#: Header names whose values are credentials, kept out of every log line.
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|signature|cookie|session|password", re.IGNORECASE)


def message_id(*parts: str | None) -> str:
    """A webhook-id derived from what the message is about, so the same event gets the same id on every attempt,
    redelivery and rerun (receivers deduplicate on it); random when there is nothing stable to derive it from."""
    if any(part is None for part in parts):
        return f"msg_{uuid.uuid4().hex}"
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]  # type: ignore[arg-type]
    return f"msg_{digest}"


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def event_body(event: Event) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": event.event_type, "timestamp": _iso(event.timestamp), "call_id": event.call_id, "data": event.raw
    }  # fmt: skip
    if event.backfilled:  # found in the stored conversation after the call, not read live: the receiver may care
        body["backfilled"] = True
    return body


def trigger_body(trigger: Trigger) -> dict[str, Any]:
    return {
        "type": trigger.full_type,
        "timestamp": _iso(trigger.timestamp or trigger.detected_at),
        "call_id": trigger.call_id,
        "data": msgspec.to_builtins(trigger),
    }


def make_deliverer(endpoint: EndpointSettings, http: httpx.AsyncClient) -> Deliverer:
    """POST one message (or a batch, as a JSON array) to the endpoint and say what the answer means."""
    signer = Signer(endpoint.secrets)
    static = {**endpoint.headers, "content-type": "application/json", "user-agent": f"hookrunner/{__version__}"}

    async def deliver(batch: list[OutboxMessage]) -> Outcome:
        if endpoint.batch_max_events > 1:
            # each item carries its message id: the batch's own id changes with its make-up, the items' never do
            body = json_bytes([{"id": message.id, **message.body} for message in batch])
            batch_id = batch[0].id if len(batch) == 1 else message_id(*(message.id for message in batch))
        else:
            body = json_bytes(batch[0].body)
            batch_id = batch[0].id
        headers = {**static, **signer.headers(batch_id, body)}
        try:
            # the whole exchange within the timeout (a receiver trickling bytes cannot hold it), its answer cut
            response = await request(http, "POST", endpoint.url, content=body, headers=headers, timeout=endpoint.timeout)
        except httpx.TimeoutException:
            return Outcome.retry(f"no answer within {endpoint.timeout:g} s")
        except httpx.TransportError as exc:
            return Outcome.retry(f"connection failed ({type(exc).__name__})")
        return classify(response)

    return deliver


def classify(response: httpx.Response) -> Outcome:
    """Standard Webhooks semantics: 2xx delivered; 408/429/5xx retried; 410 stops the endpoint; other codes not."""
    status = response.status_code
    if 200 <= status < 300:
        return Outcome.delivered(status)
    why = f"answered {status}"
    if status == 410:
        return Outcome.gone(f"{why} Gone", status)
    if status in (408, 429) or status >= 500:
        return Outcome.retry(why, status, parse_retry_after(response.headers.get("retry-after")))
    if 300 <= status < 400:
        return Outcome.reject(f"{why} (a redirect; redirects are not followed: update the url)", status)
    return Outcome.reject(why, status)


class _Endpoint:
    def __init__(self, settings: EndpointSettings, outbox: Outbox) -> None:
        self.settings = settings
        self.outbox = outbox
        self._type_wanted: dict[str, bool] = {}  # glob matching once per type, not once per event

    def wants(self, message_type: str, call_id: str) -> bool:
        if not self.settings.wants_call(call_id):
            return False
        wanted = self._type_wanted.get(message_type)
        if wanted is None:
            wanted = self.settings.wants_type(message_type)
            if len(self._type_wanted) < TYPE_CACHE_SIZE:  # types come from outside: the cache stays bounded
                self._type_wanted[message_type] = wanted
        return wanted


class WebhookPlugin:
    def __init__(self) -> None:
        self._endpoints: list[_Endpoint] = []

    @hookimpl
    def settings_schema(self) -> dict[str, Any]:
        return SETTINGS

    @hookimpl
    def validate_settings(self, settings: dict[str, Any]) -> list[str]:
        return parse_settings(settings)[2]

    @staticmethod
    def _parse(app: App) -> tuple[Path, list[EndpointSettings]]:
        dead_letter, endpoints, problems = parse_settings(app.settings, warn=False)
        if problems:  # validate_settings ran first, so this is a plugin bug or a changed environment
            raise ValueError("; ".join(problems))
        return dead_letter, endpoints

    @hookimpl
    def on_startup(self, app: App) -> None:
        dead_letter, endpoints = self._parse(app)
        self._endpoints = []
        for settings in endpoints:
            try:
                self._endpoints.append(self._start_endpoint(app, settings, dead_letter))
            except Exception as exc:  # one endpoint that cannot start never takes the others with it
                log.error(
                    "webhook %s: cannot start, nothing is delivered to it this run: %s: %s",
                    settings.name,
                    type(exc).__name__,
                    exc,
                )
        # Events no endpoint selects never reach on_event (none at all when no endpoint is configured).
        app.select_events("on_event", [pattern for endpoint in self._endpoints for pattern in endpoint.settings.events])

    @staticmethod
    def _start_endpoint(app: App, settings: EndpointSettings, dead_letter: Path) -> _Endpoint:
        credentials = [value for name, value in settings.headers.items() if _CREDENTIAL_HEADER.search(name)]
        for secret in (*settings.secrets, *credentials):
            redact_in_logs(secret)
        outbox = app.open_outbox(
            settings.name,
            make_deliverer(settings, app.http),
            dead_letter=dead_letter,
            policy=RetryPolicy.from_settings(settings),
            max_in_flight=settings.max_in_flight,
            max_queue=settings.max_queue,
            batch_max_events=settings.batch_max_events,
            batch_max_wait=settings.batch_max_wait,
        )
        log.info("webhook %s", settings.description)
        return _Endpoint(settings, outbox)

    def _submit(self, message_type: str, call_id: str, build: Any, id_parts: tuple[str | None, ...]) -> None:
        body: Any = None
        msg_id = ""
        for endpoint in self._endpoints:
            if endpoint.wants(message_type, call_id):
                if body is None:
                    body, msg_id = build(), message_id(*id_parts)
                endpoint.outbox.submit(OutboxMessage(id=msg_id, key=call_id, body=body))

    @hookimpl
    def on_event(self, event: Event, call: CallContext) -> None:
        self._submit(event.event_type, call.id, lambda: event_body(event), (call.id, event.event_type, event.event_id))

    @hookimpl
    def on_trigger(self, trigger: Trigger) -> None:
        parts = (trigger.call_id, trigger.full_type, trigger.source, trigger.rule, trigger.event_id or trigger.event_type)
        self._submit(trigger.full_type, trigger.call_id, lambda: trigger_body(trigger), parts)

    # --- hookrunner check ------------------------------------------------------------------------------------

    @hookimpl
    def describe_settings(self, settings: dict[str, Any]) -> list[str]:
        endpoints = parse_settings(settings, warn=False)[1]
        if not endpoints:
            return ["no endpoints ([[plugins.webhook.endpoints]]): nothing is delivered"]
        return [endpoint.description for endpoint in endpoints]

    @hookimpl
    def routes_for_trigger(self, trigger: Trigger, settings: dict[str, Any]) -> list[str]:
        """The endpoints ``on_trigger`` would submit ``trigger`` to, asked as it asks (type, then call)."""
        endpoints = parse_settings(settings, warn=False)[1]
        return [endpoint.description for endpoint in endpoints if endpoint.wants(trigger.full_type, trigger.call_id)]

    @hookimpl
    def outbox_deliverers(self, app: App) -> dict[str, Deliverer]:
        _, endpoints = self._parse(app)
        return {settings.name: make_deliverer(settings, app.http) for settings in endpoints}
