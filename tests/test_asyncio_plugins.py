"""A plugin that sets ``HOOKRUNNER_ASYNCIO = True`` has its coroutines run on an asyncio loop (trio-asyncio): asyncio
libraries work in its hooks, behind the same timeouts and isolation as any hook; every other plugin stays on trio,
and a plugin that uses asyncio without the flag fails as its own hook error, with a line that says what to do."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import sniffio
import trio

from hookrunner import PluginLoadError, Trigger, hookimpl
from hookrunner._core.config import config_from_dict
from hookrunner._run.plugins import load_plugins
from hookrunner._simulator import running_simulator
from hookrunner.testing import config_table, run_plugins, running_receiver, sim_call, start_plugins

from helpers import REPO, afinish, assert_one_error_line, call_events, make_config, script, write_config

DOC = REPO / "docs" / "writing-plugins.md"


def documented_forwarder(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The example of docs/writing-plugins.md's "Using asyncio libraries", as a module: what a reader would install."""
    section = DOC.read_text(encoding="utf-8").split("## Using asyncio libraries", 1)[1]
    source = re.search(r"^```python\n(.*?)^```\n", section, re.S | re.M)
    assert source is not None, "the section shows its plugin in a python block"
    module = types.ModuleType("hookrunner_forwarder")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # (the flag is read from the class's module)
    exec(compile(source.group(1), str(DOC), "exec"), module.__dict__)
    return module


def where_am_i() -> str:
    """The async library the calling code runs on; asyncio.get_running_loop() raises on trio."""
    asyncio.get_running_loop()
    return sniffio.current_async_library()


# --- asyncio libraries work in an asyncio plugin's hooks ------------------------------------------------------


async def test_the_documented_forwarder_posts_each_caller_turn_with_aiohttp_while_a_call_is_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forwarder = documented_forwarder(monkeypatch)
    turns = ["I cannot log in", "It says my password expired", "Thanks, that worked"]
    call = sim_call("CALL-AIO", agent=["Hello", "Let me check", "Try now"], user=turns)
    async with running_receiver() as receiver:
        with trio.fail_after(30):
            result = await run_plugins(
                {"forwarder": forwarder.ForwarderPlugin}, [call], settings={"forwarder": {"url": receiver.url("/turns")}}
            )
    assert result.failures == [] and result.hook_errors == {}
    assert result.exit_code == 0 and result.finished == {"CALL-AIO": "ended"}
    assert [request.json() for request in receiver.at("/turns")] == [{"call_id": "CALL-AIO", "text": t} for t in turns]


class EveryHook:
    """An asyncio plugin (the flag on its class) that notes where each of its hooks and its background task ran."""

    HOOKRUNNER_ASYNCIO = True

    def __init__(self) -> None:
        self.ran: dict[str, str] = {}
        self.drained: list[str] = []

    @hookimpl
    async def on_startup(self, app: Any) -> None:
        self.ran["on_startup"] = where_am_i()
        self.app = app
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        app.start_soon(self.drain)

    async def drain(self) -> None:
        self.ran["background"] = where_am_i()
        while True:
            text = await self.queue.get()
            await asyncio.sleep(0.001)
            self.drained.append(text)
            self.queue.task_done()

    @hookimpl
    async def on_user_transcription(self, event: Any, call: Any) -> None:
        self.ran["on_user_transcription"] = where_am_i()
        heard = await asyncio.create_task(asyncio.sleep(0.01, result=event.text))
        await self.queue.put(heard)
        self.app.emit_trigger(Trigger(type="heard", call_id=call.id, rule="every-turn", event_id=event.event_id))

    @hookimpl
    async def on_trigger(self, trigger: Trigger) -> None:
        self.ran["on_trigger"] = where_am_i()

    @hookimpl
    async def on_call_finished(self, call: Any, reason: str) -> None:
        self.ran["on_call_finished"] = where_am_i()
        await asyncio.sleep(0.01)

    @hookimpl
    async def on_shutdown(self) -> None:
        self.ran["on_shutdown"] = where_am_i()
        await asyncio.wait_for(self.queue.join(), 2)


