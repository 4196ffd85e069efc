"""The ``hookrunner`` command as a user runs it: real processes talking to a simulator over 127.0.0.1.

Each test asserts what a person at the terminal notices: the exit code, the lines printed on stdout (the console
transcript) and stderr (log and error lines), how long it took, and that a user's mistake never shows a traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trio

import hookrunner
from hookrunner._core.config import DEFAULT_API_KEY_ENV, default_config_table
from hookrunner._simulator import default_script_path, load_script, running_simulator

from helpers import (
    API_KEY,
    REPO,
    afinish,
    call_events,
    finish,
    hookrunner_process,
    make_config,
    script,
    wait_until_call_over,
    write_config,
)

UNREACHABLE = "http://127.0.0.1:9"  # for configs that must be refused before anything connects


# -- helpers ---------------------------------------------------------------------------------------------------




async def afinish_after_reading(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """Like ``afinish`` for a process whose stdout was already read from with ``read_until``.

    ``communicate`` would bypass what the text wrapper already buffered; waiting then reading does not (the
    output left is small, so the pipes cannot fill while the process exits).
    """

    def wait_and_read() -> tuple[int, str, str]:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"still running {timeout} s later")
        return process.returncode, process.stdout.read(), process.stderr.read()

    return await trio.to_thread.run_sync(wait_and_read)


async def read_until(process: subprocess.Popen, wanted: Callable[[str], bool], timeout: float = 10) -> list[str]:
    """Read stdout lines until one satisfies ``wanted``; return the lines read."""
    lines: list[str] = []
    try:
        with trio.fail_after(timeout):
            while True:
                line = await trio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True)
                if not line:
                    pytest.fail(f"exited ({process.poll()}) before the expected line; stdout so far: {lines}")
                lines.append(line)
                if wanted(line):
                    return lines
    except trio.TooSlowError:
        process.kill()
        pytest.fail(f"no expected line within {timeout} s; stdout so far: {lines}")




def write_plugin(directory: Path, name: str, source: str) -> str:
    """A local plugin module for ``[plugins] load``; returns the entry to put there (relative to the config)."""
    (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return f"{name}.py"


def fake_distribution(
    site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] | None = None, version: str = "1.0"
) -> None:
    """An installed distribution declaring ``hookrunner`` entry points, in ``site`` (put it on PYTHONPATH)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[hookrunner]\n{lines}", encoding="utf-8")
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if " ERROR " in line or line.startswith("error:")]


def with_console(base_url: str, load: list[str] | None = None, **runner: Any) -> dict[str, Any]:
    """``make_config`` with the console transcript on (make_config turns it off), printed though stdout is a pipe."""
    return make_config(base_url, plugins={"disable": [], "load": load or [], "console": {"output": "always"}}, **runner)


def assert_no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output


# -- demo ------------------------------------------------------------------------------------------------------


def test_demo_prints_the_transcript_of_every_scripted_call_and_exits_0(cli) -> None:
    started = time.monotonic()
    code, out, err = finish(cli("demo", "--speed", "4"), timeout=20)
    assert code == 0, err
    assert time.monotonic() - started < 10
    assert_no_traceback(out, err)
    lines = out.splitlines()
    calls = load_script(default_script_path()).calls
    assert len(calls) == 3
    for call in calls:
        label = f"[{call.id.rsplit('-', 1)[-1]}]"
        expected = []
        for event in call.events:
            if event.event_type == "tts_completed":
                expected.append(f"{label} agent:  {event.fields['tts_text']}")
            elif event.event_type == "user_transcription":
                expected.append(f"{label} caller: {event.fields['user_transcription_text']}")
        said = [line for line in lines if line.startswith(f"{label} agent:") or line.startswith(f"{label} caller:")]
        assert said == expected, f"transcript of {call.id}"
        assert any(" agent: " in line for line in said) and any(" caller: " in line for line in said)
        ended = [line for line in lines if line.startswith(f"{label} -- call ended")]
        assert len(ended) == 1, lines
    # the example config's keyword rule fires on two of the scripted calls, and the console shows it
    triggers = sorted(line.split("] ", 1)[1] for line in out.splitlines() if " !! " in line)
    assert triggers == [
        "!! service-problem fired (warning): no data",
        "!! service-problem fired (warning): three times what i normally pay",
    ]
    # nothing told the runner the call ids: it found each call by listing the simulator's calls as they started
    found = sorted(line.split(": following", 1)[0].rsplit(" ", 1)[-1] for line in err.splitlines() if "found by listing" in line)
    assert found == sorted(call.id for call in calls)


def test_a_fast_demo_lists_as_often_as_its_calls_need_and_follows_every_one(cli) -> None:
    code, out, err = finish(cli("demo", "--speed", "20"), timeout=20)  # calls of a fraction of a second
    assert code == 0, err
    assert "lists calls every 0.025 s" in out.splitlines()[0]
    assert sum(" -- call ended" in line for line in out.splitlines()) == 3, out


