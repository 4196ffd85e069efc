"""One call's buffer between its stream and its plugins, and the way past it when it is empty.

Handing a batch from the stream task to the dispatch task costs two passes of trio's scheduler; with a read's worth
of events per batch that was a seventh of the runner's CPU per event in a flood, and with one event a read (a
paced call) the most of it. So when the buffer is empty and the dispatch task has finished everything it was
given, the stream task dispatches the read's events itself, and as long as every hook implementation is a plain
function nothing waits and nothing is handed over. The first implementation that returns an awaitable ends that:
the event in its hooks and the rest of the batch go to the dispatch task (``Resume``), which awaits it in the
call's order. A call's events still reach plugins in order and never two at once, since the stream task takes
the way past only when nothing is queued or being dispatched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from hookrunner._core.events import Event, type_label
from hookrunner._core.stats import Stats
from hookrunner._run.context import CallContext
from hookrunner._run.dispatch import PendingHooks
from hookrunner._state.journal import CallJournal
from hookrunner._stream.subscription import Subscribed

__all__ = ["CallBuffer", "Resume", "BatchDispatcher"]


@dataclass(slots=True)
class Resume:
    """The rest of a batch the stream task began: ``events[0]``'s hooks returned ``pending``, awaited first."""

    pending: PendingHooks
    events: list[Event]


#: What goes down a call's channel.
Item = list[Event] | Subscribed | Resume


class BatchDispatcher:
    """Dispatches a call's events in order, from whichever task holds them (stream or dispatch)."""

    def __init__(
        self,
        call: CallContext,
        dispatch: Callable[[Event, Any], PendingHooks | None],
        stats: Stats,
        journal: CallJournal | None,
    ) -> None:
        self._call = call
        self._dispatch = dispatch
        self._by_type = stats.events_by_type
        #: The call's journal (None when ``[state]`` is off).
        self.journal = journal

    def run_from(self, batch: list[Event], start: int) -> tuple[int, PendingHooks | None]:
        """Dispatch ``batch[start:]`` until an implementation returns an awaitable: (the index of that event, the
        awaitable); else ``(len(batch), None)``. The events before the index are done (and the journal told)."""
        call, dispatch, by_type = self._call, self._dispatch, self._by_type
        done, pending = start, None
        for index in range(start, len(batch)):
            event = batch[index]
            by_type[type_label(event.event_type)] += 1
            call.record_turn(event)
            pending = dispatch(event, call)  # (None: every hook was a plain function, done)
            if pending is not None:
                break
            done += 1
        call.events_dispatched += done - start
        if self.journal is not None and done > start:  # (a commit runs only while a task waits: told before
            self.journal.dispatched(done - start)  # each wait, a kill repeats only the event in its hooks)
        return done, pending

    def finished_one(self) -> None:
        """The event whose awaitable was awaited reached every plugin."""
        self._call.events_dispatched += 1
        if self.journal is not None:
            self.journal.dispatched(1)


class CallBuffer:
    """The sending side of the call's channel, with the way past it (see the module's docstring)."""

    def __init__(self, send: trio.MemorySendChannel[Item], dispatcher: BatchDispatcher) -> None:
        self._send = send
        self._dispatcher = dispatcher
        #: Items sent and not yet finished by the dispatch task: the way past is taken only at 0.
        self.outstanding = 0

    def send_nowait(self, item: list[Event] | Subscribed) -> None:
        """Dispatch a batch at once when nothing is ahead of it, else queue it (``trio.WouldBlock`` when full)."""
        if self.outstanding == 0 and isinstance(item, list):
            done, pending = self._dispatcher.run_from(item, 0)
            if pending is None:
                return
            self._queue(Resume(pending, item[done:]))  # (the channel is empty: this cannot block)
            return
        self._queue(item)

    def _queue(self, item: Item) -> None:
        self._send.send_nowait(item)
        self.outstanding += 1

    async def send(self, item: list[Event] | Subscribed) -> None:
        """Queue ``item``, waiting while the buffer is full."""
        self.outstanding += 1
        try:
            await self._send.send(item)
        except BaseException:
            self.outstanding -= 1
            raise

    def finished(self) -> None:
        """The dispatch task is done with one item."""
        self.outstanding -= 1