class OnTrio:
    """A plugin without the flag, in the same run: it stays on trio."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    @hookimpl
    async def on_user_transcription(self, event: Any) -> None:
        await trio.sleep(0.001)
        self.ran.append(sniffio.current_async_library())


async def test_every_coroutine_of_an_asyncio_plugin_runs_on_asyncio_and_the_other_plugins_stay_on_trio() -> None:
    every, on_trio = EveryHook(), OnTrio()
    with trio.fail_after(30):
        result = await run_plugins([every, on_trio], [sim_call("CALL-MIX", agent=["Hi", "Sure"], user=["one", "two"])])
    assert result.failures == [] and result.exit_code == 0
    hooks = ["on_startup", "background", "on_user_transcription", "on_trigger", "on_call_finished", "on_shutdown"]
    assert every.ran == dict.fromkeys(hooks, "asyncio")
    assert every.drained == ["one", "two"]  # the background task emptied the asyncio queue before on_shutdown returned
    assert [trigger.rule for trigger in result.triggers] == ["every-turn", "every-turn"]
    assert on_trio.ran == ["trio", "trio"]


async def test_the_flag_in_the_module_of_an_instance_plugin_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point may name an object (``plugin = Greeter()``): the flag beside HOOKRUNNER_API_VERSION in its
    module is the plugin's."""
    module = types.ModuleType("hookrunner_greeter")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(
        "import asyncio\n"
        "from hookrunner import hookimpl\n"
        "HOOKRUNNER_API_VERSION = 1\n"
        "HOOKRUNNER_ASYNCIO = True\n"
        "class Greeter:\n"
        "    heard = []\n"
        "    @hookimpl\n"
        "    async def on_user_transcription(self, event):\n"
        "        await asyncio.sleep(0.001)\n"
        "        self.heard.append(event.text)\n"
        "plugin = Greeter()\n",
        module.__dict__,
    )
    result = await run_plugins({"greeter": module.plugin}, [sim_call("CALL-MOD", user=["hello there"])])
    assert result.failures == [] and module.plugin.heard == ["hello there"]


async def test_a_hookrunner_run_process_runs_a_local_module_that_asks_for_asyncio(cli: Any, tmp_path: Path) -> None:
    heard = tmp_path / "heard.txt"
    (tmp_path / "aio_local.py").write_text(
        "import asyncio\n"
        "import sniffio\n"
        "from hookrunner import hookimpl\n"
        "HOOKRUNNER_ASYNCIO = True\n"
        "@hookimpl\n"
        "async def on_user_transcription(event, call):\n"
        "    queue = asyncio.Queue()\n"
        "    asyncio.get_running_loop().create_task(queue.put(event.text))\n"
        "    await asyncio.sleep(0.001)\n"
        "    text = await queue.get()\n"
        f"    with open({str(heard)!r}, 'a') as out:\n"
        "        out.write(f'{sniffio.current_async_library()} {text}\\n')\n"
    )
    async with running_simulator(script([{"id": "CALL-LOCAL", "events": call_events(4)}])) as sim:
        config = make_config(sim.base_url, plugins={"load": ["aio_local.py"]})
        code, out, err = await afinish(cli("run", str(write_config(tmp_path, config)), "--call", "CALL-LOCAL"))
    assert code == 0, err
    assert heard.read_text().splitlines() == ["asyncio turn 1", "asyncio turn 3"]
    assert "Traceback" not in err and "raised" not in err


# --- timeouts and stops reach asyncio hooks ---------------------------------------------------------------------


class Hung:
    """An asyncio plugin one of whose hooks would wait a minute; it notes where its cancellation reached it."""

    HOOKRUNNER_ASYNCIO = True

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.started = trio.Event()

    async def hang(self) -> None:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.append(where_am_i())
            raise


class HungTurn(Hung):
    @hookimpl
    async def on_user_transcription(self) -> None:
        await self.hang()


class HungShutdown(Hung):
    @hookimpl
    async def on_shutdown(self) -> None:
        await self.hang()


async def test_a_hung_asyncio_hook_is_timed_out_by_hook_timeout_and_the_call_goes_on() -> None:
    hung = HungTurn()
    started = time.monotonic()
    with trio.fail_after(20):
        result = await run_plugins({"hung": hung}, [sim_call("CALL-HUNG", user=["one", "two"])], runner={"hook_timeout": 0.3})
    assert time.monotonic() - started < 10
    assert result.stats.hook_timeouts["hung"] == 2 and hung.cancelled == ["asyncio", "asyncio"]
    assert [e.text for e in result.events["CALL-HUNG"] if e.event_type == "user_transcription"] == ["one", "two"]
    assert result.finished == {"CALL-HUNG": "ended"} and result.exit_code == 0


