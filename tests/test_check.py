"""``hookrunner check`` as an operator runs it: what it lists under each plugin, which routes ``--route`` says a
trigger would reach, and one rule for missing secrets (an error wherever ``run`` would refuse to start, a warning
where ``run`` would start anyway, every warning an error with ``--strict``). Real processes, nothing connects.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hookrunner import Trigger
from hookrunner.delivery import Pacing
from hookrunner._simulator import running_simulator

from helpers import INSTALLED_PLUGINS, afinish, call_events, finish, hookrunner_process, make_config, script, write_config

UNREACHABLE = "http://127.0.0.1:9"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"check-test-signing-key-32-bytes!").decode()
SLACK_TOKEN = "xoxb-check-canary-token-5150"
SLACK_HOOK = "https://hooks.slack.com/services/T0CHECK/B0CHECK/hookcanary7734"
URL_TOKEN = "querycanary4242"
URL_PASSWORD = "passcanary1717"
SECRETS = (WEBHOOK_SECRET, SLACK_TOKEN, SLACK_HOOK, "hookcanary7734", URL_TOKEN, URL_PASSWORD)
ENV = {"HR_CHECK_WH": WEBHOOK_SECRET, "HR_CHECK_SLACK": SLACK_TOKEN, "HR_CHECK_HOOK": SLACK_HOOK}

RULES = [
    {
        "name": "cancel-intent",
        "phrases": ["cancel my subscription", "close my account"],
        "match": "fuzzy",
        "severity": "warning",
        "labels": {"team": "retention"},
    },
    {"name": "disclosure", "phrases": ["this call may be recorded"], "speaker": "agent", "absent_within": 60, "severity": "critical"},
]
ENDPOINTS = [
    {
        "name": "crm",
        "url": f"https://bot:{URL_PASSWORD}@crm.example.com/hooks/atoms?token={URL_TOKEN}",
        "secret_env": "HR_CHECK_WH",
        "events": ["user_transcription", "trigger.keyword"],
    },
    {"name": "audit", "url": "https://audit.example.com/in", "secret_env": "HR_CHECK_WH", "events": ["trigger.*"], "calls": ["CALL-AUDITED"]},
]
ROUTES = [
    {
        "name": "retention",
        "token_env": "HR_CHECK_SLACK",
        "channel": "C0RETENTION",
        "events": ["trigger.keyword"],
        "severity": ["warning", "critical"],
        "labels": {"team": "retention"},
    },
    {"name": "pager", "webhook_url_env": "HR_CHECK_HOOK", "severity": ["critical"]},
]

CRM = "endpoint crm: user_transcription, trigger.keyword -> https://crm.example.com/hooks/atoms"
AUDIT = "endpoint audit: trigger.* (calls CALL-AUDITED) -> https://audit.example.com/in"
RETENTION = "route retention: trigger.keyword (severity warning, critical; labels team=retention) -> channel C0RETENTION"
PAGER = "route pager: trigger.* (severity critical) -> an incoming webhook"


def only(*names: str) -> list[str]:
    """``plugins.disable`` for every installed plugin but ``names``."""
    return [name for name in INSTALLED_PLUGINS if name not in names]


def notifier_config(tmp_path: Path, base_url: str = UNREACHABLE, **runner: Any) -> Path:
    plugins = {
        "disable": only("keywords", "webhook", "slack"),
        "keywords": {"rules": RULES},
        "webhook": {"endpoints": ENDPOINTS},
        "slack": {"routes": ROUTES},
    }
    return write_config(tmp_path, make_config(base_url, plugins=plugins, **runner))


def assert_no_secret(*outputs: str) -> None:
    for secret in SECRETS:
        for output in outputs:
            assert secret not in output, f"{secret!r} printed:\n{output}"


def lines_under(out: str, plugin: str) -> list[str]:
    """The indented lines ``check`` prints under ``plugin NAME (...)``."""
    lines = out.splitlines()
    [start] = [index for index, line in enumerate(lines) if line.startswith(f"  plugin {plugin} (")]
    under = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        under.append(line.strip())
    return under


def one_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


# -- what check lists ---------------------------------------------------------------------------------------------


def test_check_lists_each_keyword_rule_webhook_endpoint_and_slack_route_under_its_plugin_without_a_secret(
    cli, tmp_path: Path
) -> None:
    config = notifier_config(tmp_path)
    code, out, err = finish(cli("check", str(config), env=ENV))
    assert code == 0, err
    assert lines_under(out, "keywords") == [
        'rule cancel-intent: "cancel my subscription", "close my account" (said by the caller; fuzzy at 85) '
        "-> trigger.keyword, severity warning, labels team=retention",
        'rule disclosure: NOT said within 60 s: "this call may be recorded" (said by the agent; whole words) '
        "-> trigger.keyword, severity critical",
    ]
    assert lines_under(out, "webhook") == [CRM, AUDIT]
    assert lines_under(out, "slack") == [RETENTION, PAGER]
    assert_no_secret(out, err)


def test_check_says_when_a_notifier_has_nothing_configured(cli, tmp_path: Path) -> None:
    plugins = {"disable": only("keywords", "webhook", "slack")}
    code, out, err = finish(cli("check", str(write_config(tmp_path, make_config(UNREACHABLE, plugins=plugins)))))
    assert code == 0, err
    assert lines_under(out, "keywords") == ["no rules ([[plugins.keywords.rules]]): nothing is matched"]
    assert lines_under(out, "webhook") == ["no endpoints ([[plugins.webhook.endpoints]]): nothing is delivered"]
    assert lines_under(out, "slack") == ["no routes ([[plugins.slack.routes]]): nothing is posted"]


async def test_runs_start_up_log_names_each_endpoint_and_route_in_checks_words(cli, tmp_path: Path) -> None:
    calls = [{"id": "CALL-LOGGED", "events": call_events(2, spacing=0.02, text="nothing to see")}]
    async with running_simulator(script(calls)) as sim:
        config = notifier_config(tmp_path, sim.base_url, calls=["CALL-LOGGED"])
        code, out, err = await afinish(cli("run", str(config), env=ENV))
    assert code == 0, err
    logged = [line.split(" INFO    ", 1)[1] for line in err.splitlines() if " INFO    " in line]
    for plugin, line in (("webhook", CRM), ("webhook", AUDIT), ("slack", RETENTION), ("slack", PAGER)):
        assert f"{plugin} {line}" in logged, err
    assert_no_secret(out, err)


THIRD_PARTY = """
from hookrunner import Setting, hookimpl

