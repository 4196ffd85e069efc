"""The way past a call's buffer: the stream task dispatches a read's events itself while nothing is queued or being
dispatched, and hands the rest to the dispatch task at the first hook that returns an awaitable. Plugins must see no
difference: every event once, in order, never two of one call at once, also when plain and async hooks alternate
and when reads arrive while an async hook waits; and a stop that cuts a handed-over rest keeps its events, and
leaves no plugin coroutine unawaited."""

from __future__ import annotations

import gc
import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio

from hookrunner import hookimpl
from hookrunner._core.events import decode_event
from hookrunner._core.stats import Stats
from hookrunner._run.context import CallContext
from hookrunner._run.dispatch import HookDispatcher
from hookrunner._run.plugins import new_plugin_manager
from hookrunner._simulator import running_simulator

from helpers import build_runner, make_config, script
from hookrunner.testing import run_plugins


def _events(n: int, spacing: float) -> list[dict[str, Any]]:
    """Caller finals every third event, agent speech between: bursts and gaps (``spacing``) both."""
    events = []
    for i in range(n):
        at = (i // 4) * spacing  # four events per read, roughly
        if i % 3 == 2:
            events.append({"at": at, "event_type": "user_transcription", "user_transcription_text": f"final {i}"})
        else:
            events.append({"at": at, "event_type": "tts_completed", "tts_text": f"speech {i}"})
    return events


class Mixed:
    """Plain ``on_event``; an async ``on_user_transcription`` that waits long enough for the next reads to come in.
    Records what it sees per call, and any event that reached it while another of its call was in its hooks."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.busy: set[str] = set()
        self.overlaps: list[tuple[str, str]] = []

    @hookimpl(tryfirst=True)
    async def on_user_transcription(self, event: Any, call: Any) -> None:
        self._enter(event, call)
        await trio.sleep(self.wait)
        self.busy.discard(call.id)

    @hookimpl
    def on_event(self, event: Any, call: Any) -> None:
        if event.event_type != "user_transcription":
            self._enter(event, call)
            self.busy.discard(call.id)

    def _enter(self, event: Any, call: Any) -> None:
        if call.id in self.busy:
            self.overlaps.append((call.id, event.event_id))
        self.busy.add(call.id)
        self.seen[call.id].append(event.event_id)


async def test_plain_and_async_hooks_alternating_see_every_event_once_in_order_and_never_two_at_once() -> None:
    mixed = Mixed(wait=0.02)
    calls = [{"id": f"CALL-MIX-{n}", "events": _events(24, spacing=0.01)} for n in range(3)]
    result = await run_plugins({"mixed": mixed}, script(calls))
    assert result.exit_code == 0 and not result.failures
    assert mixed.overlaps == []
    for call in calls:
        streamed = [event.event_id for event in result.events[call["id"]]]
        assert len(streamed) == 26  # sse_init, 24, sse_close
        assert mixed.seen[call["id"]] == streamed
        assert len(set(streamed)) == len(streamed)


class StallsOnFinals:
    """Plain for everything but caller finals, whose hook outlasts the stop's grace."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    async def on_user_transcription(self, event: Any, call: Any) -> None:
        await trio.sleep(30)

    @hookimpl
    def on_event(self, event: Any, call: Any) -> None:
        self.seen.append(event.event_id)


async def test_a_stop_that_cuts_a_handed_over_rest_spools_it_in_order_from_the_event_in_its_hooks(tmp_path: Path) -> None:
    plugin = StallsOnFinals()
    spool = tmp_path / "left.jsonl"
    # One read: sse_init, two agent lines, then a final (its async hook stalls), then more the stream task had
    # already read: the final and what follows go to the dispatch task as one rest, and a later read queues behind.
    events = [
        {"at": 0.0, "event_type": "tts_completed", "tts_text": "one"},
        {"at": 0.0, "event_type": "tts_completed", "tts_text": "two"},
        {"at": 0.0, "event_type": "user_transcription", "user_transcription_text": "stall here"},
        {"at": 0.0, "event_type": "tts_completed", "tts_text": "three"},
        {"at": 0.0, "event_type": "user_transcription", "user_transcription_text": "and here"},
        {"at": 0.2, "event_type": "tts_completed", "tts_text": "later"},
        {"at": 30.0, "event_type": "tts_completed", "tts_text": "never read"},  # (keeps the stream open)
    ]
    async with running_simulator(script([{"id": "CALL-CUT", "events": events}])) as sim:
        config = make_config(sim.base_url, shutdown_grace=0.3, spool_file=str(spool))
        runner = build_runner(config, ["CALL-CUT"], plugin)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            await trio.sleep(0.6)  # the stall began, and the later read is queued behind it
            runner.stop()
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    # Dispatched: sse_init and the two agent lines (the stalled final's on_event never ran); the rest is spooled,
    # in stream order, from the final on.
    assert len(plugin.seen) == 3
    assert [line.get("user_transcription_text") or line.get("tts_text") for line in spooled] == [
        "stall here", "three", "and here", "later",
    ]  # fmt: skip
    assert runner.stats.events_spooled == 4


class AsyncOnly:
    @hookimpl
    async def on_event(self, event: Any, call: Any) -> None:
        raise AssertionError("never run: the pending hooks are dropped")


def test_pending_hooks_dropped_unawaited_close_the_plugins_coroutine_without_a_warning() -> None:
    """A rest handed over and cut by a stop before the dispatch task took it holds a plugin coroutine that never
    ran: closing it keeps Python from warning, at collection, that it was never awaited (its event is kept)."""
    pm = new_plugin_manager()
    pm.register(AsyncOnly(), name="async-only")
    dispatcher = HookDispatcher(pm, hook_timeout=5.0, stats=Stats())
    event = decode_event('{"event_type": "tts_completed", "event_id": "e1", "tts_text": "hi"}', "CALL-DROP")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pending = dispatcher.dispatch_event(event, CallContext("CALL-DROP"))
        assert pending is not None
        pending.close()
        del pending
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
