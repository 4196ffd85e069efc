"""The ``hookrunner`` command: run, check, plugins, init, simulate, demo.

Exit codes: 0 when every call ended or completed (or a signal stopped the runner), 1 when a call was not found
or given up on, 2 for a config, plugin-loading or API-key problem. ``plugins`` exits 1 when a plugin that ``run``
would load is broken; ``check --route`` 1 when no route would take the trigger (``check`` lives in ``check.py``).
A user's mistake is printed as one line per problem, never as a traceback.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import tomli_w
import trio

from hookrunner._core.api import __version__
from hookrunner._core.callids import call_id_problem
from hookrunner._core.config import DEFAULT_API_KEY_ENV, config_from_dict, default_config_table, load_config
from hookrunner._core.errors import ConfigError, HookrunnerError, UsageError
from hookrunner._state.journal import work_left
from hookrunner._core.logs import LEVELS, command_line, setup_logging
from hookrunner._core.settings import url_problem
from hookrunner._core.text import shown
from hookrunner._run.plugin_setup import prepare_plugins
from hookrunner._run.plugins import load_plugins
from hookrunner._cli.check import cmd_check
from hookrunner._cli.demo import EXAMPLE_CONFIG, cmd_demo
from hookrunner._cli.schema import print_settings
from hookrunner._run.runner import EXIT_USAGE
from hookrunner._service.intakes import service_runner, service_supervisor
from hookrunner._run.gc_tuning import tune_gc



# -- argument types: a bad value is argparse's one `error:` line and exit 2, never a traceback --------------------


def speed_factor(text: str) -> float:
    """``--speed``: a finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0 (like 2 or 0.5), got {shown(text)}")
    return value


