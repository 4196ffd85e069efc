"""Finding live calls by listing them: ``GET {base}/conversation?statusFilter=...`` every ``discovery.interval``.

Every page of every listing is read, and each call id goes to the runner's ``follow``, which alone decides what
is new (a call stays in the listing for as long as Atoms thinks it in progress, often after our stream ended). A
failed listing (5xx, 429, a timeout, a body we cannot read) is logged and retried with the subscriptions'
full-jitter backoff, never sooner than the interval and never before a ``Retry-After``; it touches nothing else,
so calls already followed go on undisturbed. A refused key (401/403) stops the runner, as it does for streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from .backoff import backoff_delay, parse_retry_after
from .config import DiscoveryConfig
from .errors import AuthError
from .stats import Stats
from .subscription import error_body

log = logging.getLogger("hookrunner.discovery")

#: A listing never reads more pages than this (500 calls each): a server that always says "more" cannot loop us.
MAX_PAGES = 200
#: Keys a listed call's id may come under (the reference says callId; be lenient about the spelling).
ID_KEYS = ("callId", "call_id", "conversationId", "id")


@dataclass
class ListingFailed(Exception):
    why: str
    retry_after: float | None = None


class ListingPoller:
    """Lists active calls every interval and hands each id to ``follow(call_id, "listing")``."""

    def __init__(
        self,
        config: DiscoveryConfig,
        *,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        follow: Callable[[str, str], Any],
        stats: Stats,
    ) -> None:
        self.config = config
        self._client = client
        self._url = f"{base_url}/conversation"
        self._api_key = api_key
        self._follow = follow
        self._stats = stats

    async def run(self) -> None:
        failures = 0
        while True:
            started = trio.current_time()
            try:
                call_ids = await self.list_calls()
            except ListingFailed as failed:
                failures += 1
                self._stats.listing_failures += 1
                delay = max(self.config.interval, backoff_delay(failures, self.config, failed.retry_after))
                log.warning(
                    "discovery: listing calls failed (%s); calls already followed go on; next try in %.2f s",
                    failed.why,
                    delay,
                )
                await trio.sleep(delay)
                continue
            if failures:
                log.info("discovery: listing calls works again after %d failed attempts", failures)
            failures = 0
            self._stats.listings += 1
            for call_id in call_ids:
                self._follow(call_id, "listing")
            await trio.sleep_until(started + self.config.interval)

    async def list_calls(self) -> list[str]:
        """Every page of the listing: the ids of the calls in one of ``statuses``, in the order listed."""
        found: dict[str, None] = {}
        for page in range(1, MAX_PAGES + 1):
            logs, more = await self._page(page)
            for entry in logs:
                call_id = _call_id(entry)
                status = entry.get("status")
                if call_id and (not isinstance(status, str) or status in self.config.statuses):
                    found[call_id] = None
            if not more:
                break
        return list(found)

    async def _page(self, page: int) -> tuple[list[dict[str, Any]], bool]:
        params = {"statusFilter": ",".join(self.config.statuses), "limit": self.config.page_size, "page": page}
        if self.config.agent_ids:
            params["agentIds"] = ",".join(self.config.agent_ids)
        if self.config.campaign_ids:
            params["campaignIds"] = ",".join(self.config.campaign_ids)
        self._stats.listing_requests += 1
        try:
            response = await self._client.get(
                self._url,
                params=params,
                headers={"Authorization": f"Bearer {self._api_key}"},
                timeout=self.config.timeout,
            )
        except httpx.TimeoutException:
            raise ListingFailed(f"no answer within {self.config.timeout:g} s (discovery.timeout)") from None
        except httpx.TransportError as exc:
            raise ListingFailed(f"connection failed ({type(exc).__name__}: {exc or 'no detail'})") from None
        if response.status_code != 200:
            message, body_retry_after = error_body(response)
            if response.status_code in (401, 403):
                raise AuthError(
                    f"Atoms refused the API key ({response.status_code}: {message}) when listing calls; "
                    "check atoms.api_key_env and the key's organisation"
                )
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise ListingFailed(
                f"page {page}: {response.status_code} {message}", body_retry_after if retry_after is None else retry_after
            )
        try:
            data = response.json()["data"]
            logs = data["logs"]
            if not isinstance(logs, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ListingFailed(f"page {page}: not a listing (expected {{\"data\": {{\"logs\": [...]}}}})") from None
        entries = [entry for entry in logs if isinstance(entry, dict)]
        return entries, _more(data.get("pagination"), page, len(logs), self.config.page_size)


def _call_id(entry: dict[str, Any]) -> str | None:
    for key in ID_KEYS:
        value = entry.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _more(pagination: Any, page: int, count: int, limit: int) -> bool:
    """Whether another page follows: the pagination block when it says, else a full page means maybe."""
    if isinstance(pagination, dict):
        has_more = pagination.get("hasMore")
        if isinstance(has_more, bool):
            return has_more
        pages = pagination.get("totalPages")
        if isinstance(pages, int) and not isinstance(pages, bool):
            return page < pages
    return count >= limit