# -- run: how calls end, and the exit code ---------------------------------------------------------------------


async def test_run_exits_0_when_every_call_ends_and_prints_each_transcript(cli, tmp_path: Path) -> None:
    calls = [{"id": f"CALL-{n}", "events": call_events(4, spacing=0.02, text=f"call {n} turn")} for n in (1, 2)]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, with_console(sim.base_url, calls=["CALL-1", "CALL-2"]))
        code, out, err = await afinish(cli("run", str(config)))
    assert code == 0, err
    assert_no_traceback(out, err)
    assert error_lines(err) == []
    lines = out.splitlines()
    for n in (1, 2):
        assert f"[CALL-{n}] agent:  call {n} turn 0" in lines
        assert f"[CALL-{n}] caller: call {n} turn 1" in lines
        assert f"[CALL-{n}] agent:  call {n} turn 2" in lines
        assert f"[CALL-{n}] caller: call {n} turn 3" in lines
        assert sum(line.startswith(f"[CALL-{n}] -- call ended") for line in lines) == 1


async def test_run_exits_1_with_one_error_line_for_an_unknown_call_while_the_other_call_ends(cli, tmp_path: Path) -> None:
    calls = [{"id": "CALL-OK", "events": call_events(4, spacing=0.02)}]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, with_console(sim.base_url, calls=["CALL-OK", "CALL-NOPE"]))
        code, out, err = await afinish(cli("run", str(config)))
        nope_connections = sim.connections.get("CALL-NOPE")
    assert code == 1
    assert_no_traceback(out, err)
    errors = error_lines(err)
    assert len(errors) == 1, err
    assert "CALL-NOPE" in errors[0] and "not found" in errors[0]
    assert nope_connections == 1  # no retries for a 404
    assert sum(line.startswith("[CALL-OK] -- call ended") for line in out.splitlines()) == 1


async def test_run_exits_0_with_an_info_line_for_a_call_already_completed(cli, tmp_path: Path) -> None:
    calls = [{"id": "CALL-DONE", "status": "completed", "events": call_events(2)}]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, make_config(sim.base_url, calls=["CALL-DONE"]))
        code, out, err = await afinish(cli("run", str(config)))
        connections = sim.connections.get("CALL-DONE")
    assert code == 0, err
    assert_no_traceback(out, err)
    assert error_lines(err) == []
    info = [line for line in err.splitlines() if "CALL-DONE" in line]
    assert len(info) == 1, err
    assert " INFO " in info[0] and "already completed" in info[0]
    assert connections == 1


async def test_run_exits_2_fast_with_one_line_about_the_key_when_the_key_is_refused(cli, tmp_path: Path) -> None:
    calls = [{"id": f"CALL-{n}", "events": call_events(50, spacing=0.1)} for n in range(3)]
    async with running_simulator(script(calls), api_key="another-key") as sim:
        config = write_config(tmp_path, make_config(sim.base_url, calls=[c["id"] for c in calls]))
        started = trio.current_time()
        code, out, err = await afinish(cli("run", str(config)))
        elapsed = trio.current_time() - started
    assert code == 2
    assert elapsed < 3, f"took {elapsed:.1f} s: the runner should stop at the first 401, not follow the calls"
    assert_no_traceback(out, err)
    about_key = [line for line in err.splitlines() if "API key" in line]
    assert len(about_key) == 1, err
    assert "401" in about_key[0]
    assert API_KEY not in out + err


async def test_call_option_replaces_runner_calls(cli, tmp_path: Path) -> None:
    calls = [{"id": "CALL-CLI", "events": call_events(2, spacing=0.02)}]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, with_console(sim.base_url, calls=["CALL-FROM-FILE"]))
        code, out, err = await afinish(cli("run", str(config), "--call", "CALL-CLI"))
        asked = dict(sim.connections)
    assert code == 0, err  # CALL-FROM-FILE does not exist: following it would exit 1
    assert asked == {"CALL-CLI": 1}
    assert "CALL-FROM-FILE" not in out + err
    assert sum(line.startswith("[CALL-CLI] -- call ended") for line in out.splitlines()) == 1


def test_run_without_any_call_exits_2_with_a_line_naming_runner_calls(cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, make_config(UNREACHABLE))
    code, out, err = finish(cli("run", str(config)))
    assert code == 2
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert str(config) in lines[0] and "runner.calls" in lines[0]


def test_run_with_api_key_env_unset_exits_2_naming_the_variable_and_no_key(cli, tmp_path: Path) -> None:
    variable = "HOOKRUNNER_TEST_UNSET_KEY"
    assert variable not in os.environ
    table = make_config(UNREACHABLE, calls=["CALL-1"])
    table["atoms"] = {"base_url": UNREACHABLE, "api_key_env": variable}
    config = write_config(tmp_path, table)
    code, out, err = finish(cli("run", str(config), env={"ATOMS_API_KEY": "sk-other-canary-0001"}))
    assert code == 2
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert str(config) in lines[0] and "atoms.api_key_env" in lines[0] and variable in lines[0]
    assert "sk-other-canary-0001" not in out + err and API_KEY not in out + err


