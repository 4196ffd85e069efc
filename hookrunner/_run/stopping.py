"""How a run stops: as deadlines on the cancel scopes that a stop must reach, not as flags tasks poll.

Three kinds of scope: a ``SUBSCRIPTION`` (a stream, an intake taking calls) is cancelled at once, since reading
more means owing more; a ``DRAIN`` scope (dispatching what was received, ``on_call_finished``, the trigger queue)
gets the first half of ``runner.shutdown_grace``; the ``FINAL`` scope (``on_shutdown``, the outboxes' close) the
whole of it. A scope entered after the stop began gets its deadline on entry, so nothing started late outlives the
grace. A second signal cuts every scope at once.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

__all__ = ["Stopping", "DRAIN", "SUBSCRIPTION", "FINAL", "watch_signals"]

log = logging.getLogger("hookrunner.runner")

DRAIN, SUBSCRIPTION, FINAL = "drain", "subscription", "final"


class Stopping:
    """The scopes a stop reaches and the deadlines it set; ``stoppable(kind)`` makes one."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.begun = False
        self._scopes: dict[trio.CancelScope, str] = {}
        self._deadlines = {DRAIN: math.inf, FINAL: math.inf}

    def stop(self) -> bool:
        """Begin a graceful stop (subscriptions cancelled, the rest on the grace's deadlines); False if it had."""
        if self.begun:
            return False
        self.begun = True
        now = trio.current_time()
        self._deadlines = {DRAIN: now + self.grace / 2, FINAL: now + self.grace}
        for scope, kind in self._scopes.items():
            self._apply(scope, kind)
        return True

    def stop_at_once(self) -> None:
        """Cut every scope now (a second signal)."""
        self.begun = True
        now = trio.current_time()
        self._deadlines = {DRAIN: now, FINAL: now}
        for scope in self._scopes:
            scope.cancel()

    def deadline(self, kind: str) -> float:
        """When scopes of ``kind`` end (``inf`` before a stop; ``SUBSCRIPTION`` scopes end at the stop itself)."""
        return self._deadlines[kind]

    @contextmanager
    def stoppable(self, kind: str) -> Iterator[trio.CancelScope]:
        """A cancel scope that a stop reaches, even one begun before the scope was entered."""
        scope = trio.CancelScope()
        self._scopes[scope] = kind
        if self.begun:
            self._apply(scope, kind)
        try:
            with scope:
                yield scope
        finally:
            del self._scopes[scope]

    def _apply(self, scope: trio.CancelScope, kind: str) -> None:
        if kind == SUBSCRIPTION:
            scope.cancel()
        else:
            scope.deadline = min(scope.deadline, self._deadlines[kind])


async def watch_signals(stop: Callable[[], None], stopping: Stopping, reload: Callable[[], Awaitable[object]]) -> None:
    """SIGINT/SIGTERM: ``stop()`` (the graceful way), again: stop at once; SIGHUP: ``reload()``."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await reload()
            elif not stopping.begun:
                log.warning(
                    "%s: stopping; draining received events for up to %g s (again to stop at once)",
                    signal.Signals(signum).name,
                    stopping.grace,
                )
                stop()
            else:
                log.warning("%s again: stopping at once", signal.Signals(signum).name)
                stopping.stop_at_once()
