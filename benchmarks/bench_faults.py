#!/usr/bin/env python3
"""The fault-injection run of tests/faults over many seeds: per seed its counts and any invariant failure.

    .venv/bin/python benchmarks/bench_faults.py [--quick] [--seeds N] [--calls M] [--first-seed S] [--rounds R]
                                                [--json FILE]

Each seed is ``tests/faults``' CI run with another seed: ``fault_mix(seed, calls)`` (every call a random subset of
the simulator's faults, plugin faults in the events), the real runner with the recording, slow and raising plugins
and the webhook plugin delivering to a failing receiver, then ``invariants.check``. Every run is a fresh child
process (this script with ``--child``), so one that crashes or hangs is a failed seed, not the end of the sweep;
a child past its timeout is killed. Timing differs from run to run, so ``--rounds`` runs each seed again.

One line per run, then each failure under it; the working directory (the run's log, its dead-letter file) of a
failing run is kept and named. Exit status 1 if any run broke an invariant, crashed or timed out, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, bench_arguments

CHILD_TIMEOUT = 180.0  # seconds: the run's own deadline (90 s) plus its stop, and a margin for a slow machine
RUN_DEADLINE = 90.0
COLUMNS = (  # (summary key, heading, width)
    ("elapsed_s", "wall s", 6), ("events_sent", "sent", 6), ("dispatched", "got", 6), ("not_sent", "unsent", 6),
    ("unread", "unread", 6), ("duplicates_skipped", "dups", 5), ("malformed_lines", "malf", 5),
    ("reconnects", "recon", 5), ("hook_errors", "h.err", 5), ("hook_timeouts", "h.tmo", 5),
    ("webhook_submitted", "posts", 6), ("webhook_received", "recvd", 6), ("dead_lettered", "dead", 5),
    ("max_loop_lag_s", "lag s", 6),
)  # fmt: skip


def child_main(spec: dict[str, Any]) -> None:
    """One seed, in this process: print its summary and problems as one JSON line."""
    import trio

    sys.path.insert(0, str(ROOT / "tests"))
    from faults.harness import run_faults
    from faults.invariants import check, summary
    from faults.mix import fault_mix

    workdir = Path(spec["workdir"])

    async def main() -> dict[str, Any]:
        script = fault_mix(spec["seed"], spec["calls"])
        run = await run_faults(script, workdir, seed=spec["seed"], deadline=RUN_DEADLINE)
        return {**summary(run), "problems": check(run), "workdir": str(workdir)}

    print(json.dumps(trio.run(main)), flush=True)


def run_seed(seed: int, calls: int, keep: Path) -> dict[str, Any]:
    """A child for one seed; its result, or a result that says how the child failed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"seed-{seed}-", dir=keep))
    spec = {"seed": seed, "calls": calls, "workdir": str(workdir)}
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"seed": seed, "problems": [f"seed {seed}: the child ran past {CHILD_TIMEOUT:g} s and was killed"],
                "workdir": str(workdir), "elapsed_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n    ".join(proc.stderr.strip().splitlines()[-12:])
        return {"seed": seed, "problems": [f"seed {seed}: the child exited {proc.returncode}:\n    {tail}"],
                "workdir": str(workdir), "elapsed_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    result = json.loads(lines[-1])
    if not result["problems"]:
        shutil.rmtree(workdir, ignore_errors=True)
        result["workdir"] = None
    return result


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seeds", type=int, help="how many seeds (default 20; 5 with --quick)")
        parser.add_argument("--calls", type=int, help="calls per run, the canary aside (default 200; 100 with --quick)")
        parser.add_argument("--first-seed", type=int, default=1, help="the first seed (default 1)")

    args = bench_arguments(
        __doc__,
        child_main,
        quick_help="5 seeds of 100 calls (about a minute)",
        rounds_help="runs per seed (default 1): timing differs between runs of one seed",
        extra=options,
    )
    if args is None:
        return
    seeds = args.seeds if args.seeds is not None else (5 if args.quick else 20)
    calls = args.calls if args.calls is not None else (100 if args.quick else 200)
    rounds = args.rounds or 1
    keep = Path(tempfile.mkdtemp(prefix="hookrunner-bench-faults-"))
    print(f"hookrunner fault injection: {seeds} seeds from {args.first_seed}, {calls} calls each, {rounds} run(s) "
          f"per seed; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}", flush=True)  # fmt: skip
    print(f"  {'seed':>6} " + " ".join(f"{heading:>{width}}" for _, heading, width in COLUMNS) + "  result")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for seed in range(args.first_seed, args.first_seed + seeds):
        for _ in range(rounds):
            result = run_seed(seed, calls, keep)
            results.append(result)
            cells = " ".join(f"{_cell(result.get(key)):>{width}}" for key, _, width in COLUMNS)
            verdict = "ok" if not result["problems"] else f"FAILED ({len(result['problems'])})"
            print(f"  {seed:>6} {cells}  {verdict}", flush=True)
            for problem in result["problems"]:
                print(f"         {problem}", flush=True)
            if result["problems"] and result.get("workdir"):
                print(f"         log and dead letters: {result['workdir']}", flush=True)
    failed = [r for r in results if r["problems"]]
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in results))
    if not failed:
        shutil.rmtree(keep, ignore_errors=True)
    print(f"\n{len(results) - len(failed)}/{len(results)} runs kept every invariant; "
          f"total {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    if failed:
        print("failed seeds: " + ", ".join(str(r["seed"]) for r in failed))
        sys.exit(1)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
