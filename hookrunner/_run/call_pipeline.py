"""One call, from its stream to its plugins: the call's subscription, its bounded buffer and its dispatch task.

Data flows one way: the ``Subscription`` decodes lines into events and hands them to the call's buffer, the
events of one read as one batch (a full buffer makes the socket wait); they are dispatched by the stream task itself
while nothing is ahead of them, else by the dispatch task (``call_buffer``), which calls every plugin's hooks for
each event in turn, so a plugin sees a call's events in order and never two at once, while calls run side by side. About ``runner.buffer`` events at most wait between the socket and the plugins (a
batch in the channel, one being dispatched and one waiting to go in, each of at most a third of it). What a previous run
received and did not dispatch (the journal) goes first; what the stream skipped and the stored conversation holds
(``[backfill]``) goes last, before ``on_call_finished``. An event received is dispatched, or kept where it can be
replayed from (the journal, or else the spool file) when the grace runs out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

import msgspec
import trio

from hookrunner._core.config import Config
from hookrunner._core.errors import AuthError
from hookrunner._core.events import Event, MalformedEvent, decode_event
from hookrunner._core.failures import first_leaf, is_cancellation
from hookrunner._core.finish import FinishReason
from hookrunner._core.stats import Stats
from hookrunner._core.text import json_bytes, one_line
from hookrunner._run.call_buffer import BatchDispatcher, CallBuffer, Item, Resume
from hookrunner._run.context import CallContext
from hookrunner._run.dispatch import HookDispatcher, PendingHooks
from hookrunner._run.hook_queue import left_in
from hookrunner._run.stopping import DRAIN, SUBSCRIPTION, Stopping
from hookrunner._state.journal import CallJournal, Journal
from hookrunner._state.spool import spool_events
from hookrunner._stream.backfill import Backfiller
from hookrunner._stream.event_stream import StreamOpener
from hookrunner._stream.subscription import (
    AUTH_FAILED, COMPLETED, ENDED, FAILED, SHUTDOWN, Channel, Subscribed, Subscription, event_key,
)  # fmt: skip

__all__ = ["CallPipeline", "call_failed", "PUSHED", "BACKFILLED_REASONS"]

log = logging.getLogger("hookrunner.runner")

#: Sources of call ids that may name a call before its stream exists (a pre-conversation webhook, POST /calls).
PUSHED = frozenset({"push", "api"})
#: Ends after which the call's stored conversation is compared with what was dispatched (``[backfill]``): the call
#: is over (a stream that gave up or was not found may still be live, and comes back).
BACKFILLED_REASONS = frozenset({ENDED, COMPLETED})


def call_failed(call_id: str, exc: BaseException) -> FinishReason:
    """A failure while following one call is that call's: logged in one line (the traceback at debug)."""
    leaf = first_leaf(exc)
    log.error("%s: failed: %s: %s", call_id, type(leaf).__name__, one_line(str(leaf), 300))
    log.debug("%s: traceback", call_id, exc_info=exc)
    return FAILED


