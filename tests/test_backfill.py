"""Backfill: events a stream skipped (a reconnect that resumed past them, a call that ended while hookrunner was
down) are found in the call's stored conversation and dispatched, marked ``backfilled``, after the live events
and before ``on_call_finished``. Against the simulator's ``GET /conversation/{callId}`` on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from hookrunner import hookimpl
from hookrunner._stream.ratelimit import RateLimiter
from hookrunner._simulator import running_simulator
from hookrunner.testing import config_table

from helpers import (
    afinish,
    build_runner,
    hookrunner_process,
    kill_9_after_lines,
    make_config,
    run_runner,
    script,
    wait_until_call_over,
    write_config,
)


def turns(n: int, spacing: float = 0.05) -> list[dict[str, Any]]:
    return [
        {"at": i * spacing, "event_type": "user_transcription", "user_transcription_text": f"turn {i}"} for i in range(n)
    ]


class Timeline:
    """What reached the plugin, in order: ("event", id, backfilled) and ("finished", reason)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    @hookimpl
    def on_user_transcription(self, event: Any, call: Any) -> None:
        self.seen.append(("event", event.event_id, event.backfilled))

    @hookimpl
    def on_call_finished(self, call: Any, reason: str) -> None:
        self.seen.append(("finished", reason))


def backfill_config(base_url: str, **backfill: Any) -> dict[str, Any]:
    config = make_config(base_url)
    config["backfill"] = {"retry_interval": 0.05, "window": 5.0, **backfill}
    return config


async def test_a_reconnect_that_skips_three_events_gets_them_backfilled_at_the_end_before_on_call_finished() -> None:
    calls = [{"id": "CALL-GAP", "events": turns(10), "drop_after": 3, "reconnect_skips": 3}]
    async with running_simulator(script(calls)) as sim:
        timeline = Timeline()
        code, runner = await run_runner(backfill_config(sim.base_url), ["CALL-GAP"], timeline)
    assert code == 0
    ids = [entry[1] for entry in timeline.seen if entry[0] == "event"]
    live = [entry[1] for entry in timeline.seen if entry[0] == "event" and not entry[2]]
    backfilled = [entry[1] for entry in timeline.seen if entry[0] == "event" and entry[2]]
    assert len(ids) == len(set(ids)) == 10  # every turn once
    assert [int(i.split("_")[1]) for i in live] == [0, 1, 2, 6, 7, 8, 9]  # the stream resumed past 3, 4, 5
    assert [int(i.split("_")[1]) for i in backfilled] == [3, 4, 5]
    assert timeline.seen[-4:-1] == [("event", i, True) for i in backfilled]  # after the live ones...
    assert timeline.seen[-1] == ("finished", "ended")  # ...and before the call is finished
    assert runner.stats.events_backfilled == 3 and runner.stats.backfills["filled"] == 1
    metrics = runner.metrics.render().decode()
    assert "hookrunner_events_backfilled_total 3.0" in metrics
    assert 'hookrunner_backfills_total{outcome="filled"} 1.0' in metrics


async def test_a_complete_stream_is_compared_once_and_nothing_is_dispatched_twice() -> None:
    async with running_simulator(script([{"id": "CALL-WHOLE", "events": turns(5)}])) as sim:
        timeline = Timeline()
        code, runner = await run_runner(backfill_config(sim.base_url), ["CALL-WHOLE"], timeline)
        requests = sim.conversation_requests
    assert code == 0
    assert [entry[2] for entry in timeline.seen if entry[0] == "event"] == [False] * 5
    assert requests == 1 and runner.stats.backfills == {"complete": 1} and runner.stats.events_backfilled == 0


async def test_a_conversation_still_being_written_is_asked_for_again_within_the_window() -> None:
    calls = [{
        "id": "CALL-LAG", "events": turns(6), "drop_after": 2, "reconnect_skips": 2,
        "conversation_lag": 0.4, "conversation_fail_first": 1,
    }]  # fmt: skip
    async with running_simulator(script(calls)) as sim:
        timeline = Timeline()
        code, runner = await run_runner(backfill_config(sim.base_url), ["CALL-LAG"], timeline)
        answers = [record.status for record in sim.conversation_log]
    assert code == 0
    assert answers[0] == 503 and answers[-1] == 200 and len(answers) >= 3  # a failure, "processing", then it
    assert [entry[1].split("_")[1] for entry in timeline.seen if entry[0] == "event" and entry[2]] == ["2", "3"]
    assert timeline.seen[-1] == ("finished", "ended")


async def test_with_backfill_off_nothing_is_asked_and_the_skipped_events_stay_missing() -> None:
    calls = [{"id": "CALL-OFF", "events": turns(8), "drop_after": 3, "reconnect_skips": 3}]
    async with running_simulator(script(calls)) as sim:
        timeline = Timeline()
        code, runner = await run_runner(backfill_config(sim.base_url, enabled=False), ["CALL-OFF"], timeline)
        requests = sim.conversation_requests
    assert code == 0 and requests == 0
    assert len([entry for entry in timeline.seen if entry[0] == "event"]) == 5
    assert runner.stats.events_backfilled == 0


