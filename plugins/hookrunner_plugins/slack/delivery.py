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

from hookrunner.delivery import (
    DEFAULT_MAX_RETRY_AFTER, Outcome, Pacing, json_bytes, one_line, parse_retry_after, request, truncated,
)  # fmt: skip

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
#: The most of Slack's answer read: it echoes the posted message (50 blocks of 3,000 characters at most).
MAX_ANSWER = 1024 * 1024
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"})


class Pacer:
    """Spaces the posts to one channel ``interval`` seconds apart; a 429 holds the channel for its Retry-After.

    The turns are the run's (``app.pacing``): with ``runner.workers`` every worker posts to the same channel, and
    the interval holds across all of them. Alerts go first: a post that is not ``urgent`` (a transcript line)
    waits while an alert of this process waits, so a channel that also carries live transcripts never makes an
    alert queue behind them. Among equals, first come first.
    """

    def __init__(self, interval: float, pacing: Pacing | None = None, key: str = "channel") -> None:
        self._interval = interval
        self._pacing = pacing or Pacing()
        self._key = f"slack:{key}"
        self._turns = trio.Condition()
        self._busy = False  # one post of this process is taking its turn (waiting out the interval)
        self._urgent_waiting = 0

    async def wait_turn(self, urgent: bool = True) -> None:
        async with self._turns:
            self._urgent_waiting += urgent
            try:
                while self._busy or (not urgent and self._urgent_waiting):
                    await self._turns.wait()
                self._busy = True
            finally:
                self._urgent_waiting -= urgent
        try:
            await self._pacing.take_turn(self._key, self._interval)  # a 429 may push the turn further meanwhile
        finally:
            with trio.CancelScope(shield=True):  # a cancelled turn must still hand the channel on
                async with self._turns:
                    self._busy = False
                    self._turns.notify_all()

    def hold(self, seconds: float) -> None:
        self._pacing.hold(self._key, seconds)


class Poster:
    """Sends one payload for one route; returns what it came to, and Slack's answer (for the thread's ``ts``)."""

    def __init__(
        self,
        route: RouteSettings,
        http: httpx.AsyncClient,
        api_base_url: str,
        timeout: float,
        pacer: Pacer,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    ) -> None:
        self.route = route
        self._max_retry_after = max_retry_after
        self._http = http
        self._timeout = timeout
        self._pacer = pacer
        self._url = route.webhook_url or f"{api_base_url}/chat.postMessage"
        self._headers = {"content-type": "application/json; charset=utf-8"}
        if route.token:
            self._headers["Authorization"] = f"Bearer {route.token}"

    async def post(
        self, payload: dict[str, Any], thread_ts: str | None = None, *, urgent: bool = True
    ) -> tuple[Outcome, dict[str, Any]]:
        """``urgent``: an alert (it goes before transcript lines waiting for the same channel)."""
        body = dict(payload)
        if self.route.token:
            body["channel"] = self.route.channel
            if thread_ts:
                body["thread_ts"] = thread_ts
        await self._pacer.wait_turn(urgent)
        try:
            # the whole exchange within the timeout; Slack's answer echoes the message, so it may be long, not huge
            response = await request(
                self._http,
                "POST",
                self._url,
                content=json_bytes(body),  # always encodable, unlike httpx's json= (a lone surrogate fails it)
                headers=self._headers,
                timeout=self._timeout,
                max_body=MAX_ANSWER,
            )
        except httpx.TimeoutException:
            return Outcome.retry(f"Slack did not answer within {self._timeout:g} s"), {}
        except httpx.TransportError as exc:
            return Outcome.retry(f"connection to Slack failed ({type(exc).__name__})"), {}
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after")) or 1.0
            retry_after = min(retry_after, self._max_retry_after)  # Retry-After: 100000 must not hold it a day
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
        text = one_line(response.text.strip(), 100) if response.text.strip() else response.reason_phrase
        if 200 <= status < 300:
            return Outcome.delivered(status)
        if status in (403, 404, 410):  # action_prohibited, channel_not_found / no_service, channel_is_archived
            return Outcome.gone(f"Slack answered {status} {text}", status)
        return Outcome.reject(f"Slack answered {status} {text}", status)

    @staticmethod
    def _api_outcome(response: httpx.Response) -> tuple[Outcome, dict[str, Any]]:
        status = response.status_code
        try:
            data = None if truncated(response) else response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            what = f"an answer over {MAX_ANSWER} bytes" if truncated(response) else "no JSON body"
            return Outcome.reject(f"Slack answered {status} with {what}", status), {}
        if data.get("ok") is True:
            return Outcome.delivered(status), data
        error = one_line(str(data.get("error") or f"HTTP {status}"), 100)
        if error in STOPPING_ERRORS:
            return Outcome.gone(f"Slack refused: {error}", status), data
        if error in RETRYABLE_ERRORS:
            return Outcome.retry(f"Slack answered {error}", status), data
        return Outcome.reject(f"Slack refused the message: {error}", status), data
