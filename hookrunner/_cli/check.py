"""``hookrunner check``: validate a config and its plugins as ``run`` would, without connecting, and say what would
run; with ``--route TRIGGER.json``, which routes and endpoints a trigger would reach.

One rule for what is wrong. Whatever ``run`` would refuse to start with is an error here, one line each, exit 2,
found by the very calls ``run`` makes (``Config.secret_problems``, the plugins' ``validate_settings``), so a
missing secret is judged the same whichever table names it. What ``run`` starts with although it is likely a
mistake is a warning, exit 0; ``--strict`` makes every warning an error, those plugins log while their settings
are checked included.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from hookrunner._cli.trigger_file import read_trigger
from hookrunner._core.config import Config, load_config
from hookrunner._core.errors import ConfigError, HookrunnerError
from hookrunner._core.triggers import Trigger
from hookrunner._run.describe import Answer, describe_plugins, trigger_routes, unrouted_trigger_takers
from hookrunner._run.plugin_setup import prepare_plugins
from hookrunner._run.plugins import LoadedPlugins
from hookrunner._service.server import routes

__all__ = ["cmd_check", "service_summary"]

#: ``check --route``'s exit status when no route or endpoint would take the trigger.
EXIT_UNROUTED = 1


def cmd_check(args: argparse.Namespace) -> int:
    trigger = read_trigger(args.route) if args.route is not None else None
    config = load_config(args.config)
    refused: list[str] = []
    with held_warnings(args.strict) as logged:
        try:
            loaded = _prepared(config)
        except HookrunnerError as exc:
            refused = str(exc).splitlines()
        else:
            answers = describe_plugins(config, loaded) if trigger is None else trigger_routes(config, loaded, trigger)
    strict = [text if text.startswith(f"{config.source}: ") else f"{config.source}: {text}" for text in logged]
    if refused:
        raise ConfigError("\n".join([*refused, *(f"{line} (--strict)" for line in strict)]))
    warnings: list[str] = []
    lines = summary(config, loaded, answers if trigger is None else [], warnings)  # (its warnings count for --route too)
    if args.strict:
        strict = [f"{config.source}: {warning}" for warning in warnings] + strict
        if strict:
            raise ConfigError("\n".join(f"{line} (--strict)" for line in strict))
    if trigger is not None:
        return print_routes(trigger, answers, unrouted_trigger_takers(loaded))
    print("\n".join(lines))
    return 0


def _prepared(config: Config) -> LoadedPlugins:
    """The plugins loaded and checked, or a ConfigError with every line ``run`` would refuse to start with: the
    core's secrets first (the config's own tables), then the plugins' problems."""
    problems = config.secret_problems()
    try:
        loaded = prepare_plugins(config)
    except HookrunnerError as exc:
        raise ConfigError("\n".join([*problems, str(exc)])) from None
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded


@contextlib.contextmanager
def held_warnings(hold: bool) -> Iterator[list[str]]:
    """With ``hold`` (``--strict``), the messages of the warnings logged meanwhile, kept from stderr so that each
    is reported once, as an error; without it, the warnings are logged as usual and the list stays empty."""
    held: list[logging.LogRecord] = []
    messages: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        if not any(seen is record for seen in held):  # (one record, several handlers)
            held.append(record)
            messages.append(record.getMessage())
        return False

    handlers = logging.getLogger().handlers if hold else []
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield messages
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def summary(config: Config, loaded: LoadedPlugins, described: list[Answer], warnings: list[str]) -> list[str]:
    """``check``'s listing; each warning in it is also appended to ``warnings`` (``key.path: ...``)."""
    lines = [f"{config.source}: OK", f"  atoms: {config.atoms.base_url}"]
    env = config.atoms.api_key_env
    if env and os.environ.get(env):
        lines.append(f"  api key: from ${env} (set)")
    elif env:  # unset, and atoms.api_key is there to fall back on (else secret_problems refused it)
        lines.append(f"  api key: atoms.api_key, in the config file (${env} is not set)")
    else:
        lines.append("  api key: in the config file (prefer atoms.api_key_env)")
    for warning in config.secret_warnings():
        warnings.append(warning)
        lines.append(f"  warning: {warning}")
    if config.runner.calls:
        calls = ", ".join(config.runner.calls)
    elif config.service:
        calls = "none listed: found by the runner (below)"
    else:
        calls = "none listed (pass --call ID to run, or enable discovery.poll or server)"
    lines.append(f"  calls: {calls} (at most {config.runner.max_calls} at once: runner.max_calls)")
    workers = config.worker_count()
    if workers > 1:
        lines.append(f"  workers: {workers} processes (runner.workers = {config.runner.workers!r}), supervised by the one started")
    elif config.runner.workers not in (1, "auto"):
        lines.append(f"  workers: 1 process (runner.workers = {config.runner.workers!r} applies in service mode only)")
    else:
        lines.append("  workers: 1 process")
    if config.state.path is not None:
        kept = f"delivered ones kept {config.state.keep:g} s for replay" if config.state.keep else "delivered ones not kept"
        state = (
            f"journal {config.state.path} (undelivered messages and undispatched events survive a kill; {kept}; "
            f"commits every {config.state.commit_interval:g} s)"
        )
    else:
        state = 'in memory only (state.path = ""): undelivered messages are lost if the process is killed'
    lines.append(f"  state: {state}")
    if config.backfill.enabled:
        backfill = (
            f"on: an ended call's skipped events come from its stored conversation (asked for up to "
            f"{config.backfill.window:g} s)"
        )
    else:
        backfill = "off (backfill.enabled = false): events a stream skipped are not looked for"
    lines.append(f"  backfill: {backfill}; Atoms REST requests at most {config.atoms.max_requests_per_second:g}/s")
    lines += service_summary(config, warnings)
    runner = config.runner
    lines.append(
        f"  runner: hook_timeout {runner.hook_timeout:g} s, idle_timeout {runner.idle_timeout:g} s, "
        f"shutdown_grace {runner.shutdown_grace:g} s, buffer {runner.buffer} events/call, reconnect "
        f"{runner.reconnect.initial_delay:g}-{runner.reconnect.max_delay:g} s x {runner.reconnect.max_attempts or 'unlimited'}"
    )
    answers = {answer.plugin: answer for answer in described}
    for info in loaded.infos:
        state = "active" if info.active else "disabled"
        lines.append(f"  plugin {info.name} ({state}, {info.source}): {', '.join(info.hooks) or '-'}")
        answer = answers.get(info.name)
        if answer is not None:  # what its settings make it do, in its own words (describe_settings)
            lines += [f"    {line}" for line in answer.lines or []]
            if answer.problem:
                warnings.append(f"plugin {info.name}: {answer.problem}")
                lines.append(f"    warning: {answer.problem}")
    return lines


