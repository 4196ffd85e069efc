"""Reading the config and loading plugins, in-process: the messages a user reads, and where defaults come from.

The CLI-level behaviour (exit codes, what `check` and `plugins` print) is in test_cli.py, as real processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hookrunner._cli import main as cli
from hookrunner._core.config import DEFAULT_API_KEY_ENV, BackfillConfig, Config, DiscoveryConfig, ReconnectConfig, ServerConfig, StateConfig, config_from_dict, default_config_table
from hookrunner._core.errors import ConfigError, PluginLoadError
from hookrunner._run.plugins import load_plugins

from helpers import INSTALLED_PLUGINS, REPO

MINIMAL = {"atoms": {"api_key_env": DEFAULT_API_KEY_ENV}}


def parse(plugins: dict[str, Any], base_dir: Path = Path(".")) -> Config:
    table = {**MINIMAL, "plugins": {"disable": INSTALLED_PLUGINS, **plugins}}
    return config_from_dict(table, source="c.toml", base_dir=base_dir)


def write_plugin(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return f"{name}.py"


# -- [plugins] ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, meant", [("lod", "load"), ("disabled", "disable"), ("loads", "load")])
def test_a_misspelled_plugins_key_is_an_unknown_key_with_the_nearest_name_suggested(key: str, meant: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict({**MINIMAL, "plugins": {key: ["x.py"]}}, source="c.toml")
    assert str(raised.value) == f'c.toml: plugins.{key}: unknown key (did you mean "{meant}"?)'


def test_a_value_where_a_plugin_settings_table_belongs_names_both_readings() -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict({**MINIMAL, "plugins": {"console": "quiet"}}, source="c.toml")
    assert str(raised.value) == (
        'c.toml: plugins.console: expected disable or load, or a [plugins.console] table of plugin console\'s '
        'settings, got "quiet"'
    )


# -- loading plugins ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["wrapper=True", "hookwrapper=True"])
def test_a_hook_wrapper_is_refused_at_load_naming_the_plugin_and_the_hook(tmp_path: Path, marker: str) -> None:
    load = [
        write_plugin(
            tmp_path,
            "timing_wrapper",
            f"""
            from hookrunner import hookimpl

            @hookimpl({marker})
            def on_event(event, call):
                yield
            """,
        )
    ]
    config = parse({"load": load}, base_dir=tmp_path)
    with pytest.raises(PluginLoadError) as raised:
        load_plugins(config)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("c.toml: plugins.load[0]: plugin timing_wrapper: on_event is a hook wrapper")
    assert "does not support" in message

    lenient = load_plugins(config, strict=False)
    info = next(info for info in lenient.infos if info.name == "timing_wrapper")
    assert not info.active and "on_event is a hook wrapper" in (info.error or "")
    assert not lenient.pm.has_plugin("timing_wrapper")


def test_a_local_plugin_module_lives_in_a_private_namespace_under_its_file_name(tmp_path: Path) -> None:
    load = [write_plugin(tmp_path, "json", "from hookrunner import hookimpl\n\n@hookimpl\ndef on_event(event):\n    pass\n")]
    stdlib_json = sys.modules["json"]
    loaded = load_plugins(parse({"load": load}, base_dir=tmp_path))
    assert sys.modules["json"] is stdlib_json
    plugin = loaded.pm.get_plugin("json")
    assert plugin is sys.modules["hookrunner_local.json"]
    assert plugin.__file__ == str(tmp_path / "json.py")
    assert [info.name for info in loaded.infos if info.active] == ["json"]


# -- where defaults live -----------------------------------------------------------------------------------------


def test_config_example_toml_sets_every_key_to_its_schema_default() -> None:
    from hookrunner_plugins.console import SETTINGS as CONSOLE_SETTINGS

    example = tomllib.loads((REPO / "config.example.toml").read_text(encoding="utf-8"))
    # [plugins.NAME] tables are the plugins' own settings, not the core schemas'; console's are checked below.
    plugin_tables = {name: value for name, value in example["plugins"].items() if isinstance(value, dict)}
    for name in plugin_tables:
        del example["plugins"][name]
    console = plugin_tables["console"]
    expected = default_config_table()
    expected["atoms"]["api_key_env"] = DEFAULT_API_KEY_ENV
    assert example == expected
    assert console == {key: setting.default for key, setting in CONSOLE_SETTINGS.items()}
    assert "# api_key = " in (REPO / "config.example.toml").read_text(encoding="utf-8")  # documented, not set


@pytest.mark.parametrize("cls", [Config, ReconnectConfig, DiscoveryConfig, ServerConfig, StateConfig, BackfillConfig])
def test_config_classes_repeat_no_default_of_the_schemas(cls: type) -> None:
    with_defaults = [
        field.name
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    ]
    assert with_defaults == []


def test_a_minimal_config_takes_every_value_from_the_schema_defaults() -> None:
    config = config_from_dict(MINIMAL, source="c.toml")
    defaults = default_config_table()
    assert config.runner.buffer == defaults["runner"]["buffer"] == 256
    assert config.runner.hook_timeout == defaults["runner"]["hook_timeout"]
    assert dataclasses.asdict(config.runner.reconnect) == defaults["runner"]["reconnect"]
    assert config.atoms.base_url == defaults["atoms"]["base_url"]


# -- run ---------------------------------------------------------------------------------------------------------


def test_run_without_calls_raises_a_config_error_for_main_to_print(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    disable = ", ".join(f'"{name}"' for name in INSTALLED_PLUGINS)
    path.write_text(f'[atoms]\napi_key = "k"\n[plugins]\ndisable = [{disable}]\n', encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        cli.cmd_run(argparse.Namespace(config=str(path), calls=[]))
    assert str(raised.value) == (
        f"{path}: runner.calls: no calls to subscribe (list call ids there, pass --call ID, or let the runner find "
        "calls: discovery.poll or server.enabled)"
    )


def test_atoms_may_be_left_out_and_the_key_then_comes_from_atoms_api_key() -> None:
    config = config_from_dict({"runner": {"calls": ["CALL-1"]}}, source="c.toml")
    assert config.atoms.api_key_env == DEFAULT_API_KEY_ENV == "ATOMS_API_KEY"
    assert config.atoms.base_url == "https://api.smallest.ai/atoms/v1"
    inline = config_from_dict({"atoms": {"api_key": "sk-inline-key"}}, source="c.toml")
    assert inline.atoms.api_key_env is None and inline.api_key() == "sk-inline-key"



@pytest.mark.parametrize("value", [0, 65, "many", True, 2.5])
def test_runner_workers_takes_auto_or_a_number_of_processes_and_names_the_key_otherwise(value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict({**MINIMAL, "runner": {"workers": value}}, source="c.toml")
    [line] = str(raised.value).splitlines()
    assert line.startswith("c.toml: runner.workers: expected") and "auto" in line, line


def test_workers_run_only_in_service_mode_with_a_config_file(tmp_path: Path) -> None:
    import os

    table = {**MINIMAL, "runner": {"workers": 3}}
    assert config_from_dict(table, source="c.toml").worker_count() == 1  # listed calls: one process
    served = {**table, "server": {"enabled": True}}
    assert config_from_dict(served, source="c.toml").worker_count() == 1  # no file for the workers to read
    path = tmp_path / "c.toml"
    path.write_text("")
    assert config_from_dict(served, source="c.toml", path=path).worker_count() == 3
    auto = config_from_dict({**served, "runner": {"workers": "auto"}}, source="c.toml", path=path)
    assert auto.worker_count() == len(os.sched_getaffinity(0))
