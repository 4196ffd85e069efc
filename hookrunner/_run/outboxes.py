"""The outboxes plugins open through ``App.open_outbox``: the runner runs them, shows them, and closes them.

Every notifier needs the same wiring around its outboxes: a dead-letter file (one writer per file, however many
outboxes and plugins name it), the outbox's counts on ``/metrics``, the journal when ``[state] path`` is on, a
background task that delivers, and at shutdown a close that finishes a little before the runner's cut, so what is
left is dead-lettered (or kept in the journal) by the outbox rather than lost to a timeout. Done once here, a
plugin cannot get the order wrong or forget the close, and the close of every outbox gets the whole grace that is
left, whichever plugin's ``on_shutdown`` runs first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from hookrunner._delivery.dead_letters import DeadLetterFile
from hookrunner._delivery.outbox import Outbox
from hookrunner._run.metrics import RunnerMetrics
from hookrunner._state.journal import Journal

__all__ = ["RunOutboxes", "SHUTDOWN_MARGIN"]

log = logging.getLogger("hookrunner.outbox")

#: Seconds before the runner's cut at which the outboxes stop delivering, so the outbox itself dead-letters (or
#: keeps in the journal) what is left, with its reason, instead of a cancelled task dropping it.
SHUTDOWN_MARGIN = 0.1

StartSoon = Callable[[str, Callable[..., Awaitable[Any]], tuple[Any, ...]], None]


class RunOutboxes:
    """The run's outboxes, by plugin; ``open`` starts one, ``close_all`` ends them all within a timeout."""

    def __init__(
        self,
        *,
        start_soon: StartSoon,
        config_path: Path | None,
        metrics: RunnerMetrics | None = None,
        journal: Journal | None = None,
    ) -> None:
        self._start_soon = start_soon
        self._config_path = config_path
        self._metrics = metrics
        self._journal = journal
        self._dead_letter_files: dict[Path, DeadLetterFile] = {}
        self._opened: list[tuple[str, Outbox]] = []

    def dead_letter_file(self, path: Path) -> DeadLetterFile:
        """The one writer of the dead-letter file at ``path`` (an absolute path)."""
        key = path.resolve()
        if key not in self._dead_letter_files:
            self._dead_letter_files[key] = DeadLetterFile(path, config_path=self._config_path)
        return self._dead_letter_files[key]

    def open(self, plugin: str, outbox: Outbox) -> None:
        """Show ``outbox`` on ``/metrics``, keep its messages in the journal when there is one (what a killed run
        left is sent first), and deliver it in the background until ``close_all``."""
        if self._metrics is not None:
            self._metrics.track_outbox(outbox)
        if self._journal is not None:
            outbox.attach_journal(self._journal.for_outbox(plugin, outbox.name))
        self._opened.append((plugin, outbox))
        self._start_soon(plugin, outbox.run, ())

    async def close_all(self, time_left: float) -> None:
        """Deliver what is queued for up to ``time_left`` less ``SHUTDOWN_MARGIN``, then dead-letter (or keep in
        the journal) the rest; one line per outbox says what became of its messages."""
        timeout = max(0.0, time_left - SHUTDOWN_MARGIN)
        try:
            async with trio.open_nursery() as nursery:
                for _, outbox in self._opened:
                    nursery.start_soon(outbox.close, timeout)
        finally:
            for plugin, outbox in self._opened:
                log.info("%s %s: %s", plugin, outbox.name, outbox.stats.summary())