async def test_the_api_key_from_the_environment_never_appears_in_debug_output(cli, tmp_path: Path) -> None:
    secret = "sk-live-canary-7f3e9a1c55"
    calls = [{"id": "CALL-K", "events": call_events(4, spacing=0.02)}]
    async with running_simulator(script(calls), api_key=secret) as sim:
        table = with_console(sim.base_url, calls=["CALL-K", "CALL-MISSING"])
        table["atoms"] = {"base_url": sim.base_url, "api_key_env": "HOOKRUNNER_TEST_KEY"}
        config = write_config(tmp_path, table)
        code, out, err = await afinish(
            cli("--log-level", "debug", "run", str(config), env={"HOOKRUNNER_TEST_KEY": secret})
        )
    assert code == 1, err  # CALL-K ended, CALL-MISSING was not found: the key was accepted
    assert sum(line.startswith("[CALL-K] -- call ended") for line in out.splitlines()) == 1
    assert err.strip(), "debug output expected on stderr"
    assert secret not in out and secret not in err


# -- run: stopping on a signal -----------------------------------------------------------------------------------

SHUTDOWN_PLUGIN = """
    import trio
    from hookrunner import hookimpl

    MARKER = {marker!r}

    @hookimpl
    async def on_shutdown(app):
        await trio.sleep(0.05)  # an async flush: the runner must give it time
        with open(MARKER, "a") as handle:
            handle.write("on_shutdown\\n")
"""


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_mid_call_runs_on_shutdown_and_exits_0_within_shutdown_grace(
    cli, tmp_path: Path, stop: signal.Signals
) -> None:
    grace = 1.5
    marker = tmp_path / "shutdown.marker"
    load = [write_plugin(tmp_path, "shutdown_marker", SHUTDOWN_PLUGIN.format(marker=str(marker)))]
    calls = [{"id": "CALL-LONG", "events": call_events(50, spacing=0.2)}]  # 10 s of call
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, with_console(sim.base_url, load, calls=["CALL-LONG"], shutdown_grace=grace))
        process = cli("run", str(config))
        seen = await read_until(process, lambda line: line.startswith("[CALL-LONG] caller:"))
        assert not marker.exists()
        process.send_signal(stop)
        stopped = trio.current_time()
        code, out, err = await afinish_after_reading(process, timeout=grace + 5)
        elapsed = trio.current_time() - stopped
    assert code == 0, err
    assert elapsed < grace + 1, f"exited {elapsed:.2f} s after {stop.name}"
    assert_no_traceback("".join(seen) + out, err)
    assert marker.read_text() == "on_shutdown\n"
    assert any(stop.name in line and "stopping" in line for line in err.splitlines()), err
    assert "[CALL-LONG] -- call ended" not in out  # it was stopped, not followed to its end


DRAIN_PLUGIN = """
    import trio
    from hookrunner import hookimpl

    LOG = {log!r}
    busy = []

    def note(text):
        with open(LOG, "a") as handle:
            handle.write(text + "\\n")

    @hookimpl
    async def on_user_transcription(event, call):
        if busy:
            return
        busy.append(event.event_id)
        note("hook started")
        await trio.sleep(0.6)
        note("hook finished")

    @hookimpl
    def on_shutdown(app):
        note("on_shutdown")
"""


async def test_sigterm_lets_an_in_flight_hook_finish_then_runs_on_shutdown(cli, tmp_path: Path) -> None:
    grace = 2.0
    log = tmp_path / "hooks.log"
    load = [write_plugin(tmp_path, "drain_probe", DRAIN_PLUGIN.format(log=str(log)))]
    calls = [{"id": "CALL-DRAIN", "events": call_events(50, spacing=0.2)}]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, make_config(sim.base_url, calls=["CALL-DRAIN"], shutdown_grace=grace, plugins={"load": load}))
        process = cli("run", str(config))
        with trio.fail_after(10):
            while not (log.exists() and "hook started" in log.read_text()):
                assert process.poll() is None, process.communicate()
                await trio.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stopped = trio.current_time()
        code, out, err = await afinish(process, timeout=grace + 5)
        elapsed = trio.current_time() - stopped
    assert code == 0, err
    assert elapsed < grace + 1, f"exited {elapsed:.2f} s after SIGTERM"
    assert_no_traceback(out, err)
    assert log.read_text() == "hook started\nhook finished\non_shutdown\n"
    assert error_lines(err) == []  # nothing was cut: the hook finished well within the grace


