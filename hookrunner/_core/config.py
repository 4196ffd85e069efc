"""Reading and validating ``config.toml`` before anything connects.

Every problem is reported at once, one line each, as ``FILE: key.path: what was expected, got what``, so an ops
engineer fixes a config in one pass rather than one error per run.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import ipaddress
import re
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hookrunner._core.callids import call_id_problem
from hookrunner._core.errors import ConfigError
from hookrunner._core.settings import NON_NEGATIVE, POSITIVE, Setting, between, check_table, describe, http_url, key_text, secret_problem, suggest

DEFAULT_BASE_URL = "https://api.smallest.ai/atoms/v1"
#: Not a default (``atoms.api_key_env`` must be given): the name the starter config and the example suggest.
DEFAULT_API_KEY_ENV = "ATOMS_API_KEY"


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _host(value: str) -> str | None:
    """An address to listen on: an IP address, or a host name of letters, digits, dots and hyphens."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    labels = value.split(".")
    if 0 < len(value) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return f"expected an IP address or a host name, got {describe(value)}"


def _env_name(value: str) -> str | None:
    if value and all(ch.isalnum() or ch == "_" for ch in value) and not value[0].isdigit():
        return None
    return f"expected the name of an environment variable (like {DEFAULT_API_KEY_ENV}), got {describe(value)}"


def _file_path(value: str) -> str | None:
    if not value.strip():
        return "expected a file path, got an empty string"
    return "expected a file path without a NUL character" if "\0" in value else None


def _paths_or_modules(values: list[str]) -> str | None:
    for index, value in enumerate(values):
        if not value.strip() or "\0" in value:
            return f"expected paths of .py files or module names, got {describe(value)} (entry {index + 1})"
    return None


def _inline_api_key(value: str) -> str | None:
    problem = secret_problem(value)
    return f"the key {problem}" if problem else None


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else f"expected an integer of 1 or more, got {describe(value)}"


#: The most worker processes ``runner.workers`` may ask for: past a few per core they only add memory.
MAX_WORKERS = 64


def _workers(value: int | str) -> str | None:
    if value == "auto" or (isinstance(value, int) and 1 <= value <= MAX_WORKERS):
        return None
    return f'expected "auto" (the CPUs this process may use) or a number of processes from 1 to {MAX_WORKERS}, got {describe(value)}'


def _max_attempts(value: int) -> str | None:
    return None if value >= 0 else f"expected 0 (never give up) or more, got {describe(value)}"


