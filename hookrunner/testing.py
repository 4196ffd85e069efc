"""Testing helpers for plugin authors, also loaded as a pytest plugin (entry point ``pytest11``).

Unit tests build events and triggers with ``make_event`` / ``make_trigger``; integration tests run the real runner
with ``run_plugins`` against the in-process simulator (real HTTP on 127.0.0.1, no mocks) and look at what
happened. The pytest plugin only adds fixtures, so nothing changes until a test asks for one::

    from hookrunner.testing import run_plugins, sim_call

    async def test_my_plugin_sees_the_final_turn():
        result = await run_plugins([my_plugin], [sim_call("CALL-1", user=["I want to cancel"])])
        assert result.exit_code == 0
        assert [e.text for e in result.events["CALL-1"] if e.event_type == "user_transcription"] == ["I want to cancel"]
"""

from __future__ import annotations

import importlib.metadata
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from .config import config_from_dict
from .events import Event, event_from_dict
from .hookspecs import hookimpl
from .plugins import ENTRY_POINT_GROUP, PluginInfo, load_plugins, validate_plugin_settings
from .runner import Runner
from .simulator import Simulator, running_simulator
from .simulator.script import Script, load_script, parse_script
from .stats import Stats
from .triggers import Trigger

__all__ = [
    "TEST_API_KEY",
    "make_event",
    "make_trigger",
    "sim_call",
    "sim_script",
    "simulator",
    "run_plugins",
    "RunResult",
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
    async with running_simulator(script, api_key=TEST_API_KEY, **kwargs) as sim:
        yield sim


@dataclass
class RunResult:
    """What a run did: exit code, each call's events in order, triggers, finish reasons and the runner's counters."""

    exit_code: int
    events: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    triggers: list[Trigger] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)

    @property
    def hook_errors(self) -> dict[str, int]:
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


async def run_plugins(
    plugins: Sequence[Any],
    script: Script | str | Path | Sequence[dict[str, Any]],
    *,
    settings: dict[str, dict[str, Any]] | None = None,
    enable: Sequence[str] = (),
    calls: Sequence[str] | None = None,
    runner: dict[str, Any] | None = None,
    base_dir: Path | None = None,
) -> RunResult:
    """Run the real runner, with ``plugins`` (modules or objects, named after their module or class), against a
    simulator of ``script``, until every call is over.

    Installed plugins stay out unless named in ``enable`` (``enable=["keywords"]`` to test with triggers from the
    bundled detector). ``settings`` are ``[plugins.NAME]`` tables; ``runner`` overrides ``[runner]`` keys (the
    defaults here are small, so tests run in seconds).
    """
    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    async with simulator(script) as sim:
        table = {
            "atoms": {"base_url": sim.base_url, "api_key": TEST_API_KEY},
            "runner": {
                "hook_timeout": 2.0,
                "idle_timeout": 5.0,
                "shutdown_grace": 2.0,
                "reconnect": {"initial_delay": 0.05, "max_delay": 0.2, "max_attempts": 5},
                **(runner or {}),
            },
            "plugins": {"disable": sorted(installed - set(enable)), **(settings or {})},
        }
        config = config_from_dict(table, source="<hookrunner.testing>", base_dir=base_dir or Path.cwd())
        loaded = load_plugins(config)
        result = RunResult(exit_code=-1)
        for plugin in [*plugins, _Recorder(result)]:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            name = name.rsplit(".", 1)[-1]
            loaded.pm.register(plugin, name=name)
            loaded.infos.append(PluginInfo(name, "hookrunner.testing", None, active=True))
        validate_plugin_settings(config, loaded)
        call_ids = list(calls) if calls is not None else [call.id for call in sim.script.calls]
        run = Runner(config, loaded, api_key=TEST_API_KEY, calls=call_ids)
        result.exit_code = await run.run()
        result.stats = run.stats
    return result


@pytest.fixture
def hookrunner_run():
    """The ``run_plugins`` helper, as a fixture: ``result = await hookrunner_run([my_plugin], [sim_call(...)])``."""
    return run_plugins