@hookimpl
def settings_schema():
    return {"page_on": Setting("list[str]", ["critical"]), "service": Setting("str", "atoms-calls")}

@hookimpl
def describe_settings(settings):
    return [f"pager {settings['service']}: severity {', '.join(settings['page_on'])}"]

@hookimpl
def routes_for_trigger(trigger, settings):
    return [f"pager {settings['service']}"] if trigger.severity in settings["page_on"] else []

@hookimpl
def on_trigger(trigger):
    pass
"""

BROKEN_DESCRIBE = """
from hookrunner import hookimpl

@hookimpl
def describe_settings(settings):
    raise KeyError("service")
"""


def test_a_third_party_plugin_describes_its_settings_and_routes_through_the_same_hooks(cli, tmp_path: Path) -> None:
    (tmp_path / "pager.py").write_text(THIRD_PARTY, encoding="utf-8")
    (tmp_path / "sloppy.py").write_text(BROKEN_DESCRIBE, encoding="utf-8")
    plugins = {"disable": INSTALLED_PLUGINS, "load": ["pager.py", "sloppy.py"], "pager": {"service": "ops"}}
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins=plugins))
    code, out, err = finish(cli("check", str(config)))
    assert code == 0, err
    assert lines_under(out, "pager") == ["pager ops: severity critical"]  # its settings, defaults filled in
    assert lines_under(out, "sloppy") == ["warning: describe_settings raised KeyError: 'service'"]
    assert "Traceback" not in out + err

    code, out, err = finish(cli("check", str(config), "--strict"))
    assert code == 2
    assert one_error(err) == f"error: {config}: plugin sloppy: describe_settings raised KeyError: 'service' (--strict)"

    (tmp_path / "critical.json").write_text('{"severity": "critical"}', encoding="utf-8")
    code, out, err = finish(cli("check", str(config), "--route", "critical.json"))
    assert code == 0, err
    assert out.splitlines()[1:] == ["  pager pager ops"]


# -- check --route ------------------------------------------------------------------------------------------------


def test_route_names_each_slack_route_and_webhook_endpoint_a_trigger_would_reach(cli, tmp_path: Path) -> None:
    config = notifier_config(tmp_path)
    trigger = tmp_path / "trigger.json"
    trigger.write_text('{"type": "keyword", "rule": "cancel-intent", "severity": "warning", "labels": {"team": "retention"}}')
    code, out, err = finish(cli("check", str(config), "--route", str(trigger), env=ENV))
    assert code == 0, err
    assert out.splitlines() == [
        "trigger.keyword (call CALL-ROUTE-TEST, rule cancel-intent, severity warning, labels team=retention) would reach:",
        f"  slack {RETENTION}",
        f"  webhook {CRM}",
    ]
    assert_no_secret(out, err)


def test_route_follows_each_routes_filters_and_reads_the_trigger_from_stdin(processes, tmp_path: Path) -> None:
    config = notifier_config(tmp_path)
    process = hookrunner_process("check", str(config), "--route", "-", env=ENV, cwd=tmp_path, stdin=subprocess.PIPE)
    processes.append(process)
    out, err = process.communicate('{"type": "trigger.sentiment", "call_id": "CALL-AUDITED", "severity": "critical"}', timeout=20)
    code = process.returncode
    assert code == 0, err
    assert out.splitlines()[1:] == [f"  slack {PAGER}", f"  webhook {AUDIT}"]  # not retention (type), not crm (type)


def test_route_of_a_trigger_nothing_takes_says_so_and_exits_1(cli, tmp_path: Path) -> None:
    config = notifier_config(tmp_path)
    trigger = tmp_path / "quiet.json"
    trigger.write_text('{"type": "sentiment", "severity": "warning", "labels": {"team": "retention"}}')
    code, out, err = finish(cli("check", str(config), "--route", str(trigger), env=ENV))
    assert code == 1, out + err
    assert out.splitlines() == [
        "trigger.sentiment (call CALL-ROUTE-TEST, rule route-test, severity warning, labels team=retention): "
        "no route or endpoint would take it (asked: slack, webhook)"
    ]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"type": "keyword", "severity": "warning",', "not valid JSON: Expecting property name enclosed in double quotes (line 1, column "),
        ('["keyword"]', "expected a JSON object of a trigger's fields (type, call_id, rule, severity, labels"),
        ('{"severity": 3}', "severity: expected a string, got 3"),
        ('{"labels": {"team": 7}}', "labels: expected an object of strings, got 7 for team"),
        ('{"severty": "critical"}', 'severty: unknown key (did you mean "severity"?)'),
    ],
    ids=["bad-json", "not-an-object", "wrong-type", "label-not-a-string", "misspelt-field"],
)
def test_route_refuses_a_bad_trigger_file_in_one_line_naming_it(cli, tmp_path: Path, text: str, expected: str) -> None:
    config = notifier_config(tmp_path)
    trigger = tmp_path / "trigger.json"
    trigger.write_text(text)
    code, out, err = finish(cli("check", str(config), "--route", str(trigger), env=ENV))
    assert code == 2 and out == "", out
    line = one_error(err)
    assert line.startswith(f"error: {trigger}: {expected}"), line


def test_route_asks_the_very_predicates_on_trigger_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """For many triggers, the routes ``routes_for_trigger`` names are those ``on_trigger`` submits to."""
    from hookrunner_plugins.slack import SlackPlugin
    from hookrunner_plugins.webhook import WebhookPlugin

    for variable, value in ENV.items():
        monkeypatch.setenv(variable, value)
    triggers = [
        Trigger(type=kind, call_id=call_id, rule="r", severity=severity, labels=labels)
        for kind in ("keyword", "sentiment")
        for call_id in ("CALL-1", "CALL-AUDITED")
        for severity in ("info", "warning", "critical")
        for labels in ({}, {"team": "retention"}, {"team": "billing"})
    ]
    for plugin, settings in ((WebhookPlugin(), {"endpoints": ENDPOINTS}), (SlackPlugin(), {"routes": ROUTES})):
        submitted: list[str] = []
        app = SimpleNamespace(
            settings=settings, http=None, pacing=Pacing(), open_outbox=lambda name, *_, **__: Recording(name, submitted),
            select_events=lambda *_: None,
        )
        plugin.on_startup(app)
        reached = set()
        for trigger in triggers:
            submitted.clear()
            plugin.on_trigger(trigger)
            named = [line.split(":", 1)[0].split(" ", 1)[1] for line in plugin.routes_for_trigger(trigger, settings)]
            assert named == submitted, trigger
            reached.add(tuple(named))
        assert len(reached) >= 3, reached  # none, one and both of its routes, depending on the trigger


class Recording:
    def __init__(self, name: str, submitted: list[str]) -> None:
        self.name, self.submitted = name, submitted

    def submit(self, message: Any) -> None:
        self.submitted.append(self.name)


# -- one rule for missing secrets -----------------------------------------------------------------------------------

# (kind, config table, the variable left unset) -> the one line both `check` and `run` refuse with
REFUSED = {
    "atoms-api-key": ({"atoms": {"base_url": UNREACHABLE, "api_key_env": "HR_CHECK_ATOMS"}}, "HR_CHECK_ATOMS",
                      "atoms.api_key_env: environment variable HR_CHECK_ATOMS is not set (export it with your Atoms API key)"),
    "server-token": ({"server": {"enabled": True, "port": 0, "token_env": "HR_CHECK_TOKEN"}}, "HR_CHECK_TOKEN",
                     "server.token_env: environment variable HR_CHECK_TOKEN is not set"),
    "plugin-secret-env": ({"plugins": {"disable": only("webhook"), "webhook": {"endpoints": [ENDPOINTS[1]]}}}, "HR_CHECK_WH",
                          "plugins.webhook.endpoints[0].secret_env: environment variable HR_CHECK_WH is not set"),
}  # fmt: skip


def secret_config(tmp_path: Path, table: dict[str, Any]) -> Path:
    base = make_config(UNREACHABLE, calls=["CALL-1"])
    base["atoms"] = {"base_url": UNREACHABLE, "api_key": "sk-inline-test-key"}
    for key, value in table.items():
        base[key] = {**base.get(key, {}), **value}
    if "api_key_env" in base["atoms"]:
        del base["atoms"]["api_key"]
    return write_config(tmp_path, base)


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_secret_run_would_refuse_to_start_without_is_one_error_line_in_check_as_in_run(
    cli, tmp_path: Path, kind: str, strict: bool
) -> None:
    table, variable, expected = REFUSED[kind]
    config = secret_config(tmp_path, table)
    env = {**ENV, variable: ""}
    code, out, err = finish(cli("check", str(config), *(["--strict"] if strict else []), env=env))
    assert code == 2 and out == "", out
    assert one_error(err) == f"error: {config}: {expected}"
    code, out, err = finish(cli("run", str(config), env=env))
    assert code == 2
    assert f"error: {config}: {expected}" in err.splitlines(), err  # run refuses with the very line
    assert_no_secret(out, err)


# (kind, config table) -> the warning: `run` starts, but likely not as meant
WARNED = {
    "atoms-api-key": ({"atoms": {"api_key_env": "HR_CHECK_ATOMS", "api_key": "sk-inline-test-key"}},
                      "atoms.api_key_env: environment variable HR_CHECK_ATOMS is not set: `run` uses atoms.api_key from the file"),
    "server-token": ({"server": {"enabled": False, "token_env": "HR_CHECK_TOKEN"}},
                     "server.token_env is set but server.enabled is false: nothing receives POST /calls"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(WARNED))
def test_a_secret_run_would_start_without_is_a_warning_and_strict_makes_it_an_error(cli, tmp_path: Path, kind: str) -> None:
    table, expected = WARNED[kind]
    config = write_config(tmp_path, {**make_config(UNREACHABLE), **table})
    env = {"HR_CHECK_ATOMS": "", "HR_CHECK_TOKEN": ""}
    code, out, err = finish(cli("check", str(config), env=env))
    assert code == 0, err
    assert f"  warning: {expected}" in out.splitlines(), out
    code, out, err = finish(cli("check", str(config), "--strict", env=env))
    assert code == 2 and out == ""
    assert one_error(err) == f"error: {config}: {expected} (--strict)"


def test_a_set_plugin_secret_is_neither_warned_about_nor_refused_with_strict(cli, tmp_path: Path) -> None:
    table, _, _ = REFUSED["plugin-secret-env"]
    config = secret_config(tmp_path, table)
    code, out, err = finish(cli("check", str(config), "--strict", env=ENV))
    assert code == 0, err
    assert "warning" not in out + err
    assert_no_secret(out, err)


def test_strict_turns_a_warning_a_plugin_logs_into_an_error_line(cli, tmp_path: Path) -> None:
    endpoint = {"name": "remote", "url": "http://hooks.example.com/in", "secret_env": "HR_CHECK_WH"}
    plugins = {"disable": only("webhook"), "webhook": {"endpoints": [endpoint]}}
    config = write_config(tmp_path, make_config(UNREACHABLE, plugins=plugins))
    code, out, err = finish(cli("check", str(config), env=ENV))
    assert code == 0, err
    assert [line for line in err.splitlines() if " WARNING " in line and "plain http" in line], err
    code, out, err = finish(cli("check", str(config), "--strict", env=ENV))
    assert code == 2 and out == ""
    line = one_error(err)  # the warning once, as an error: not also as a WARNING line
    assert line.startswith(f"error: {config}: plugins.webhook.endpoints[0].url: endpoint remote uses plain http")
    assert line.endswith("(--strict)")