async def test_a_hung_asyncio_on_shutdown_is_cut_at_the_shutdown_grace() -> None:
    hung = HungShutdown()
    started = time.monotonic()
    with trio.fail_after(20):
        result = await run_plugins({"hung": hung}, [sim_call("CALL-BYE", user=["bye"])], runner={"shutdown_grace": 0.5})
    assert time.monotonic() - started < 10
    assert result.stats.hook_timeouts["hung"] == 1 and hung.cancelled == ["asyncio"] and result.exit_code == 0


async def test_a_stop_reaches_an_asyncio_hook_that_would_run_for_a_minute() -> None:
    hung = HungTurn()
    call = sim_call("CALL-STOP", user=["hold on"], spacing=0.05)
    with trio.fail_after(20):
        async with start_plugins({"hung": hung}, [call], runner={"hook_timeout": 60, "shutdown_grace": 0.5}) as run:
            await hung.started.wait()
            started = time.monotonic()
            run.runner.stop()
            await run.wait()
    assert time.monotonic() - started < 5
    assert hung.cancelled == ["asyncio"]


# --- without the flag, asyncio fails as the plugin's own error, and says what to do -------------------------------


class NoFlag:
    @hookimpl
    async def on_user_transcription(self, event: Any) -> None:
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("beside", [False, True], ids=["alone", "beside-an-asyncio-plugin"])
async def test_asyncio_in_a_plugin_without_the_flag_is_its_hook_error_with_a_hint(
    beside: bool, caplog: pytest.LogCaptureFixture
) -> None:
    plugins: dict[str, Any] = {"noflag": NoFlag()}
    if beside:  # the run has an asyncio loop then; this plugin's hooks still run on trio
        plugins["every"] = EveryHook()
    with trio.fail_after(30):
        result = await run_plugins(plugins, [sim_call("CALL-NOFLAG", user=["hello"])])
    assert result.exit_code == 0 and result.hook_errors == {"noflag": 1}
    [failure] = result.failures
    assert (failure.plugin, failure.hook, failure.call_id) == ("noflag", "on_user_transcription", "CALL-NOFLAG")
    # (alone: asyncio finds no loop; beside one: trio is handed an asyncio future)
    assert isinstance(failure.exception, TypeError if beside else RuntimeError)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plugin noflag: on_user_transcription")]
    assert "hooks run on trio" in line and "HOOKRUNNER_ASYNCIO = True" in line and "Using asyncio libraries" in line


async def test_an_unrelated_hook_error_gets_no_asyncio_hint(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @hookimpl
        def on_user_transcription(self, event: Any) -> None:
            raise RuntimeError("the CRM is down")

    result = await run_plugins({"broken": Broken()}, [sim_call("CALL-BROKEN", user=["hello"])])
    assert result.hook_errors == {"broken": 1}
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plugin broken:")]
    assert "the CRM is down" in line and "HOOKRUNNER_ASYNCIO" not in line


# --- a flag that is not a bool ------------------------------------------------------------------------------------


def test_a_flag_that_is_not_a_bool_is_one_line_naming_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "aio_flag.py").write_text('HOOKRUNNER_ASYNCIO = "yes"\n')
    table = config_table("http://127.0.0.1:9")
    table["plugins"]["load"] = ["aio_flag.py"]
    config = config_from_dict(table, source="config.toml", base_dir=tmp_path)
    with pytest.raises(PluginLoadError) as caught:
        load_plugins(config)
    assert str(caught.value) == (
        "config.toml: plugins.load[0]: plugin aio_flag: HOOKRUNNER_ASYNCIO must be True or False, got 'yes'"
    )
    [info] = [info for info in load_plugins(config, strict=False).infos if info.name == "aio_flag"]
    assert not info.active and info.error == "HOOKRUNNER_ASYNCIO must be True or False, got 'yes'"