async def test_run_refuses_an_invalid_config_before_connecting(cli, tmp_path: Path) -> None:
    calls = [{"id": "CALL-1", "events": call_events(2)}]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, make_config(sim.base_url, calls=["CALL-1"], hook_timeout="ten"))
        code, out, err = await afinish(cli("run", str(config)))
        asked = dict(sim.connections)
    assert code == 2
    assert_no_traceback(out, err)
    assert err.splitlines() == [f'error: {config}: runner.hook_timeout: expected a number of seconds, got "ten"']
    assert asked == {}


# -- run: plugins that misbehave -----------------------------------------------------------------------------------


async def test_a_hanging_hook_and_a_raising_plugin_are_logged_by_name_and_the_run_completes(cli, tmp_path: Path) -> None:
    load = [
        write_plugin(
            tmp_path,
            "hangs_hooks",
            """
            import trio
            from hookrunner import hookimpl

            @hookimpl
            async def on_tts_completed(event, call):
                await trio.sleep_forever()
            """,
        ),
        write_plugin(
            tmp_path,
            "raises_hooks",
            """
            from hookrunner import hookimpl

            @hookimpl
            def on_user_transcription(event, call):
                raise RuntimeError("plugin bug in raises_hooks")
            """,
        ),
    ]
    calls = [{"id": "CALL-ISO", "events": call_events(4, spacing=0.02)}]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, with_console(sim.base_url, load, calls=["CALL-ISO"], hook_timeout=0.3))
        started = trio.current_time()
        code, out, err = await afinish(cli("run", str(config)))
        elapsed = trio.current_time() - started
    assert code == 0, err
    assert elapsed < 6
    lines = out.splitlines()
    # every turn still reached the console plugin, and the call was followed to its end
    assert [line for line in lines if " agent: " in line or " caller: " in line] == [
        "[CALL-ISO] agent:  turn 0",
        "[CALL-ISO] caller: turn 1",
        "[CALL-ISO] agent:  turn 2",
        "[CALL-ISO] caller: turn 3",
    ]
    assert sum(line.startswith("[CALL-ISO] -- call ended") for line in lines) == 1
    errors = error_lines(err)
    timeouts = [line for line in errors if "timed out" in line]
    raised = [line for line in errors if "raised" in line]
    assert len(timeouts) == 2 and len(raised) == 2, err
    for line, index in zip(timeouts, (0, 2)):
        assert "plugin hangs_hooks" in line and "call CALL-ISO" in line and f"event CALL-ISO_{index}_" in line
    for line, index in zip(raised, (1, 3)):
        assert "plugin raises_hooks" in line and "call CALL-ISO" in line and f"event CALL-ISO_{index}_" in line
    # one line per failure, pointing at the plugin's file and line; the traceback only at --log-level debug
    assert "Traceback" not in err
    assert all("RuntimeError: plugin bug in raises_hooks (at raises_hooks.py:" in line for line in raised), raised


# -- run: what the stream sends --------------------------------------------------------------------------------------


def test_malformed_lines_warn_with_the_call_id_and_unknown_event_types_reach_on_event(
    cli, processes, tmp_path: Path
) -> None:
    events = call_events(4, spacing=0.02) + [
        {"at": 0.1, "event_type": "agent_node_state", "node_id": "node-refills"},
        {"at": 0.12, "event_type": "tts_completed", "tts_text": "after the noise", "tts_latency": 90},
    ]
    script_file = tmp_path / "calls.toml"
    script_file.write_text(
        tomli_w.dumps({"api_key": API_KEY, "keepalive": 0, "calls": [{"id": "CALL-BAD", "malformed_after": 2, "events": events}]})
    )
    simulator = hookrunner_process("simulate", "--port", "0", "--api-key", API_KEY, str(script_file), cwd=tmp_path)
    processes.append(simulator)
    watchdog = threading.Timer(10, simulator.kill)  # a simulator that never says it listens fails the test
    watchdog.start()
    listening = simulator.stdout.readline()
    watchdog.cancel()
    match = re.match(r"simulator listening on (http://127\.0\.0\.1:\d+) ", listening)
    assert match, listening
    load = [
        write_plugin(
            tmp_path,
            "types_seen",
            """
            from hookrunner import hookimpl

            @hookimpl
            def on_event(event, call):
                print(f"on_event {call.id} {event.event_type} {type(event).__name__}", flush=True)
            """,
        )
    ]
    config = write_config(tmp_path, with_console(match[1], load, calls=["CALL-BAD"]))
    code, out, err = finish(cli("run", str(config)))
    simulator.send_signal(signal.SIGTERM)
    assert simulator.wait(timeout=10) == 0
    assert code == 0, err
    assert_no_traceback(out, err)
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 2, err
    assert all("CALL-BAD" in line and "malformed line" in line for line in warnings)
    assert any("{this is not json" in line for line in warnings)
    lines = out.splitlines()
    assert "on_event CALL-BAD agent_node_state UnknownEvent" in lines
    assert "[CALL-BAD] agent:  after the noise" in lines  # the stream went on after the bad lines
    assert sum(line.startswith("[CALL-BAD] -- call ended") for line in lines) == 1