class CallPipeline:
    """Follows one call at a time per ``follow``; everything it needs is the run's, lent at construction."""

    def __init__(
        self,
        config: Config,
        *,
        streams: StreamOpener,
        api_key: str,
        stats: Stats,
        dispatcher: HookDispatcher,
        stopping: Stopping,
        key_refused: Callable[[AuthError], None],
        key_was_refused: Callable[[], bool],
        journal: Journal | None = None,
        resumed_calls: dict[str, None] | None = None,
        backfiller: Backfiller | None = None,
    ) -> None:
        self._config = config
        self._streams = streams
        self._api_key = api_key
        self._stats = stats
        self._dispatcher = dispatcher
        self._stopping = stopping
        self._key_refused = key_refused
        self._key_was_refused = key_was_refused
        self._journal = journal
        self._resumed_calls = resumed_calls if resumed_calls is not None else {}
        self._backfiller = backfiller
        self._openings = trio.Semaphore(config.runner.max_connecting)

    async def follow(self, call_id: str, source: str, journal: CallJournal | None) -> FinishReason:
        """Follow one call to its end (``source``: who found it); the reason it ended, given to ``on_call_finished``."""
        config = self._config
        call = CallContext(call_id)
        dispatched_before = self._journal.dispatched_keys(call_id) if self._journal is not None else []
        subscription = Subscription(
            call_id,
            streams=self._streams,
            api_key=self._api_key,
            connect_timeout=config.atoms.connect_timeout,
            idle_timeout=config.runner.idle_timeout,
            reconnect=config.runner.reconnect,
            stats=self._stats,
            not_found_grace=config.discovery.not_found_grace if source in PUSHED else 0.0,
            max_event_size=config.runner.max_event_bytes,
            seen_before=dispatched_before,
            on_received=journal.received_read if journal is not None else None,
            buffer=config.runner.buffer,
            openings=self._openings,
        )
        channel, receive = trio.open_memory_channel[Item](1)
        dispatcher = BatchDispatcher(call, self._dispatcher.dispatch_event, self._stats, journal)
        send = CallBuffer(channel, dispatcher)
        reason = SHUTDOWN
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dispatch_call, call, receive, send, dispatcher)
            async with channel:
                with self._stopping.stoppable(SUBSCRIPTION):
                    try:
                        if journal is not None:
                            await self._restore_events(journal, subscription, send)
                        reason = await subscription.run(send)
                        # (a call never streamed to us, in this run or one before, is owed nothing)
                        followed_before = call_id in self._resumed_calls or bool(dispatched_before)
                        if reason in BACKFILLED_REASONS and (subscription.subscribed or followed_before):
                            await self._backfill(call_id, subscription, send, journal)
                    except AuthError as exc:
                        self._key_refused(exc)
                    except BaseException as exc:  # what was received is still dispatched, and the call finished
                        if is_cancellation(exc):
                            raise
                        reason = call_failed(call_id, exc)
                if subscription.pending is not None:  # a stop caught the stream waiting on a full buffer
                    with self._stopping.stoppable(DRAIN):
                        await send.send(subscription.pending)
                        subscription.pending = None
        if journal is not None and journal.unfinished:  # a stop cut its backfill short: the next run finishes it
            reason = SHUTDOWN
        if subscription.pending is not None and journal is None:  # after the buffer the dispatch task spooled
            self._stats.events_spooled += spool_events(config.runner.spool_file, call_id, subscription.pending)
        if reason == SHUTDOWN and self._key_was_refused():
            reason = AUTH_FAILED
        elif reason == SHUTDOWN:
            log.info("%s: stopped by shutdown after %d events", call_id, call.events_dispatched)
        call.finished_reason = reason
        self._stats.calls_finished[reason] += 1
        with self._stopping.stoppable(DRAIN):
            await self._dispatcher.call("on_call_finished", {"call": call, "reason": reason}, call_id=call_id)
        return reason

    async def _restore_events(self, journal: CallJournal, subscription: Subscription, send: Channel) -> None:
        """Put first in the call's buffer the events a previous run received and did not dispatch."""
        assert self._journal is not None
        rows = self._journal.undispatched_events(journal.call_id)
        for seq, data, received, backfilled in rows:
            try:
                event = decode_event(data, journal.call_id, datetime.fromtimestamp(received, timezone.utc))
            except MalformedEvent:  # (it was decoded once: only a damaged file could do this)
                journal.restored(seq, None)
                journal.dispatched()
                continue
            if backfilled:
                event = msgspec.structs.replace(event, backfilled=True)
            journal.restored(seq, subscription.passed_on_before(event, data))
            await send.send([event])
        if rows:
            log.info("%s: %d events a previous run received are dispatched first", journal.call_id, len(rows))

    async def _backfill(
        self, call_id: str, subscription: Subscription, send: Channel, journal: CallJournal | None
    ) -> None:
        """Queue after the call's live events those its stored conversation holds and the stream never passed on
        (unless ``[backfill]`` is off). Until that is done, a stop leaves the call owed to the next run."""
        if self._backfiller is None:
            return
        if journal is not None:
            journal.unfinished = True
        events = await self._backfiller.missing(call_id, subscription.passed_on)
        if journal is not None:
            for event in events:
                journal.received(json_bytes(event.raw).decode(), time.time(), event_key(event), backfilled=True)
        if events:
            await send.send(events)
        if journal is not None:
            journal.unfinished = False

    async def _dispatch_call(
        self,
        call: CallContext,
        receive: trio.MemoryReceiveChannel[Item],
        buffer: CallBuffer,
        dispatcher: BatchDispatcher,
    ) -> None:
        batch: list[Event] = []
        done = 0  # of ``batch``, the events dispatched
        pending: PendingHooks | None = None  # the hooks of ``batch[done]`` still to be awaited
        async with receive:
            try:
                with self._stopping.stoppable(DRAIN):
                    async for item in receive:
                        if isinstance(item, Subscribed):
                            await self._dispatcher.call("on_call_subscribed", {"call": call}, call_id=call.id)
                            buffer.finished()
                            continue
                        if isinstance(item, Resume):
                            batch, done, pending = item.events, 0, item.pending
                        else:
                            batch, done = item, 0
                            done, pending = dispatcher.run_from(batch, 0)
                        while pending is not None:
                            await pending
                            pending = None
                            dispatcher.finished_one()
                            done, pending = dispatcher.run_from(batch, done + 1)
                        batch, done = [], 0
                        buffer.finished()
            finally:
                # Items are left (or one half dispatched) only when the grace ran out, or a stop at once, or a
                # bug cut this task: in every case they are kept where they can be replayed from (the journal,
                # whose next run dispatches them, or else the spool file).
                left = batch[done:]
                unawaited = [pending] if pending is not None else []
                for item in left_in(receive):
                    if isinstance(item, Resume):
                        left += item.events
                        unawaited.append(item.pending)
                    elif isinstance(item, list):
                        left += item
                for hooks in unawaited:  # (their events are kept: their hooks run again, whole, later)
                    hooks.close()
                if dispatcher.journal is not None:
                    if left:
                        log.warning("%s: %d events not dispatched stay in the journal for the next run", call.id, len(left))
                else:
                    self._stats.events_spooled += spool_events(self._config.runner.spool_file, call.id, left)
