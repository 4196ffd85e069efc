"""The helpers plugin authors test with (hookrunner.testing), used the way a third party would."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from hookrunner import Trigger, UserTranscription, hookimpl
from hookrunner.testing import config_table, make_event, make_runner, make_trigger, run_plugins, sim_call, simulator, start_plugins

from helpers import INSTALLED_PLUGINS, finish, write_config


class Shouter:
    """A plugin under test: counts the caller's words, fails on one word on purpose."""

    def __init__(self) -> None:
        self.words = 0

    @hookimpl
    def on_user_transcription(self, event, call):
        if "boom" in event.text:
            raise ValueError("boom")
        self.words += len(event.text.split())


def test_make_event_builds_the_typed_event_a_hook_receives() -> None:
    event = make_event("user_transcription", user_transcription_text="hello there", source="stt")
    assert isinstance(event, UserTranscription) and event.text == "hello there" and event.raw["source"] == "stt"
    plugin = Shouter()
    plugin.on_user_transcription(event, call=None)
    assert plugin.words == 2
    trigger = make_trigger(type="keyword", rule="cancel", severity="warning")
    assert trigger.full_type == "trigger.keyword"


async def test_run_plugins_runs_the_real_runner_and_reports_what_happened() -> None:
    plugin = Shouter()
    calls = [
        sim_call("CALL-A", agent=["Hi, how can I help?"], user=["I want to cancel my subscription"]),
        sim_call("CALL-B", agent=["Hello"], user=["boom"], drop_after=1),
    ]
    result = await run_plugins(
        [plugin],
        calls,
        enable=["keywords"],
        settings={"keywords": {"rules": [{"name": "cancel", "phrases": ["cancel my subscription"]}]}},
    )
    assert result.exit_code == 0
    assert result.finished == {"CALL-A": "ended", "CALL-B": "ended"}
    assert [e.event_type for e in result.events["CALL-A"]] == [
        "sse_init", "call_start", "tts_completed", "user_transcription", "call_end", "sse_close",
    ]  # fmt: skip
    assert plugin.words == 6
    assert [(t.rule, t.call_id) for t in result.triggers] == [("cancel", "CALL-A")]
    assert result.hook_errors == {"Shouter": 1}  # the plugin's bug, isolated and counted


async def test_the_pytest_fixture_is_the_same_helper(hookrunner_run) -> None:
    result = await hookrunner_run([], [sim_call("CALL-F", user=["hi"])])
    assert result.exit_code == 0 and len(result.events["CALL-F"]) == 5


class Lifecycle:
    """A plugin under test that notes its startup, shutdown and the settings it was given."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] | None = None
        self.shutdowns = 0

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.settings = dict(app.settings)

    @hookimpl
    def on_shutdown(self, app: Any) -> None:
        self.shutdowns += 1


def long_call(call_id: str) -> dict[str, Any]:
    """A call of ten caller turns half a second apart: about 5 s, longer than any of these tests waits."""
    return sim_call(call_id, user=[f"turn {n}" for n in range(10)], spacing=0.5)


async def test_start_plugins_hands_over_the_running_runner_to_stop_it_mid_call() -> None:
    plugin = Lifecycle()
    started = trio.current_time()
    async with start_plugins([plugin], [long_call("CALL-LONG")]) as run:
        with trio.fail_after(3):
            while not run.result.events["CALL-LONG"]:  # the result fills in while the run goes on
                await trio.sleep(0.02)
        assert not run.over and run.result.exit_code == -1
        assert run.runner.stats is run.result.stats
        assert run.simulator.connections == {"CALL-LONG": 1}
        run.runner.stop()
        result = await run.wait()
    assert run.over and result is run.result
    assert trio.current_time() - started < 3
    assert result.exit_code == 0
    assert result.finished == {"CALL-LONG": "shutdown"}
    assert "call_end" not in [event.event_type for event in result.events["CALL-LONG"]]
    assert plugin.shutdowns == 1


async def test_leaving_the_start_plugins_block_early_stops_the_run_the_graceful_way() -> None:
    plugin = Lifecycle()
    started = trio.current_time()
    async with start_plugins([plugin], [long_call("CALL-LEFT")]) as run:
        await trio.sleep(0.3)
    assert trio.current_time() - started < 3
    assert run.over and run.result.exit_code == 0
    assert run.result.finished == {"CALL-LEFT": "shutdown"}
    assert plugin.shutdowns == 1  # on_shutdown ran: a stop, not a cancellation


async def test_an_exception_in_the_start_plugins_block_cancels_the_run() -> None:
    plugin = Lifecycle()
    with pytest.raises(ValueError, match="the test's own failure"):  # as itself, not in an ExceptionGroup
        async with start_plugins([plugin], [long_call("CALL-BROKEN")]) as run:
            await trio.sleep(0.3)
            raise ValueError("the test's own failure")
    assert run.over and run.result.exit_code == -1  # never returned: cancelled
    assert plugin.shutdowns == 0


async def test_run_plugins_follows_a_simulator_the_test_started_with_its_own_speed() -> None:
    calls = [sim_call("CALL-FAST", user=["one", "two", "three"], agent=["a", "b", "c"], spacing=1.0)]  # 7 s
    async with simulator(calls, speed=20) as sim:
        started = trio.current_time()
        result = await run_plugins([], sim)
        elapsed = trio.current_time() - started
    assert result.exit_code == 0 and result.finished == {"CALL-FAST": "ended"}
    assert elapsed < 2, elapsed
    assert sim.connections == {"CALL-FAST": 1}  # this simulator, not another one


class Echo:
    """A detector plugin under test: a trigger for each final that says its ``word`` setting."""

    def __init__(self) -> None:
        self.app: Any = None

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.app = app

    @hookimpl
    def on_user_transcription(self, event: Any, call: Any) -> None:
        if self.app.settings["word"] in event.text:
            self.app.emit_trigger(Trigger(type="echo", call_id=call.id, rule=self.app.settings["word"]))
        if "boom" in event.text:
            raise ValueError("boom")


async def test_plugins_given_as_a_dict_run_under_those_names() -> None:
    """The name users configure a plugin by: its settings table, its triggers' source, its line in hook_errors."""
    plugin = Echo()
    calls = [sim_call("CALL-N", user=["hello", "hello boom"])]
    result = await run_plugins({"echo": plugin}, calls, settings={"echo": {"word": "hello"}})
    assert result.exit_code == 0
    assert [(t.rule, t.source) for t in result.triggers] == [("hello", "echo"), ("hello", "echo")]
    assert result.hook_errors == {"echo": 1}