ATOMS_SCHEMA = {
    "base_url": Setting("str", DEFAULT_BASE_URL, check=http_url, doc="Atoms API base URL"),
    "api_key_env": Setting("str", None, check=_env_name, doc="environment variable holding the API key (ATOMS_API_KEY when neither it nor api_key is set)"),
    "api_key": Setting("str", None, check=_inline_api_key, doc="the API key itself (prefer api_key_env)"),
    "connect_timeout": Setting("number", 10.0, check=POSITIVE),
    "max_requests_per_second": Setting(
        "number",
        10.0,
        check=between(0.01, 10_000),
        expected="a number of requests per second",
        doc="Atoms REST requests (listings, backfill) per second, shared: keep it under the plan's rate limit",
    ),
}
RECONNECT_SCHEMA = {
    "initial_delay": Setting("number", 1.0, check=POSITIVE),
    "max_delay": Setting("number", 30.0, check=POSITIVE),
    "max_attempts": Setting("int", 10, check=_max_attempts),
    "max_retry_after": Setting(
        "number", 300.0, check=POSITIVE, expected="a number of seconds", doc="longest a server's Retry-After holds a reconnect"
    ),
}
RUNNER_SCHEMA = {
    "calls": Setting("list[str]", []),
    "hook_timeout": Setting("number", 10.0, check=POSITIVE, expected="a number of seconds"),
    "idle_timeout": Setting("number", 120.0, check=POSITIVE, expected="a number of seconds"),
    "shutdown_grace": Setting("number", 10.0, check=NON_NEGATIVE, expected="a number of seconds"),
    "buffer": Setting("int", 256, check=between(1, 100_000), expected="a number of events"),
    "spool_file": Setting("str", "hookrunner-undispatched.jsonl", check=_file_path, expected="a file path"),
    "reconnect": Setting("table", {}),
    "max_calls": Setting("int", 500, check=_at_least_one, expected="a number of concurrent calls"),
    "max_connecting": Setting(
        "int", 32, check=_at_least_one, expected="a number of calls", doc="calls whose stream is being opened at once"
    ),
    "workers": Setting(
        "int|str",
        "auto",
        check=_workers,
        expected=f'"auto" or a number of processes from 1 to {MAX_WORKERS}',
        doc='processes following calls in service mode ("auto": one per CPU this process may use; 1: one process)',
    ),
    "worker_restart_delay": Setting(
        "number", 1.0, check=POSITIVE, doc="seconds before a worker that died is started again (doubling while it keeps dying, up to 30 s)"
    ),
    "max_event_bytes": Setting(
        "int",
        4 * 1024 * 1024,
        check=lambda v: None
        if 1024 <= v <= 1024**3
        else f"expected a number of bytes from 1024 to 1073741824 (1 GiB), got {describe(v)}",
        expected="a number of bytes",
        doc="the most one stream line or event may hold",
    ),
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
    "max_retry_after": Setting(
        "number", 300.0, check=POSITIVE, expected="a number of seconds", doc="longest a server's Retry-After holds a listing"
    ),
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
    "host": Setting("str", "127.0.0.1", check=_host, doc="loopback unless a TLS proxy forwards to it"),
    "port": Setting("int", 8787, check=between(0, 65535), doc="0 picks a free port (logged)"),
    "token_env": Setting("str", None, check=_env_name, doc="variable holding the bearer token of POST /calls"),
    "behind_tls_proxy": Setting("bool", False, doc="a TLS-terminating proxy is in front (silences check's warning)"),
    "max_connections": Setting(
        "int", 1000, check=_at_least_one, expected="a number of connections", doc="client connections open at once"
    ),
    "idle_timeout": Setting(
        "number", 30.0, check=POSITIVE, expected="a number of seconds", doc="seconds an idle client connection is kept"
    ),
}
PLUGINS_SCHEMA = {
    "disable": Setting("list[str]", []),
    "load": Setting("list[str]", [], check=_paths_or_modules),
}
STATE_SCHEMA = {
    "path": Setting(
        "str",
        "hookrunner-state.db",
        doc='the journal (SQLite), relative to the config file\'s folder; "" keeps everything in memory only',
    ),
    "commit_interval": Setting(
        "number", 0.1, check=between(0.001, 10), doc="seconds the journal gathers writes into one transaction"
    ),
    "keep": Setting(
        "number",
        86400.0,
        check=between(0, 366 * 86400),
        expected="a number of seconds",
        doc="seconds delivered messages stay in the journal for `hookrunner replay` (0: forgotten once delivered)",
    ),
    "max_kept": Setting(
        "int", 1_000_000, check=between(0, 100_000_000), doc="the most delivered messages kept (the oldest go first)"
    ),
}
BACKFILL_SCHEMA = {
    "enabled": Setting(
        "bool", True, doc="at a call's end, fetch its conversation and dispatch the events the stream skipped"
    ),
    "window": Setting(
        "number",
        60.0,
        check=between(0, 3600),
        expected="a number of seconds",
        doc="how long after a call's end its conversation is asked for again while Atoms is still writing it",
    ),
    "retry_interval": Setting(
        "number", 2.0, check=between(0.001, 600), expected="a number of seconds", doc="first wait between two asks"
    ),
    "timeout": Setting("number", 10.0, check=POSITIVE, expected="a number of seconds", doc="the most one ask takes"),
}
TOP_SCHEMA = {
    "atoms": Setting("table", {}),
    "runner": Setting("table", {}),
    "plugins": Setting("table", {}),
    "discovery": Setting("table", {}),
    "server": Setting("table", {}),
    "state": Setting("table", {}),
    "backfill": Setting("table", {}),
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
        "state": defaults(STATE_SCHEMA),
        "backfill": defaults(BACKFILL_SCHEMA),
    }


