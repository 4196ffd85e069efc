"""Reading and validating ``config.toml`` before anything connects.

Every problem is reported at once, one line each, as ``FILE: key.path: what was expected, got what``, so an ops
engineer fixes a config in one pass rather than one error per run.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .settings import NON_NEGATIVE, POSITIVE, Setting, between, check_table, describe, suggest

DEFAULT_BASE_URL = "https://api.smallest.ai/atoms/v1"
#: Not a default (``atoms.api_key_env`` must be given): the name the starter config and the example suggest.
DEFAULT_API_KEY_ENV = "ATOMS_API_KEY"


def _http_url(value: str) -> str | None:
    if value.startswith(("http://", "https://")) and len(value.split("://", 1)[1]) > 0:
        return None
    return f"expected an http:// or https:// URL, got {describe(value)}"


def _env_name(value: str) -> str | None:
    if value and all(ch.isalnum() or ch == "_" for ch in value) and not value[0].isdigit():
        return None
    return f"expected the name of an environment variable (like {DEFAULT_API_KEY_ENV}), got {describe(value)}"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "expected a file path, got an empty string"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else f"expected an integer of 1 or more, got {describe(value)}"


def _max_attempts(value: int) -> str | None:
    return None if value >= 0 else f"expected 0 (never give up) or more, got {describe(value)}"


ATOMS_SCHEMA = {
    "base_url": Setting("str", DEFAULT_BASE_URL, check=_http_url, doc="Atoms API base URL"),
    "api_key_env": Setting("str", None, check=_env_name, doc="environment variable holding the API key"),
    "api_key": Setting("str", None, doc="the API key itself (prefer api_key_env)"),
    "connect_timeout": Setting("number", 10.0, check=POSITIVE),
}
RECONNECT_SCHEMA = {
    "initial_delay": Setting("number", 1.0, check=POSITIVE),
    "max_delay": Setting("number", 30.0, check=POSITIVE),
    "max_attempts": Setting("int", 10, check=_max_attempts),
}
RUNNER_SCHEMA = {
    "calls": Setting("list[str]", []),
    "hook_timeout": Setting("number", 10.0, check=POSITIVE, expected="a number of seconds"),
    "idle_timeout": Setting("number", 120.0, check=POSITIVE, expected="a number of seconds"),
    "shutdown_grace": Setting("number", 10.0, check=NON_NEGATIVE, expected="a number of seconds"),
    "buffer": Setting("int", 64, check=_at_least_one, expected="a number of events"),
    "spool_file": Setting("str", "hookrunner-undispatched.jsonl", check=_non_empty, expected="a file path"),
    "reconnect": Setting("table", {}),
    "max_calls": Setting("int", 500, check=_at_least_one, expected="a number of concurrent calls"),
}
#: Each listing is at least one request, and the free plan allows about 10 requests/s for everything the key does.
MIN_POLL_INTERVAL = 0.5
DISCOVERY_SCHEMA = {
    "poll": Setting("bool", False, doc="list in-progress calls every interval and follow the new ones"),
    "interval": Setting(
        "number",
        2.0,
        check=lambda v: None
        if v >= MIN_POLL_INTERVAL
        else f"expected at least {MIN_POLL_INTERVAL:g} seconds (every listing is a request, and the free plan "
        f"allows about 10 requests/s for everything the key does), got {describe(v)}",
        doc="seconds between listings",
    ),
    "statuses": Setting("list[str]", ["in_progress", "active"], check=lambda v: None if v else "expected at least one status, got []"),
    "agent_ids": Setting("list[str]", [], doc="only calls of these agents (all when empty)"),
    "campaign_ids": Setting("list[str]", [], doc="only calls of these campaigns (all when empty)"),
    "page_size": Setting("int", 500, check=between(1, 500), doc="calls per listing page (Atoms allows 500)"),
    "page_interval": Setting(
        "number", 0.1, check=NON_NEGATIVE, doc="seconds between the pages of one listing (a long listing stays under the plan's rate)"
    ),
    "timeout": Setting("number", 10.0, check=POSITIVE, expected="a number of seconds"),
    "retry_delay": Setting("number", 1.0, check=POSITIVE, doc="first delay after a failed listing"),
    "max_retry_delay": Setting("number", 30.0, check=POSITIVE, doc="longest delay between failed listings"),
    "not_found_grace": Setting(
        "number",
        30.0,
        check=NON_NEGATIVE,
        doc="seconds a pushed call id answering 404 is retried (a webhook can come before the call's stream)",
    ),
    "webhook_secret_env": Setting(
        "str", None, check=_env_name, doc="variable holding the secret of Atoms' webhooks (for POST /atoms/webhook)"
    ),
}
SERVER_SCHEMA = {
    "enabled": Setting("bool", False, doc="serve /atoms/webhook, /calls, /healthz and /metrics"),
    "host": Setting("str", "127.0.0.1", doc="loopback unless a TLS proxy forwards to it"),
    "port": Setting("int", 8787, check=between(0, 65535), doc="0 picks a free port (logged)"),
    "token_env": Setting("str", None, check=_env_name, doc="variable holding the bearer token of POST /calls"),
    "behind_tls_proxy": Setting("bool", False, doc="a TLS-terminating proxy is in front (silences check's warning)"),
}
PLUGINS_SCHEMA = {
    "disable": Setting("list[str]", []),
    "load": Setting("list[str]", []),
}
TOP_SCHEMA = {
    "atoms": Setting("table", {}),
    "runner": Setting("table", {}),
    "plugins": Setting("table", {}),
    "discovery": Setting("table", {}),
    "server": Setting("table", {}),
}


#: The schemas above are the one place defaults live: ``Config`` is only ever built by ``config_from_dict``, the
#: starter config of ``hookrunner init`` is ``default_config_table()``, and a test holds config.example.toml to it.


def default_config_table() -> dict[str, Any]:
    """Every key that has a default, with its default, in the shape of a config file."""

    def defaults(schema: dict[str, Setting]) -> dict[str, Any]:
        return {
            key: copy.deepcopy(setting.default)
            for key, setting in schema.items()
            if setting.default is not None and setting.kind != "table"
        }

    return {
        "atoms": defaults(ATOMS_SCHEMA),
        "runner": {**defaults(RUNNER_SCHEMA), "reconnect": defaults(RECONNECT_SCHEMA)},
        "plugins": defaults(PLUGINS_SCHEMA),
        "discovery": defaults(DISCOVERY_SCHEMA),
        "server": defaults(SERVER_SCHEMA),
    }


@dataclass(frozen=True)
class ReconnectConfig:
    initial_delay: float
    max_delay: float
    max_attempts: int


@dataclass(frozen=True)
class DiscoveryConfig:
    poll: bool
    interval: float
    statuses: tuple[str, ...]
    agent_ids: tuple[str, ...]
    campaign_ids: tuple[str, ...]
    page_size: int
    page_interval: float
    timeout: float
    retry_delay: float
    max_retry_delay: float
    not_found_grace: float
    webhook_secret_env: str | None

    # BackoffPolicy's names, so failed listings share the subscriptions' full-jitter backoff
    @property
    def initial_delay(self) -> float:
        return self.retry_delay

    @property
    def max_delay(self) -> float:
        return self.max_retry_delay


@dataclass(frozen=True)
class ServerConfig:
    enabled: bool
    host: str
    port: int
    token_env: str | None
    behind_tls_proxy: bool

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


@dataclass(frozen=True)
class Config:
    """A validated configuration, built by ``config_from_dict``; ``source`` names the file in every later error."""

    source: str
    base_url: str
    api_key_env: str | None
    api_key_inline: str | None = field(repr=False)
    connect_timeout: float
    calls: tuple[str, ...]
    hook_timeout: float
    idle_timeout: float
    shutdown_grace: float
    buffer: int
    #: Received events not dispatched before shutdown_grace ran out are appended here (relative to base_dir).
    spool_file: Path
    reconnect: ReconnectConfig
    disable: tuple[str, ...]
    load: tuple[str, ...]
    plugin_settings: dict[str, dict[str, Any]]
    #: Directory of the config file: relative ``plugins.load`` paths resolve against it.
    base_dir: Path
    #: The config file (None for a config built in memory, like the demo's).
    path: Path | None
    max_calls: int
    discovery: DiscoveryConfig
    server: ServerConfig

    @property
    def service(self) -> bool:
        """Finding calls by itself (listing or pushes): the run lasts until a signal, not until the calls end."""
        return self.discovery.poll or self.server.enabled

    def secret(self, key_path: str, env: str | None) -> str | None:
        """A secret from the environment variable a config key names; a ConfigError when the variable is unset."""
        if env is None:
            return None
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(f"{self.source}: {key_path}: environment variable {env} is not set")
        return value

    def api_key(self) -> str:
        """The API key, from the environment variable or the file; a ConfigError names what is missing."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if key:
                return key
            if not self.api_key_inline:
                raise ConfigError(
                    f"{self.source}: atoms.api_key_env: environment variable {self.api_key_env} is not set "
                    "(export it with your Atoms API key)"
                )
        if self.api_key_inline:
            return self.api_key_inline
        raise ConfigError(f"{self.source}: atoms: no API key (set atoms.api_key_env)")


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ``ConfigError`` carrying every problem, one line each."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create one with `hookrunner init {path}`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, source=str(path), base_dir=path.resolve().parent, path=path.resolve())