# -- check -----------------------------------------------------------------------------------------------------------


def test_check_reports_a_wrong_type_an_unknown_key_and_two_keys_that_disagree_one_line_each(cli, tmp_path: Path) -> None:
    # ([atoms] and its api_key_env may be left out since issue 15: the third problem is a contradiction instead)
    config = tmp_path / "broken.toml"
    config.write_text(
        textwrap.dedent(
            """
            [atoms]
            base_url = "http://127.0.0.1:9"

            [runner]
            hook_timeout = "ten"
            hook_timout = 3

            [runner.reconnect]
            initial_delay = 5.0
            max_delay = 1.0
            """
        )
    )
    code, out, err = finish(cli("check", str(config)))
    assert code == 2
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert all(str(config) in line for line in lines), err
    wrong_type = [line for line in lines if "runner.hook_timeout:" in line]
    unknown = [line for line in lines if "runner.hook_timout:" in line]
    missing = [line for line in lines if "runner.reconnect.max_delay: expected a number of at least initial_delay" in line]
    assert len(wrong_type) == len(unknown) == len(missing) == 1, err
    assert 'expected a number of seconds, got "ten"' in wrong_type[0]
    assert 'unknown key (did you mean "hook_timeout"?)' in unknown[0]
    assert "got 1.0" in missing[0]


def test_check_accepts_the_repositorys_example_config(cli) -> None:
    code, out, err = finish(cli("check", str(REPO / "config.example.toml"), env={DEFAULT_API_KEY_ENV: "sk-test-key-123"}))
    assert code == 0, err
    assert_no_traceback(out, err)
    assert "config.example.toml: OK" in out
    assert "plugin console (active" in out


@pytest.mark.parametrize(
    "plugins, key_path",
    [
        ({"console": {"interims": "sometimes"}}, "plugins.console.interims"),
        ({"console": {"colour": True}}, "plugins.console.colour"),
        ({"nosuch": {"level": 1}}, "plugins.nosuch"),
    ],
    ids=["bad-console-value", "unknown-console-key", "no-such-plugin"],
)
def test_check_reports_a_bad_plugin_settings_table_in_one_line(cli, tmp_path: Path, plugins: dict, key_path: str) -> None:
    table = make_config(UNREACHABLE)
    table["plugins"] = {"disable": [], **plugins}
    config = write_config(tmp_path, table)
    code, out, err = finish(cli("check", str(config)))
    assert code == 2
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert str(config) in lines[0] and f"{key_path}:" in lines[0]


def test_check_names_a_local_plugin_implementing_a_misspelled_hook_and_suggests_the_hook(cli, tmp_path: Path) -> None:
    load = [
        write_plugin(
            tmp_path,
            "typo_hooks",
            """
            from hookrunner import hookimpl

            @hookimpl
            def on_user_transcript(event, call):
                pass
            """,
        )
    ]
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": load}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 2, err
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "typo_hooks" in lines[0] and "on_user_transcript" in lines[0]
    assert '"on_user_transcription"' in lines[0]


def test_check_names_a_hook_argument_typo_with_the_nearest_argument_the_hook_gives(cli, tmp_path: Path) -> None:
    source = "from hookrunner import hookimpl\n\n@hookimpl\ndef on_user_transcription(evnt, call):\n    pass\n"
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": [write_plugin(tmp_path, "typo_args", source)]}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 2, err
    assert_no_traceback(out, err)
    [line] = err.splitlines()
    assert line.startswith(f"error: {config}: plugins.load[0]: plugin typo_args: "), line
    assert line.endswith('on_user_transcription: no argument named evnt (did you mean "event"?); the hook gives event, call')


def test_check_reports_a_plugins_load_path_that_does_not_exist_in_one_line(cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": ["not_written_yet.py"]}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 2
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "plugins.load[0]" in lines[0] and "not_written_yet.py" in lines[0]


def test_check_warns_when_a_plugin_with_a_settings_table_declares_no_validate_settings(cli, tmp_path: Path) -> None:
    load = [
        write_plugin(
            tmp_path,
            "unchecked_settings",
            """
            from hookrunner import hookimpl

            @hookimpl
            def on_event(event, call):
                pass
            """,
        )
    ]
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": load, "unchecked_settings": {"levle": 3}}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 0, err
    assert_no_traceback(out, err)
    assert "plugin unchecked_settings (active" in out
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, err
    assert "plugins.unchecked_settings" in warnings[0] and "plugin unchecked_settings" in warnings[0]
    assert "does not declare its settings" in warnings[0] and "not checked" in warnings[0]


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "async def validate_settings(settings):\n    return []",
            "validate_settings must be a plain function",
        ),
        (
            "def validate_settings(settings):\n    raise KeyError('levels')",
            "validate_settings raised KeyError: 'levels'",
        ),
        (
            "def validate_settings(settings):\n    return 'level: expected an integer'",
            'validate_settings must return a list of problems (strings), got "level: expected an integer"',
        ),
    ],
    ids=["async-def", "raises", "returns-a-string"],
)
def test_check_reports_a_broken_validate_settings_in_one_line_naming_the_plugin(
    cli, tmp_path: Path, body: str, expected: str
) -> None:
    source = "from hookrunner import hookimpl\n\n@hookimpl\n" + body + "\n"
    load = [write_plugin(tmp_path, "odd_settings", source)]
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": load, "odd_settings": {"level": 1}}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 2, err
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: plugin odd_settings: ") and expected in lines[0], err


