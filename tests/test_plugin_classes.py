"""An entry point that names a plugin class gets a new instance of it each time plugins are loaded: each run has
its own, so what a plugin keeps on ``self`` (its app, its settings, its counters) never reaches another run in
the same process. A class that cannot be instantiated is one line naming the plugin, never a traceback."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hookrunner import HOOKRUNNER_API_VERSION, hookimpl
from hookrunner._core.config import Config, config_from_dict
from hookrunner._run.plugins import load_plugins
from hookrunner.testing import config_table, run_plugins, running_receiver, sim_call, start_plugins

from helpers import finish, make_config, write_config

UNREACHABLE = "http://127.0.0.1:9"  # for configs that are loaded or checked, never run

#: A plugin class that keeps its run's app on self, tags each caller turn with its run's label, and reports each
#: finished call, with how many calls this instance finished before, to its run's URL.
TAGGER = '''
from hookrunner import Setting, Trigger, hookimpl

__version__ = "3.1.4"


class Tagger:
    def __init__(self):
        self.finished = 0

    @hookimpl
    def settings_schema(self):
        return {"label": Setting("str", "untagged"), "url": Setting("str", "")}

    @hookimpl
    def on_startup(self, app):
        self.app = app

    @hookimpl
    def on_user_transcription(self, event, call):
        settings = self.app.settings
        self.app.emit_trigger(Trigger(type="tagger", call_id=call.id, rule=settings["label"], event_id=event.event_id))

    @hookimpl
    async def on_call_finished(self, call):
        settings = self.app.settings
        body = {"call": call.id, "label": settings["label"], "finished_before": self.finished}
        self.finished += 1
        response = await self.app.http.post(settings["url"], json=body)
        response.raise_for_status()
'''


def fake_distribution(site: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution declaring ``hookrunner`` entry points, in ``site`` (on sys.path or PYTHONPATH)."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[hookrunner]\n{lines}", encoding="utf-8")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for this test's fake distributions; their modules are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = set(sys.modules)
    yield site
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", None) and str(site) in str(sys.modules[name].__file__):
            del sys.modules[name]


# -- the loader ------------------------------------------------------------------------------------------------


def test_an_entry_point_naming_a_class_gets_a_new_instance_each_time_plugins_are_loaded(site: Path) -> None:
    fake_distribution(site, "hookrunner-tagger", {"tagger": "per_run_tagger:Tagger"}, {"per_run_tagger": TAGGER})
    config: Config = config_from_dict(config_table(UNREACHABLE, enable=["tagger"]), source="c.toml")
    first, second = load_plugins(config), load_plugins(config)
    tagger_class = sys.modules["per_run_tagger"].Tagger
    one, other = first.pm.get_plugin("tagger"), second.pm.get_plugin("tagger")
    assert isinstance(one, tagger_class) and isinstance(other, tagger_class)
    assert one is not other
    [info] = [info for info in first.infos if info.name == "tagger"]
    assert info.active and info.error is None
    assert info.hooks == ["on_call_finished", "on_startup", "on_user_transcription", "settings_schema"]


def test_a_class_whose_module_needs_a_newer_plugin_api_is_set_aside_and_never_instantiated(site: Path) -> None:
    future = f'''
        from hookrunner import hookimpl

        HOOKRUNNER_API_VERSION = {HOOKRUNNER_API_VERSION + 1}


        class Future:
            def __init__(self):
                raise RuntimeError("instantiated")

            @hookimpl
            def on_event(self, event):
                pass
        '''
    fake_distribution(site, "hookrunner-future", {"future": "future_class:Future"}, {"future_class": future})
    config = config_from_dict(config_table(UNREACHABLE, enable=["future"]), source="c.toml")
    loaded = load_plugins(config)  # not refused: the other plugins would run
    [info] = [info for info in loaded.infos if info.name == "future"]
    assert info.incompatible and not info.active
    assert info.error == (
        f"needs plugin API {HOOKRUNNER_API_VERSION + 1}, this hookrunner has {HOOKRUNNER_API_VERSION}: upgrade "
        "hookrunner to use it"
    )


BROKEN = '''
from hookrunner import hookimpl


class Broken:
    def __init__(self):
        raise RuntimeError("no token in the environment\\nset BROKEN_TOKEN")

    @hookimpl
    def on_event(self, event):
        pass


class Needy:
    def __init__(self, token, *, region, retries=3):
        self.token = token

    @hookimpl
    def on_event(self, event):
        pass
'''


def test_a_class_that_raises_or_needs_arguments_is_one_line_naming_the_plugin(cli, tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(
        site, "hookrunner-fragile", {"broken": "fragile_classes:Broken", "needy": "fragile_classes:Needy"},
        {"fragile_classes": BROKEN},
    )  # fmt: skip
    config = write_config(tmp_path, make_config(UNREACHABLE))
    env = {"PYTHONPATH": str(site)}
    code, out, err = finish(cli("check", str(config), env=env))
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert err.splitlines() == [
        "error: plugin broken (entry point of hookrunner-fragile): cannot be loaded: Broken() raised RuntimeError: "
        "no token in the environment; set BROKEN_TOKEN",
        "error: plugin needy (entry point of hookrunner-fragile): cannot be loaded: Needy() needs token, region: "
        "hookrunner instantiates a plugin class with no arguments, once per run; give them defaults, or read them "
        "from app.settings in on_startup",
    ]

    code, out, err = finish(cli("plugins", "--config", str(config), env=env))
    assert code == 1, out + err
    assert "Traceback" not in out + err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "error: cannot be loaded: Broken() raised RuntimeError" in rows["broken"]
    assert "error: cannot be loaded: Needy() needs token, region" in rows["needy"]


# -- real runs -------------------------------------------------------------------------------------------------


async def test_two_runs_at_once_of_one_plugin_class_each_see_only_their_own_settings_and_state(site: Path) -> None:
    """The leak a module global has: the second run's on_startup would replace the first run's app, and the first
    run's later turns and its report would carry the second run's label to the second run's URL."""
    fake_distribution(site, "hookrunner-tagger", {"tagger": "per_run_tagger:Tagger"}, {"per_run_tagger": TAGGER})
    long_call = sim_call("CALL-FIRST", agent=["a", "b", "c", "d"], user=["one", "two", "three", "four"], spacing=0.3)
    short_call = sim_call("CALL-SECOND", agent=["e"], user=["five"])
    async with running_receiver() as receiver:
        first_settings = {"tagger": {"label": "first", "url": receiver.url("/first")}}
        second_settings = {"tagger": {"label": "second", "url": receiver.url("/second")}}
        async with start_plugins([], [long_call], enable=["tagger"], settings=first_settings) as first:
            with trio.fail_after(5):
                while not first.result.events.get("CALL-FIRST"):  # the first run has started: its on_startup ran
                    await trio.sleep(0.01)
            second = await run_plugins([], [short_call], enable=["tagger"], settings=second_settings)
            assert not first.over, "the first run ended before the second began: this test would prove nothing"
            first_result = await first.wait()
        third = await run_plugins([], [short_call], enable=["tagger"], settings=second_settings)  # after both
    for result in (first_result, second, third):
        assert result.exit_code == 0 and result.hook_errors == {}, result.failures
    assert [(t.call_id, t.rule, t.source) for t in first_result.triggers] == [("CALL-FIRST", "first", "tagger")] * 4
    assert [(t.call_id, t.rule) for t in second.triggers] == [("CALL-SECOND", "second")]
    assert [(t.call_id, t.rule) for t in third.triggers] == [("CALL-SECOND", "second")]
    assert [request.json() for request in receiver.at("/first")] == [
        {"call": "CALL-FIRST", "label": "first", "finished_before": 0}
    ]
    # each run's instance started from nothing: none saw the calls another run finished
    assert [request.json() for request in receiver.at("/second")] == [
        {"call": "CALL-SECOND", "label": "second", "finished_before": 0}
    ] * 2


async def test_run_plugins_given_a_class_makes_a_new_instance_for_each_run() -> None:
    made: list[object] = []

    class Counter:
        def __init__(self) -> None:
            self.turns = 0
            made.append(self)

        @hookimpl
        def on_user_transcription(self) -> None:
            self.turns += 1

    calls = [sim_call("CALL-1", agent=["Hello"], user=["one", "two"])]
    for _ in range(2):
        result = await run_plugins({"counter": Counter}, calls)
        assert result.exit_code == 0 and result.hook_errors == {}
    assert [counter.turns for counter in made] == [2, 2]  # type: ignore[attr-defined]
