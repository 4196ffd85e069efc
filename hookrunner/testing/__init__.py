"""Testing helpers for plugin authors; the ``hookrunner_run`` fixture comes from ``hookrunner._pytest_plugin``
(entry point ``pytest11``), which imports this module only when a test asks for it.

Unit tests build events and triggers with ``make_event`` / ``make_trigger``; integration tests run the real runner
with ``run_plugins`` against the in-process simulator (real HTTP on 127.0.0.1, no mocks) and look at what
happened; ``start_plugins`` does the same but hands over the running runner, for a test that must act during the
run (stop it mid-call, look at its counters)::

    from hookrunner.testing import run_plugins, sim_call

    async def test_my_plugin_sees_the_final_turn():
        result = await run_plugins([my_plugin], [sim_call("CALL-1", user=["I want to cancel"])])
        assert result.exit_code == 0
        assert [e.text for e in result.events["CALL-1"] if e.event_type == "user_transcription"] == ["I want to cancel"]
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import trio

from hookrunner._core.config import config_from_dict
from hookrunner._core.events import Event, event_from_dict
from hookrunner._run.dispatch import HookFailure
from hookrunner._run.hookspecs import hookimpl
from hookrunner._run.plugin_setup import prepare_plugins
from hookrunner._run.plugins import ENTRY_POINT_GROUP
from hookrunner._run.runner import Runner
from hookrunner._service.intakes import service_runner
from hookrunner._simulator import Simulator, running_simulator
from hookrunner._simulator.script import Script, load_script, parse_script
from hookrunner._core.stats import Stats
from hookrunner._core.platform_delivery import PlatformDelivery, parse_delivery
from hookrunner._core.triggers import Trigger
from hookrunner.testing.errors import plain_errors
from hookrunner.testing.receiver import ReceivedRequest, Receiver, Reply, refusing_port, running_receiver

__all__ = [
    "HookFailure",
    "TEST_API_KEY",
    "make_event",
    "make_trigger",
    "make_delivery",
    "sim_call",
    "sim_script",
    "simulator",
    "config_table",
    "make_runner",
    "start_plugins",
    "PluginRun",
    "run_plugins",
    "RunResult",
    "running_receiver",
    "Receiver",
    "ReceivedRequest",
    "Reply",
    "refusing_port",
]

TEST_API_KEY = "hookrunner-test-key"


def make_event(event_type: str, *, call_id: str = "CALL-TEST", **fields: Any) -> Event:
    """A typed event as the runner would decode it, for plain unit tests of hooks.

    ``make_event("user_transcription", user_transcription_text="hi")``; ``event_id`` and ``timestamp`` are
    filled in when not given.
    """
    raw = {"event_type": event_type, "event_id": f"{call_id}_test", "call_id": call_id, **fields}
    raw.setdefault("timestamp", datetime.now(timezone.utc).isoformat())
    return event_from_dict(raw, call_id)


def make_trigger(*, type: str = "test", call_id: str = "CALL-TEST", rule: str = "rule", **fields: Any) -> Trigger:
    """A trigger as a detector would emit it."""
    return Trigger(type=type, call_id=call_id, rule=rule, **fields)


def make_delivery(
    kind: str = "post-conversation",
    *,
    call_id: str = "CALL-TEST",
    agent_id: str = "agent-test",
    delivery_id: str | None = None,
    **metadata: Any,
) -> PlatformDelivery:
    """An Atoms webhook delivery as ``on_platform_webhook`` receives it, for unit tests of that hook; extra
    ``metadata`` keys go into the envelope's metadata, named as Atoms names them (``fromPhone=...`` on a
    pre-conversation; ``transcript=[{"role": "user", "content": ..., "timestamp": ...}]``, ``callData={...}``,
    ``recordingUrl=...``, ``variables={...}`` on a post-conversation)."""
    body = {
        "id": delivery_id or f"dlv-{kind}-{call_id}",
        "event": f"{agent_id}.{kind}",
        "url": "http://127.0.0.1/atoms/webhook",
        "description": f"{kind} (hookrunner.testing)",
        "metadata": {"callId": call_id, "agentId": agent_id, "eventType": kind, **metadata},
    }
    return parse_delivery(json.dumps(body).encode())


def sim_call(
    call_id: str, *, user: Sequence[str] = (), agent: Sequence[str] = (), spacing: float = 0.05, **faults: Any
) -> dict[str, Any]:
    """One simulated call: agent and caller turns alternating (agent first), ``spacing`` seconds apart, between
    ``call_start`` and ``call_end``. ``faults`` are the simulator's (``drop_after``, ``fail_first``, ...)."""
    events: list[dict[str, Any]] = [{"at": 0.0, "event_type": "call_start"}]
    at = 0.0
    for index in range(max(len(user), len(agent))):
        if index < len(agent):
            at += spacing
            events.append({"at": at, "event_type": "tts_completed", "tts_text": agent[index]})
        if index < len(user):
            at += spacing
            events.append({"at": at, "event_type": "user_transcription", "user_transcription_text": user[index]})
    events.append({"at": at + spacing, "event_type": "call_end"})
    return {"id": call_id, "events": events, **faults}