def service_summary(config: Config, warnings: list[str]) -> list[str]:
    """``check``'s lines about finding calls and the server, with the warnings an operator should see first (also
    appended to ``warnings``)."""
    lines = []

    def warn(text: str) -> None:
        warnings.append(text)
        lines.append(f"  warning: {text}")

    discovery, server = config.discovery, config.server
    if discovery.poll:
        filters = [f"agents {', '.join(discovery.agent_ids)}"] if discovery.agent_ids else []
        filters += [f"campaigns {', '.join(discovery.campaign_ids)}"] if discovery.campaign_ids else []
        lines.append(
            f"  discovery: listing {', '.join(discovery.statuses)} calls every {discovery.interval:g} s "
            f"({1 / discovery.interval:.2g} requests/s, one more per extra page of {discovery.page_size}; the free "
            f"plan allows about 10/s in all){'; ' + ', '.join(filters) if filters else ''}"
        )
        if discovery.page_size < 100:
            warn(
                f"discovery.page_size: {discovery.page_size} calls a page: every listing of N calls makes "
                f"N/{discovery.page_size} requests back to back (the free plan allows about 10/s); 500 is the most"
            )
    if server.enabled:
        served = routes(webhooks=bool(discovery.webhook_secret_env), calls=bool(server.token_env))
        lines.append(f"  server: http://{server.host}:{server.port} ({', '.join(served)})")
        if not server.loopback and not server.behind_tls_proxy:
            warn(
                f"server.host: {server.host} is reachable from other machines over plain HTTP; put a "
                "TLS-terminating proxy in front and set server.behind_tls_proxy = true (README: Run it as a service)"
            )
    return lines


def print_routes(trigger: Trigger, answers: list[Answer], unrouted: list[str]) -> int:
    """``check --route``: one line per route or endpoint that would take ``trigger``; 0 when one would, 1 when
    none would; a plugin that could not answer is an error (exit 2), after the answers of the others."""
    reached = [(answer.plugin, line) for answer in answers for line in answer.lines or []]
    labels = ", ".join(f"{key}={value}" for key, value in sorted(trigger.labels.items()))
    head = (
        f"{trigger.full_type} (call {trigger.call_id}, rule {trigger.rule}, severity {trigger.severity}"
        f"{', labels ' + labels if labels else ''})"
    )
    if reached:
        print(f"{head} would reach:")
        for plugin, line in reached:
            print(f"  {plugin} {line}")
    else:
        asked = ", ".join(answer.plugin for answer in answers) or "no active plugin implements routes_for_trigger"
        print(f"{head}: no route or endpoint would take it (asked: {asked})")
    for name in unrouted:
        print(f"  ({name} gets every trigger in on_trigger but does not say where it sends one: no routes_for_trigger)")
    failed = [f"plugin {answer.plugin}: {answer.problem}" for answer in answers if answer.problem]
    if failed:
        sys.stdout.flush()
        raise HookrunnerError("\n".join(failed))
    return 0 if reached else EXIT_UNROUTED