def test_check_refuses_a_flag_that_is_not_a_bool_in_one_error_line(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "aio_flag.py").write_text("HOOKRUNNER_ASYNCIO = 1\n")
    config = make_config("http://127.0.0.1:9", plugins={"load": ["aio_flag.py"]})
    process = cli("check", str(write_config(tmp_path, config)))
    out, err = process.communicate(timeout=20)
    assert process.returncode == 2, err
    assert_one_error_line(out, err, "plugin aio_flag", "HOOKRUNNER_ASYNCIO must be True or False, got 1")


async def test_a_test_plugin_with_a_flag_that_is_not_a_bool_is_refused_by_name() -> None:
    class Unsure:
        HOOKRUNNER_ASYNCIO = "maybe"

    with pytest.raises(PluginLoadError, match=r"^plugin unsure \(hookrunner.testing\): HOOKRUNNER_ASYNCIO must be"):
        await run_plugins({"unsure": Unsure()}, [sim_call("CALL-UNSURE")])


# --- the shared trio client, asyncio's own error reports, and what plugins that do not ask pay -------------------


async def test_app_http_refuses_asyncio_callers_and_keeps_working_for_trio_and_through_the_bridge() -> None:
    import trio_asyncio

    class AioPoster:
        HOOKRUNNER_ASYNCIO = True
        refused: list[str] = []
        statuses: list[int] = []

        @hookimpl
        async def on_startup(self, app: Any) -> None:
            self.app = app

        @hookimpl
        async def on_user_transcription(self, event: Any) -> None:
            try:
                await self.app.http.post(url, json={"direct": event.text})
            except RuntimeError as exc:
                self.refused.append(str(exc))
            response = await trio_asyncio.trio_as_aio(self.app.http.post)(url, json={"bridged": event.text})
            self.statuses.append(response.status_code)

    class TrioPoster:
        @hookimpl
        async def on_startup(self, app: Any) -> None:
            self.app = app

        @hookimpl
        async def on_call_finished(self, call: Any) -> None:
            (await self.app.http.post(url, json={"trio": call.id})).raise_for_status()

    async with running_receiver() as receiver:
        url = receiver.url("/posts")
        with trio.fail_after(30):
            result = await run_plugins({"aio": AioPoster(), "trio": TrioPoster()}, [sim_call("CALL-HTTP", user=["a", "b"])])
    assert result.failures == [] and AioPoster.statuses == [200, 200]
    assert len(AioPoster.refused) == 2 and "trio_asyncio.trio_as_aio(app.http.post)" in AioPoster.refused[0]
    assert [r.json() for r in receiver.at("/posts")] == [{"bridged": "a"}, {"bridged": "b"}, {"trio": "CALL-HTTP"}]


async def test_what_asyncio_reports_or_left_tasks_raise_is_logged_and_never_ends_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Sloppy:
        HOOKRUNNER_ASYNCIO = True

        @hookimpl
        async def on_user_transcription(self, event: Any, call: Any) -> None:
            loop = asyncio.get_running_loop()
            loop.call_exception_handler({"message": "Unclosed client session"})  # what aiohttp's __del__ says
            self.left = loop.create_task(self.stubborn())  # never awaited
            await asyncio.sleep(0.01)

        async def stubborn(self) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise ValueError("flush failed") from None

    with trio.fail_after(30):
        result = await run_plugins({"sloppy": Sloppy()}, [sim_call("CALL-SLOPPY", user=["hello"])])
    assert result.exit_code == 0 and result.failures == [] and result.finished == {"CALL-SLOPPY": "ended"}
    lines = [r.getMessage() for r in caplog.records if r.name == "hookrunner.asyncio"]
    assert "asyncio: Unclosed client session" in lines
    assert any("left running at the end of the run, raised ValueError when cancelled: flush failed" in x for x in lines)


def test_a_run_without_asyncio_plugins_opens_no_loop_and_never_imports_the_bridge() -> None:
    program = (
        "import sys, trio\n"
        "from hookrunner import hookimpl\n"
        "from hookrunner.testing import run_plugins, sim_call\n"
        "class OnTrio:\n"
        "    @hookimpl\n"
        "    async def on_user_transcription(self, event):\n"
        "        await trio.sleep(0)\n"
        "result = trio.run(run_plugins, [OnTrio()], [sim_call('CALL-T', user=['hi'])])\n"
        "assert result.exit_code == 0 and not result.failures, result\n"
        "print('trio_asyncio' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