def sim_script(calls: Sequence[dict[str, Any]], **top: Any) -> Script:
    """A simulator script from ``sim_call`` entries (or raw ``[[calls]]`` tables)."""
    return parse_script({"api_key": TEST_API_KEY, "keepalive": 0, **top, "calls": list(calls)}, source="<test>")


@asynccontextmanager
async def simulator(script: Script | str | Path | Sequence[dict[str, Any]], **kwargs: Any) -> AsyncIterator[Simulator]:
    """The simulator on a free loopback port for the ``async with`` block: a Script, a TOML/JSONL file (such as
    a captured stream), or a list of ``sim_call`` entries."""
    if isinstance(script, (str, Path)):
        script = load_script(script)
    elif not isinstance(script, Script):
        script = sim_script(script)
    with plain_errors():
        async with running_simulator(script, api_key=TEST_API_KEY, **kwargs) as sim:
            yield sim


@dataclass
class RunResult:
    """What a run did: exit code, each call's events in order, triggers, finish reasons, the runner's counters, and
    every exception a hook raised (``failures``: plugin, hook, call, event and the exception itself, so a test can
    say which assertion in which hook failed instead of reading a count)."""

    exit_code: int
    events: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    triggers: list[Trigger] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    failures: list[HookFailure] = field(default_factory=list)

    @property
    def hook_errors(self) -> dict[str, int]:
        """Hook errors (raised) and timeouts are counted per plugin; ``failures`` has each raise."""
        return dict(self.stats.hook_errors)


class _Recorder:
    def __init__(self, result: RunResult) -> None:
        self.result = result

    @hookimpl(trylast=True)
    def on_event(self, event: Event, call: Any) -> None:
        self.result.events[call.id].append(event)

    @hookimpl(trylast=True)
    def on_trigger(self, trigger: Trigger) -> None:
        self.result.triggers.append(trigger)

    @hookimpl(trylast=True)
    def on_call_finished(self, call: Any, reason: str) -> None:
        self.result.finished[call.id] = reason


#: Plugins under test: modules, objects or classes (a class is instantiated for each run, as an entry point's is),
#: each named after its module or class (``[plugins.NAME]``, the ``source`` of its triggers, its line in
#: ``hook_errors``); or a ``{name: plugin}`` dict to choose the names.
Plugins = Sequence[Any] | Mapping[str, Any]

#: What the simulator plays: a Script, a TOML/JSONL file, a list of ``sim_call`` entries, or a simulator already
#: running (from ``simulator(...)``, to set its ``speed`` or read its ``connections`` afterwards).
Source = Script | str | Path | Sequence[dict[str, Any]] | Simulator