def config_from_dict(
    data: dict[str, Any], source: str = "<config>", base_dir: Path = Path("."), path: Path | None = None
) -> Config:
    """Validate an already-parsed config table (used by ``load_config`` and by the demo's built-in config)."""
    problems: list[str] = []
    top, found = check_table(data, TOP_SCHEMA)
    problems += found
    atoms, found = check_table(top["atoms"], ATOMS_SCHEMA, "atoms")
    problems += found
    if "atoms" in data and isinstance(data["atoms"], dict):
        given = data["atoms"]
        if "api_key_env" not in given and "api_key" not in given:
            problems.append(
                "atoms.api_key_env: missing required key (the name of the environment variable holding "
                f"the Atoms API key, e.g. {DEFAULT_API_KEY_ENV})"
            )
    elif "atoms" not in data:
        problems.append("atoms: missing required table (with api_key_env, the variable holding the API key)")
    runner, found = check_table(top["runner"], RUNNER_SCHEMA, "runner")
    problems += found
    reconnect, found = check_table(runner["reconnect"], RECONNECT_SCHEMA, "runner.reconnect")
    problems += found
    if not found and reconnect["max_delay"] < reconnect["initial_delay"]:
        problems.append(
            f"runner.reconnect.max_delay: expected a number of at least initial_delay "
            f"({describe(reconnect['initial_delay'])}), got {describe(reconnect['max_delay'])}"
        )
    calls = runner["calls"]
    for index, call_id in enumerate(calls):
        if not call_id.strip():
            problems.append(f"runner.calls[{index}]: expected a call id, got an empty string")
    if len(set(calls)) != len(calls):
        duplicated = sorted({call_id for call_id in calls if calls.count(call_id) > 1})
        problems.append(f"runner.calls: each call id once, got {', '.join(duplicated)} more than once")
    discovery, found = check_table(top["discovery"], DISCOVERY_SCHEMA, "discovery")
    problems += found
    if not found and discovery["max_retry_delay"] < discovery["retry_delay"]:
        problems.append(
            f"discovery.max_retry_delay: expected a number of at least retry_delay "
            f"({describe(discovery['retry_delay'])}), got {describe(discovery['max_retry_delay'])}"
        )
    server, found = check_table(top["server"], SERVER_SCHEMA, "server")
    problems += found
    plugins_table = top["plugins"]
    plugin_settings = {k: v for k, v in plugins_table.items() if k not in PLUGINS_SCHEMA}
    plugins, found = check_table(
        {k: v for k, v in plugins_table.items() if k in PLUGINS_SCHEMA}, PLUGINS_SCHEMA, "plugins"
    )
    problems += found
    for name, table in plugin_settings.items():
        if isinstance(table, dict):
            continue
        near = suggest(name, PLUGINS_SCHEMA)
        if near:  # `lod = [...]`, `disabled = [...]`: a misspelled key, not a plugin given a value
            problems.append(f"plugins.{name}: unknown key{near}")
        else:
            problems.append(
                f"plugins.{name}: expected {' or '.join(PLUGINS_SCHEMA)}, or a [plugins.{name}] table of "
                f"plugin {name}'s settings, got {describe(table)}"
            )
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    return Config(
        source=source,
        base_url=atoms["base_url"].rstrip("/"),
        api_key_env=atoms["api_key_env"],
        api_key_inline=atoms["api_key"],
        connect_timeout=float(atoms["connect_timeout"]),
        calls=tuple(calls),
        hook_timeout=float(runner["hook_timeout"]),
        idle_timeout=float(runner["idle_timeout"]),
        shutdown_grace=float(runner["shutdown_grace"]),
        buffer=runner["buffer"],
        spool_file=base_dir / runner["spool_file"],
        reconnect=ReconnectConfig(
            initial_delay=float(reconnect["initial_delay"]),
            max_delay=float(reconnect["max_delay"]),
            max_attempts=reconnect["max_attempts"],
        ),
        disable=tuple(plugins["disable"]),
        load=tuple(plugins["load"]),
        plugin_settings=plugin_settings,
        base_dir=base_dir,
        path=path,
        max_calls=runner["max_calls"],
        discovery=DiscoveryConfig(
            **{key: tuple(value) if isinstance(value, list) else value for key, value in discovery.items()}
        ),
        server=ServerConfig(**server),
    )