@dataclass(frozen=True)
class StateConfig:
    #: The journal file, or None when ``[state] path = ""`` keeps everything in memory (lost with the process).
    path: Path | None
    commit_interval: float
    #: Seconds delivered messages are kept for ``hookrunner replay``, and at most how many.
    keep: float
    max_kept: int


@dataclass(frozen=True)
class BackfillConfig:
    enabled: bool
    window: float
    retry_interval: float
    timeout: float


@dataclass(frozen=True)
class ReconnectConfig:
    initial_delay: float
    max_delay: float
    max_attempts: int
    max_retry_after: float


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
    max_retry_after: float

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
    max_connections: int
    idle_timeout: float

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


#: The tables a SIGHUP reload does not apply (it applies the [plugins.NAME] tables only).
_RESTART_TABLES = ("atoms", "runner", "discovery", "server", "state", "backfill")


@dataclass(frozen=True)
class AtomsConfig:
    base_url: str
    api_key_env: str | None
    api_key_inline: str | None = field(repr=False)
    connect_timeout: float
    #: Atoms REST requests per second (``atoms.max_requests_per_second``), listings and backfill together.
    max_requests_per_second: float


@dataclass(frozen=True)
class RunnerConfig:
    calls: tuple[str, ...]
    hook_timeout: float
    idle_timeout: float
    shutdown_grace: float
    buffer: int
    #: Received events not dispatched before shutdown_grace ran out are appended here (relative to base_dir).
    spool_file: Path
    max_calls: int
    #: Calls whose stream is being opened at once (``runner.max_connecting``); the others wait their turn.
    max_connecting: int
    #: ``runner.workers`` as written: "auto" or a number of processes (``Config.worker_count`` says how many run).
    workers: int | str
    worker_restart_delay: float
    #: The longest stream line or event accepted (``runner.max_event_bytes``); a longer one is skipped.
    max_event_bytes: int
    reconnect: ReconnectConfig


