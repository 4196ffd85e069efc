"""A plugin that needs a newer plugin API is listed as incompatible and left out; the others run."""

from __future__ import annotations

from pathlib import Path

from hookrunner import HOOKRUNNER_API_VERSION
from hookrunner._simulator import running_simulator

from helpers import afinish, call_events, finish, make_config, script, write_config

FUTURE = """
from hookrunner import hookimpl

HOOKRUNNER_API_VERSION = {version}

@hookimpl
def on_sse_init(event, call):
    open({marker!r}, "a").write("called\\n")
"""


def write_plugins(tmp_path: Path) -> tuple[Path, Path]:
    future_marker, current_marker = tmp_path / "future.txt", tmp_path / "current.txt"
    (tmp_path / "future_plugin.py").write_text(FUTURE.format(version=HOOKRUNNER_API_VERSION + 1, marker=str(future_marker)))
    (tmp_path / "current_plugin.py").write_text(FUTURE.format(version=HOOKRUNNER_API_VERSION, marker=str(current_marker)))
    return future_marker, current_marker


async def test_a_plugin_needing_a_newer_api_is_not_activated_and_the_others_run(cli, tmp_path: Path) -> None:
    future_marker, current_marker = write_plugins(tmp_path)
    async with running_simulator(script([{"id": "CALL-API", "events": call_events(2)}])) as sim:
        config = make_config(sim.base_url, plugins={"disable": ["console", "webhook", "keywords", "slack"],
                                                    "load": ["future_plugin.py", "current_plugin.py"]})  # fmt: skip
        path = write_config(tmp_path, config)
        code, out, err = await afinish(cli("run", str(path), "--call", "CALL-API"))
    assert code == 0, err
    assert current_marker.read_text() == "called\n" and not future_marker.exists()
    refused = [line for line in err.splitlines() if "not activated" in line]
    assert len(refused) == 1 and "plugin future_plugin" in refused[0]
    assert f"needs plugin API {HOOKRUNNER_API_VERSION + 1}, this hookrunner has {HOOKRUNNER_API_VERSION}" in refused[0]
    assert "Traceback" not in err


def test_plugins_lists_it_as_incompatible(cli, tmp_path: Path) -> None:
    write_plugins(tmp_path)
    config = make_config("http://127.0.0.1:9", plugins={"load": ["future_plugin.py", "current_plugin.py"]})
    code, out, err = finish(cli("plugins", "--config", str(write_config(tmp_path, config))))
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["future_plugin"].split()[2] == "incompatible" and "needs plugin API" in rows["future_plugin"]
    assert rows["current_plugin"].split()[2] == "yes" and "on_sse_init" in rows["current_plugin"]
    assert code == 0, err
