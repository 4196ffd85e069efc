"""SIGHUP: plugin settings (keyword rules) change without a restart; an invalid change is refused whole."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import tomli_w
import trio

from hookrunner import hookimpl
from hookrunner._core.config import load_config
from hookrunner._run.plugins import PluginInfo, load_plugins, validate_plugin_settings
from hookrunner._service.intakes import service_runner
from hookrunner._simulator import running_simulator

from helpers import API_KEY, hookrunner_process, make_config, script


class Triggers:
    def __init__(self) -> None:
        self.rules: list[str] = []

    @hookimpl
    def on_trigger(self, trigger):
        self.rules.append(trigger.rule)


def write(path: Path, base_url: str, rules: list[dict[str, Any]], extra: dict[str, Any] | None = None, **runner: Any) -> None:
    config = make_config(base_url, plugins={"disable": ["console", "webhook", "slack"], "keywords": {"rules": rules}}, **runner)
    path.write_text(tomli_w.dumps({**config, **(extra or {})}), encoding="utf-8")


CALL = [
    {
        "id": "CALL-HUP",
        "events": [
            {"at": 0.1, "event_type": "user_transcription", "user_transcription_text": "I want to cancel my plan"},
            {"at": 1.0, "event_type": "user_transcription", "user_transcription_text": "cancel my plan, and speak to a manager"},
        ],
    }
]
CANCEL = {"name": "cancel", "phrases": ["cancel my plan"]}
MANAGER = {"name": "manager", "phrases": ["speak to a manager"]}


async def run_with_reload(
    tmp_path: Path, new_rules: list[dict[str, Any]] | str, caplog, extra: dict[str, Any] | None = None
) -> tuple[Triggers, bool]:
    path = tmp_path / "config.toml"
    triggers = Triggers()
    async with running_simulator(script(CALL)) as sim:
        write(path, sim.base_url, [CANCEL])
        config = load_config(path)
        loaded = load_plugins(config)
        loaded.pm.register(triggers, name="triggers")
        loaded.infos.append(PluginInfo("triggers", "test", None, active=True))
        validate_plugin_settings(config, loaded)
        runner = service_runner(config, loaded, api_key=API_KEY, calls=["CALL-HUP"])
        result = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            await trio.sleep(0.5)  # the first turn is matched under the old rules
            if isinstance(new_rules, str):
                path.write_text(new_rules, encoding="utf-8")
            else:
                write(path, sim.base_url, new_rules, extra)
            result["applied"] = await runner.reload()
    return triggers, result["applied"]


async def test_reload_applies_new_rules_to_live_calls(tmp_path: Path, caplog) -> None:
    triggers, applied = await run_with_reload(tmp_path, [MANAGER], caplog)
    assert applied
    assert triggers.rules == ["cancel", "manager"]  # "cancel" is gone from the second turn on; "manager" is new


async def test_a_reload_says_which_other_changes_need_a_restart(tmp_path: Path, caplog) -> None:
    extra = {"discovery": {"interval": 5.0}, "server": {"port": 9999}}
    triggers, applied = await run_with_reload(tmp_path, [MANAGER], caplog, extra)
    assert applied and triggers.rules == ["cancel", "manager"]
    [warning] = [r.getMessage() for r in caplog.records if "restart to apply" in r.getMessage()]
    assert warning.endswith("reload applies [plugins.NAME] tables only; restart to apply: discovery, server")


async def test_an_invalid_reload_is_refused_in_one_line_and_the_old_rules_stay(tmp_path: Path, caplog) -> None:
    bad = [CANCEL, {"name": "bad", "patterns": ["(unclosed"], "speaker": "caller"}]
    caplog.set_level(logging.INFO)
    triggers, applied = await run_with_reload(tmp_path, bad, caplog)
    assert not applied
    assert triggers.rules == ["cancel", "cancel"]
    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refused) == 1
    assert "rules[1].patterns[0]: rule bad" in refused[0] and "rules[1].speaker: rule bad" in refused[0]
    assert refused[0].count(str(tmp_path)) == 1, refused[0]  # the file is named once, in front


async def test_a_reload_of_a_file_that_is_not_toml_is_refused(tmp_path: Path, caplog) -> None:
    triggers, applied = await run_with_reload(tmp_path, "[plugins\nbroken", caplog)
    assert not applied and triggers.rules == ["cancel", "cancel"]
    assert any("reload refused" in r.getMessage() and "not valid TOML" in r.getMessage() for r in caplog.records)


async def test_sighup_to_a_running_process_reloads_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    marker = tmp_path / "triggers.txt"
    (tmp_path / "mark.py").write_text(
        "from hookrunner import hookimpl\n\n"
        "@hookimpl\n"
        "def on_trigger(trigger):\n"
        f"    open({str(marker)!r}, 'a').write(trigger.rule + '\\n')\n"
    )
    calls = [{"id": "CALL-HUP", "events": CALL[0]["events"] + [{"at": 1.6, "event_type": "call_end"}]}]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, plugins={"disable": ["console", "webhook", "slack"], "load": ["mark.py"],
                                                    "keywords": {"rules": [CANCEL]}})  # fmt: skip
        path.write_text(tomli_w.dumps(config), encoding="utf-8")
        process = hookrunner_process("run", str(path), "--call", "CALL-HUP")
        with trio.fail_after(10):
            while not marker.exists():
                await trio.sleep(0.05)
            config["plugins"]["keywords"]["rules"] = [MANAGER]
            path.write_text(tomli_w.dumps(config), encoding="utf-8")
            process.send_signal(signal.SIGHUP)
            _, err = await trio.to_thread.run_sync(process.communicate)
    assert process.returncode == 0, err
    assert marker.read_text().split() == ["cancel", "manager"]
    assert "plugin settings reloaded" in err