def test_a_local_plugin_named_like_a_standard_module_does_not_replace_it(cli, tmp_path: Path) -> None:
    load = [
        write_plugin(
            tmp_path,
            "email",
            """
            from hookrunner import hookimpl

            @hookimpl
            def on_call_end(event, call):
                pass
            """,
        ),
        write_plugin(
            tmp_path,
            "mailer",
            """
            from email.mime.text import MIMEText  # the standard library's, not the plugin above
            from hookrunner import hookimpl

            @hookimpl
            def on_call_end(event, call):
                MIMEText(call.id)
            """,
        ),
    ]
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": load}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 0, err
    assert_no_traceback(out, err)
    assert "plugin email (active, email.py): on_call_end" in out
    assert "plugin mailer (active, mailer.py): on_call_end" in out


def test_two_distributions_declaring_one_plugin_name_are_one_error_naming_both(cli, tmp_path: Path) -> None:
    site = tmp_path / "site"
    plugin = "from hookrunner import hookimpl\n\n@hookimpl\ndef on_event(event):\n    pass\n"
    fake_distribution(site, "alerts-one", {"alerts": "alerts_one"}, {"alerts_one": plugin})
    fake_distribution(site, "alerts-two", {"alerts": "alerts_two"}, {"alerts_two": plugin}, version="2.1")
    config = write_config(tmp_path, make_config(UNREACHABLE))
    code, out, err = finish(cli("check", str(config), env={"PYTHONPATH": str(site)}))
    assert code == 2, err
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: plugin alerts (entry points of alerts-one and alerts-two): ")
    assert "alerts-one 1.0: alerts_one" in lines[0] and "alerts-two 2.1: alerts_two" in lines[0]

    code, out, err = finish(cli("plugins", "--config", str(config), env={"PYTHONPATH": str(site)}))
    assert code == 1, err
    row = plugin_row(out, "alerts")
    assert row[2] == "error" and "2 distributions declare" in row[4]


# -- init --------------------------------------------------------------------------------------------------------------


def test_init_writes_a_config_that_check_accepts_and_never_overwrites_it(cli, tmp_path: Path) -> None:
    path = tmp_path / "starter.toml"
    code, out, err = finish(cli("init", str(path)))
    assert code == 0, err
    assert path.is_file()
    written = path.read_bytes()
    code, out, err = finish(cli("check", str(path), env={DEFAULT_API_KEY_ENV: "sk-test-key-123"}))
    assert code == 0, err
    assert f"{path}: OK" in out

    code, out, err = finish(cli("init", str(path)))
    assert code == 2
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "already exists" in lines[0], err
    assert path.read_bytes() == written


def test_init_writes_every_key_that_has_a_default_with_the_schema_default(cli, tmp_path: Path) -> None:
    path = tmp_path / "starter.toml"
    code, out, err = finish(cli("init", str(path)))
    assert code == 0, err
    expected = default_config_table()
    expected["atoms"]["api_key_env"] = DEFAULT_API_KEY_ENV
    assert tomllib.loads(path.read_text(encoding="utf-8")) == expected


def test_init_example_prints_or_writes_the_packaged_commented_example_and_check_accepts_it(cli, tmp_path: Path) -> None:
    code, out, err = finish(cli("init", "--example", "-"))
    assert code == 0, err
    assert out == (REPO / "config.example.toml").read_text(encoding="utf-8")  # every key, with its comment
    path = tmp_path / "full.toml"
    code, _, err = finish(cli("init", "--example", str(path)))
    assert code == 0 and path.read_text(encoding="utf-8") == out, err
    code, checked, err = finish(cli("check", str(path), env={DEFAULT_API_KEY_ENV: "sk-test-key-123"}))
    assert code == 0, err
    code, starter, err = finish(cli("init", "-"))  # the starter on stdout, nothing written
    assert code == 0 and "hookrunner init --example -" in starter and not (tmp_path / "-").exists()
    assert tomllib.loads(starter)["runner"]["calls"] == []


# -- plugins -----------------------------------------------------------------------------------------------------------


