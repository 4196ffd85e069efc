"""The ``[plugins.slack]`` table and its ``[[plugins.slack.routes]]``, checked before anything connects."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hookrunner import SEVERITIES, Setting, Trigger, at_least, check_table, http_url, secret_problem, type_selected, url_problem
from hookrunner.delivery import retry_problems, retry_settings

from .formatting import DEFAULT_TEMPLATE, template_problem


def _severities(values: list[str]) -> str | None:
    unknown = [value for value in values if value not in SEVERITIES]
    return f"expected severities among {', '.join(SEVERITIES)}, got {', '.join(unknown)}" if unknown else None


SETTINGS = {
    "api_base_url": Setting("str", "https://slack.com/api", check=http_url, doc="Slack's Web API (tests point it at a fake)"),
    "dead_letter": Setting("str", "hookrunner-dead-letters.jsonl"),
    "pace": Setting("number", 1.0, check=at_least(0), expected="seconds between two messages to one channel"),
    "group_wait": Setting("number", 0.5, check=at_least(0), expected="seconds to gather triggers into one message"),
    "group_max": Setting("int", 20, check=at_least(1), expected="triggers in one grouped message"),
    "timeout": Setting("number", 10.0, check=at_least(0.001), expected="a number of seconds"),
    **retry_settings(
        max_attempts=6, max_retry_time=600.0, retry_max_delay=60.0,
        retry_after_doc="the longest a Retry-After from Slack (a 429) may hold a channel",
    ),  # fmt: skip
    "max_queue": Setting("int", 1000, check=at_least(1)),
    "routes": Setting("list[table]", []),
}

ROUTE = {
    "name": Setting("str", required=True, expected="a unique name for logs and errors"),
    "webhook_url_env": Setting("str", None, expected="the variable holding an incoming webhook URL"),
    "token_env": Setting("str", None, expected="the variable holding a bot token (xoxb-...)"),
    "channel": Setting("str", None, expected="a channel id or name, with token_env"),
    "events": Setting("list[str]", ["trigger.*"]),
    "severity": Setting("list[str]", [], check=_severities),
    "labels": Setting("table[str]", {}),
    "transcript": Setting("str", "", check=lambda v: None if v in ("", "thread") else f'expected "thread", got "{v}"'),
    "template": Setting("str", DEFAULT_TEMPLATE),
    "mention": Setting("str", ""),
    "mention_severity": Setting("list[str]", ["critical"], check=_severities),
}
SETTINGS["routes"] = Setting("list[table]", [], doc="[[plugins.slack.routes]], each with these keys", items=ROUTE)


@dataclass(frozen=True)
class RouteSettings:
    name: str
    webhook_url: str | None  # a secret: never logged
    token: str | None  # a secret: never logged
    channel: str | None
    events: tuple[str, ...]
    severities: frozenset[str]
    labels: dict[str, str]
    transcript: bool
    template: str
    mention: str
    mention_severities: frozenset[str]

    def wants_type(self, message_type: str) -> bool:
        return type_selected(message_type, self.events)

    def wants_trigger(self, severity: str, labels: dict[str, str]) -> bool:
        if self.severities and severity not in self.severities:
            return False
        return all(labels.get(key) == value for key, value in self.labels.items())

    def takes(self, trigger: Trigger) -> bool:
        """Whether this route posts ``trigger``: what ``on_trigger`` asks of every route, and ``check --route``."""
        return self.wants_type(trigger.full_type) and self.wants_trigger(trigger.severity, trigger.labels)

    @property
    def description(self) -> str:
        """The route in one line, never a secret (an incoming webhook's URL is one: it is not shown): ``run`` logs
        it as it opens the route, ``check`` lists it, ``check --route`` names it when a trigger would reach it."""
        filters = [f"severity {', '.join(s for s in SEVERITIES if s in self.severities)}"] if self.severities else []
        filters += [f"labels {', '.join(f'{k}={v}' for k, v in sorted(self.labels.items()))}"] if self.labels else []
        where = f"channel {self.channel}" if self.token else "an incoming webhook"
        extras = [f"mentioning {self.mention} at {', '.join(s for s in SEVERITIES if s in self.mention_severities)}"]
        extras = extras if self.mention and self.mention_severities else []
        extras += ["each call's transcript in a thread"] if self.transcript else []
        return (
            f"route {self.name}: {', '.join(self.events)}{' (' + '; '.join(filters) + ')' if filters else ''} -> "
            f"{where}{''.join(', ' + extra for extra in extras)}"
        )


@dataclass(frozen=True)
class SlackSettings:
    api_base_url: str
    dead_letter: str
    pace: float
    group_wait: float
    group_max: int
    timeout: float
    max_attempts: int
    max_retry_time: float
    retry_initial_delay: float
    retry_max_delay: float
    max_retry_after: float
    max_queue: int
    routes: tuple[RouteSettings, ...]


def parse_settings(settings: dict[str, Any]) -> tuple[SlackSettings, list[str]]:
    """The settings and every problem as ``key.path: ...`` lines (secrets' values never in them)."""
    values, problems = check_table(settings, SETTINGS)
    problems += retry_problems(values)
    routes: list[RouteSettings] = []
    names: set[str] = set()
    for index, table in enumerate(values.get("routes") or []):
        where = f"routes[{index}]"
        fields, found = check_table(table, ROUTE, where)
        label = table.get("name") if isinstance(table.get("name"), str) else "(unnamed)"
        problems += [_name_route(problem, label) for problem in found]
        if found:
            continue
        name = fields["name"]
        if name in names:
            problems.append(f"{where}.name: route {name}: expected a unique name, got it a second time")
        names.add(name)
        webhook_url, token, found = _destination(fields, where, name)
        problems += found
        problem = template_problem(fields["template"])
        if problem:
            problems.append(f"{where}.template: route {name}: {problem}")
        if fields["transcript"] == "thread" and not fields["token_env"]:
            problems.append(f'{where}.transcript: route {name}: "thread" needs the Web API (token_env and channel)')
        routes.append(
            RouteSettings(
                name=name,
                webhook_url=webhook_url,
                token=token,
                channel=fields["channel"],
                events=tuple(fields["events"]),
                severities=frozenset(fields["severity"]),
                labels=dict(fields["labels"]),
                transcript=fields["transcript"] == "thread",
                template=fields["template"],
                mention=fields["mention"],
                mention_severities=frozenset(fields["mention_severity"]),
            )
        )
    parsed = SlackSettings(
        api_base_url=str(values.get("api_base_url") or SETTINGS["api_base_url"].default).rstrip("/"),
        dead_letter=str(values.get("dead_letter") or SETTINGS["dead_letter"].default),
        **{key: values.get(key, SETTINGS[key].default) for key in (
            "pace", "group_wait", "group_max", "timeout", "max_attempts", "max_retry_time",
            "retry_initial_delay", "retry_max_delay", "max_retry_after", "max_queue",
        )},  # fmt: skip
        routes=tuple(routes),
    )
    return parsed, problems


def _destination(fields: dict[str, Any], where: str, name: str) -> tuple[str | None, str | None, list[str]]:
    webhook_env, token_env, channel = fields["webhook_url_env"], fields["token_env"], fields["channel"]
    if webhook_env and token_env:
        return None, None, [f"{where}.webhook_url_env: route {name}: expected either webhook_url_env or token_env, not both"]
    if not webhook_env and not token_env:
        return None, None, [f"{where}.token_env: route {name}: missing: expected token_env (with channel) or webhook_url_env"]
    if token_env and not channel:
        return None, None, [f"{where}.channel: route {name}: missing required key (token_env posts to a channel)"]
    env = webhook_env or token_env
    value = os.environ.get(env, "")
    key = "webhook_url_env" if webhook_env else "token_env"
    if not value:
        return None, None, [f"{where}.{key}: route {name}: environment variable {env} is not set"]
    # both are secrets: the line says what is wrong with the value, never what it is
    problem = url_problem(value) if webhook_env else secret_problem(value)
    if problem:
        return None, None, [f"{where}.{key}: route {name}: the value of {env}: {problem}"]
    return (value, None, []) if webhook_env else (None, value, [])


def _name_route(problem: str, name: str) -> str:
    """Insert ``route NAME:`` after the key path so the line names the route as well as the place."""
    path, _, rest = problem.partition(": ")
    return f"{path}: route {name}: {rest}"