async def test_a_conversation_that_never_becomes_final_is_used_as_it_is_when_the_window_closes() -> None:
    calls = [{"id": "CALL-SLOWLOG", "events": turns(6), "drop_after": 2, "reconnect_skips": 2, "conversation_lag": 60}]
    async with running_simulator(script(calls)) as sim:
        timeline = Timeline()
        with trio.fail_after(5):
            code, runner = await run_runner(backfill_config(sim.base_url, window=0.3), ["CALL-SLOWLOG"], timeline)
    assert code == 0
    assert timeline.seen[-1] == ("finished", "ended")  # the call finished within the window, not held by it
    assert runner.stats.backfills == {"unavailable": 1}


RECORDING_PLUGIN = """
from hookrunner import hookimpl

@hookimpl
def on_user_transcription(event, call):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(f"{{event.event_id}} {{event.backfilled}}\\n")

@hookimpl
def on_call_finished(call, reason):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(f"finished {{reason}}\\n")
"""


@pytest.mark.parametrize("restart", [(), ("--call", "CALL-DOWN")], ids=["the journal's calls", "the same --call"])
async def test_a_call_that_ended_while_the_runner_was_down_is_finished_from_its_conversation_on_restart(
    tmp_path: Path, restart: tuple[str, ...]
) -> None:
    out = tmp_path / "seen.txt"
    (tmp_path / "recording.py").write_text(RECORDING_PLUGIN.format(out=str(out)), encoding="utf-8")
    async with running_simulator(script([{"id": "CALL-DOWN", "events": turns(20, spacing=0.05)}])) as sim:
        table = config_table(sim.base_url, settings={"load": ["recording.py"]})
        table["state"] = {"path": "state.db", "commit_interval": 0.02}
        table["backfill"] = {"retry_interval": 0.05}
        config = write_config(tmp_path, table)
        before = await kill_9_after_lines(hookrunner_process("run", str(config), "--call", "CALL-DOWN"), out, 5)
        await wait_until_call_over(sim, "CALL-DOWN")  # the call ends while no runner follows it
        code, _, err = await afinish(hookrunner_process("run", str(config), *restart))
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert lines[-1] == "finished completed", lines
    events = [line.split() for line in lines[:-1]]
    assert len({event_id for event_id, _ in events}) == 20  # every turn of the call, across both runs
    assert len(events) - 20 <= 1  # only one dispatched within the last commit interval can come twice
    assert all(flag == "False" for _, flag in events[: len(before)])
    assert all(flag == "True" for _, flag in events[len(before) + 1 :])  # the rest came from the conversation
    assert "backfill: " in err and "events the stream skipped were found" in err


async def test_the_rate_limiter_spaces_requests_and_lets_the_listing_go_ahead_of_queued_backfills(autojump_clock) -> None:
    limiter = RateLimiter(10)
    granted: list[tuple[str, float]] = []

    async def ask(name: str, ahead: bool = False) -> None:
        await limiter.acquire(ahead=ahead)
        granted.append((name, round(trio.current_time(), 3)))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(ask, f"backfill-{n}")
            await trio.sleep(0)
        await trio.sleep(0.15)
        nursery.start_soon(ask, "listing", True)
    times = [at - round(start, 3) for _, at in granted]
    assert all(later - earlier >= 0.099 for earlier, later in zip(times, times[1:]))  # never two within 0.1 s
    names = [name for name, _ in granted]
    assert names.index("listing") <= 3  # it took the next free slot, ahead of the backfills still queued
    assert len(granted) == 6


async def test_backfill_and_the_listing_share_one_rate_limit_and_the_listing_keeps_its_pace() -> None:
    """Twelve calls end together, each owed a backfill, while discovery lists every 0.5 s; with
    atoms.max_requests_per_second = 5, no second sees more than 5 REST requests, and listings go on."""
    calls = [{"id": "CALL-RATE-{n}", "repeat": 12, "start": 0.05, "events": turns(4, spacing=0.4)}]
    async with running_simulator(script(calls)) as sim:
        config = backfill_config(sim.base_url)
        config["atoms"]["max_requests_per_second"] = 5
        config["discovery"] = {"poll": True, "interval": 0.5, "page_interval": 0.0}
        timeline = Timeline()
        runner = build_runner(config, [], timeline)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            with trio.fail_after(10):
                while runner.stats.backfills.total() < 12:
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
            runner.stop()
        moments = sorted([request.at for request in sim.listing_log] + [request.at for request in sim.conversation_log])
        listings = [request.at for request in sim.listing_log]
    assert sum(runner.stats.backfills.values()) == 12 and sim.conversation_requests >= 12
    busiest = max(sum(1 for moment in moments if start <= moment < start + 1.0) for start in moments)
    assert busiest <= 6, busiest  # 5 per second (one more for a request in flight at the window's edge)
    during = [at for at in listings if sim.conversation_log[0].at <= at <= sim.conversation_log[-1].at]
    assert during, "the listing waited behind the backfills"
