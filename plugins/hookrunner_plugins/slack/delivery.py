"""Posting to Slack: incoming webhooks or ``chat.postMessage``, paced per channel, answers read the way Slack
means them.

Slack allows about one message per second per channel and may revoke a token that keeps hammering while limited,
so every post to a channel waits its turn (``pace``), and a 429 holds the whole channel for its ``Retry-After``.
Web API errors arrive as HTTP 200 with ``ok: false``: credentials or channel problems stop the route (one error
line, the rest dead-lettered), a malformed message is dead-lettered, rate limits and server errors are retried.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import trio

from hookrunner.backoff import parse_retry_after
from hookrunner.outbox import Outcome

from .settings import RouteSettings

log = logging.getLogger("hookrunner.plugins.slack")

#: ``ok: false`` errors after which nothing this route sends can succeed.
STOPPING_ERRORS = frozenset(
    {
        "invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "no_permission",
        "missing_scope", "channel_not_found", "not_in_channel", "is_archived", "team_access_not_granted",
        "ekm_access_denied", "org_login_required",
    }
)  # fmt: skip
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})


class Pacer:
    """Spaces the posts to one channel ``interval`` seconds apart; a 429 holds the channel for its Retry-After."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._lock = trio.Lock()

    async def wait_turn(self) -> None:
        async with self._lock:
            while trio.current_time() < self._next:  # a 429 may push the turn further while this one waits
                await trio.sleep_until(self._next)
            self._next = trio.current_time() + self._interval

    def hold(self, seconds: float) -> None:
        self._next = max(self._next, trio.current_time() + seconds)


class Poster:
    """Sends one payload for one route; returns what it came to, and Slack's answer (for the thread's ``ts``)."""

    def __init__(self, route: RouteSettings, http: httpx.AsyncClient, api_base_url: str, timeout: float, pacer: Pacer) -> None:
        self.route = route
        self._http = http
        self._timeout = timeout
        self._pacer = pacer
        self._url = route.webhook_url or f"{api_base_url}/chat.postMessage"
        self._headers = {"Authorization": f"Bearer {route.token}"} if route.token else {}

    async def post(self, payload: dict[str, Any], thread_ts: str | None = None) -> tuple[Outcome, dict[str, Any]]:
        body = dict(payload)
        if self.route.token:
            body["channel"] = self.route.channel
            if thread_ts:
                body["thread_ts"] = thread_ts
        await self._pacer.wait_turn()
        try:
            response = await self._http.post(self._url, json=body, headers=self._headers, timeout=self._timeout)
        except httpx.TimeoutException:
            return Outcome.retry(f"Slack did not answer within {self._timeout:g} s"), {}
        except httpx.TransportError as exc:
            return Outcome.retry(f"connection to Slack failed ({type(exc).__name__})"), {}
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after")) or 1.0
            self._pacer.hold(retry_after)
            return Outcome.retry(f"rate limited by Slack (429, Retry-After {retry_after:g} s)", 429, retry_after), {}
        if status >= 500:
            return Outcome.retry(f"Slack answered {status}", status), {}
        if self.route.webhook_url:
            return self._webhook_outcome(response), {}
        return self._api_outcome(response)

    @staticmethod
    def _webhook_outcome(response: httpx.Response) -> Outcome:
        status = response.status_code
        text = response.text.strip()[:100] or response.reason_phrase
        if 200 <= status < 300:
            return Outcome.delivered(status)
        if status in (403, 404, 410):  # action_prohibited, channel_not_found / no_service, channel_is_archived
            return Outcome.gone(f"Slack answered {status} {text}", status)
        return Outcome.reject(f"Slack answered {status} {text}", status)

    @staticmethod
    def _api_outcome(response: httpx.Response) -> tuple[Outcome, dict[str, Any]]:
        status = response.status_code
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return Outcome.reject(f"Slack answered {status} without a JSON body", status), {}
        if data.get("ok") is True:
            return Outcome.delivered(status), data
        error = str(data.get("error") or f"HTTP {status}")
        if error in STOPPING_ERRORS:
            return Outcome.gone(f"Slack refused: {error}", status), data
        if error in RETRYABLE_ERRORS:
            return Outcome.retry(f"Slack answered {error}", status), data
        return Outcome.reject(f"Slack refused the message: {error}", status), data
