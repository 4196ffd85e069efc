"""What a plugin is given: the app (settings, http client, background tasks, triggers) and the call context."""

from __future__ import annotations

import json

import trio

from hookrunner import Trigger, hookimpl
from hookrunner._simulator import running_simulator

from helpers import build_runner, call_events, make_config, run_runner, script


class Detector:
    """Emits a trigger from an event hook and another from a background task."""

    def __init__(self) -> None:
        self.settings = None
        self.http = None
        self.background_ran = trio.Event()

    @hookimpl
    def on_startup(self, app):
        self.app = app
        self.settings = app.settings
        self.http = app.http
        app.start_soon(self._later)

    async def _later(self):
        await trio.sleep(0.05)
        self.app.emit_trigger(Trigger(type="timer", call_id="CALL-A", rule="background"))
        self.background_ran.set()
        await trio.sleep_forever()  # cancelled at shutdown

    @hookimpl
    def on_user_transcription(self, event, call):
        if "cancel" in event.text:
            self.app.emit_trigger(
                Trigger(type="keyword", call_id=call.id, rule="cancel", event_id=event.event_id, event_type=event.event_type, severity="warning")
            )


class Notifier:
    def __init__(self) -> None:
        self.triggers: list[Trigger] = []
        self.turns_seen: list[list[str]] = []
        self.state_values: list[int] = []

    @hookimpl
    async def on_trigger(self, trigger):
        await trio.sleep(0)
        self.triggers.append(trigger)

    @hookimpl
    def on_event(self, event, call):
        counter = call.state.setdefault("notifier", {"n": 0})
        counter["n"] += 1
        self.state_values.append(counter["n"])
        if event.event_type in ("user_transcription", "tts_completed"):
            self.turns_seen.append([turn.text for turn in call.turns])


async def test_triggers_from_hooks_and_background_tasks_reach_every_on_trigger() -> None:
    detector, notifier = Detector(), Notifier()
    events = [
        {"at": 0.0, "event_type": "tts_completed", "tts_text": "How can I help?"},
        {"at": 0.1, "event_type": "user_transcription", "user_transcription_text": "I want to cancel my plan"},
        {"at": 0.2, "event_type": "user_transcription", "user_transcription_text": "yes cancel it"},
    ]
    async with running_simulator(script([{"id": "CALL-A", "events": events}])) as sim:
        code, runner = await run_runner(make_config(sim.base_url), ["CALL-A"], detector, notifier)
    assert code == 0
    assert detector.background_ran.is_set()
    kinds = sorted((t.type, t.rule) for t in notifier.triggers)
    assert kinds == [("keyword", "cancel"), ("keyword", "cancel"), ("timer", "background")]
    keyword = [t for t in notifier.triggers if t.type == "keyword"]
    assert all(t.source == "test-plugin-0" and t.full_type == "trigger.keyword" for t in keyword)
    assert [t.event_id.startswith("CALL-A_") for t in keyword] == [True, True]
    assert runner.stats.triggers == 3


async def test_call_context_keeps_turns_and_per_call_state() -> None:
    notifier = Notifier()
    calls = [{"id": "CALL-T", "events": call_events(4)}]
    async with running_simulator(script(calls)) as sim:
        await run_runner(make_config(sim.base_url), ["CALL-T"], notifier)
    assert notifier.turns_seen == [["turn 0"], ["turn 0", "turn 1"], ["turn 0", "turn 1", "turn 2"], ["turn 0", "turn 1", "turn 2", "turn 3"]]
    assert notifier.state_values == list(range(1, 7))  # sse_init, 4 turns, sse_close


class SettingsPlugin:
    def __init__(self) -> None:
        self.seen = None

    @hookimpl
    def on_startup(self, app):
        self.seen = (app.name, app.settings)


async def test_a_plugin_gets_its_own_settings_table() -> None:
    plugin = SettingsPlugin()
    async with running_simulator(script([{"id": "CALL-S", "events": call_events(1)}])) as sim:
        config = make_config(sim.base_url, plugins={"test-plugin-0": {"threshold": 3}})
        await run_runner(config, ["CALL-S"], plugin)
    assert plugin.seen == ("test-plugin-0", {"threshold": 3})


class Slow:
    def __init__(self) -> None:
        self.count = 0
        self.shutdown = False
        self.types: list[str] = []

    @hookimpl
    async def on_event(self, event, call):
        await trio.sleep(0.2)
        self.count += 1
        self.types.append(event.event_type)

    @hookimpl
    def on_shutdown(self, app):
        self.shutdown = True


