"""Backfill: the events a call's stream skipped, found afterwards in the call's stored conversation.

The live stream has no resume: a reconnect may replay what was sent (dedupe handles that) or resume past a
stretch, and a call that ends while hookrunner is down is never streamed again. Atoms keeps every call's raw
events: ``GET {base}/conversation/{callId}`` answers them in ``data.events`` (the Atoms SDK's ``calls.get``). At
the end of a call, the runner asks for it and dispatches, marked ``event.backfilled``, each event whose id was
never passed on. Atoms may still be writing the conversation when the stream ends (its ``status`` is not final
yet), so the ask is repeated within ``backfill.window``; what is there when the window closes is used.

Every ask waits for the shared REST rate limiter (``ratelimit.py``) and is bounded in time and size. A failure
here belongs to the one call: it is logged and counted, and the call finishes as it would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import trio

from hookrunner._core.bounded_http import request, truncated
from hookrunner._core.config import BackfillConfig
from hookrunner._core.events import Event, MalformedEvent, event_from_dict
from hookrunner._stream.ratelimit import RateLimiter
from hookrunner._core.stats import Stats
from hookrunner._stream.atoms_errors import RETRYABLE_STATUSES, error_body
from hookrunner._stream.subscription import event_key
from hookrunner._core.text import encodable, one_line

__all__ = ["Backfiller", "FINAL_STATUSES", "MAX_CONVERSATION_BYTES"]

log = logging.getLogger("hookrunner.backfill")

#: Conversation statuses after which Atoms writes nothing more (the SDK's GetCallsResponseDataStatus).
FINAL_STATUSES = frozenset({"completed", "failed", "no_answer", "cancelled"})
#: The most of one conversation read: a long call's events are a few MiB; a runaway answer cannot fill the memory.
MAX_CONVERSATION_BYTES = 64 * 1024 * 1024
#: Stream lifecycle types: they belong to one SSE connection, never to the stored conversation's history.
_CONNECTION_TYPES = frozenset({"sse_init", "sse_close"})


class _NotYet(Exception):
    """This ask did not give the whole conversation; worth asking again within the window."""

    def __init__(self, why: str, events: list[dict[str, Any]] | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.events = events  # what the answer held so far (a conversation still being written)


class _NoConversation(Exception):
    """Asking again will not help (unknown call, a refused key, an answer that is not a conversation)."""


class Backfiller:
    """Asks Atoms for ended calls' conversations; ``missing`` gives the events a call's stream never passed on."""

    def __init__(
        self,
        config: BackfillConfig,
        *,
        client: httpx.AsyncClient,
        base_url: str,
        api_key: str,
        limiter: RateLimiter,
        stats: Stats,
    ) -> None:
        self.config = config
        self._client = client
        self._base_url = base_url
        self._api_key = api_key
        self._limiter = limiter
        self._stats = stats

    async def missing(self, call_id: str, passed_on: Callable[[str], bool]) -> list[Event]:
        """The events of ``call_id``'s conversation with an id that ``passed_on`` does not know, in the
        conversation's order, each ``backfilled``; empty when there are none or the conversation is not to be had."""
        raws = await self._conversation_events(call_id)
        if raws is None:
            return []
        received = datetime.now(timezone.utc)
        missing: list[Event] = []
        unreadable = 0
        for raw in raws:
            if not isinstance(raw, dict) or raw.get("event_type") in _CONNECTION_TYPES:
                continue
            try:
                event = event_from_dict(encodable(raw), call_id, received)
            except MalformedEvent:
                unreadable += 1
                continue
            key = event_key(event)
            if key is None or passed_on(key):  # (an event without an id cannot be told apart: not guessed at)
                continue
            missing.append(msgspec.structs.replace(event, backfilled=True))
        self._stats.backfills["filled" if missing else "complete"] += 1
        self._stats.events_backfilled += len(missing)
        if unreadable:
            log.warning("%s: backfill: %d stored events were not events (no event_type); skipped", call_id, unreadable)
        if missing:
            log.warning(
                "%s: backfill: %d events the stream skipped were found in the stored conversation; dispatching them",
                call_id,
                len(missing),
            )
        return missing

    async def _conversation_events(self, call_id: str) -> list[Any] | None:
        """The conversation's ``data.events``, asked for again within the window while it is not final."""
        deadline = trio.current_time() + self.config.window
        delay = self.config.retry_interval
        latest: list[Any] | None = None
        why = "no slot of atoms.max_requests_per_second came free"
        while True:
            try:
                with trio.fail_at(deadline + self.config.timeout):  # the rate limit's queue counts against it
                    return await self._ask(call_id)
            except _NoConversation as exc:
                self._stats.backfills["failed"] += 1
                log.warning("%s: backfill: %s; events the stream skipped, if any, are not dispatched", call_id, exc)
                return None
            except _NotYet as not_yet:
                if not_yet.events:  # (an empty list from a conversation still being written tells nothing)
                    latest = not_yet.events
                why = not_yet.why
            except trio.TooSlowError:
                break
            left = deadline - trio.current_time()
            if left <= 0:
                break
            wait = min(delay, left)  # the last ask comes as the window closes, not a doubling before it
            log.debug("%s: backfill: %s; asking again in %.2f s", call_id, why, wait)
            await trio.sleep(wait)
            delay *= 2
        if latest is not None:
            log.warning(
                "%s: backfill: %s after backfill.window (%g s); using the %d events stored so far",
                call_id,
                why,
                self.config.window,
                len(latest),
            )
            return latest
        self._stats.backfills["unavailable"] += 1
        log.warning(
            "%s: backfill: no conversation within backfill.window (%g s) (last: %s); events the stream skipped, "
            "if any, are not dispatched",
            call_id,
            self.config.window,
            why,
        )
        return None

    async def _ask(self, call_id: str) -> list[Any]:
        await self._limiter.acquire()
        self._stats.backfill_requests += 1
        try:
            response = await request(
                self._client,
                "GET",
                f"{self._base_url}/conversation/{quote(call_id, safe='')}",
                headers={"Authorization": f"Bearer {self._api_key}"},
                timeout=self.config.timeout,
                max_body=MAX_CONVERSATION_BYTES,
            )
        except httpx.TimeoutException:
            raise _NotYet(f"no answer within {self.config.timeout:g} s (backfill.timeout)") from None
        except httpx.HTTPError as exc:
            raise _NotYet(f"request failed ({type(exc).__name__}: {one_line(str(exc) or 'no detail', 200)})") from None
        status = response.status_code
        if status != 200:
            message, _ = error_body(response)
            if status >= 500 or status in RETRYABLE_STATUSES:
                raise _NotYet(f"{status} {message}")
            raise _NoConversation(f"Atoms answered {status} ({message}) for the conversation")
        if truncated(response):
            raise _NoConversation(f"a conversation over {MAX_CONVERSATION_BYTES} bytes")
        try:
            data = response.json()["data"]
            events = data.get("events")
            if events is not None and not isinstance(events, list):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError, httpx.HTTPError):
            raise _NoConversation('not a conversation (expected {"data": {"events": [...]}})') from None
        state = data.get("status")
        if isinstance(state, str) and state.casefold() not in FINAL_STATUSES:
            raise _NotYet(f"the conversation is {one_line(state, 40)}", events)
        if events is None:
            raise _NotYet("the conversation holds no events yet")
        return events
