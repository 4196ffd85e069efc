"""What plugins are handed besides events: the per-call context and the per-plugin view of the runner."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from hookrunner._core.events import Event, TtsCompleted, UserTranscription
from hookrunner._delivery.outbox import Outbox, RetryPolicy
from hookrunner._delivery.pacing import Pacing
from hookrunner._run.asyncio_hooks import on_asyncio

if TYPE_CHECKING:
    import httpx

    from hookrunner._delivery.messages import Deliverer
    from hookrunner._run.metrics import RunnerMetrics
    from hookrunner._run.outboxes import RunOutboxes
    from hookrunner._core.triggers import Trigger

__all__ = ["Turn", "CallContext", "App"]


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One finished turn of the transcript: ``speaker`` is ``"user"`` or ``"agent"``."""

    speaker: str
    text: str
    event_id: str | None
    timestamp: datetime


@dataclass(eq=False)
class CallContext:
    """One call as the runner follows it; the same object is passed to every hook of that call.

    ``turns`` holds the finished turns so far (final user transcriptions and completed agent speech, in stream
    order). ``state`` is free for plugins to keep per-call data in; key it by your plugin's name
    (``call.state.setdefault("myplugin", {})``) so plugins do not step on each other.
    """

    id: str
    turns: list[Turn] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    #: How many events of this call were dispatched so far.
    events_dispatched: int = 0
    #: Set once the call is over: ended, completed, not_found, gave_up or shutdown.
    finished_reason: str | None = None

    def record_turn(self, event: Event) -> None:
        """Keep ``event`` in ``turns`` if it finishes a turn (a final user transcription, completed agent speech);
        the runner calls it before the event's hooks, so a hook sees the turn it is handed among the turns."""
        if isinstance(event, UserTranscription):
            self.turns.append(Turn(speaker="user", text=event.text, event_id=event.event_id, timestamp=event.timestamp))
        elif isinstance(event, TtsCompleted):
            self.turns.append(Turn(speaker="agent", text=event.text, event_id=event.event_id, timestamp=event.timestamp))

    @property
    def transcript(self) -> str:
        """The turns so far as ``speaker: text`` lines."""
        return "\n".join(f"{turn.speaker}: {turn.text}" for turn in self.turns)


class App:
    """A plugin's view of the runner, handed to ``on_startup`` and ``on_shutdown``.

    Each plugin gets its own ``App``: ``settings`` is that plugin's ``[plugins.NAME]`` table, checked, with the
    top-level defaults of its ``settings_schema`` filled in (so ``app.settings["key"]`` always works for a declared
    key); triggers it emits are marked with its name.
    """

    def __init__(
        self,
        *,
        name: str,
        settings: dict[str, Any],
        http: httpx.AsyncClient,
        config_dir: Path,
        config_path: Path | None = None,
        start_soon: Callable[[str, Callable[..., Awaitable[Any]], tuple[Any, ...]], None],
        emit_trigger: Callable[[str, Trigger], None],
        shutdown_time_left: Callable[[], float] | None = None,
        metrics: RunnerMetrics | None = None,
        outboxes: RunOutboxes | None = None,
        on_asyncio: bool = False,
        pacing: Pacing | None = None,
        select_events: Callable[[str, str, Iterable[str] | None], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.http = http
        #: The directory of the config file: where a plugin puts files "next to the config" by default.
        self.config_dir = config_dir
        #: The config file itself (None for a built-in config such as the demo's): dead letters record it.
        self.config_path = config_path
        self._start_soon = start_soon
        self._emit_trigger = emit_trigger
        self._shutdown_time_left = shutdown_time_left
        #: The runner's metrics (``GET /metrics`` when ``[server]`` is on): ``metrics.registry`` takes the plugin's
        #: own ``prometheus_client`` metrics; ``metrics.track_outbox(outbox)`` shows an outbox's counts.
        self.metrics = metrics
        self._outboxes = outboxes
        #: The plugin sets ``HOOKRUNNER_ASYNCIO = True``: its hooks and background coroutines run on asyncio.
        self.on_asyncio = on_asyncio
        #: Turns at outside services' rate limits, shared by every worker process of the run (``runner.workers``):
        #: ``await app.pacing.take_turn("slack:#alerts", 1.0)`` keeps one post a second to that channel in all.
        self.pacing = pacing if pacing is not None else Pacing()
        self._select_events = select_events

    def select_events(self, hook_name: str, event_types: Iterable[str] | None) -> None:
        """Call this plugin's ``hook_name`` (``on_event`` or an event type's own hook) only for events whose
        ``event_type`` one of ``event_types`` picks (names or globs: ``"user_*"``); ``()`` for none; ``None`` for
        every event again (the default).

        Every implementation costs each event a call, and with thousands of live calls that is the runner's
        budget: a plugin whose settings leave it nothing to do for most events (no endpoint, no rule reading
        interim text) says so here, in ``on_startup`` or ``on_reload``, and is not called for them.
        """
        if self._select_events is None:
            raise RuntimeError("select_events is available in on_startup and on_reload of a run")
        self._select_events(self.name, hook_name, event_types)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background, inside the runner's nursery.

        An exception in it is logged with this plugin's name and does not stop the runner. Background tasks are
        cancelled after ``on_shutdown`` returns: flush what must not be lost in ``on_shutdown``. For a plugin that
        sets ``HOOKRUNNER_ASYNCIO = True``, an ``async def`` runs as an asyncio task of the run's loop.
        """
        if self.on_asyncio and inspect.iscoroutinefunction(fn):
            fn = on_asyncio(fn)
        self._start_soon(self.name, fn, args)

    def open_outbox(
        self,
        name: str,
        deliver: Deliverer,
        *,
        dead_letter: str | Path,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 10,
        max_queue: int = 10_000,
        batch_max_events: int = 1,
        batch_max_wait: float = 0.0,
    ) -> Outbox:
        """An outbox of this plugin's messages to one destination (``name``: an endpoint, a route), run by the
        runner: ``submit`` to it from any hook. Call it from ``on_startup``.

        The runner delivers it in the background with ``deliver``, retrying by ``policy``; shows its delivered,
        retried and dead-lettered counts on ``/metrics``, labelled with this plugin and ``name``; with the journal on
        (``[state] path``) keeps every message it accepts there until delivered or dead-lettered, and sends first
        what a killed run left. At shutdown it delivers what is queued within the grace and dead-letters the rest to
        ``dead_letter`` (relative to the config file's directory; one file may serve many outboxes and plugins).
        A plugin does not close it.
        """
        if self._outboxes is None:
            raise RuntimeError("open_outbox is available in on_startup of a run")
        outbox = Outbox(
            name,
            deliver,
            self._outboxes.dead_letter_file(self.config_dir / dead_letter),
            plugin=self.name,
            policy=policy or RetryPolicy(),
            max_in_flight=max_in_flight,
            max_queue=max_queue,
            batch_max_events=batch_max_events,
            batch_max_wait=batch_max_wait,
        )
        self._outboxes.open(self.name, outbox)
        return outbox

    def shutdown_time_left(self) -> float:
        """Seconds ``on_shutdown`` may still take before the runner cuts it: finish (or hand off) by then."""
        return self._shutdown_time_left() if self._shutdown_time_left else 0.0

    def emit_trigger(self, trigger: Trigger) -> None:
        """Hand a trigger to every plugin's ``on_trigger``. Never blocks; callable from sync or async code."""
        self._emit_trigger(self.name, trigger)