def plugin_row(out: str, name: str) -> list[str]:
    """The ``hookrunner plugins`` row of ``name``, split on the column gaps."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
    assert rows[0][:4] == ["NAME", "VERSION", "ACTIVE", "FROM"], out
    matches = [row for row in rows[1:] if row[0] == name]
    assert len(matches) == 1, out
    return matches[0]


def test_plugins_lists_console_as_active_with_its_hooks(cli) -> None:
    code, out, err = finish(cli("plugins"))
    assert code == 0, err
    row = plugin_row(out, "console")
    assert row[2] == "yes"
    hooks = row[4].split(", ")
    assert {"on_tts_completed", "on_user_transcription", "on_call_finished", "on_call_subscribed"} <= set(hooks)


def test_plugins_with_a_config_that_disables_console_shows_it_inactive_with_its_hooks(cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, make_config(UNREACHABLE))  # make_config disables console
    code, out, err = finish(cli("plugins", "--config", str(config)))
    assert code == 0, err
    row = plugin_row(out, "console")
    assert row[2] == "no"
    assert {"on_tts_completed", "on_user_transcription"} <= set(row[4].split(", "))


def test_plugins_lists_every_plugin_when_some_are_broken_and_exits_1(cli, tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "shaky-plugin", {"shaky": "shaky_hooks"}, {"shaky_hooks": "import no_such_dependency\n"})
    load = [
        write_plugin(
            tmp_path,
            "typo_hooks",
            """
            from hookrunner import hookimpl

            @hookimpl
            def on_user_transcript(event, call):
                pass
            """,
        ),
        write_plugin(
            tmp_path,
            "fine_hooks",
            """
            from hookrunner import hookimpl

            @hookimpl
            def on_call_end(event, call):
                pass
            """,
        ),
    ]
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": load}))
    env = {"PYTHONPATH": str(site)}
    code, out, err = finish(cli("plugins", "--config", str(config), env=env))
    assert code == 1, err
    assert_no_traceback(out, err)
    shaky = plugin_row(out, "shaky")
    assert shaky[1:4] == ["1.0", "error", "entry point of shaky-plugin"]
    assert shaky[4] == "error: cannot be loaded: ModuleNotFoundError: No module named 'no_such_dependency'"
    typo = plugin_row(out, "typo_hooks")
    assert typo[2] == "error" and "on_user_transcript" in typo[4] and '"on_user_transcription"' in typo[4]
    assert plugin_row(out, "fine_hooks")[2:] == ["yes", "fine_hooks.py", "on_call_end"]
    assert plugin_row(out, "console")[2] == "no"

    code, out, err = finish(cli("check", str(config), env=env))  # check and run still refuse a broken plugin
    assert code == 2
    assert_no_traceback(out, err)
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("error: plugin shaky (entry point of shaky-plugin): cannot be loaded: ")
    assert lines[1].startswith(f"error: {config}: plugins.load[0]: plugin typo_hooks: implements on_user_transcript")


def test_a_disabled_plugin_is_not_imported_by_check_and_a_broken_one_only_shows_in_plugins(cli, tmp_path: Path) -> None:
    load = [write_plugin(tmp_path, "half_written", "from hookrunner import hookimpl\nimport no_such_dependency\n")]
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins={"load": load, "disable": ["console", "half_written"]}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 0, err
    assert "plugin half_written (disabled, half_written.py)" in out
    code, out, err = finish(cli("plugins", "--config", str(config)))
    assert code == 0, err  # broken, but run would not load it
    row = plugin_row(out, "half_written")
    assert row[2] == "no" and "No module named 'no_such_dependency'" in row[4]


# -- global options ------------------------------------------------------------------------------------------------------


def test_version_prints_the_package_version(cli) -> None:
    code, out, err = finish(cli("--version"))
    assert code == 0, err
    assert out.strip() == f"hookrunner {hookrunner.__version__}"


async def test_log_format_json_writes_one_json_object_per_stderr_line(cli, tmp_path: Path) -> None:
    calls = [
        {"id": "CALL-J", "events": call_events(2, spacing=0.02)},
        {"id": "CALL-JDONE", "status": "completed", "events": call_events(1)},
    ]
    async with running_simulator(script(calls)) as sim:
        config = write_config(tmp_path, make_config(sim.base_url, calls=["CALL-J", "CALL-JDONE", "CALL-JNOPE"]))
        code, out, err = await afinish(cli("--log-format", "json", "run", str(config)))
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) >= 3, err
    records = [json.loads(line) for line in lines]
    assert all(isinstance(record, dict) for record in records)
    assert all({"time", "level", "message"} <= record.keys() for record in records)
    assert any(record["level"] == "error" and "CALL-JNOPE" in record["message"] for record in records)
    assert any(record["level"] == "info" and "CALL-JDONE" in record["message"] for record in records)


WARNING_AND_RAISING = """
import warnings
from hookrunner import hookimpl