async def test_config_table_and_make_runner_build_what_hookrunner_run_and_check_would(cli, tmp_path: Path) -> None:
    rules = [{"name": "cancel", "phrases": ["cancel"]}]
    table = config_table(
        "http://127.0.0.1:9", enable=["keywords"], settings={"keywords": {"rules": rules}}, runner={"calls": ["CALL-X"]}
    )
    assert table["plugins"]["disable"] == [name for name in INSTALLED_PLUGINS if name != "keywords"]
    assert table["plugins"]["keywords"] == {"rules": rules}
    assert table["runner"]["calls"] == ["CALL-X"] and table["runner"]["shutdown_grace"] == 2.0
    code, out, err = finish(cli("check", str(write_config(tmp_path, table))))
    assert code == 0, err
    assert "OK" in out

    plugin = Lifecycle()
    async with simulator([sim_call("CALL-M", user=["please cancel"])]) as sim:
        table = config_table(sim.base_url, enable=["keywords"], settings={"keywords": {"rules": rules}})
        runner = make_runner(table, {"lifecycle": plugin}, calls=["CALL-M"], base_dir=tmp_path)
        assert runner.plugins.active_names == ["keywords", "lifecycle"]
        assert await runner.run() == 0
    assert plugin.settings == {} and plugin.shutdowns == 1
    assert runner.stats.calls_finished == {"ended": 1}
    assert runner.stats.triggers == 1  # from keywords, which enable= turned on


def test_make_delivery_builds_what_on_platform_webhook_receives() -> None:
    from hookrunner.testing import make_delivery

    delivery = make_delivery("post-conversation", call_id="CALL-9", transcript=[{"role": "user", "text": "hi"}])
    assert (delivery.kind, delivery.call_id, delivery.agent_id) == ("post-conversation", "CALL-9", "agent-test")
    assert delivery.event == "agent-test.post-conversation"
    assert delivery.body["metadata"]["transcript"] == [{"role": "user", "text": "hi"}]


async def test_a_failing_assert_inside_the_helpers_blocks_reaches_pytest_as_itself() -> None:
    import pytest

    from hookrunner.testing import running_receiver, sim_call, simulator, start_plugins

    with pytest.raises(AssertionError, match="the test's own"):
        async with simulator([sim_call("CALL-E", user=["hi"])]):
            raise AssertionError("the test's own")
    with pytest.raises(AssertionError, match="inside a run"):
        async with start_plugins([], [sim_call("CALL-E", user=["hi"])]):
            raise AssertionError("inside a run")
    with pytest.raises(KeyError):
        async with running_receiver():
            raise KeyError("x")


def test_the_pytest_entry_point_imports_nothing_heavy_into_every_pytest_session() -> None:
    """pytest imports every installed pytest11 module into every session of anyone who has hookrunner installed."""
    (entry,) = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "hookrunner"]
    probe = (
        f"import sys, {entry.module}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'hypercorn', 'hookrunner'} "
        "and m.startswith(('hypercorn', 'hookrunner._run.runner', 'hookrunner._simulator', 'hookrunner.testing'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


async def test_run_result_keeps_every_exception_a_hook_raised_with_its_plugin_hook_call_and_event() -> None:
    from hookrunner import hookimpl
    from hookrunner.testing import HookFailure, run_plugins, sim_call

    class Picky:
        @hookimpl
        def on_user_transcription(self, event, call):
            assert "refund" in event.text, f"no refund in {event.text!r}"

    result = await run_plugins({"picky": Picky()}, [sim_call("CALL-P", agent=["Hi"], user=["refund please", "thanks"])])
    assert result.exit_code == 0 and result.hook_errors == {"picky": 1}
    [failure] = result.failures
    assert isinstance(failure, HookFailure) and (failure.plugin, failure.hook, failure.call_id) == (
        "picky", "on_user_transcription", "CALL-P"
    )  # fmt: skip
    assert failure.event_id and isinstance(failure.exception, AssertionError)
    assert "no refund in 'thanks'" in str(failure.exception)