@dataclass(frozen=True)
class PluginsConfig:
    disable: tuple[str, ...]
    load: tuple[str, ...]
    #: The ``[plugins.NAME]`` tables, as written (each plugin's schema checks its own).
    settings: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Config:
    """A validated configuration, built by ``config_from_dict``, one field per table of the file (``config.runner.
    hook_timeout`` is ``[runner] hook_timeout``); ``source`` names the file in every later error."""

    source: str
    #: Directory of the config file: relative paths (``plugins.load``, files) resolve against it.
    base_dir: Path
    #: The config file (None for a config built in memory, like the demo's).
    path: Path | None
    atoms: AtomsConfig
    runner: RunnerConfig
    plugins: PluginsConfig
    discovery: DiscoveryConfig
    server: ServerConfig
    state: StateConfig
    backfill: BackfillConfig

    def needs_restart_for(self, other: Config) -> list[str]:
        """Where ``other`` (the file re-read on SIGHUP) differs beyond the ``[plugins.NAME]`` tables that a reload
        applies: the tables by name, the plugin list by key (``plugins.disable``)."""
        changed = [name for name in _RESTART_TABLES if getattr(self, name) != getattr(other, name)]
        changed += [f"plugins.{key}" for key in ("disable", "load") if getattr(self.plugins, key) != getattr(other.plugins, key)]
        return changed

    def with_plugin_settings(self, settings: dict[str, dict[str, Any]]) -> Config:
        """This config with other ``[plugins.NAME]`` tables (a reload's)."""
        return dataclasses.replace(self, plugins=dataclasses.replace(self.plugins, settings=settings))

    @property
    def service(self) -> bool:
        """Finding calls by itself (listing or pushes): the run lasts until a signal, not until the calls end."""
        return self.discovery.poll or self.server.enabled

    def worker_count(self) -> int:
        """How many worker processes ``run`` starts: ``runner.workers``, "auto" being the CPUs this process may use;
        always 1 outside service mode (a run of listed calls is one process) and without a config file (the
        workers read it)."""
        if not self.service or self.path is None:
            return 1
        if self.runner.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
        return int(self.runner.workers)

    def secret(self, key_path: str, env: str | None) -> str | None:
        """A secret from the environment variable a config key names; a ConfigError when the variable is unset or
        its value has surrounding whitespace or a character that is not printable ASCII (never quoted)."""
        if env is None:
            return None
        value = os.environ.get(env, "")
        if not value:
            raise ConfigError(f"{self.source}: {key_path}: environment variable {env} is not set")
        problem = secret_problem(value)
        if problem:
            raise ConfigError(f"{self.source}: {key_path}: the value of {env} {problem}")
        return value

    def secret_problems(self) -> list[str]:
        """What ``run`` would refuse to start with about the secrets the core reads, one line each naming the file,
        the key and the variable, never the value: the API key and, with ``server.enabled``, the Atoms webhook
        secret and the POST /calls token. Found by the very calls ``run`` makes (``api_key``, ``secret``, as
        ``service_runner`` reads them), so ``check`` and ``run`` cannot disagree."""
        lines = []
        try:
            self.api_key()
        except ConfigError as exc:
            lines.append(str(exc))
        for key_path, env in self._server_secrets():
            try:
                self.secret(key_path, env)
            except ConfigError as exc:
                lines.append(str(exc))
        return lines

    def secret_warnings(self) -> list[str]:
        """What ``run`` starts with but that is likely not what was meant, as ``key.path: ...`` lines (``check``
        prints them; ``check --strict`` refuses them): an unset variable whose secret ``run`` then takes from the
        file, and a secret named for a server that is off (``run`` reads neither)."""
        lines = []
        env = self.atoms.api_key_env
        if env and not os.environ.get(env) and self.atoms.api_key_inline:
            lines.append(f"atoms.api_key_env: environment variable {env} is not set: `run` uses atoms.api_key from the file")
        if not self.server.enabled:
            for (key_path, named), route in zip(self._server_secret_keys(), ("Atoms webhooks", "POST /calls")):
                if named:
                    lines.append(f"{key_path} is set but server.enabled is false: nothing receives {route}")
        return lines

    def _server_secret_keys(self) -> list[tuple[str, str | None]]:
        """The server's secrets: key path and the variable it names (None: not named)."""
        return [
            ("discovery.webhook_secret_env", self.discovery.webhook_secret_env),
            ("server.token_env", self.server.token_env),
        ]

    def _server_secrets(self) -> list[tuple[str, str | None]]:
        """The variables ``service_runner`` reads when it starts the server (none when the server is off)."""
        return self._server_secret_keys() if self.server.enabled else []

    def api_key(self) -> str:
        """The API key, from the environment variable or the file; a ConfigError names what is missing or wrong."""
        if self.atoms.api_key_env:
            key = os.environ.get(self.atoms.api_key_env, "")
            if key:
                problem = secret_problem(key)
                if problem:
                    raise ConfigError(f"{self.source}: atoms.api_key_env: the value of {self.atoms.api_key_env} {problem}")
                return key
            if not self.atoms.api_key_inline:
                raise ConfigError(
                    f"{self.source}: atoms.api_key_env: environment variable {self.atoms.api_key_env} is not set "
                    "(export it with your Atoms API key)"
                )
        if self.atoms.api_key_inline:
            return self.atoms.api_key_inline
        raise ConfigError(f"{self.source}: atoms: no API key (set atoms.api_key_env)")


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ``ConfigError`` carrying every problem, one line each."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create one with `hookrunner init {path}`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1}, on line {line}); save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_one_line(str(exc))}") from None
    except ValueError as exc:  # an integer of more than 4,300 digits (int()'s limit)
        raise ConfigError(f"{path}: not usable TOML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not usable TOML: nested too deeply") from None
    return config_from_dict(data, source=str(path), base_dir=path.resolve().parent, path=path.resolve())


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def config_from_dict(
    data: dict[str, Any], source: str = "<config>", base_dir: Path = Path("."), path: Path | None = None
) -> Config:
    """Validate an already-parsed config table (used by ``load_config`` and by the demo's built-in config)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table of settings, got {describe(data)}")
    problems: list[str] = []
    top, found = check_table(data, TOP_SCHEMA)
    problems += found
    atoms, found = check_table(top["atoms"], ATOMS_SCHEMA, "atoms")
    problems += found
    # Every [atoms] key has a default: without api_key_env or api_key, the key comes from $ATOMS_API_KEY (which
    # `check` reports and `run` requires), so a config for the real service may leave the table out.
    if atoms["api_key_env"] is None and atoms["api_key"] is None:
        atoms["api_key_env"] = DEFAULT_API_KEY_ENV
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
        problem = call_id_problem(call_id)
        if problem:
            problems.append(f"runner.calls[{index}]: {problem}")
    if len(set(calls)) != len(calls):
        counts = collections.Counter(calls)
        duplicated = sorted(call_id for call_id, count in counts.items() if count > 1 and not call_id_problem(call_id))
        if duplicated:
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
    state, found = check_table(top["state"], STATE_SCHEMA, "state")
    problems += found
    backfill, found = check_table(top["backfill"], BACKFILL_SCHEMA, "backfill")
    problems += found
    if isinstance(state["path"], str) and "\0" in state["path"]:
        problems.append("state.path: expected a file path, got a NUL character")
    plugins_table = top["plugins"]
    plugin_settings = {k: v for k, v in plugins_table.items() if k not in PLUGINS_SCHEMA}
    plugins, found = check_table(
        {k: v for k, v in plugins_table.items() if k in PLUGINS_SCHEMA}, PLUGINS_SCHEMA, "plugins"
    )
    problems += found
    for name, table in plugin_settings.items():
        shown = key_text(name)
        if any(ch.isspace() or not ch.isprintable() for ch in name):  # no plugin is named so; keeps errors one line
            problems.append(f"plugins.{shown}: expected a plugin's name, without spaces or control characters")
        elif isinstance(table, dict):
            continue
        elif suggest(name, PLUGINS_SCHEMA):  # `lod = [...]`, `disabled = [...]`: a misspelled key, not a plugin's
            problems.append(f"plugins.{shown}: unknown key{suggest(name, PLUGINS_SCHEMA)}")
        else:
            problems.append(
                f"plugins.{shown}: expected {' or '.join(PLUGINS_SCHEMA)}, or a [plugins.{shown}] table of "
                f"plugin {shown}'s settings, got {describe(table)}"
            )
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    return Config(
        source=source,
        base_dir=base_dir,
        path=path,
        atoms=AtomsConfig(
            base_url=atoms["base_url"].rstrip("/"),
            api_key_env=atoms["api_key_env"],
            api_key_inline=atoms["api_key"],
            connect_timeout=float(atoms["connect_timeout"]),
            max_requests_per_second=float(atoms["max_requests_per_second"]),
        ),
        runner=RunnerConfig(
            calls=tuple(calls),
            hook_timeout=float(runner["hook_timeout"]),
            idle_timeout=float(runner["idle_timeout"]),
            shutdown_grace=float(runner["shutdown_grace"]),
            buffer=runner["buffer"],
            spool_file=base_dir / runner["spool_file"],
            max_calls=runner["max_calls"],
            max_connecting=runner["max_connecting"],
            workers=runner["workers"],
            worker_restart_delay=float(runner["worker_restart_delay"]),
            max_event_bytes=runner["max_event_bytes"],
            reconnect=ReconnectConfig(
                initial_delay=float(reconnect["initial_delay"]),
                max_delay=float(reconnect["max_delay"]),
                max_attempts=reconnect["max_attempts"],
                max_retry_after=float(reconnect["max_retry_after"]),
            ),
        ),
        plugins=PluginsConfig(disable=tuple(plugins["disable"]), load=tuple(plugins["load"]), settings=plugin_settings),
        discovery=DiscoveryConfig(
            **{key: tuple(value) if isinstance(value, list) else value for key, value in discovery.items()}  # type: ignore[arg-type]  # (checked above)
        ),
        server=ServerConfig(**server),
        state=StateConfig(
            path=base_dir / state["path"] if state["path"] else None,
            commit_interval=float(state["commit_interval"]),
            keep=float(state["keep"]),
            max_kept=state["max_kept"],
        ),
        backfill=BackfillConfig(
            enabled=backfill["enabled"],
            window=float(backfill["window"]),
            retry_interval=float(backfill["retry_interval"]),
            timeout=float(backfill["timeout"]),
        ),
    )
