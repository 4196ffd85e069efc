"""``hookrunner demo``: the example config against the built-in simulator, no account needed."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import trio

from hookrunner._core.config import config_from_dict
from hookrunner._core.errors import UsageError
from hookrunner._run.plugin_setup import prepare_plugins
from hookrunner._run.runner import Runner
from hookrunner._service.intakes import service_runner

__all__ = ["cmd_demo", "EXAMPLE_CONFIG", "load_example_config"]

EXAMPLE_CONFIG = Path(__file__).parent.parent / "config.example.toml"  # (packaged beside hookrunner/__init__.py)

#: The demo's calls start this many seconds apart (before --speed), and the runner lists them this often.
DEMO_STAGGER = 1.5
DEMO_POLL_INTERVAL = 0.5


def cmd_demo(args: argparse.Namespace) -> int:
    """The example config against the built-in simulator, finding calls the way a service does: by listing
    them as they start. Ends once every scripted call is over (or at Ctrl-C)."""
    from hookrunner._simulator import Simulator, default_script_path, load_script
    from hookrunner._simulator.script import ScriptError, staggered

    try:
        script = staggered(load_script(args.script or default_script_path()), DEMO_STAGGER)
    except ScriptError as exc:
        raise UsageError(str(exc)) from None
    api_key = "demo-key"
    simulator = Simulator(script, api_key=api_key, speed=args.speed)
    data = load_example_config()
    data["discovery"] = {**data.get("discovery", {}), "poll": True, "interval": DEMO_POLL_INTERVAL}
    # The demo is there to be watched: its transcript prints on a pipe too.
    data.setdefault("plugins", {}).setdefault("console", {})["output"] = "always"
    data["state"] = {"path": ""}  # the demo's calls are new every time: nothing to resume, no file to leave
    config = config_from_dict(data, source=f"{EXAMPLE_CONFIG.name} (demo)", base_dir=Path.cwd())
    # The listing keeps pace with the calls: at --speed 10 a call lasts a tenth as long, and a fixed interval would
    # let calls start and end between two listings, unseen. The floor of discovery.interval spares the real API's
    # rate limit; the demo lists its own simulator, so it may go below it.
    interval = DEMO_POLL_INTERVAL / args.speed
    config = dataclasses.replace(config, discovery=dataclasses.replace(config.discovery, interval=interval))
    loaded = prepare_plugins(config)

    async def demo() -> int:
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(simulator.serve)
            atoms = dataclasses.replace(config.atoms, base_url=base_url, api_key_env=None, api_key_inline=api_key)
            demo_config = dataclasses.replace(config, atoms=atoms)
            runner = service_runner(demo_config, loaded, api_key=api_key)
            print(
                f"demo: simulator on {base_url} with {len(script.calls)} calls starting {DEMO_STAGGER / args.speed:g} s "
                f"apart; the runner lists calls every {interval:g} s and follows each new one; Ctrl-C to stop",
                flush=True,
            )
            nursery.start_soon(_stop_when_every_call_is_over, runner, simulator)
            code = await runner.run()
            nursery.cancel_scope.cancel()
        return code

    return trio.run(demo)


async def _stop_when_every_call_is_over(runner: Runner, simulator: Any) -> None:
    ids = [call.id for call in simulator.script.calls]
    while True:
        await trio.sleep(0.1)
        ends = [simulator.call_end(call_id) for call_id in ids]
        elapsed = trio.current_time() - (simulator.started_at or trio.current_time())
        over = all(end is not None and end < elapsed for end in ends)
        if over and not runner.calls.active and not runner.calls.waiting:
            runner.stop()
            return


def load_example_config() -> dict:
    return tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