def config_table(
    base_url: str,
    *,
    settings: dict[str, Any] | None = None,
    enable: Sequence[str] = (),
    runner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config table ``run_plugins`` runs with, as a parsed ``config.toml``: ``[atoms]`` pointing at
    ``base_url`` with the test key, ``[runner]`` with delays small enough for tests (``runner`` overrides keys),
    every installed plugin disabled unless named in ``enable``, and ``settings`` as ``[plugins.NAME]`` tables.

    Write it as TOML to test a plugin through the real ``hookrunner run`` / ``hookrunner check`` processes (log
    lines, exit codes, signals), with the same settings as the in-process tests.
    """
    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {
        "atoms": {"base_url": base_url, "api_key": TEST_API_KEY},
        "runner": {
            "hook_timeout": 2.0,
            "idle_timeout": 5.0,
            "shutdown_grace": 2.0,
            "reconnect": {"initial_delay": 0.05, "max_delay": 0.2, "max_attempts": 5},
            "spool_file": str(_scratch_dir() / "undispatched.jsonl"),  # a stopped run's leftovers: not in the cwd
            **(runner or {}),
        },
        "plugins": {"disable": sorted(installed - set(enable)), **(settings or {})},
        "state": {"path": ""},  # no journal: one test's undelivered messages must not reach the next
    }


@functools.cache
def _scratch_dir() -> Path:
    """One temporary directory per test process, for what a run writes beside its config (the spool file), so a
    test run never leaves files in the directory pytest was started from."""
    return Path(tempfile.mkdtemp(prefix="hookrunner-testing-"))


def _named(plugins: Plugins) -> list[tuple[str, Any]]:
    if isinstance(plugins, Mapping):
        return list(plugins.items())
    named = []
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        named.append((name.rsplit(".", 1)[-1], plugin))
    return named


def make_runner(
    table: dict[str, Any], plugins: Plugins, *, calls: Sequence[str], base_dir: Path | None = None
) -> Runner:
    """The runner ``hookrunner run`` would build from the config ``table`` (installed plugins loaded, settings
    validated), with ``plugins`` registered as well; not started.

    For a test that owns the run itself, in its own nursery and cancel scopes, or against a server of its own
    rather than the simulator. Relative paths in settings resolve against ``base_dir`` (default: the current
    directory), as they would against the config file's directory.
    """
    return _runner(table, _named(plugins), calls, base_dir)


def _runner(
    table: dict[str, Any], plugins: list[tuple[str, Any]], calls: Sequence[str], base_dir: Path | None
) -> Runner:
    config = config_from_dict(table, source="<hookrunner.testing>", base_dir=base_dir or Path.cwd())
    loaded = prepare_plugins(config, plugins)
    return service_runner(config, loaded, api_key=config.api_key(), calls=calls)


class PluginRun:
    """A run in progress, from ``start_plugins``: the real ``runner`` (``runner.stop()``, ``runner.stats``), the
    ``simulator`` it follows, and ``result``, which fills in as hooks are called."""

    def __init__(self, runner: Runner, simulator: Simulator, result: RunResult) -> None:
        self.runner = runner
        self.simulator = simulator
        self.result = result
        self._over = trio.Event()

    @property
    def over(self) -> bool:
        """True once ``runner.run()`` has returned (``result.exit_code`` is then set)."""
        return self._over.is_set()

    async def wait(self) -> RunResult:
        """Until the run is over (every call finished, or a stop completed); the result."""
        await self._over.wait()
        return self.result

    async def _run(self) -> None:
        try:
            self.result.exit_code = await self.runner.run()
        finally:
            self._over.set()


@asynccontextmanager
async def _serving(source: Source) -> AsyncIterator[Simulator]:
    if isinstance(source, Simulator):
        yield source  # already running: its owner stops it
    else:
        async with simulator(source) as sim:
            yield sim


@asynccontextmanager
async def start_plugins(
    plugins: Plugins,
    script: Source,
    *,
    settings: dict[str, Any] | None = None,
    enable: Sequence[str] = (),
    calls: Sequence[str] | None = None,
    runner: dict[str, Any] | None = None,
    base_dir: Path | None = None,
) -> AsyncIterator[PluginRun]:
    """``run_plugins``, but the run goes on in the background while the ``async with`` block runs, for a test
    that must act during it: stop the runner mid-call (what a SIGTERM does), start a server the plugin needs only
    later, or look at the runner's counters as they change. Arguments are ``run_plugins``'.

    ``await run.wait()`` waits for the end. Leaving the block before the end stops the runner the graceful way
    (``runner.stop()``: what was received is dispatched, ``on_shutdown`` runs) and waits for it; an exception in
    the block cancels the run instead.
    """
    with plain_errors():
        async with _serving(script) as sim:
            result = RunResult(exit_code=-1)
            call_ids = list(calls) if calls is not None else [call.id for call in sim.script.calls]
            table = config_table(sim.base_url, settings=settings, enable=enable, runner=runner)
            built = _runner(table, [*_named(plugins), ("_Recorder", _Recorder(result))], call_ids, base_dir)
            result.stats = built.stats
            built.dispatcher.on_error = result.failures.append
            run = PluginRun(built, sim, result)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run._run)
                yield run
                if not run.over:
                    built.stop()


async def run_plugins(
    plugins: Plugins,
    script: Source,
    *,
    settings: dict[str, dict[str, Any]] | None = None,
    enable: Sequence[str] = (),
    calls: Sequence[str] | None = None,
    runner: dict[str, Any] | None = None,
    base_dir: Path | None = None,
) -> RunResult:
    """Run the real runner, with ``plugins`` (modules, objects or classes, named after their module or class, or a
    ``{name: plugin}`` dict; a class gets a new instance for this run), against a simulator of ``script``, until
    every call is over.

    Installed plugins stay out unless named in ``enable`` (``enable=["keywords"]`` to test with triggers from the
    bundled detector). ``settings`` are ``[plugins.NAME]`` tables; ``runner`` overrides ``[runner]`` keys (the
    defaults here are small, so tests run in seconds). ``calls`` are the call ids to follow (default: every call
    of the script); relative paths in settings resolve against ``base_dir`` (default: the current directory).
    """
    async with start_plugins(
        plugins, script, settings=settings, enable=enable, calls=calls, runner=runner, base_dir=base_dir
    ) as run:
        return await run.wait()

