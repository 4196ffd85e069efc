"""Shared test helpers, imported by the test modules (``from helpers import ...``; the fixtures are in
``conftest.py``): a recording plugin, scripts for the simulator, running the runner in-process (thin wrappers over
``hookrunner.testing``, kept for the tests of the core, which name their plugins test-plugin-N), and starting
real ``hookrunner`` processes.

Everything talks over real loopback sockets: the simulator is hypercorn on 127.0.0.1, the runner uses httpx.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trio

from hookrunner import hookimpl
from hookrunner._run.runner import Runner
from hookrunner.testing import TEST_API_KEY, config_table, make_runner, sim_script

API_KEY = TEST_API_KEY
#: Every plugin installed through the entry point group (bundled ones and the example package): disable them all
#: where a test must see only its own plugins.
INSTALLED_PLUGINS = sorted(ep.name for ep in importlib.metadata.entry_points(group="hookrunner"))
REPO = Path(__file__).resolve().parent.parent
HOOKRUNNER = str(Path(sys.executable).with_name("hookrunner"))


def script(calls: list[dict[str, Any]], **top: Any) -> Any:
    """A simulator script from plain data (the TOML shape), with the tests' API key."""
    return sim_script(calls, **top)


def call_events(n: int, spacing: float = 0.0, text: str = "turn") -> list[dict[str, Any]]:
    """n events alternating agent speech and caller finals, ``spacing`` seconds apart."""
    events = []
    for i in range(n):
        if i % 2:
            events.append({"at": i * spacing, "event_type": "user_transcription", "user_transcription_text": f"{text} {i}"})
        else:
            events.append({"at": i * spacing, "event_type": "tts_completed", "tts_text": f"{text} {i}", "tts_latency": 100 + i})
    return events


class Recorder:
    """A plugin that records what it is given; ``delay`` makes every event hook slow (async)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.events: dict[str, list[Any]] = defaultdict(list)  # on_event, per call
        self.typed: dict[str, list[tuple[str, Any]]] = defaultdict(list)  # (hook, event) per call
        self.finished: dict[str, str] = {}
        self.subscribed: list[str] = []
        self.startup = 0
        self.shutdown = 0
        self.active: dict[str, int] = defaultdict(int)
        self.max_active: dict[str, int] = defaultdict(int)

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.startup += 1

    @hookimpl
    async def on_shutdown(self, app: Any) -> None:
        self.shutdown += 1

    @hookimpl
    def on_call_subscribed(self, call: Any) -> None:
        self.subscribed.append(call.id)

    @hookimpl
    def on_call_finished(self, call: Any, reason: str) -> None:
        self.finished[call.id] = reason

    @hookimpl
    async def on_event(self, event: Any, call: Any) -> None:
        self.active[call.id] += 1
        self.max_active[call.id] = max(self.max_active[call.id], self.active[call.id])
        if self.delay:
            await trio.sleep(self.delay)
        else:
            await trio.sleep(0)
        self.events[call.id].append(event)
        self.active[call.id] -= 1

    @hookimpl
    def on_user_transcription(self, event: Any, call: Any) -> None:  # a plain function on purpose
        self.typed[call.id].append(("on_user_transcription", event))

    @hookimpl
    async def on_tts_completed(self, event: Any, call: Any) -> None:
        self.typed[call.id].append(("on_tts_completed", event))

    def ids(self, call_id: str) -> list[str | None]:
        return [event.event_id for event in self.events[call_id]]


def make_config(base_url: str, **runner: Any) -> dict[str, Any]:
    """A config table pointing at a simulator, with delays small enough for tests; ``plugins`` is the whole
    ``[plugins]`` table (every installed plugin disabled unless it says otherwise)."""
    plugins = runner.pop("plugins", {})
    return config_table(base_url, settings=plugins, runner=runner)


def build_runner(config: dict[str, Any], calls: list[str], *extra_plugins: Any, base_dir: Path = REPO) -> Runner:
    """Load plugins as ``hookrunner run`` does and register ``extra_plugins`` objects (named test-plugin-N)."""
    named = {f"test-plugin-{index}": plugin for index, plugin in enumerate(extra_plugins)}
    return make_runner(config, named, calls=calls, base_dir=base_dir)


async def run_runner(
    config: dict[str, Any], calls: list[str], *extra_plugins: Any, base_dir: Path = REPO
) -> tuple[int, Runner]:
    """``build_runner`` and run it to the end; returns the exit code and the runner."""
    runner = build_runner(config, calls, *extra_plugins, base_dir=base_dir)
    return await runner.run(), runner


def hookrunner_process(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, **kwargs: Any) -> subprocess.Popen:
    """Start the installed ``hookrunner`` command as a real process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [HOOKRUNNER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        **kwargs,
    )


