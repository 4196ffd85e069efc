"""The ``[plugins.webhook]`` table: what every key accepts, checked before anything connects."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hookrunner import EVENT_CLASSES, Setting, at_least, check_table, http_url, key_text, type_selected
from hookrunner.delivery import retry_problems, retry_settings

from .signing import secret_problem

log = logging.getLogger("hookrunner.plugins.webhook")

DEFAULT_EVENTS = ["user_transcription", "tts_completed", "trigger.*"]
#: What an HTTP header name and value may hold (RFC 9110 tokens; visible ASCII, spaces and tabs).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")
RESERVED_HEADERS = {"content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature"}


SETTINGS = {
    "dead_letter": Setting("str", "hookrunner-dead-letters.jsonl", doc="JSONL file of undeliverable messages"),
    "endpoints": Setting("list[table]", [], doc="[[plugins.webhook.endpoints]]"),
}

ENDPOINT = {
    "name": Setting("str", required=True, expected="a unique name for logs and errors"),
    "url": Setting("str", required=True, check=http_url),
    "secret_env": Setting("str|list[str]", None, expected="the name of the variable holding the whsec_ secret"),
    "secret": Setting("str|list[str]", None, expected="a whsec_ secret (prefer secret_env)"),
    "events": Setting("list[str]", DEFAULT_EVENTS),
    "calls": Setting("list[str]", []),
    "headers": Setting("table[str]", {}),
    "timeout": Setting("number", 15.0, check=at_least(0.001), expected="a number of seconds"),
    **retry_settings(
        max_attempts=8, max_retry_time=3600.0, retry_max_delay=300.0,
        retry_after_doc="the longest a Retry-After from the receiver may hold a message back",
    ),  # fmt: skip
    "max_in_flight": Setting("int", 10, check=at_least(1)),
    "max_queue": Setting("int", 10_000, check=at_least(1)),
    "batch_max_events": Setting("int", 1, check=at_least(1)),
    "batch_max_wait": Setting("number", 1.0, check=at_least(0), expected="a number of seconds"),
}
SETTINGS["endpoints"] = Setting("list[table]", [], doc="[[plugins.webhook.endpoints]], each with these keys", items=ENDPOINT)


@dataclass(frozen=True)
class EndpointSettings:
    name: str
    url: str
    secrets: tuple[str, ...]
    events: tuple[str, ...]
    calls: frozenset[str]
    headers: dict[str, str]
    timeout: float
    max_attempts: int
    max_retry_time: float
    retry_initial_delay: float
    retry_max_delay: float
    max_retry_after: float
    max_in_flight: int
    max_queue: int
    batch_max_events: int
    batch_max_wait: float

    def wants_call(self, call_id: str) -> bool:
        return not self.calls or call_id in self.calls

    def wants_type(self, message_type: str) -> bool:
        """Whether messages of this type (an event type, or ``trigger.<type>``) go here."""
        return type_selected(message_type, self.events)

    def wants(self, message_type: str, call_id: str) -> bool:
        """Whether a message of this type about this call goes here (what ``check --route`` asks; a run asks
        ``_Endpoint.wants``, the same two predicates with the type's answer cached)."""
        return self.wants_call(call_id) and self.wants_type(message_type)

    @property
    def safe_url(self) -> str:
        """The URL without query string or credentials: what logs may show."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    @property
    def description(self) -> str:
        """The endpoint in one line, never a secret (the URL as ``safe_url`` shows it): ``run`` logs it as it starts
        the endpoint, ``check`` lists it, ``check --route`` names it when a trigger would reach it."""
        calls = f" (calls {', '.join(sorted(self.calls))})" if self.calls else ""
        return f"endpoint {self.name}: {', '.join(self.events)}{calls} -> {self.safe_url}"


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def parse_settings(
    settings: dict[str, Any], *, warn: bool = True
) -> tuple[Path, list[EndpointSettings], list[str]]:
    """The dead-letter path (as written), the endpoints, and every problem as ``key.path: ...`` lines.

    ``warn`` logs the warnings (unknown event type, plain http) too: once, when the settings are validated.
    """
    values, problems = check_table(settings, SETTINGS)
    endpoints: list[EndpointSettings] = []
    seen_names: set[str] = set()
    for index, table in enumerate(values.get("endpoints") or []):
        where = f"endpoints[{index}]"
        fields, found = check_table(table, ENDPOINT, where)
        problems += found
        if found:
            continue
        name = fields["name"]
        if name in seen_names:
            problems.append(f"{where}.name: expected a unique name, got \"{name}\" a second time")
        seen_names.add(name)
        secrets, found = _secrets(fields, where)
        problems += found
        for header, value in fields["headers"].items():
            if not _HEADER_NAME.fullmatch(header):
                problems.append(f"{where}.headers: expected header names of letters, digits and -, got {key_text(header)}")
            elif header.lower() in RESERVED_HEADERS:
                problems.append(f"{where}.headers.{header}: set by hookrunner itself; remove it")
            elif not _HEADER_VALUE.fullmatch(value):  # httpx would refuse it on every attempt; never shown: a credential
                problems.append(f"{where}.headers.{header}: expected printable ASCII text (no line breaks)")
        problems += retry_problems(fields, where)
        if warn:
            for position, pattern in enumerate(fields["events"]):
                _warn_unknown_type(f"{where}.events[{position}]", pattern)
            _warn_plain_http(where, name, fields["url"])
        endpoints.append(
            EndpointSettings(
                name=name,
                url=fields["url"],
                secrets=tuple(secrets),
                events=tuple(fields["events"]),
                calls=frozenset(fields["calls"]),
                headers=dict(fields["headers"]),
                timeout=float(fields["timeout"]),
                max_attempts=fields["max_attempts"],
                max_retry_time=float(fields["max_retry_time"]),
                retry_initial_delay=float(fields["retry_initial_delay"]),
                retry_max_delay=float(fields["retry_max_delay"]),
                max_retry_after=float(fields["max_retry_after"]),
                max_in_flight=fields["max_in_flight"],
                max_queue=fields["max_queue"],
                batch_max_events=fields["batch_max_events"],
                batch_max_wait=float(fields["batch_max_wait"]),
            )
        )
    return Path(values.get("dead_letter") or SETTINGS["dead_letter"].default), endpoints, problems


def _secrets(fields: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """The endpoint's secrets, current first; problems name the key, never the secret's value."""
    problems: list[str] = []
    secrets: list[str] = []
    env_names = _as_list(fields["secret_env"])
    inline = _as_list(fields["secret"])
    if not env_names and not inline:
        return [], [f"{where}.secret_env: missing required key (the variable holding the endpoint's whsec_ secret)"]
    for position, env_name in enumerate(env_names):
        key = f"{where}.secret_env" + (f"[{position}]" if isinstance(fields["secret_env"], list) else "")
        secret = os.environ.get(env_name, "")
        if not secret:
            problems.append(f"{key}: environment variable {env_name} is not set")
            continue
        problem = secret_problem(secret)
        if problem:
            problems.append(f"{key}: the value of {env_name}: {problem}")
        secrets.append(secret)
    for position, secret in enumerate(inline):
        problem = secret_problem(secret)
        if problem:
            problems.append(f"{where}.secret" + (f"[{position}]" if isinstance(fields["secret"], list) else "") + f": {problem}")
        secrets.append(secret)
    return secrets, problems


def _warn_unknown_type(where: str, pattern: str) -> None:
    if any(ch in pattern for ch in "*?[") or pattern == "trigger" or pattern.startswith("trigger."):
        return
    if pattern in EVENT_CLASSES:
        return
    close = difflib.get_close_matches(pattern, list(EVENT_CLASSES), n=1, cutoff=0.75)
    hint = f' (did you mean "{close[0]}"?)' if close else " (fine if Atoms sends it; it has no typed class)"
    log.warning("plugins.webhook.%s: \"%s\" is not a known event type%s", where, pattern, hint)


def _warn_plain_http(where: str, name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning(
            "plugins.webhook.%s.url: endpoint %s uses plain http to %s: events and signatures travel unencrypted",
            where,
            name,
            host,
        )