async def test_stop_drains_within_grace_and_spools_what_was_not_dispatched(tmp_path) -> None:
    slow = Slow()
    spool = tmp_path / "left.jsonl"
    calls = [{"id": "CALL-SLOW", "events": call_events(30)}]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, shutdown_grace=0.5, buffer=4, spool_file=str(spool))
        runner = build_runner(config, ["CALL-SLOW"], slow)
        result = {}

        async def run():
            result["code"] = await runner.run()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while slow.count < 2:
                await trio.sleep(0.01)
            stopped_at = trio.current_time()
            runner.stop()
        elapsed = trio.current_time() - stopped_at
    assert result["code"] == 0
    assert slow.shutdown
    assert elapsed < 0.5 + 0.5
    spooled = [json.loads(line) for line in spool.read_text().splitlines()]
    assert spooled and runner.stats.events_spooled == len(spooled)
    # Nothing received was lost: each event was either dispatched or spooled, and the spool keeps stream order.
    assert slow.types[0] == "sse_init"
    assert all(line["call_id"] == "CALL-SLOW" for line in spooled)
    # The spool continues the stream exactly where dispatch stopped: scripted event n has id CALL-SLOW_n_...
    first_spooled = slow.count - 1  # dispatched: sse_init + scripted 0..count-2
    assert [int(line["event_id"].split("_")[1]) for line in spooled] == list(
        range(first_spooled, first_spooled + len(spooled))
    )
    # Dispatched + spooled covers every event the stream had received: the 4 buffered, the one interrupted, and
    # the one the stream was waiting to hand over; at 0.2 s each, at most 3 more were dispatched in the grace.
    assert slow.count - 1 + len(spooled) >= 7, (slow.count, len(spooled))
    assert runner.stats.calls_finished == {"shutdown": 1}


async def test_unreachable_server_gives_up_after_max_attempts_with_exit_1(recorder) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = make_config(f"http://127.0.0.1:{port}", reconnect={"initial_delay": 0.01, "max_delay": 0.02, "max_attempts": 3})
    with trio.fail_after(5):
        code, runner = await run_runner(config, ["CALL-X"], recorder)
    assert code == 1
    assert recorder.finished == {"CALL-X": "gave_up"}
    assert runner.stats.reconnects == 3


async def test_hooks_run_in_pluggy_order_with_tryfirst_and_trylast(recorder) -> None:
    order: list[str] = []

    class First:
        @hookimpl(tryfirst=True)
        def on_sse_init(self, event, call):
            order.append("first")

    class Last:
        @hookimpl(trylast=True)
        def on_sse_init(self, event, call):
            order.append("last")

    class Plain:
        @hookimpl
        def on_sse_init(self, event, call):
            order.append("plain")

    async with running_simulator(script([{"id": "CALL-O", "events": call_events(1)}])) as sim:
        await run_runner(make_config(sim.base_url), ["CALL-O"], Last(), First(), Plain())
    assert order == ["first", "plain", "last"]


async def test_a_blocking_plain_hook_is_reported_as_over_its_timeout(recorder, caplog) -> None:
    import time

    class Blocking:
        @hookimpl
        def on_tts_completed(self, event, call):
            time.sleep(0.3)

    async with running_simulator(script([{"id": "CALL-B", "events": call_events(1)}])) as sim:
        code, runner = await run_runner(make_config(sim.base_url, hook_timeout=0.1), ["CALL-B"], Blocking(), recorder)
    assert code == 0 and runner.stats.hook_timeouts == {"test-plugin-0": 1}
    assert any("blocked the event loop" in r.getMessage() and "call CALL-B" in r.getMessage() for r in caplog.records)
    assert_events = [e.event_type for e in recorder.events["CALL-B"]]
    assert assert_events == ["sse_init", "tts_completed", "sse_close"]


class SlowWithShutdown:
    def __init__(self, shutdown_takes: float) -> None:
        self.shutdown_takes = shutdown_takes
        self.shutdown_done = False
        self.count = 0

    @hookimpl
    async def on_event(self, event, call):
        await trio.sleep(0.2)
        self.count += 1

    @hookimpl
    async def on_shutdown(self, app):
        await trio.sleep(self.shutdown_takes)
        self.shutdown_done = True


async def _stop_when(runner, condition) -> float:
    while not condition():
        await trio.sleep(0.01)
    runner.stop()
    return trio.current_time()


async def test_after_a_stop_on_shutdown_still_gets_the_second_half_of_the_grace(tmp_path) -> None:
    plugin = SlowWithShutdown(shutdown_takes=0.1)
    calls = [{"id": "CALL-G", "events": call_events(30)}]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, shutdown_grace=0.6, buffer=4, spool_file=str(tmp_path / "spool.jsonl"))
        runner = build_runner(config, ["CALL-G"], plugin)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            stopped_at = await _stop_when(runner, lambda: plugin.count >= 1)
        elapsed = trio.current_time() - stopped_at
    assert plugin.shutdown_done  # the drain (slow plugin) used its half; on_shutdown kept its own
    assert elapsed < 0.6 + 0.3


