"""Finding live calls by listing them: ``GET {base}/conversation?statusFilter=...`` every ``discovery.interval``.

Every page of every listing is read, and each call id goes to the runner's ``follow``, which alone decides what
is new (a call stays in the listing for as long as Atoms thinks it in progress, often after our stream ended) and
refuses, counting them, ids that are not call ids. A failed listing (5xx, 429, a timeout, a body we cannot
read) is logged and retried with the subscriptions' full-jitter backoff, never sooner than the interval and never
before a (capped) ``Retry-After``; it touches nothing else, so calls already followed go on undisturbed. A refused key (401/403) stops the runner, as it does for streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from hookrunner._core.backoff import backoff_delay, parse_retry_after
from hookrunner._core.bounded_http import request, truncated
from hookrunner._core.config import DiscoveryConfig
from hookrunner._core.errors import AuthError
from hookrunner._core.logs import logged_at
from hookrunner._stream.ratelimit import RateLimiter
from hookrunner._core.stats import Stats
from hookrunner._stream.atoms_errors import error_body
from hookrunner._core.text import one_line

log = logging.getLogger("hookrunner.discovery")

#: A listing never reads more pages than this (500 calls each): a server that always says "more" cannot loop us.
MAX_PAGES = 200
#: Keys a listed call's id may come under (the reference says callId; be lenient about the spelling).
ID_KEYS = ("callId", "call_id", "conversationId")
#: The most of one listing page read (500 calls are a few hundred KiB): a runaway answer cannot fill the memory.
MAX_PAGE_BYTES = 16 * 1024 * 1024


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
        limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._url = f"{base_url}/conversation"
        self._api_key = api_key
        self._follow = follow
        self._stats = stats
        self._limiter = limiter  # shared with backfill: every Atoms REST request counts against one limit

    async def run(self) -> None:
        failures = 0
        while True:
            started = trio.current_time()
            try:
                await self.list_calls()
            except AuthError:
                raise
            except Exception as exc:  # a failed listing, or one we did not foresee: either way, keep discovering
                failed = exc if isinstance(exc, ListingFailed) else ListingFailed(f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, ListingFailed):
                    log.debug("discovery: unexpected error while listing calls", exc_info=True)
                failures += 1
                self._stats.listing_failures += 1
                await trio.sleep(self._retry_delay(failures, failed))
                continue
            if failures:
                log.info("discovery: listing calls works again after %d failed attempts", failures)
            failures = 0
            self._stats.listings += 1
            await trio.sleep_until(started + self.config.interval)

    def _retry_delay(self, failures: int, failed: ListingFailed) -> float:
        """Full-jitter backoff, never sooner than the interval, never before a (bounded) Retry-After."""
        retry_after = failed.retry_after
        ceiling = self.config.max_retry_after
        if retry_after is not None and retry_after > ceiling:
            log.warning(
                "discovery: Retry-After of %g s is more than %g s (discovery.max_retry_after); waiting %g s",
                retry_after,
                ceiling,
                ceiling,
            )
        delay = max(self.config.interval, backoff_delay(failures, self.config, retry_after))
        log.log(
            logging.WARNING if logged_at(failures) else logging.DEBUG,
            "discovery: listing calls failed (%s); calls already followed go on; next try in %.2f s (failure %d)",
            failed.why,
            delay,
            failures,
        )
        return delay

    async def list_calls(self) -> list[str]:
        """Read every page of the listing, handing each call id to ``follow`` as its page arrives (so a failure on
        a later page loses nothing already read); the ids found, in the order listed."""
        found: dict[str, None] = {}
        statuses = {status.casefold() for status in self.config.statuses}
        skipped = 0
        for page in range(1, MAX_PAGES + 1):
            if page > 1:
                await trio.sleep(self.config.page_interval)
            logs, more = await self._page(page)
            for entry in logs:
                call_id = _call_id(entry)
                status = entry.get("status")
                if call_id is None or (isinstance(status, str) and status.casefold() not in statuses):
                    skipped += 1
                    continue
                if call_id not in found:
                    found[call_id] = None
                    self._follow(call_id, "listing")
            if not more:
                break
        else:
            log.warning("discovery: stopped reading the listing after %d pages (discovery.page_size %d)", MAX_PAGES, self.config.page_size)
        if skipped:
            log.debug("discovery: %d listed entries skipped (no call id, or a status not in discovery.statuses)", skipped)
        return list(found)

    async def _page(self, page: int) -> tuple[list[dict[str, Any]], bool]:
        params = {"statusFilter": ",".join(self.config.statuses), "limit": self.config.page_size, "page": page}
        if self.config.agent_ids:
            params["agentIds"] = ",".join(self.config.agent_ids)
        if self.config.campaign_ids:
            params["campaignIds"] = ",".join(self.config.campaign_ids)
        if self._limiter is not None:
            await self._limiter.acquire(ahead=True)  # never starved by queued backfills
        self._stats.listing_requests += 1
        try:
            response = await request(  # the whole request: httpx's timeouts are per phase
                self._client,
                "GET",
                self._url,
                params=params,
                headers={"Authorization": f"Bearer {self._api_key}"},
                timeout=self.config.timeout,
                max_body=MAX_PAGE_BYTES,
            )
        except httpx.TimeoutException:
            raise ListingFailed(f"page {page}: no answer within {self.config.timeout:g} s (discovery.timeout)") from None
        except httpx.HTTPError as exc:  # connection failures, undecodable bodies, redirect loops...
            raise ListingFailed(
                f"page {page}: request failed ({type(exc).__name__}: {one_line(str(exc) or 'no detail', 200)})"
            ) from None
        if truncated(response):
            raise ListingFailed(f"page {page}: an answer over {MAX_PAGE_BYTES} bytes; not a listing")
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
        except (ValueError, KeyError, TypeError, httpx.HTTPError):
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
    """Whether another page follows: the pagination block when it says (hasMore, totalPages, or total with the
    limit the server applied, which may be lower than asked), else a full page means maybe."""
    if isinstance(pagination, dict):
        has_more = pagination.get("hasMore")
        if isinstance(has_more, bool):
            return has_more
        pages = _whole(pagination.get("totalPages"))
        if pages is not None:
            return page < pages
        total, applied = _whole(pagination.get("total")), _whole(pagination.get("limit"))
        if total is not None:
            return page * (applied or count or limit) < total
        if applied:
            limit = applied
    return count > 0 and count >= limit


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
