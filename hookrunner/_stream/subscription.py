"""One call's stream: connect, read events, reconnect when the connection fails, and know when to stop.

Each answer is handled deliberately (see ``Subscription.run``). Reconnecting uses exponential backoff with full
jitter, floored by ``Retry-After``, and the attempt count starts over after a connection that delivered new
events. That state (progress resets the count, a server-given floor on one delay) is why the loop is written
here instead of with a retry library, whose attempts only ever count up.

There is no resume on this API: after a reconnect the server may replay or skip events. Events already passed
on are recognised by ``event_id`` (or, for events without one, by their exact text) and not passed on twice.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
import trio

from hookrunner._core.backoff import backoff_delay, parse_retry_after
from hookrunner._core.bounded_http import ERROR_BODY_LIMIT
from hookrunner._core.config import ReconnectConfig
from hookrunner._core.errors import AuthError
from hookrunner._core.finish import FinishReason
from hookrunner._core.events import TEXT_FIELDS, MalformedEvent, SseInit, decode_event, Event
from hookrunner._core.logs import logged_at
from hookrunner._stream.atoms_errors import RETRYABLE_STATUSES, error_body
from hookrunner._stream.event_stream import StreamAnswer, StreamBroken, StreamOpener, read_body
from hookrunner._stream.sse import SseReader, Oversized
from hookrunner._core.stats import Stats
from hookrunner._core.text import shown

log = logging.getLogger("hookrunner.subscription")

ENDED, COMPLETED, NOT_FOUND, GAVE_UP = FinishReason.ENDED, FinishReason.COMPLETED, FinishReason.NOT_FOUND, FinishReason.GAVE_UP
SHUTDOWN, AUTH_FAILED, FAILED = FinishReason.SHUTDOWN, FinishReason.AUTH_FAILED, FinishReason.FAILED

#: The events a call remembers having passed on (at least this many of the latest, at most twice): a reconnect
#: or a restart replays fewer, so none is passed on twice.
SEEN_IDS_KEPT = 50_000
#: The idle deadline is moved on a read only when the last move is older than this share of ``idle_timeout``, and
#: then to that much past it: a stream is given up after ``idle_timeout`` to 1.1 times it without a byte. Moving a
#: cancel scope's deadline costs trio a deadline-heap update, which on every read of a paced call was a few
#: percent of the runner's CPU per event.
IDLE_SLACK = 0.1
#: The longest stream line or event accepted unless ``runner.max_event_bytes`` says otherwise.
DEFAULT_MAX_EVENT_SIZE = 4 * 1024 * 1024


class Subscribed:
    """Sent down the channel once, when the call's stream first answers 200 (before its first event)."""


SUBSCRIBED = Subscribed()

class Channel(Protocol):
    """The call's buffer: its stream's events go down it a read at a time (one hand-off for all a read brought).
    A ``trio.MemorySendChannel``, or what stands in front of one (``CallBuffer``)."""

    def send_nowait(self, item: list[Event] | Subscribed) -> None:
        """Hand ``item`` over, or raise ``trio.WouldBlock`` when the buffer is full."""

    async def send(self, item: list[Event] | Subscribed) -> None:
        """Hand ``item`` over, waiting while the buffer is full."""


@dataclass
class _Retry(Exception):
    """This connection failed in a way worth another attempt."""

    why: str
    retry_after: float | None = None
    counts: bool = True  # False: not a failure of the connection (a pushed call not started yet)


class SeenEvents:
    """The keys of events already passed on, bounded so a long call cannot grow it without limit: at least the
    last ``limit`` are remembered, at most twice that. Two generations of sets, the older dropped whole when the
    newer fills: no per-key bookkeeping of order, which is a third of an ordered dict's cost per event."""

    def __init__(self, limit: int = SEEN_IDS_KEPT) -> None:
        self._keys: set[str] = set()
        self._older: set[str] = set()
        self._limit = limit

    def __contains__(self, key: str) -> bool:
        return key in self._keys or key in self._older

    def add(self, key: str) -> bool:
        """Remember ``key``; False if it was already there."""
        keys = self._keys
        if key in keys or key in self._older:
            return False
        keys.add(key)
        if len(keys) >= self._limit:
            self._older, self._keys = keys, set()
        return True