async def test_a_hanging_on_shutdown_cannot_hold_the_exit_past_the_grace(tmp_path) -> None:
    plugin = SlowWithShutdown(shutdown_takes=3600)
    calls = [{"id": "CALL-H", "events": call_events(30)}]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, shutdown_grace=0.4, hook_timeout=30, spool_file=str(tmp_path / "s.jsonl"))
        runner = build_runner(config, ["CALL-H"], plugin)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            stopped_at = await _stop_when(runner, lambda: plugin.count >= 1)
        elapsed = trio.current_time() - stopped_at
    assert not plugin.shutdown_done and elapsed < 0.4 + 0.3


async def test_triggers_emitted_by_the_last_event_are_dispatched_before_shutdown() -> None:
    got: list[str] = []
    shutdown_saw: list[int] = []

    class EmitOnClose:
        @hookimpl
        def on_startup(self, app):
            self.app = app

        @hookimpl
        def on_sse_close(self, event, call):
            self.app.emit_trigger(Trigger(type="closing", call_id=call.id, rule="last"))

    class SlowNotifier:
        @hookimpl
        async def on_trigger(self, trigger):
            await trio.sleep(0.1)
            got.append(trigger.rule)

        @hookimpl
        def on_shutdown(self, app):
            shutdown_saw.append(len(got))

    async with running_simulator(script([{"id": "CALL-Z", "events": call_events(1)}])) as sim:
        await run_runner(make_config(sim.base_url), ["CALL-Z"], EmitOnClose(), SlowNotifier())
    assert got == ["last"] and shutdown_saw == [1]


class SchemaPlugin:
    """Declares a schema; records what ``app.settings`` holds at startup and after a reload."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    @hookimpl
    def settings_schema(self):
        from hookrunner import Setting

        return {
            "threshold": Setting("int", 5),
            "words": Setting("list[str]", ["cancel"]),
            "url": Setting("str", None, doc="optional"),
        }

    @hookimpl
    def on_startup(self, app):
        self.seen.append(dict(app.settings))


async def test_app_settings_hold_the_schemas_defaults_for_keys_the_table_leaves_out() -> None:
    plugin = SchemaPlugin()
    async with running_simulator(script([{"id": "CALL-D", "events": call_events(1)}])) as sim:
        config = make_config(sim.base_url, plugins={"test-plugin-0": {"threshold": 3}})
        code, _ = await run_runner(config, ["CALL-D"], plugin)
    assert code == 0
    assert plugin.seen == [{"threshold": 3, "words": ["cancel"], "url": None}]


# -- outboxes the runner runs ---------------------------------------------------------------------------------------


class OutboxNotifier:
    """A third party's notifier: one outbox whose receiver never answers, one that takes everything, both naming the
    same dead-letter file; it never closes either (it has no on_shutdown at all)."""

    def __init__(self, name: str, deliver_ok: bool) -> None:
        self.name, self.deliver_ok = name, deliver_ok
        self.delivered: list[str] = []

    @hookimpl
    def on_startup(self, app):
        from hookrunner.delivery import Outcome, RetryPolicy

        async def deliver(batch):
            if not self.deliver_ok:
                await trio.sleep_forever()  # a receiver that never answers: only the shutdown ends it
            self.delivered += [message.id for message in batch]
            return Outcome.delivered()

        policy = RetryPolicy(max_attempts=1)
        self.outbox = app.open_outbox(self.name, deliver, dead_letter="undelivered.jsonl", policy=policy, max_in_flight=1)

    @hookimpl
    def on_user_transcription(self, event, call):
        from hookrunner.delivery import OutboxMessage

        self.outbox.submit(OutboxMessage(id=f"{self.name}-{event.event_id}", key=call.id, body={"text": event.text}))


async def test_the_runner_closes_the_outboxes_plugins_open_within_the_grace_and_dead_letters_what_is_left(
    tmp_path, caplog
) -> None:
    import logging

    from hookrunner._delivery.dead_letters import read_dead_letters
    from hookrunner.testing import run_plugins, sim_call

    caplog.set_level(logging.INFO)
    stuck, quick = OutboxNotifier("stuck", deliver_ok=False), OutboxNotifier("quick", deliver_ok=True)
    calls = [sim_call("CALL-A", user=["one", "two", "three"])]
    result = await run_plugins(
        {"stuck-notifier": stuck, "quick-notifier": quick}, calls, runner={"shutdown_grace": 1.0}, base_dir=tmp_path
    )
    assert result.exit_code == 0
    assert len(quick.delivered) == 3  # the outbox ran in the background
    letters = read_dead_letters(tmp_path / "undelivered.jsonl")  # one file, relative to the config's directory
    assert [(letter.plugin, letter.endpoint, letter.record["reason"]) for letter in letters] == [
        ("stuck-notifier", "stuck", "not delivered before shutdown")
    ] * 3
    lines = [record.getMessage() for record in caplog.records if record.name == "hookrunner.outbox"]
    assert "stuck-notifier stuck: 0 delivered, 0 retried, 3 dead-lettered" in lines
    assert any(line.startswith("quick-notifier quick: 3 delivered, 0 retried, 0 dead-lettered") for line in lines)
