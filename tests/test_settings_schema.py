"""A plugin declares its settings once (settings_schema); check validates them and plugins --settings shows them."""

from __future__ import annotations

from pathlib import Path

from hookrunner import Setting, at_least, hookimpl

from helpers import finish, make_config, write_config

PLUGIN = '''
from hookrunner import Setting, at_least, hookimpl

SCHEMA = {
    "threshold": Setting("number", 3.0, check=at_least(0), doc="how many times before alerting"),
    "channel": Setting("str", required=True, doc="where alerts go"),
    "tags": Setting("list[str]", [], doc="extra tags"),
}

@hookimpl
def settings_schema():
    return SCHEMA

@hookimpl
def validate_settings(settings):
    # runs only once the schema passed: no second line for one mistake
    return [] if settings.get("channel", "").startswith("#") else ["channel: expected a name starting with #"]

@hookimpl
def on_event(event, call):
    pass
'''


def config_with(tmp_path: Path, table: dict) -> Path:
    (tmp_path / "alerts.py").write_text(PLUGIN)
    config = make_config("http://127.0.0.1:9", plugins={"load": ["alerts.py"], "alerts": table})
    return write_config(tmp_path, config)


def test_check_validates_a_plugins_table_against_its_schema_with_key_paths(cli, tmp_path: Path) -> None:
    path = config_with(tmp_path, {"threshold": "three", "tresholds": 1})
    code, out, err = finish(cli("check", str(path)))
    assert code == 2
    assert err.splitlines() == [
        f'error: {path}: plugins.alerts.threshold: expected a number, got "three"',
        f'error: {path}: plugins.alerts.tresholds: unknown key (did you mean "threshold"?)',
        f"error: {path}: plugins.alerts.channel: missing required key (a string)",
    ]


def test_the_plugins_own_checks_run_once_the_schema_passed(cli, tmp_path: Path) -> None:
    path = config_with(tmp_path, {"channel": "alerts"})
    code, out, err = finish(cli("check", str(path)))
    assert code == 2 and err.splitlines() == [f"error: {path}: plugins.alerts.channel: expected a name starting with #"]
    good = config_with(tmp_path, {"channel": "#alerts", "threshold": 5})
    code, out, err = finish(cli("check", str(good)))
    assert code == 0, err


def test_plugins_settings_prints_the_schema_with_defaults(cli, tmp_path: Path) -> None:
    path = config_with(tmp_path, {"channel": "#alerts"})
    code, out, err = finish(cli("plugins", "--config", str(path), "--settings", "alerts"))
    assert code == 0, err
    lines = [line.split("#")[0].rstrip() for line in out.splitlines()]
    assert lines == ["[plugins.alerts]", "threshold = 3.0", "", "tags = []"]
    assert "(required)" in out.splitlines()[2] and "where alerts go" in out.splitlines()[2]
    code, out, err = finish(cli("plugins", "--settings", "alert"))
    assert code == 2 and "no plugin named alert" in err


def test_validate_settings_sees_the_schemas_defaults_as_app_settings_will() -> None:
    from hookrunner._core.config import config_from_dict
    from hookrunner._run.plugin_setup import prepare_plugins

    seen = []

    class Defaulted:
        @hookimpl
        def settings_schema(self):
            return {"threshold": Setting("number", 3.0, check=at_least(0)), "name": Setting("str", "x")}

        @hookimpl
        def validate_settings(self, settings):
            seen.append(dict(settings))
            return [] if settings["threshold"] >= 1 else ["threshold: expected at least 1"]  # a defaulted key

    config = config_from_dict({"atoms": {"api_key": "sk-test"}, "plugins": {"defaulted": {"name": "y"}}}, source="c.toml")
    prepare_plugins(config, [("defaulted", Defaulted())])
    assert seen == [{"threshold": 3.0, "name": "y"}]
