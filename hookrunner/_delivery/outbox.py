"""The outbox: reliable, ordered, bounded delivery of messages to one outside endpoint.

Notifier plugins (webhook, Slack, a third party's) share it so that each one gets the same guarantees without
writing them again:

- ``submit`` never blocks: a hook hands the message over and returns, so delivery never slows the stream.
- Per ordering key (a call id), messages are delivered in submission order; a message being retried holds back
  its key's later messages, never other keys'. Up to ``max_in_flight`` deliveries run at once.
- Failures are retried with exponential backoff and full jitter, floored by the server's ``Retry-After``, until
  ``max_attempts`` or ``max_retry_time``; what cannot be delivered is appended to the dead-letter file, from
  which ``hookrunner redeliver`` sends it again. So is what arrives while the queue is full (``max_queue``), and
  what is still queued or in flight when ``close`` runs out of time. Nothing is dropped silently.

What to send and how to read the answer is the plugin's part: a ``Deliverer`` takes a batch of messages and
returns an ``Outcome``. The retry loop is written here rather than with a retry library because it holds state
those cannot: a per-key order, a server-given floor on one delay, and a deadline shared with shutdown.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import trio

from hookrunner._core.backoff import DEFAULT_MAX_RETRY_AFTER, backoff_delay
from hookrunner._delivery.dead_letters import DeadLetterFile
from hookrunner._delivery.messages import Deliverer, OutboxMessage, Outcome
from hookrunner._core.failures import first_leaf, is_cancellation
from hookrunner._core.logs import FieldsAdapter, log_fields
from hookrunner._core.text import one_line

if TYPE_CHECKING:
    from hookrunner._state.journal import OutboxJournal

__all__ = ["Outbox", "OutboxMessage", "Outcome", "RetryPolicy", "Deliverer", "OutboxStats"]

log = logging.getLogger("hookrunner.outbox")

#: Seconds close() lets cancelled deliveries unwind (cut requests end at once; this only bounds a stuck one).
UNWIND_WAIT = 0.2
#: Failures in a row of the delivery loop itself after which the endpoint is stopped for the run.
MAX_RESTARTS = 5
#: Seconds a group of refused messages (queue full, endpoint gone) gathers before one write and fsync.
REFUSED_WRITE_INTERVAL = 0.1


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    max_retry_time: float = 3600.0
    initial_delay: float = 1.0
    max_delay: float = 300.0
    #: The longest a receiver's Retry-After may hold a message back.
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        """The policy a notifier's settings spell with the bundled plugins' key names (``max_attempts``,
        ``max_retry_time``, ``retry_initial_delay``, ``retry_max_delay``, ``max_retry_after``)."""
        return cls(
            max_attempts=settings.max_attempts,
            max_retry_time=settings.max_retry_time,
            initial_delay=settings.retry_initial_delay,
            max_delay=settings.retry_max_delay,
            max_retry_after=settings.max_retry_after,
        )


@dataclass
class OutboxStats:
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    #: Not delivered when the outbox closed, and kept in the journal for the next run (not dead-lettered).
    left_in_journal: int = 0
    #: Seconds from submit to success of the latest deliveries (bounded: a long run keeps the recent ones).
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def percentile(self, fraction: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]

    def summary(self) -> str:
        p50, p99 = self.percentile(0.50), self.percentile(0.99)
        latency = "" if p50 is None or p99 is None else f", latency p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"
        kept = f", {self.left_in_journal} left in the journal" if self.left_in_journal else ""
        return f"{self.delivered} delivered, {self.retried} retried, {self.dead_lettered} dead-lettered{kept}{latency}"


class Outbox:
    """Delivers one endpoint's messages; run ``run()`` as a background task and ``close()`` at shutdown."""

    def __init__(
        self,
        name: str,
        deliver: Deliverer,
        dead_letters: DeadLetterFile,
        *,
        plugin: str,
        policy: RetryPolicy = RetryPolicy(),
        max_in_flight: int = 10,
        max_queue: int = 10_000,
        batch_max_events: int = 1,
        batch_max_wait: float = 0.0,
    ) -> None:
        self.name = name
        self.plugin = plugin
        self._log = FieldsAdapter(log, log_fields(plugin=plugin, endpoint=name))
        self.stats = OutboxStats()
        self._deliver = deliver
        self._dead_letters = dead_letters
        self._policy = policy
        self._max_in_flight = max_in_flight
        self._slots = trio.Semaphore(max_in_flight)
        self._max_queue = max_queue
        self._batch_max_events = batch_max_events
        self._batch_max_wait = batch_max_wait
        self._queues: dict[str, deque[OutboxMessage]] = {}
        self._ready: deque[str] = deque()  # keys with queued messages and nothing in flight, oldest first
        self._busy: set[str] = set()
        self._queued = 0
        self._in_flight: dict[int, list[OutboxMessage]] = {}
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._gone: str | None = None
        self._journal: OutboxJournal | None = None
        self._after_stop = 0  # messages dead-lettered since the endpoint stopped (logged once, at close)
        self._closed = False
        self._refused: list[tuple[OutboxMessage, str]] = []  # to dead-letter, waiting to be written as a group
        self._refused_waiting = trio.Event()
        self._overflowing = 0  # messages refused in the current overflow episode
        self._run_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    # --- producer side ----------------------------------------------------------------------------------------

    def submit(self, message: OutboxMessage) -> None:
        """Queue ``message`` behind its key's earlier ones; never blocks. A full queue dead-letters it."""
        if self._gone is not None or self._closed:
            self._refuse(message, f"endpoint gone: {self._gone}" if self._gone else "submitted after shutdown")
            return
        if self._queued >= self._max_queue:
            self._overflow(message)
            return
        if self._journal is not None and message.journal_handle is None:
            message.journal_handle = self._journal.add(message)
        self._enqueue(message)

    def attach_journal(self, journal: OutboxJournal) -> None:
        """Keep every accepted message in ``journal`` until it is delivered or dead-lettered, and queue first what a
        previous run left there (same ids, same order, attempts counted on). ``App.open_outbox`` does this."""
        self._journal = journal
        left = journal.pending()
        for row in left:
            self._enqueue(
                OutboxMessage(
                    id=row.id,
                    key=row.key,
                    body=row.body,
                    attempts=row.attempts,
                    first_attempt=row.first_attempt,
                    journal_handle=row.handle,
                    not_before=row.next_attempt,
                )
            )
        if left:
            self._log.info("%s: %d messages a previous run did not deliver are sent first (from the journal)", self.name, len(left))

    def _enqueue(self, message: OutboxMessage) -> None:
        queue = self._queues.get(message.key)
        if queue is None:
            queue = self._queues[message.key] = deque()
        queue.append(message)
        self._queued += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        if message.key not in self._busy and len(queue) == 1:
            self._ready.append(message.key)
        self._wakeup.set()

    def _overflow(self, message: OutboxMessage) -> None:
        """Past ``max_queue`` the message goes to the dead-letter file, announced by one warning per overflow
        episode, so an overload does not turn into a flood of log lines."""
        if not self._overflowing:
            self._log.warning(
                "%s: outbox full (%d messages queued); new messages go to the dead-letter file until it drains",
                self.name,
                self._queued,
            )
        self._overflowing += 1
        self._refuse(message, f"queue full ({self._max_queue} messages)")

    def _refuse(self, message: OutboxMessage, reason: str) -> None:
        """Dead-letter a message the outbox will not send. While ``run`` goes on they are written in groups (one
        fsync each, off the hook that submitted them); otherwise at once."""
        self._refused.append((message, reason))
        self._refused_waiting.set()
        if self._run_scope is None or self._stopped.is_set():
            self._flush_refused()

    def _flush_refused(self) -> None:
        refused, self._refused = self._refused, []
        by_reason: dict[str, list[OutboxMessage]] = {}
        for message, reason in refused:
            by_reason.setdefault(reason, []).append(message)
        for reason, messages in by_reason.items():
            self._dead_letter(messages, reason)
        if self._overflowing and self._queued < self._max_queue:
            self._log.warning("%s: outbox has room again; %d messages went to the dead-letter file", self.name, self._overflowing)
            self._overflowing = 0

    @property
    def pending(self) -> int:
        """Messages queued or in flight."""
        return self._queued + sum(len(batch) for batch in self._in_flight.values())

    # --- delivery side ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled or closed. ``app.open_outbox`` runs it (and shows its counts on ``/metrics``).

        A failure of the delivery loop itself (a bug, not a failed delivery) is the endpoint's, not the run's: the
        messages it was delivering go back to the front of their keys, the loop starts again, and after
        ``MAX_RESTARTS`` failures in a row (no delivery in between) the endpoint is stopped and everything goes
        to the dead-letter file.
        """
        restarts, delivered = 0, 0
        try:
            with trio.CancelScope() as self._run_scope:
                while self._gone is None:
                    try:
                        await self._deliver_until_cancelled()
                    except BaseException as exc:
                        if is_cancellation(exc):
                            raise
                        restarts = 1 if self.stats.delivered > delivered else restarts + 1
                        delivered = self.stats.delivered
                        await self._recover(exc, restarts)
                await self._write_refused_in_groups()  # stopped: only dead letters from now on
        finally:
            self._flush_refused()
            self._stopped.set()

    async def _deliver_until_cancelled(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_refused_in_groups)
            while True:
                # Work first, then a slot: a retry that gave its slot back while waiting must get one again
                # rather than find it held by this loop idling for new work.
                await self._wait_ready()
                await self._slots.acquire()
                batch = await self._next_batch()
                nursery.start_soon(self._deliver_batch, batch)

    async def _recover(self, exc: BaseException, restarts: int) -> None:
        """After the delivery loop failed (every delivery task has ended): put what was in flight back at the
        front of its keys (same ids: a receiver drops a copy that did arrive), or stop the endpoint when the loop
        keeps failing."""
        stranded = [message for batch in self._in_flight.values() for message in batch]
        self._in_flight.clear()
        self._busy.clear()
        for message in reversed(stranded):
            self._queues.setdefault(message.key, deque()).appendleft(message)
        self._queued += len(stranded)
        self._ready = deque(key for key, queue in self._queues.items() if queue)
        self._slots = trio.Semaphore(self._max_in_flight)  # no task holds the old one now
        leaf = first_leaf(exc)
        what = f"{type(leaf).__name__}: {one_line(str(leaf), 200)}"
        self._log.debug("%s: traceback", self.name, exc_info=exc)
        if restarts >= MAX_RESTARTS:
            self._log.error("%s: the delivery task failed %d times in a row (last: %s)", self.name, restarts, what)
            self._stop_endpoint(Outcome.gone(f"the delivery task failed {restarts} times ({what})"))
        else:
            self._log.error("%s: the delivery task failed (%s); starting it again with %d messages", self.name, what, self._queued)
            await trio.sleep(min(1.0, 0.05 * 2**restarts))  # a failure that repeats at once must not spin
        if not self._queued and not self._in_flight:
            self._idle.set()

    async def _write_refused_in_groups(self) -> None:
        while True:
            await self._refused_waiting.wait()
            await trio.sleep(REFUSED_WRITE_INTERVAL)  # let the group gather
            self._refused_waiting = trio.Event()
            self._flush_refused()

    async def _wait_ready(self) -> None:
        while not self._ready:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def _next_batch(self) -> list[OutboxMessage]:
        await self._wait_ready()
        batch: list[OutboxMessage] = []
        self._in_flight[id(batch)] = batch  # from now on close() finds these messages, even while it fills
        self._take(batch, self._batch_max_events)
        if len(batch) < self._batch_max_events and self._batch_max_wait > 0:
            with trio.move_on_after(self._batch_max_wait):
                while len(batch) < self._batch_max_events:
                    while not self._ready:
                        self._wakeup = trio.Event()
                        await self._wakeup.wait()
                    self._take(batch, self._batch_max_events)
        return batch

    def _take(self, batch: list[OutboxMessage], limit: int) -> None:
        """Move up to ``limit`` messages from ready keys into ``batch``, each key's in order; those keys turn busy."""
        while self._ready and len(batch) < limit:
            key = self._ready.popleft()
            queue = self._queues[key]
            while queue and len(batch) < limit:
                batch.append(queue.popleft())
                self._queued -= 1
            self._busy.add(key)

    async def _deliver_batch(self, batch: list[OutboxMessage]) -> None:
        holding_slot = True
        finished = False  # delivered or dead-lettered: otherwise (cancelled) close() dead-letters it
        try:
            scheduled = max((message.not_before or 0.0) for message in batch) - time.time()
            if scheduled > 0:  # a previous run's retry schedule: its next attempt is not due yet
                self._slots.release()
                holding_slot = False
                await trio.sleep(min(scheduled, max(self._policy.max_delay, self._policy.max_retry_after)))
                await self._slots.acquire()
                holding_slot = True
            while True:
                outcome = await self._attempt(batch)
                if outcome.kind == "delivered":
                    now = time.monotonic()
                    self._forget(batch, delivered=True)
                    self.stats.delivered += len(batch)
                    self.stats.latencies.extend(now - message.created for message in batch)
                    finished = True
                    break
                if outcome.kind == "gone":
                    finished = True
                    self._dead_letter(batch, f"endpoint gone: {outcome.why}")  # before the later, queued ones
                    self._stop_endpoint(outcome)
                    break
                if outcome.kind == "reject":
                    finished = True
                    self._log.error(
                        "%s: message %s rejected, not retried: %s", self.name, batch[0].id, outcome.why,
                        extra=_message_fields(batch[0], outcome),
                    )  # fmt: skip
                    self._dead_letter(batch, f"rejected: {outcome.why}")
                    break
                delay = backoff_delay(batch[0].attempts, self._policy, outcome.retry_after)
                first_attempt = batch[0].first_attempt or datetime.now(timezone.utc)  # (set by _attempt)
                elapsed = (datetime.now(timezone.utc) - first_attempt).total_seconds()
                if batch[0].attempts >= self._policy.max_attempts or elapsed + delay > self._policy.max_retry_time:
                    finished = True
                    self._log.error(
                        "%s: message %s not delivered after %d attempts over %.0f s (last: %s)",
                        self.name,
                        batch[0].id,
                        batch[0].attempts,
                        elapsed,
                        outcome.why,
                        extra=_message_fields(batch[0], outcome),
                    )
                    self._dead_letter(batch, f"retries exhausted: {outcome.why}")
                    break
                self.stats.retried += len(batch)
                if self._journal is not None:
                    not_before = time.time() + delay
                    for message in batch:
                        message.not_before = not_before
                        self._journal.attempted(message)
                self._log.warning(
                    "%s: message %s attempt %d failed (%s); retrying in %.2f s",
                    self.name,
                    batch[0].id,
                    batch[0].attempts,
                    outcome.why,
                    delay,
                    extra=_message_fields(batch[0], outcome),
                )
                self._slots.release()  # waiting is not a request: let other keys use the slot
                holding_slot = False
                await trio.sleep(delay)
                await self._slots.acquire()
                holding_slot = True
                if self._gone is not None:  # stopped by another batch's 410 meanwhile: send nothing more
                    finished = True
                    self._dead_letter(batch, f"endpoint gone: {self._gone}")
                    break
        finally:
            if finished:
                del self._in_flight[id(batch)]
            if holding_slot:
                self._slots.release()
            self._release_keys(batch)

    async def _attempt(self, batch: list[OutboxMessage]) -> Outcome:
        now = datetime.now(timezone.utc)
        for message in batch:
            message.attempts += 1
            message.first_attempt = message.first_attempt or now
            message.last_attempt = now
            if self._journal is not None:
                self._journal.attempted(message)
        try:
            outcome = await self._deliver(batch)
        except BaseException as exc:  # a deliverer's bug must not kill the outbox: treat it as a failed attempt
            if is_cancellation(exc):
                raise
            self._log.error("%s: deliverer raised %s: %s", self.name, type(exc).__name__, one_line(str(exc), 500))
            outcome = Outcome.retry(f"deliverer raised {type(exc).__name__}")
        for message in batch:
            message.last_status = outcome.status
            message.last_error = None if outcome.kind == "delivered" else outcome.why
        return outcome

    def _release_keys(self, batch: list[OutboxMessage]) -> None:
        for key in dict.fromkeys(message.key for message in batch):
            self._busy.discard(key)
            if self._queues.get(key):
                self._ready.append(key)
            elif key in self._queues:
                del self._queues[key]
        if self._ready:
            self._wakeup.set()
        if not self._queued and not self._in_flight:
            self._idle.set()

    def _stop_endpoint(self, outcome: Outcome) -> None:
        if self._gone is not None:
            return
        self._gone = outcome.why
        self._log.error(
            "%s: endpoint stopped for this run: %s; its messages go to the dead-letter file %s, counted, not logged "
            "one by one",
            self.name,
            outcome.why,
            self._dead_letters.path,
        )
        queued = [message for queue in self._queues.values() for message in queue]
        self._queues.clear()
        self._ready.clear()
        self._queued = 0
        self._dead_letter(queued, f"endpoint gone: {outcome.why}")

    def _dead_letter(self, messages: list[OutboxMessage], reason: str) -> None:
        if not messages:
            return
        self.stats.dead_lettered += len(messages)
        self._forget(messages)
        quiet = self._gone is not None  # a stopped endpoint said so once: its later letters are only counted
        if quiet:
            self._after_stop += len(messages)
        self._dead_letters.append(self.plugin, self.name, messages, reason, quiet=quiet)

    def _forget(self, messages: list[OutboxMessage], *, delivered: bool = False) -> None:
        """Delivered (kept for ``hookrunner replay`` during ``[state] keep``) or dead-lettered (out of the journal:
        the dead-letter file has it)."""
        if self._journal is None:
            return
        for message in messages:
            if message.journal_handle is not None:
                self._journal.finished(message.journal_handle, delivered=delivered)
                message.journal_handle = None

    # --- shutdown ---------------------------------------------------------------------------------------------

    async def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout``), then dead-letter whatever is left and stop; with a journal,
        what is left stays in it instead, for the next run to send first (the journal is the replayable place).

        Also does so when cancelled, so a shutdown cut short still loses nothing. A message whose
        request was cut off may have reached the receiver anyway; its id lets the receiver drop the duplicate.
        """
        self._closed = True
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._idle.wait()
        finally:
            if self._run_scope is not None:
                self._run_scope.cancel()
                # Let the delivery tasks unwind first: one finishing as it is cancelled counts as delivered.
                with trio.CancelScope(shield=True), trio.move_on_after(UNWIND_WAIT):
                    await self._stopped.wait()
            left = [message for batch in self._in_flight.values() for message in batch]
            left += [message for queue in self._queues.values() for message in queue]
            self._in_flight.clear()
            self._queues.clear()
            self._ready.clear()
            self._queued = 0
            self._flush_refused()
            if self._journal is not None and left:  # the next run sends them first, with the same ids
                self.stats.left_in_journal += len(left)
                self._log.warning(
                    "%s: %d messages not delivered before shutdown stay in the journal; the next run sends them first",
                    self.name,
                    len(left),
                )
            else:
                self._dead_letter(left, "not delivered before shutdown")
            if self._after_stop:
                self._log.warning(
                    "%s: %d messages went to the dead-letter file %s after the endpoint stopped (%s)",
                    self.name,
                    self._after_stop,
                    self._dead_letters.path,
                    self._gone,
                )


def _message_fields(message: OutboxMessage, outcome: Outcome) -> dict[str, Any]:
    """The fields of a line about one delivery attempt: which message, which attempt, what the receiver said."""
    return log_fields(message_id=message.id, attempt=message.attempts, status=outcome.status)