class Subscription:
    """Follows one call until it is over; ``run`` returns why it is over."""

    def __init__(
        self,
        call_id: str,
        *,
        streams: StreamOpener,
        api_key: str,
        connect_timeout: float,
        idle_timeout: float,
        reconnect: ReconnectConfig,
        stats: Stats,
        not_found_grace: float = 0.0,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        seen_before: Iterable[str] = (),
        on_received: Callable[[list[str], list[str], float], None] | None = None,
        buffer: int = 64,
        openings: trio.Semaphore | None = None,
    ) -> None:
        self.call_id = call_id
        #: Seconds from the first attempt during which a 404 is retried, not final: a pushed call id can arrive
        #: (pre-conversation webhook, POST /calls) before the call's stream exists.
        self._not_found_until = trio.current_time() + not_found_grace if not_found_grace else None
        self._streams = streams
        self._api_key = api_key
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._max_event_size = max_event_size
        self._reconnect = reconnect
        self._stats = stats
        self._seen = SeenEvents()
        for key in seen_before:  # dispatched by a run before this one (the journal): not passed on again
            self._seen.add(key)
        #: Told the event lines passed on (after dedupe), a batch at a time: the lines, their dedupe keys, and when
        #: they arrived (epoch seconds).
        self._on_received = on_received
        self._subscribed = False
        self._saw_call_end = False
        self._idle_moved_at = -math.inf  # (trio time the idle deadline was last moved; see IDLE_SLACK)
        self.events_received = 0
        self._skipped = 0  # malformed or oversized events of this call (logged at logs.logged_at counts)
        self._without_text = 0  # of this call's events, those missing their text field (logged at logged_at counts)
        #: Events received but not yet accepted by the call's buffer (set while ``run`` waits on a full buffer).
        self.pending: list[Event] | None = None
        #: The most events handed over at once: a read's events go as one batch, or several. A batch waits in the
        #: buffer, one is being dispatched and one waits to go in: a third each, so about ``buffer`` events at most
        #: (``buffer`` + 2) are between the socket and the plugins.
        self._batch_size = -(-buffer // 3)
        #: Shared by the runner's calls (``runner.max_connecting``): a slot is held from the first attempt until the
        #: call is subscribed or that attempt is over, so a burst of new calls is set up a few at a time, between
        #: the reads of the calls already followed, instead of all in one pass of the scheduler ahead of them.
        self._openings = openings
        self._opening: trio.Semaphore | None = None

    async def run(self, send: Channel) -> FinishReason:
        """Read the call's events into ``send`` until the call is over; return the reason.

        Raises ``AuthError`` on 401/403: the key is wrong for every call.
        """
        if self._openings is not None:
            await self._openings.acquire()
            self._opening = self._openings
        try:
            return await self._follow(send)
        finally:
            self._opened()

    def _opened(self) -> None:
        """The first attempt subscribed, or is over: the opening slot goes to the next call."""
        if self._opening is not None:
            self._opening.release()
            self._opening = None

    async def _follow(self, send: Channel) -> FinishReason:
        failures = 0  # failed connections in a row; one that delivered new events starts the count over
        waits = 0  # 404s of a pushed call that has not started yet (within not_found_grace)
        while True:
            received_before = self.events_received
            try:
                return await self._connect_once(send)
            except _Retry as retry:
                self._opened()
                if not retry.counts:
                    waits += 1
                    delay = backoff_delay(waits, self._reconnect, retry.retry_after)
                    log.info("%s: %s; trying again in %.2f s", self.call_id, retry.why, delay)
                    await trio.sleep(delay)
                    continue
                failures = 1 if self.events_received > received_before else failures + 1
                limit = self._reconnect.max_attempts
                if limit and failures > limit:
                    log.error(
                        "%s: giving up after %d reconnect attempts without a new event (last: %s)",
                        self.call_id,
                        limit,
                        retry.why,
                    )
                    return GAVE_UP
                delay = backoff_delay(failures, self._reconnect, retry.retry_after)
                self._stats.reconnects += 1
                log.log(
                    logging.WARNING if logged_at(failures) else logging.DEBUG,
                    "%s: %s; reconnecting in %.2f s (attempt %d%s)",
                    self.call_id,
                    retry.why,
                    delay,
                    failures,
                    f"/{limit}" if limit else "",
                )
                await trio.sleep(delay)

    async def _connect_once(self, send: Channel) -> FinishReason:
        # identity: a compressed chunk could inflate past every bound
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept-Encoding": "identity"}
        # Until the answer's headers are in, the whole exchange has connect_timeout (a server trickling its
        # headers cannot hold the call); from then on only the idle timeout applies, since calls are long. The idle
        # deadline runs while waiting for bytes (keep-alive comments count), never while the stream waits for slow
        # plugins: one scope, its deadline moved on reads (cheaper than a scope per read; IDLE_SLACK).
        now = trio.current_time()
        with trio.CancelScope(deadline=now + self._connect_timeout) as opening:
            with trio.CancelScope(deadline=now + self._idle_timeout) as idle:
                try:
                    async with self._streams.open(self.call_id, headers) as answer:
                        if answer.status != 200:  # its body, too, within connect_timeout
                            return self._finish_for_status(await _error_response(answer))
                        if not _is_event_stream(answer.headers):
                            why = f"not an event stream (Content-Type {shown(answer.headers.get('content-type'))})"
                            raise _Retry(why)
                        opening.deadline = math.inf
                        if not self._subscribed:
                            self._subscribed = True
                            await self._hand_over(SUBSCRIBED, send, idle)
                            self._opened()
                        reader = SseReader(self._max_event_size)
                        idle_timeout, slack = self._idle_timeout, self._idle_timeout * IDLE_SLACK
                        self._idle_moved_at = -math.inf
                        while True:
                            now = trio.current_time()
                            if now - self._idle_moved_at > slack:  # (see IDLE_SLACK)
                                idle.deadline = now + idle_timeout + slack
                                self._idle_moved_at = now
                            chunk = await answer.receive()
                            if not chunk:
                                break
                            lines = reader.feed(chunk)
                            size = self._batch_size
                            for start in range(0, len(lines), size):  # (decoded a batch at a time: the bound holds)
                                batch, closed = self._accept(lines[start : start + size] if len(lines) > size else lines)
                                if batch:
                                    await self._hand_over(batch, send, idle)
                                if closed:
                                    return ENDED
                except StreamBroken as exc:
                    raise _Retry(f"connection failed ({exc})") from None
            if idle.cancelled_caught:
                if opening.deadline != math.inf:  # still waiting for the answer itself
                    raise _Retry(f"no answer within {self._idle_timeout:g} s (runner.idle_timeout)")
                raise _Retry(f"no byte for {self._idle_timeout:g} s (runner.idle_timeout)")
        if opening.cancelled_caught:
            raise _Retry(f"no answer within {self._connect_timeout:g} s (atoms.connect_timeout)")
        if self._saw_call_end:
            return ENDED  # official clients stop at call_end too: the call is over, there is nothing to resume
        raise _Retry("stream ended without sse_close")

    async def _hand_over(self, item: list[Event] | Subscribed, send: Channel, idle: trio.CancelScope) -> None:
        """Into the call's buffer; when it is full, wait (backpressure to the socket) without the idle deadline."""
        if isinstance(item, list):
            self.pending = item  # if a stop cancels the wait below, the runner still owns these events
        try:
            send.send_nowait(item)  # (the common case: no scheduler pass for the stream's task)
        except trio.WouldBlock:
            idle.deadline = math.inf
            self._idle_moved_at = -math.inf  # (set again at the next read)
            await send.send(item)
        self.pending = None

    def _skip_oversized(self) -> None:
        self._stats.oversized_events += 1
        self._skip(f"an event over {self._max_event_size} characters (runner.max_event_bytes); the stream goes on")

    def _no_text(self, event_type: str, field: str) -> None:
        """A known event without its words is passed on (order and the rest of it still matter), but not quietly:
        an empty caller line would otherwise look like silence."""
        self._stats.events_without_text += 1
        self._without_text += 1
        if logged_at(self._without_text):
            log.warning(
                "%s: a %s event without %s: passed on with empty text (%d on this call)",
                self.call_id, event_type, field, self._without_text,
            )  # fmt: skip

    def _skip(self, what: str) -> None:
        """One event of this call not passed on (malformed or oversized): counted, logged at ``logged_at`` counts."""
        self._stats.malformed_lines += 1
        self._skipped += 1
        if logged_at(self._skipped):
            log.warning("%s: skipped %s (%d skipped on this call)", self.call_id, what, self._skipped)

    def _accept(self, lines: list[str | Oversized]) -> tuple[list[Event], bool]:
        """Decode a read's events, leaving out those already seen; and whether the call's ``sse_close`` is among
        them (what follows it is not read)."""
        batch: list[Event] = []
        received: list[str] = []
        keys: list[str] = []
        on_received = self._on_received
        closed = False
        seen_add, call_id = self._seen.add, self.call_id
        for data in lines:
            if isinstance(data, Oversized):
                self._skip_oversized()
                continue
            if not data:
                continue
            try:
                event = decode_event(data, call_id)
            except MalformedEvent as exc:
                self._skip(f"a malformed line ({exc.reason}): {shown(exc.line)}")
                continue
            key = _seen_key(event, data)
            if not seen_add(key):
                if not isinstance(event, SseInit):  # plugins see one sse_init per call: the first one received
                    self._stats.duplicates_skipped += 1
                continue
            event_type = event.event_type
            field = TEXT_FIELDS.get(event_type)  # the words a turn's event should carry
            if field is not None and field not in event.raw:
                self._no_text(event_type, field)
            if on_received is not None:
                received.append(data)
                keys.append(key)
            batch.append(event)
            if event_type == "call_end":
                self._saw_call_end = True
            elif event_type == "sse_close":
                closed = True
                break
        self.events_received += len(batch)
        self._stats.events_received += len(batch)
        if on_received is not None and received:
            on_received(received, keys, time.time())
        return batch, closed

    @property
    def subscribed(self) -> bool:
        """Whether the call's stream ever answered 200 (in this run)."""
        return self._subscribed

    def passed_on(self, key: str) -> bool:
        """Whether an event with this key (``event_key``) was passed on (or dispatched by an earlier run)."""
        return key in self._seen

    def passed_on_before(self, event: Event, data: str) -> str:
        """``event`` (line ``data``) reached the call's buffer another way (restored from the journal): a stream
        that sends it again does not pass it on twice. Its dedupe key."""
        key = _seen_key(event, data)
        self._seen.add(key)
        return key

    def _finish_for_status(self, response: httpx.Response) -> FinishReason:
        status = response.status_code
        message, body_retry_after = error_body(response)
        if status in (401, 403):
            raise AuthError(
                f"Atoms refused the API key ({status}: {message}) for call {self.call_id}; "
                "check atoms.api_key_env and the key's organisation"
            )
        if status == 400:
            if self.events_received:
                log.warning(
                    "%s: the call ended while the stream was down (400: %s); events after the last of %d received "
                    "were not seen",
                    self.call_id,
                    message,
                    self.events_received,
                )
            else:
                log.info("%s: call already completed, nothing to subscribe (400: %s)", self.call_id, message)
            return COMPLETED
        if status == 404 and not self._subscribed and self._not_found_until is not None:
            if trio.current_time() < self._not_found_until:
                raise _Retry(f"not found yet (404: {message}); the call may not have started", counts=False)
        if status == 404:
            log.error(
                "%s: not found (404: %s) - check the call id and that the API key belongs to the same organisation",
                self.call_id,
                message,
            )
            return NOT_FOUND
        if status >= 500 or status in RETRYABLE_STATUSES:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is None:
                retry_after = body_retry_after
            raise _Retry(f"server answered {status} ({message})", retry_after)
        log.error("%s: server answered %d (%s); not retrying", self.call_id, status, message)
        return GAVE_UP


def _is_event_stream(headers: Mapping[str, str]) -> bool:
    """``Content-Type: text/event-stream`` (any parameters; a ``charset`` is ignored: streams are UTF-8)."""
    content_type = headers.get("content-type", "")
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


async def _error_response(answer: StreamAnswer) -> httpx.Response:
    """An error answer as an ``httpx.Response`` (what ``error_body`` reads), its body cut at ``ERROR_BODY_LIMIT``."""
    body, _ = await read_body(answer, ERROR_BODY_LIMIT)
    return httpx.Response(
        answer.status,
        headers=answer.headers,
        content=body,
        extensions={"reason_phrase": answer.reason.encode("latin-1", "replace")},
    )


#: The key of a call's sse_init, whatever its text: plugins see one per call (a reconnect's is not passed on).
_SSE_INIT_KEY = "sse_init"
#: Events without an id are recognised by their text; past this length, by a digest of it (the set stays small).
_KEY_TEXT_LIMIT = 256


def event_key(event: Event) -> str | None:
    """The key an event with an id is recognised by after a reconnect or a restart (None without an id)."""
    if event.event_id is None:
        return None
    return event.event_id if len(event.event_id) <= _KEY_TEXT_LIMIT else _digest(event.event_id)


def _seen_key(event: Event, data: str) -> str:
    """What dedupe knows an event by: one key for every sse_init of the call, else ``_dedupe_key`` (whose usual
    answer, a short id, is taken here first: this runs once per event)."""
    key = event.event_id
    if key is not None and len(key) <= _KEY_TEXT_LIMIT and type(event) is not SseInit:
        return key
    return _SSE_INIT_KEY if isinstance(event, SseInit) else _dedupe_key(event, data)


def _dedupe_key(event: Event, data: str) -> str:
    key = event_key(event)
    if key is not None:
        return key
    return "\0" + (data if len(data) <= _KEY_TEXT_LIMIT else _digest(data))


def _digest(text: str) -> str:
    return "#" + hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).hexdigest()