def port_number(text: str) -> int:
    """``--port``: 0 (a free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 (any free one) to 65535, got {shown(text)}")
    return value


def url_argument(text: str) -> str:
    """A URL option: parsed and checked like the config's URLs."""
    problem = url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {shown(text)}")
    return text


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the sub-command (``hookrunner --log-level debug run x`` or ``run x --log-level debug``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--log-level", choices=LEVELS, default="info" if defaults else argparse.SUPPRESS, help="default: info"
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text" if defaults else argparse.SUPPRESS, help="default: text"
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="hookrunner",
        description="Run plugin hooks on the live event streams of Atoms voice-agent calls.",
        parents=[_common_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"hookrunner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", parents=[common], help="subscribe to the configured calls and run the plugins")
    run.add_argument("config", metavar="CONFIG", help="path to config.toml")
    run.add_argument(
        "--call", dest="calls", action="append", default=[], metavar="ID", help="a call id (repeatable); replaces runner.calls"
    )

    check = sub.add_parser("check", parents=[common], help="validate a config and its plugins, and show what would run")
    check.add_argument("config", metavar="CONFIG", help="path to config.toml")
    check.add_argument(
        "--route",
        metavar="TRIGGER.json",
        help='show which routes and endpoints this trigger would reach, sending nothing: a JSON object of a '
        'trigger\'s fields, like {"type": "keyword", "severity": "critical", "labels": {"team": "retention"}} '
        "(type defaults to keyword, call_id to CALL-ROUTE-TEST); - reads it from stdin",
    )
    check.add_argument("--strict", action="store_true", help="refuse warnings too: each is an error line, exit 2")

    plugins = sub.add_parser(
        "plugins",
        parents=[common],
        help="list every plugin found, its hooks, and whether it is active",
        description="List every plugin found (installed entry points and plugins.load), with its hooks, also for "
        "disabled plugins. A plugin that cannot be used is listed with ACTIVE 'error' and the reason in place of "
        "its hooks; one that needs a newer plugin API (HOOKRUNNER_API_VERSION) with ACTIVE 'incompatible' (`run` "
        "leaves it out and runs the others). Exit status: 0, or 1 when a plugin that `run` would load is broken "
        "(`run` and `check` refuse to start then).",
    )
    plugins.add_argument("--config", metavar="CONFIG", help="apply this config's plugins.load and plugins.disable")
    plugins.add_argument("--settings", metavar="NAME", help="print plugin NAME's settings with their defaults")

    init = sub.add_parser("init", parents=[common], help="write a starter config")
    init.add_argument("path", nargs="?", default="config.toml", metavar="PATH", help="default: config.toml; - for stdout")
    init.add_argument(
        "--example", action="store_true", help="write the full example instead: every key, its default, and why"
    )

    simulate = sub.add_parser("simulate", parents=[common], help="serve a local simulator of the Atoms events API")
    simulate.add_argument("script", nargs="?", metavar="SCRIPT", help="a TOML or JSONL script (default: built-in calls)")
    simulate.add_argument("--port", type=port_number, default=8765, help="0 picks a free port (default: 8765)")
    simulate.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    simulate.add_argument("--api-key", default="sim-key", help="the bearer key clients must send (default: sim-key)")
    simulate.add_argument(
        "--speed", type=speed_factor, default=1.0, help="play scripts this many times faster (default: 1)"
    )
    simulate.add_argument(
        "--push-url",
        metavar="URL",
        type=url_argument,
        help="POST signed pre-/post-conversation webhooks here (default: the script's)",
    )
    simulate.add_argument(
        "--push-secret-env",
        metavar="VAR",
        help="sign webhooks with the secret in environment variable VAR (default: the script's push_secret)",
    )
    simulate.add_argument(
        "--loop",
        nargs="?",
        type=float,
        const=1.0,
        metavar="SECONDS",
        help="start each call again under a new id SECONDS after it ends (default 1), for ever",
    )
    simulate.add_argument(
        "--push-signature",
        choices=("hex", "base64", "sha256=hex"),
        help="X-Signature encoding of the HMAC-SHA256 (default: the script's, else hex)",
    )

    redeliver = sub.add_parser(
        "redeliver", parents=[common], help="send the messages of a dead-letter file again (safe to rerun)"
    )
    redeliver.add_argument("file", metavar="FILE", help="a dead-letter file (JSONL)")
    redeliver.add_argument("--endpoint", metavar="NAME", help="only the letters for this endpoint")
    redeliver.add_argument("--dry-run", action="store_true", help="show what would be sent; send nothing")
    redeliver.add_argument(
        "--config", metavar="CONFIG", help="the config with the endpoints (default: the one each letter records)"
    )

    replay = sub.add_parser(
        "replay",
        parents=[common],
        help="send delivered messages kept in the journal again, with their original ids (safe to rerun)",
        description="Send again the messages submitted since --since that the journal ([state] path) still keeps "
        "([state] keep), each with its original id (a receiver deduplicates on it), in each call's order, through "
        "the endpoints of CONFIG. Only reads the journal: a `hookrunner run` may be using it. Exit status: 0 when "
        "every one was sent (or --dry-run, or none is kept), 1 when one was not.",
    )
    replay.add_argument("config", metavar="CONFIG", help="the config whose journal and endpoints to use")
    replay.add_argument(
        "--since",
        required=True,
        metavar="DURATION",
        help="those submitted this long ago or later: 90s, 30m, 2h, 1d, seconds, or an ISO-8601 time",
    )
    replay.add_argument("--endpoint", metavar="NAME", help="only the messages for this endpoint")
    replay.add_argument("--call", metavar="ID", help="only the messages of this call")
    replay.add_argument("--dry-run", action="store_true", help="list what would be sent; send nothing")

    new_plugin = sub.add_parser(
        "new-plugin", parents=[common], help="write a ready plugin package (entry point, one hook, tests, README)"
    )
    new_plugin.add_argument("name", metavar="NAME", help="e.g. sentiment (the package is hookrunner-sentiment)")
    new_plugin.add_argument("dir", nargs="?", default=".", metavar="DIR", help="where to create it (default: .)")

    demo = sub.add_parser("demo", parents=[common], help="run the example config against a built-in simulator")
    demo.add_argument("script", nargs="?", metavar="SCRIPT", help="a simulator script (default: built-in calls)")
    demo.add_argument("--speed", type=speed_factor, default=1.0, help="play the calls this many times faster (default: 1)")
    for name, (description, exits, example) in COMMAND_HELP.items():
        command = sub.choices[name]
        command.description = textwrap.fill(command.description or description, 100)
        command.epilog = textwrap.fill(f"exit status: {exits}", 100) + f"\n\nexample:\n  {example}"
        command.formatter_class = argparse.RawDescriptionHelpFormatter  # (the example's line kept as written)
    return parser


#: What each command's --help says beyond its options: what it does, its exit statuses, one example.
COMMAND_HELP = {
    "run": (
        "Follow the calls of CONFIG (runner.calls, --call, and in service mode those the listing, Atoms' webhooks "
        "and POST /calls find) and run the plugins on every event, until the calls are over or a signal stops it.",
        "0 every call ended or completed (a service: stopped by a signal); 1 some call could not be followed; "
        "2 the config, a plugin or the API key was refused (one error line each)",
        "hookrunner run config.toml --call CALL-1767225600101-5d2e7a",
    ),
    "check": (
        "Validate CONFIG and its plugins' settings as `run` would, without connecting, and show what would run: the "
        "calls, the service, and each plugin's rules, endpoints and routes. Whatever `run` would refuse to start "
        "with is an error, a missing secret included (the API key, the server's, a plugin's secret_env); what `run` "
        "would start with but is likely a mistake is a warning, an error too with --strict. With --route, only which "
        "routes and endpoints the trigger would reach, one line each.",
        "0 the config is usable (with --route: and some route or endpoint would take the trigger); 1 with --route: "
        "none would; 2 the config, a plugin or the trigger file was refused, or with --strict a warning was found "
        "(one error line per problem, with its key path)",
        "hookrunner check config.toml --route trigger.json",
    ),
    "plugins": ("", "0, or 1 when a plugin that `run` would load is broken", "hookrunner plugins --settings webhook"),
    "init": (
        "Write a starter config (the keys a first run needs), or with --example the packaged example that explains "
        "every key; PATH - prints it instead.",
        "0 written; 2 PATH exists (never overwritten) or cannot be written",
        "hookrunner init --example -",
    ),
    "simulate": (
        "Serve a local stand-in for the Atoms events API (the scripted calls, the listing, stored conversations and "
        "signed webhooks) for trying plugins without an account. Each call is served once, as Atoms does; start "
        "another while it runs with POST /simulator/calls (the line it prints at start shows the curl), or let "
        "--loop start each call again after it ends.",
        "0 stopped by Ctrl-C; 1 it cannot listen; 2 the script or an option was refused",
        "hookrunner simulate --port 8765 --loop --push-url http://127.0.0.1:8787/atoms/webhook --push-secret-env S",
    ),
    "redeliver": (
        "Send again the messages of a dead-letter file through the endpoints of the config each letter records; what "
        "is delivered leaves the file, so a rerun sends only what is still left.",
        "0 every letter was delivered (or --dry-run); 1 some are left in the file; 2 the file or config was refused",
        "hookrunner redeliver hookrunner-dead-letters.jsonl --endpoint crm",
    ),
    "replay": ("", "0 every message was sent (or --dry-run, or none kept); 1 one was not", "hookrunner replay config.toml --since 30m"),
    "new-plugin": (
        "Write a plugin package ready to install: its entry point, one hook, settings, tests and a README.",
        "0 written; 2 the name is unusable or taken by an installed plugin, or the directory exists",
        "hookrunner new-plugin sentiment && cd hookrunner-sentiment && pip install -e '.[test]' && pytest -q",
    ),
    "demo": (
        "Run the example config against a built-in simulator of three calls: the transcript, a keyword trigger, "
        "and the runner finding each call by listing them. No account needed.",
        "0 the calls are over; 2 the script was refused",
        "hookrunner demo --speed 4",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    commands = {
        "run": cmd_run,
        "check": cmd_check,
        "plugins": cmd_plugins,
        "init": cmd_init,
        "simulate": cmd_simulate,
        "demo": cmd_demo,
        "redeliver": cmd_redeliver,
        "replay": cmd_replay,
        "new-plugin": cmd_new_plugin,
    }
    try:
        return commands[args.command](args)
    except HookrunnerError as exc:
        for line in str(exc).splitlines():
            command_line(line)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def cmd_run(args: argparse.Namespace) -> int:
    problems = [f"--call: {problem}" for problem in map(call_id_problem, args.calls) if problem]
    if problems:
        raise UsageError("\n".join(problems))
    config = load_config(args.config)
    loaded = prepare_plugins(config)
    calls = args.calls or list(config.runner.calls)
    resume = work_left(config.state.path) if config.state.path is not None else 0
    if not calls and not config.service and not resume:
        raise ConfigError(
            f"{config.source}: runner.calls: no calls to subscribe (list call ids there, pass --call ID, or let the "
            "runner find calls: discovery.poll or server.enabled)"
        )
    api_key = config.api_key()
    workers = config.worker_count()
    if workers > 1:  # a service on every core: this process supervises, each worker is a full runner
        supervisor = service_supervisor(
            config, api_key=api_key, calls=calls, workers=workers, log_level=args.log_level, log_format=args.log_format
        )
        return trio.run(supervisor.run)
    runner = service_runner(config, loaded, api_key=api_key, calls=calls)
    tune_gc()  # this process is the run's: start-up's objects frozen, fewer young collections
    return trio.run(runner.run)


def cmd_plugins(args: argparse.Namespace) -> int:
    if args.config:
        config = load_config(args.config)
    else:  # only plugin discovery matters here; the rest of the table is the schemas' defaults
        config = config_from_dict({"atoms": {"api_key_env": DEFAULT_API_KEY_ENV}}, source="<no config>", base_dir=Path.cwd())
    loaded = load_plugins(config, strict=False)
    if args.settings:
        return print_settings(loaded, args.settings)
    disabled = set(config.plugins.disable)
    rows = [("NAME", "VERSION", "ACTIVE", "FROM", "HOOKS")]
    broken = False
    for info in loaded.infos:
        if info.active:
            state = "yes"
        elif info.incompatible:
            state = "incompatible"
        elif info.error and info.name not in disabled:
            state, broken = "error", True
        else:
            state = "no"
        last = f"error: {info.error}" if info.error else ", ".join(info.hooks) or "-"
        rows.append((info.name, info.version or "-", state, info.source, last))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
    return 1 if broken else 0


def starter_config() -> dict:
    """Every key with its default (from the config schemas), and the suggested API key variable."""
    table = default_config_table()
    table["atoms"] = {"api_key_env": DEFAULT_API_KEY_ENV, **table["atoms"]}
    return table


def cmd_init(args: argparse.Namespace) -> int:
    # --example: the packaged example, for a pip install that has no checkout to read
    example = EXAMPLE_CONFIG.read_text(encoding="utf-8") if args.example else None
    if args.path == "-":
        sys.stdout.write(example or starter_text("config.toml"))
        return 0
    path = Path(args.path)
    if path.exists():
        command_line(f"{path}: already exists; not overwriting it (choose another PATH)")
        return EXIT_USAGE
    try:
        with path.open("xb") as handle:
            handle.write((example or starter_text(str(path))).encode("utf-8"))
    except OSError as exc:
        command_line(f"{path}: cannot write ({exc.strerror})")
        return EXIT_USAGE
    print(f"wrote {path}")
    return 0


def starter_text(path: str) -> str:
    """The starter config: the few keys a first run needs, and where the rest are explained."""
    return (
        "# hookrunner config: `hookrunner init --example -` prints every key, explained.\n"
        "# A plugin's settings go in a [plugins.NAME] table.\n"
        f"# Put the call ids to follow in runner.calls (or pass --call ID), export {DEFAULT_API_KEY_ENV}, then:\n"
        f"#   hookrunner check {path}\n\n" + tomli_w.dumps(starter_config())
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    from hookrunner._simulator import run_simulator_cli

    return run_simulator_cli(
        args.port,
        args.script,
        args.api_key,
        args.speed,
        host=args.host,
        push_url=args.push_url,
        push_secret_env=args.push_secret_env,
        push_signature=args.push_signature,
        loop=args.loop,
    )


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from hookrunner._cli.scaffold import write_plugin

    try:
        root = write_plugin(args.name, Path(args.dir))
    except OSError as exc:
        raise UsageError(f"new-plugin: {exc.filename or args.dir}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {root}; next: cd {root} && pip install -e '.[test]' && pytest -q && hookrunner plugins")
    return 0


def cmd_redeliver(args: argparse.Namespace) -> int:
    from hookrunner._delivery.redeliver import redeliver
    from hookrunner._run.plugin_setup import deliverers_for

    config = Path(args.config) if args.config else None
    return trio.run(
        functools.partial(redeliver, Path(args.file), endpoint=args.endpoint, dry_run=args.dry_run, config=config,
            deliverers_for=deliverers_for,
        )
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from hookrunner._delivery.replay import replay, since_time
    from hookrunner._run.plugin_setup import deliverers_for

    since = since_time(args.since)
    problem = call_id_problem(args.call) if args.call is not None else None
    if problem:
        raise UsageError(f"--call: {problem}")
    return trio.run(
        functools.partial(
            replay, Path(args.config), since=since, endpoint=args.endpoint, call_id=args.call, dry_run=args.dry_run,
            deliverers_for=deliverers_for,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