@hookimpl
def on_startup(app):
    warnings.warn("this plugin uses an old thing", UserWarning)

@hookimpl
def on_user_transcription(event, call):
    raise ValueError("chaos in " + event.text)
"""


def json_records(err: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object; a line that is not one fails the test, quoted."""
    records = []
    for line in err.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line under --log-format json: {line!r}")
    return records


async def test_under_log_format_json_every_stderr_line_of_run_check_and_a_fatal_error_is_an_object_with_fields(
    cli, tmp_path: Path
) -> None:
    load = [write_plugin(tmp_path, "warns_and_raises", WARNING_AND_RAISING)]
    calls = [{"id": "CALL-FIELDS", "events": call_events(2, spacing=0.02)}]
    async with running_simulator(script(calls)) as sim:
        table = make_config(sim.base_url, calls=["CALL-FIELDS"], plugins={"load": load, "disable": ["console"]})
        config = write_config(tmp_path, table)
        code, out, err = await afinish(cli("--log-format", "json", "run", str(config)))
    assert code == 0, err
    records = json_records(err)
    [raised] = [record for record in records if "raised ValueError" in record["message"]]
    assert raised["plugin"] == "warns_and_raises" and raised["hook"] == "on_user_transcription"
    assert raised["call_id"] == "CALL-FIELDS" and raised["event_id"].startswith("CALL-FIELDS_1_")
    [warned] = [record for record in records if record["logger"] == "py.warnings"]  # a Python warning, as JSON
    assert "this plugin uses an old thing" in warned["message"] and warned["level"] == "warning"
    assert all(record["call_id"] == "CALL-FIELDS" for record in records if "CALL-FIELDS:" in record["message"])

    code, out, err = finish(cli("--log-format", "json", "check", str(config)))
    assert code == 0, err
    assert all(record["level"] in ("info", "warning") for record in json_records(err))

    broken = write_config(tmp_path, {**table, "runner": {**table["runner"], "hook_timeout": "ten"}}, name="broken.toml")
    code, out, err = finish(cli("--log-format", "json", "run", str(broken)))
    assert code == 2 and out == ""
    [fatal] = json_records(err)  # the line that says why it exits
    assert fatal["level"] == "error" and fatal["message"] == f'{broken}: runner.hook_timeout: expected a number of seconds, got "ten"'
    code, out, err = finish(cli("run", str(broken)))  # in text, as before
    assert err.splitlines() == [f'error: {broken}: runner.hook_timeout: expected a number of seconds, got "ten"']


async def test_under_log_format_json_a_service_with_its_server_writes_only_json_lines_from_start_to_stop(
    cli, tmp_path: Path
) -> None:
    """The HTTP server (hypercorn) has log lines of its own, at start and stop: they must be JSON too."""
    calls = [{"id": "CALL-SRV", "events": call_events(2, spacing=0.02)}]
    async with running_simulator(script(calls)) as sim:
        table = make_config(sim.base_url, calls=["CALL-SRV"])
        table["server"] = {"enabled": True, "port": 0}
        process = cli("--log-format", "json", "run", str(write_config(tmp_path, table)))
        assert process.stderr is not None
        seen: list[str] = []
        with trio.fail_after(15):
            while not any("server: listening on" in line for line in seen):
                line = await trio.to_thread.run_sync(process.stderr.readline, abandon_on_cancel=True)
                assert line, f"stderr ended before the server listened: {seen}"
                seen.append(line)
            await wait_until_call_over(sim, "CALL-SRV")
        process.send_signal(signal.SIGINT)
        code, out, err = await afinish(process)
    assert code == 0
    records = json_records("".join(seen) + err)
    assert any(record["message"].startswith("server: listening on http://127.0.0.1:") for record in records)
    assert any(record["message"].startswith("finished:") for record in records)  # the last line, after the stop


def test_run_without_atoms_and_without_the_variable_says_which_variable_in_one_line(cli, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"runner": {"calls": ["CALL-1"]}})
    code, out, err = finish(cli("run", str(config), env={"ATOMS_API_KEY": ""}))
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [
        f"error: {config}: atoms.api_key_env: environment variable ATOMS_API_KEY is not set (export it with your Atoms API key)"
    ]


@pytest.mark.parametrize("command", ["run", "check", "plugins", "init", "simulate", "redeliver", "replay", "new-plugin", "demo"])
def test_every_commands_help_says_what_it_does_its_exit_statuses_and_an_example(cli, command: str) -> None:
    code, out, err = finish(cli(command, "--help"))
    assert code == 0, err
    head, _, rest = out.partition("\n\n")
    assert head.startswith(f"usage: hookrunner {command}")
    assert rest.split("\n\n", 1)[0].strip(), out  # a description before the options
    assert "exit status: 0" in out and f"\nexample:\n  hookrunner {command}" in out, out
