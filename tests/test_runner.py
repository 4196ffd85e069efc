"""The runner against the simulator over loopback: order, once-only delivery, reconnects, answers, isolation."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import trio

from hookrunner import TtsCompleted, UnknownEvent, UserTranscription, hookimpl
from hookrunner._simulator import running_simulator

from helpers import Recorder, call_events, make_config, run_runner, script


def expected_ids(call_id: str, n: int) -> list[str]:
    """The ids the simulator gives scripted events: ``{call_id}_{index}_{epoch_ms}``; compared by prefix."""
    return [f"{call_id}_{i}_" for i in range(n)]


def assert_in_order_once(recorder: Recorder, call_id: str, n_script_events: int) -> None:
    received = recorder.events[call_id]
    types = [event.event_type for event in received]
    assert types[0] == "sse_init" and types[-1] == "sse_close", types
    scripted = [event.event_id for event in received[1:-1]]
    assert len(scripted) == n_script_events, scripted
    for event_id, prefix in zip(scripted, expected_ids(call_id, n_script_events)):
        assert event_id.startswith(prefix), (event_id, prefix)
    assert len(set(scripted)) == len(scripted)


async def test_plugin_from_plugins_load_gets_every_event_of_three_concurrent_calls_in_order(tmp_path: Path) -> None:
    plugin_file = tmp_path / "my_hooks.py"
    plugin_file.write_text(
        textwrap.dedent(
            """
            import trio
            from hookrunner import hookimpl

            seen = {}
            typed = []
            active = {}
            overlap = []

            @hookimpl
            async def on_event(event, call):
                active[call.id] = active.get(call.id, 0) + 1
                overlap.append(active[call.id])
                await trio.sleep(0.001)
                seen.setdefault(call.id, []).append(event)
                active[call.id] -= 1

            @hookimpl
            def on_user_transcription(event, call):
                typed.append(("sync", type(event).__name__, event.text, len(call.turns)))

            @hookimpl
            async def on_tts_completed(event):
                typed.append(("async", type(event).__name__, event.text, event.latency_ms))
            """
        )
    )
    calls = [{"id": f"CALL-100-{n}", "events": call_events(12, spacing=0.01)} for n in range(3)]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, plugins={"load": ["my_hooks.py"]})
        code, runner = await run_runner(config, [c["id"] for c in calls], base_dir=tmp_path)
    assert code == 0
    module = runner.plugins.pm.get_plugin("my_hooks")
    for call in calls:
        received = module.seen[call["id"]]
        assert [e.event_type for e in received][0] == "sse_init"
        assert [e.event_type for e in received][-1] == "sse_close"
        scripted = [e.event_id for e in received[1:-1]]
        assert len(scripted) == 12 and len(set(scripted)) == 12
        assert all(eid.startswith(p) for eid, p in zip(scripted, expected_ids(call["id"], 12)))
    assert max(module.overlap) == 1, "two events of one call were dispatched at once"
    assert sum(1 for t in module.typed if t[0] == "sync") == 18  # 6 finals per call, plain function
    assert sum(1 for t in module.typed if t[0] == "async") == 18  # 6 agent turns per call, async def
    assert all(t[1] == "UserTranscription" for t in module.typed if t[0] == "sync")
    assert all(t[1] == "TtsCompleted" and isinstance(t[3], int) for t in module.typed if t[0] == "async")
    assert runner.stats.calls_finished == {"ended": 3}


async def test_events_are_typed_and_unknown_types_reach_on_event(recorder: Recorder) -> None:
    events = [
        {"at": 0, "event_type": "call_start", "telephony_id": "TEL-1"},
        {"at": 0, "event_type": "user_interim_transcription", "interim_transcription_text": "i want"},
        {"at": 0, "event_type": "user_transcription", "user_transcription_text": "i want to cancel", "source": "stt"},
        {"at": 0, "event_type": "tts_completed", "tts_text": "Sorry to hear that", "tts_latency": 5.713},
        {"at": 0, "event_type": "hopping", "from_node_id": "a", "to_node_id": "b"},
        {"at": 0, "event_type": "call_end", "metadata": {"duration": 3}},
    ]
    async with running_simulator(script([{"id": "CALL-T", "events": events}], timestamp_format="epoch")) as sim:
        code, _ = await run_runner(make_config(sim.base_url), ["CALL-T"], recorder)
    assert code == 0
    got = recorder.events["CALL-T"]
    assert [e.event_type for e in got] == [
        "sse_init", "call_start", "user_interim_transcription", "user_transcription", "tts_completed", "hopping",
        "call_end", "sse_close",
    ]  # fmt: skip
    final = got[3]
    assert isinstance(final, UserTranscription) and final.text == "i want to cancel"
    assert final.raw["source"] == "stt"  # unknown fields kept
    assert final.timestamp.tzinfo is not None  # epoch number decoded to an aware datetime
    tts = got[4]
    assert isinstance(tts, TtsCompleted) and tts.latency_ms == 5.713
    assert isinstance(got[5], UnknownEvent) and got[5].raw["to_node_id"] == "b"
    assert [hook for hook, _ in recorder.typed["CALL-T"]] == ["on_user_transcription", "on_tts_completed"]
    assert recorder.startup == 1 and recorder.shutdown == 1
    assert recorder.subscribed == ["CALL-T"] and recorder.finished == {"CALL-T": "ended"}


async def test_dropped_connection_503s_and_429s_still_deliver_every_event_once_in_order(recorder: Recorder) -> None:
    calls = [
        {"id": "CALL-DROP", "events": call_events(10, spacing=0.02), "drop_after": 4},
        {"id": "CALL-END", "events": call_events(10, spacing=0.02), "end_after": 6},
        {"id": "CALL-503", "events": call_events(10), "fail_first": 2, "fail_status": 503},
        {"id": "CALL-429", "events": call_events(10), "fail_first": 2, "fail_status": 429, "retry_after": 0.3},
    ]
    async with running_simulator(script(calls)) as sim:
        started = trio.current_time()
        code, runner = await run_runner(make_config(sim.base_url), [c["id"] for c in calls], recorder)
        elapsed = trio.current_time() - started
        statuses = list(sim.statuses)
    assert code == 0
    for call in calls:
        assert_in_order_once(recorder, call["id"], 10)
    assert runner.stats.duplicates_skipped > 0  # the reconnects replayed events that were not passed on twice
    assert [s for c, s in statuses if c == "CALL-429"] == [429, 429, 200]
    assert elapsed >= 0.6  # two Retry-After: 0.3 honoured
    assert runner.stats.reconnects >= 6


async def test_silent_stream_is_reconnected_after_idle_timeout_but_keepalives_keep_it_open(recorder: Recorder) -> None:
    # Gaps between events (0.4 s) exceed idle_timeout (0.3 s): only the keep-alive comments keep the stream open,
    # until the stall sends nothing at all.
    calls = [{"id": "CALL-STALL", "events": call_events(6, spacing=0.4), "stall_after": 2, "stall_seconds": 3}]
    async with running_simulator(script(calls, keepalive=0.1)) as sim:
        code, runner = await run_runner(make_config(sim.base_url, idle_timeout=0.3), ["CALL-STALL"], recorder)
        connections = sim.connections["CALL-STALL"]
    assert code == 0
    assert_in_order_once(recorder, "CALL-STALL", 6)
    assert connections == 2 and runner.stats.reconnects == 1


async def test_completed_and_unknown_calls_finish_without_retry_and_others_go_on(recorder: Recorder, caplog) -> None:
    calls = [
        {"id": "CALL-OK", "events": call_events(4, spacing=0.05)},
        {"id": "CALL-DONE", "status": "completed", "events": call_events(2)},
    ]
    caplog.set_level(logging.INFO)
    async with running_simulator(script(calls)) as sim:
        code, _ = await run_runner(make_config(sim.base_url), ["CALL-OK", "CALL-DONE", "CALL-NOPE"], recorder)
        connections = dict(sim.connections)
    assert code == 1  # one call was not found
    assert recorder.finished == {"CALL-OK": "ended", "CALL-DONE": "completed", "CALL-NOPE": "not_found"}
    assert connections["CALL-DONE"] == 1 and connections["CALL-NOPE"] == 1  # no retry storm
    assert_in_order_once(recorder, "CALL-OK", 4)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("CALL-NOPE: not found (404" in line for line in lines) == 1
    assert sum("CALL-DONE: call already completed" in line for line in lines) == 1


async def test_only_completed_calls_exit_zero(recorder: Recorder) -> None:
    async with running_simulator(script([{"id": "CALL-DONE", "status": "completed", "events": call_events(1)}])) as sim:
        code, _ = await run_runner(make_config(sim.base_url), ["CALL-DONE"], recorder)
    assert code == 0 and recorder.finished == {"CALL-DONE": "completed"}


async def test_wrong_api_key_stops_the_runner_with_exit_2(recorder: Recorder) -> None:
    calls = [{"id": f"CALL-{n}", "events": call_events(50, spacing=0.1)} for n in range(3)]
    async with running_simulator(script(calls), api_key="another-key") as sim:
        with trio.fail_after(5):
            code, _ = await run_runner(make_config(sim.base_url), [c["id"] for c in calls], recorder)
    assert code == 2
    assert recorder.shutdown == 1
    assert recorder.finished == {c["id"]: "auth_failed" for c in calls}


async def test_malformed_lines_are_counted_and_the_stream_goes_on(recorder: Recorder, caplog) -> None:
    calls = [{"id": "CALL-BAD", "events": call_events(6), "malformed_after": 3}]
    async with running_simulator(script(calls)) as sim:
        code, runner = await run_runner(make_config(sim.base_url), ["CALL-BAD"], recorder)
    assert code == 0
    assert_in_order_once(recorder, "CALL-BAD", 6)
    assert runner.stats.malformed_lines == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("CALL-BAD: skipped a malformed line (not JSON" in w and "{this is not json" in w for w in warnings)
    assert any("CALL-BAD: skipped a malformed line (no event_type)" in w for w in warnings)


class Raiser:
    @hookimpl
    def on_user_transcription(self, event, call):
        raise RuntimeError("plugin bug")


class Hanger:
    def __init__(self) -> None:
        self.entered = 0

    @hookimpl
    async def on_tts_completed(self, event, call):
        self.entered += 1
        await trio.sleep(3600)


async def test_a_raising_plugin_and_a_hanging_plugin_do_not_stop_others(recorder: Recorder, caplog) -> None:
    hanger = Hanger()
    calls = [{"id": "CALL-ISO", "events": call_events(4)}]
    async with running_simulator(script(calls)) as sim:
        with trio.fail_after(10):
            code, runner = await run_runner(make_config(sim.base_url, hook_timeout=0.2), ["CALL-ISO"], Raiser(), hanger, recorder)
    assert code == 0
    assert_in_order_once(recorder, "CALL-ISO", 4)
    assert hanger.entered == 2  # every tts event was still offered to it
    assert runner.stats.hook_errors == {"test-plugin-0": 2}
    assert runner.stats.hook_timeouts == {"test-plugin-1": 2}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(m.startswith("plugin test-plugin-0: on_user_transcription, call CALL-ISO, event CALL-ISO_1_") and "raised" in m for m in errors)
    assert any(m.startswith("plugin test-plugin-1: on_tts_completed, call CALL-ISO, event CALL-ISO_0_") and "timed out" in m for m in errors)


async def test_slow_plugin_loses_nothing_and_the_buffer_stays_bounded() -> None:
    slow = Recorder(delay=0.002)
    n = 400
    calls = [{"id": "CALL-FLOOD", "events": call_events(n)}]
    async with running_simulator(script(calls)) as sim:
        code, runner = await run_runner(make_config(sim.base_url, buffer=8), ["CALL-FLOOD"], slow)
    assert code == 0
    assert_in_order_once(slow, "CALL-FLOOD", n)
    assert runner.stats.reconnects == 0


async def test_sse_init_of_a_reconnect_is_not_dispatched_again(recorder: Recorder) -> None:
    calls = [{"id": "CALL-R", "events": call_events(6, spacing=0.1), "drop_after": 3}]
    async with running_simulator(script(calls)) as sim:
        code, runner = await run_runner(make_config(sim.base_url), ["CALL-R"], recorder)
        connections = sim.connections["CALL-R"]
    assert code == 0 and connections == 2 and runner.stats.reconnects == 1
    assert_in_order_once(recorder, "CALL-R", 6)
    assert [e.event_type for e in recorder.events["CALL-R"]].count("sse_init") == 1


async def test_backpressure_keeps_at_most_the_buffer_between_the_socket_and_a_slow_plugin() -> None:
    buffer = 8
    gaps: list[int] = []

    class SlowAndWatching:
        @hookimpl
        async def on_event(self, event, call):
            # received from the socket but not yet dispatched: the buffer, this event, and one the stream holds
            gaps.append(runner.stats.events_received - call.events_dispatched)
            await trio.sleep(0.001)

    calls = [{"id": "CALL-FLOOD", "events": call_events(300)}]
    async with running_simulator(script(calls)) as sim:
        from helpers import build_runner

        runner = build_runner(make_config(sim.base_url, buffer=buffer), ["CALL-FLOOD"], SlowAndWatching())
        assert await runner.run() == 0
    assert len(gaps) == 302
    assert max(gaps) <= buffer + 2, max(gaps)
    assert max(gaps) >= buffer  # the stream really was ahead of the plugin: the bound was what held it


async def test_retry_after_header_on_503_is_honoured(recorder: Recorder) -> None:
    calls = [{"id": "CALL-503", "events": call_events(2), "fail_first": 2, "fail_status": 503, "retry_after": 0.3}]
    async with running_simulator(script(calls)) as sim:
        started = trio.current_time()
        code, _ = await run_runner(make_config(sim.base_url), ["CALL-503"], recorder)
        elapsed = trio.current_time() - started
    assert code == 0 and elapsed >= 0.6
    assert_in_order_once(recorder, "CALL-503", 2)


async def test_forbidden_key_stops_the_runner_with_exit_2(recorder: Recorder) -> None:
    calls = [{"id": "CALL-F", "events": call_events(2), "fail_first": 5, "fail_status": 403}]
    async with running_simulator(script(calls)) as sim:
        code, _ = await run_runner(make_config(sim.base_url), ["CALL-F"], recorder)
        statuses = [status for _, status in sim.statuses]
    assert code == 2 and statuses == [403]
    assert recorder.finished == {"CALL-F": "auth_failed"}


async def test_call_end_then_a_closed_stream_without_sse_close_is_an_ended_call(recorder: Recorder) -> None:
    events = call_events(2) + [{"at": 0, "event_type": "call_end", "metadata": {}}]
    calls = [{"id": "CALL-CE", "events": events, "end_after": 3}]
    async with running_simulator(script(calls)) as sim:
        code, runner = await run_runner(make_config(sim.base_url), ["CALL-CE"], recorder)
        connections = sim.connections["CALL-CE"]
    assert code == 0 and connections == 1 and runner.stats.reconnects == 0
    assert recorder.finished == {"CALL-CE": "ended"}
    assert [e.event_type for e in recorder.events["CALL-CE"]][-1] == "call_end"


async def test_more_calls_than_httpx_default_pool_are_all_subscribed_at_once(recorder: Recorder) -> None:
    n = 130  # httpx's default pool holds 100 connections; the 101st call would wait for the first to end
    calls = [{"id": "CALL-POOL-{n}", "repeat": n, "events": call_events(3, spacing=0.75)}]
    ids = [f"CALL-POOL-{i}" for i in range(n)]
    subscribed_at: list[float] = []

    class Clock:
        @hookimpl
        def on_call_subscribed(self, call):
            subscribed_at.append(trio.current_time())

    async with running_simulator(script(calls)) as sim:
        started = trio.current_time()
        code, _ = await run_runner(make_config(sim.base_url), ids, recorder, Clock())
    assert code == 0 and len(subscribed_at) == n
    assert max(subscribed_at) - started < 1.0  # every call subscribed while the first ones (1.5 s long) were live


async def test_five_hundred_concurrent_calls_deliver_every_event() -> None:
    counter = Recorder()
    calls = [{"id": "CALL-LOAD-{n}", "repeat": 500, "events": call_events(8, spacing=0.05)}]
    ids = [f"CALL-LOAD-{n}" for n in range(500)]
    async with running_simulator(script(calls)) as sim:
        with trio.fail_after(60):
            code, runner = await run_runner(make_config(sim.base_url, idle_timeout=30), ids, counter)
    assert code == 0
    assert runner.stats.calls_finished == {"ended": 500}
    for call_id in ids:
        assert_in_order_once(counter, call_id, 8)