def write_config(directory: Path, table: dict[str, Any], name: str = "config.toml") -> Path:
    """A config table written as TOML, for the CLI to read."""
    path = directory / name
    path.write_text(tomli_w.dumps(table), encoding="utf-8")
    return path


def finish(process: subprocess.Popen, timeout: float = 20) -> tuple[int, str, str]:
    """Wait for the process to exit; (exit code, stdout, stderr). Fails the test if it runs past ``timeout``."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"still running after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return process.returncode, out, err


async def afinish(process: subprocess.Popen, timeout: float = 20) -> tuple[int, str, str]:
    """``finish`` from an async test, in a thread, so the servers of the test keep serving meanwhile."""
    return await trio.to_thread.run_sync(finish, process, timeout)


def assert_one_line_script_error(tmp_path: Path, text: str, message: str) -> None:
    """``text`` as a script file is refused with one ScriptError line starting with ``message`` (file name first)."""
    from hookrunner._simulator.script import ScriptError, load_script

    path = tmp_path / "calls.toml"
    path.write_text(text)
    with pytest.raises(ScriptError) as caught:
        load_script(path)
    assert str(caught.value).replace(str(tmp_path) + os.sep, "").startswith(message)
    assert "\n" not in str(caught.value)


def assert_one_error_line(out: str, err: str, *words: str) -> str:
    """stderr holds exactly one `error:` line and it holds every one of ``words``; no traceback anywhere. What a
    refused config or argument looks like from the command line (``assert_one_line_script_error`` checks the
    exception of a script loaded in-process instead); returns the line."""
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], err
    return errors[0]


async def wait_until_call_over(sim: Any, call_id: str, timeout: float = 5.0) -> None:
    """Wait until the simulator's call ``call_id`` has ended (its stream answers 400 from then on)."""
    with trio.fail_after(timeout):
        while (end := sim.call_end(call_id)) is None or sim.app.calls.since_serving(trio.current_time()) < end:
            await trio.sleep(0.02)


async def kill_9_after_lines(process: subprocess.Popen, out: Path, lines: int, timeout: float = 10.0) -> list[str]:
    """SIGKILL ``process`` once the file ``out`` (a recording plugin's) has ``lines`` lines; its lines then."""
    try:
        with trio.fail_after(timeout):
            while not out.exists() or len(out.read_text().splitlines()) < lines:
                await trio.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        await afinish(process)
    assert process.returncode == -signal.SIGKILL
    return out.read_text().splitlines()


async def server_url_of(runner: Runner, timeout: float = 5.0) -> str:
    """The base URL of a starting runner's server, once it listens."""
    with trio.fail_after(timeout):
        while runner.server_url is None:
            await trio.sleep(0.01)
    return runner.server_url


async def serve_loopback(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]) -> int:
    """Serve TCP connections on 127.0.0.1 with ``handler`` (in ``nursery``); the port it listens on."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def read_request_head(stream: trio.SocketStream) -> bytes | None:
    """What a client sent up to the end of its request's head (and whatever came with it); None if it hung up."""
    request = b""
    while b"\r\n\r\n" not in request:
        data = await stream.receive_some(65536)
        if not data:
            return None
        request += data
    return request
