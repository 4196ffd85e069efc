#!/usr/bin/env python3
"""How soon ``hookrunner run`` delivers, after a kill -9, the webhook messages its journal kept: 10,000 of them.

    .venv/bin/python benchmarks/bench_restart.py [--quick] [--rounds N] [--pending N] [--json FILE]

Everything is a real process, started as a user would: the simulator (``hookrunner simulate``, as
``benchlib.Server``), ``hookrunner run CONFIG`` with only the bundled ``webhook`` plugin (one endpoint,
``events = ["*"]``: one message per event), and for each run a fresh receiver (``benchlib.ReceiverProcess``,
which starts ``bench_webhook.py --receiver``: a raw asyncio HTTP/1.1 server answering one status to every request,
which keeps each request's arrival time).

1. fill, once: ``hookrunner run`` follows 100 calls whose events all come at once, N messages in all (default
   10,000), while the receiver answers 503: each call's first message is retried, the rest wait behind it, and
   every one is journaled. Once the journal holds N undelivered messages (counted from this process, read-only)
   and three commit intervals more have passed, the process gets SIGKILL. Its journal files (database, -wal, -shm) are copied aside
   as the kill left them.
2. restarts, in rounds that alternate their order: ``hookrunner run CONFIG --call FRESH`` (FRESH: a new call whose
   events come at once) with the receiver answering 200, once on a copy of the killed journal ("pending") and
   once on a journal with no rows (the yardstick, "empty"). Times are from just before the process is started to
   the receiver's arrival times (one clock: both are ``time.time()`` on this machine) and to the process's JSON log
   lines (ms): its first log line; the line saying the journal's messages are queued; the first POST; the first
   POST of the fresh call; the last POST of the pending messages; the exit (once every message is delivered: the run ends when FRESH is over and the outbox drained).

The figure: first POST, pending / empty. Both start the same process with the same config; in the empty run the
first POST is the fresh call's first event, which also needs a subscription; in the pending run it is a journaled
message, which needs the journal read first.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    KEY,
    WEBHOOK_SECRET_ENV,
    CallIds,
    ReceiverProcess,
    Server,
    bench_arguments,
    event_mix,
    journal_contents,
    journal_sizes,
    without_backfill,
)

HOOKRUNNER = Path(sys.executable).with_name("hookrunner")
FILL_CALLS = 100
FRESH_EVENTS = 10  # the restart's new call, incl. sse_init and sse_close
COMMIT_INTERVAL = 0.1  # [state] commit_interval's default, waited out (three times) before the kill
TARGET_S = 2.0  # the target: under 2 s from the start to the first delivery


class Plan(CallIds):
    def __init__(self, quick: bool, rounds: int | None, pending: int) -> None:
        super().__init__()
        self.rounds = rounds or (3 if quick else 5)
        self.per_call = -(-pending // FILL_CALLS)  # messages (= events, sse_init and sse_close included) per call
        self.pending = self.per_call * FILL_CALLS  # N, rounded up to whole calls

    def script(self) -> dict[str, Any]:
        return {
            "api_key": KEY,
            "keepalive": 0,
            "timestamp_format": "iso",
            "calls": [
                self.group("FILL", FILL_CALLS, event_mix(self.per_call - 2, seed=31)),
                self.group("FRESH", 2 * self.rounds, event_mix(FRESH_EVENTS - 2, seed=32)),
            ],
        }


def write_config(folder: Path, base_url: str, receiver_url: str, *, calls: list[str], max_queue: int) -> Path:
    """``folder/config.toml``: only the webhook plugin, one endpoint with ``events = ["*"]`` and otherwise its
    defaults (``max_in_flight`` 10, retries from 1 s); the journal ``folder/state.db``; a long
    ``shutdown_grace``, within which the outbox drains at the end of a run (what is left then is dead-lettered)."""
    import importlib.metadata

    import tomli_w

    from hookrunner._run.plugins import ENTRY_POINT_GROUP

    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    endpoint = {"name": "bench", "url": receiver_url, "secret_env": WEBHOOK_SECRET_ENV, "events": ["*"],
                "max_queue": max_queue}  # fmt: skip
    table = {
        "atoms": {"base_url": base_url, "api_key": KEY},
        "runner": {"calls": calls, "reconnect": {"max_attempts": 3}, "shutdown_grace": 600.0},
        "plugins": {
            "disable": sorted(installed - {"webhook"}),
            "webhook": {"dead_letter": "dead-letters.jsonl", "endpoints": [endpoint]},
        },
        "state": {"path": "state.db", "commit_interval": COMMIT_INTERVAL},
        **without_backfill(),  # (the fill's 100 calls would otherwise wait for it, still followed, at the kill)
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(table), encoding="utf-8")
    return path


def start_run(config: Path, *calls: str) -> subprocess.Popen[str]:
    args = [str(HOOKRUNNER), "--log-format", "json", "run", str(config)]
    for call_id in calls:
        args += ["--call", call_id]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=config.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def copy_journal(source: Path, target: Path) -> None:
    """The database and its -wal and -shm, as they are (no process has them open)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


def contents_of_copy(journal: Path, scratch: Path) -> dict[str, Any]:
    """Rows and pages of ``journal``, read from a copy (opening a killed journal's WAL would change its files)."""
    copy_journal(journal, scratch)
    return journal_contents(scratch)


def pending_rows(journal: Path) -> int:
    """Undelivered messages in the journal's outbox table now, read while the runner writes it (read-only)."""
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1.0)
        try:
            try:  # a journal that keeps delivered messages ([state] keep) marks them
                return db.execute("SELECT COUNT(*) FROM outbox WHERE delivered IS NULL").fetchone()[0]
            except sqlite3.OperationalError:
                return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0  # not created yet


def log_lines(stderr: str) -> list[tuple[float, str, str]]:
    """(epoch seconds, level, message) of the process's JSON log lines; other lines are skipped."""
    lines = []
    for line in stderr.splitlines():
        try:
            entry = json.loads(line)
            lines.append((datetime.fromisoformat(entry["time"]).timestamp(), entry["level"], entry["message"]))
        except (ValueError, KeyError, TypeError):
            continue
    return lines


# --- 1. fill ---------------------------------------------------------------------------------------------------


def fill(plan: Plan, server: Server, workdir: Path) -> dict[str, Any]:
    """Fill a journal through a real ``hookrunner run`` whose receiver answers 503, SIGKILL it; the journal's copy."""
    folder = workdir / "fill"
    receiver = ReceiverProcess(workdir, status=503)
    config = write_config(folder, server.base_url, receiver.url, calls=plan.take("FILL", FILL_CALLS),
                          max_queue=plan.pending + 1000)  # fmt: skip
    journal = folder / "state.db"
    t0 = time.time()
    proc = start_run(config)
    count, reached = 0, None
    try:
        deadline = time.monotonic() + 120
        while count < plan.pending:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
            count = pending_rows(journal)
        reached = time.time() - t0
        time.sleep(3 * COMMIT_INTERVAL)  # whatever the runner gathered meanwhile (calls over) is committed too
    finally:
        killed = time.time() - t0
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        received = receiver.finish()
    if count < plan.pending:
        raise SystemExit(f"the journal held {count} of {plan.pending} messages (exit {proc.returncode}):\n{err[-3000:]}")
    template = workdir / "killed" / "state.db"
    copy_journal(journal, template)
    return {
        "reached_s": reached,
        "killed_s": killed,
        "returncode": proc.returncode,
        "requests_503": received["requests"],
        "sizes": journal_sizes(template),
        "contents": contents_of_copy(template, workdir / "scratch" / "killed.db"),
        "template": str(template),
        "log_problems": [m for _, level, m in log_lines(err) if level in ("warning", "error")][:3],
    }


# --- 2. restarts ------------------------------------------------------------------------------------------------


def restart(kind: str, plan: Plan, server: Server, workdir: Path, number: int, template: Path) -> dict[str, Any]:
    """One restart on a copy of the killed journal (``pending``) or on an empty one (``empty``)."""
    from hookrunner._state.journal import Journal

    folder = workdir / f"restart-{number}-{kind}"
    (fresh,) = plan.take("FRESH", 1)
    receiver = ReceiverProcess(workdir, status=200)
    config = write_config(folder, server.base_url, receiver.url, calls=[], max_queue=plan.pending + 1000)
    journal = folder / "state.db"
    if kind == "pending":
        copy_journal(template, journal)
    else:
        Journal(journal, COMMIT_INTERVAL).close()  # a journal with its tables and no rows
    before = journal_sizes(journal)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the receiver is reaped later: this is the runner's
    t0 = time.time()
    proc = start_run(config, fresh)
    try:
        _, err = proc.communicate(timeout=600)
        ended = time.time() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        received = receiver.finish()
    logs = log_lines(err)
    arrivals = received.get("arrivals_by_call", {})
    pending = [span for call_id, span in arrivals.items() if call_id != fresh]
    result: dict[str, Any] = {
        "kind": kind,
        "round": number,
        "returncode": proc.returncode,
        "exit_s": ended,
        "cpu_s": cpu,
        "first_log_s": logs[0][0] - t0 if logs else None,
        "journal_read_s": next((at - t0 for at, _, m in logs if "did not deliver are sent first" in m), None),
        "first_post_s": received["first_arrival"] - t0 if "first_arrival" in received else None,
        "fresh_first_s": arrivals[fresh][0] - t0 if fresh in arrivals else None,
        "pending_first_s": min(first for first, _ in pending) - t0 if pending else None,
        "pending_last_s": max(last for _, last in pending) - t0 if pending else None,
        "messages": received["messages"],
        "requests": received["requests"],
        "order_violations": received["order_violations"],
        "duplicates": received["duplicate_messages"] + received["duplicate_webhook_ids"],
        "signatures_bad": received["signatures_bad"],
        "dead_letters": _lines(folder / "dead-letters.jsonl"),
        "journal_before": before,
        "journal_after": journal_sizes(journal),
        "journal_after_contents": journal_contents(journal),
        "log_problems": [m for _, level, m in logs if level in ("warning", "error")][:3],
    }
    return result


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0


# --- the whole run ------------------------------------------------------------------------------------------------


def main() -> None:
    args = bench_arguments(
        __doc__,
        lambda spec: None,
        quick_help="3 restarts of each kind instead of 5 (about 45 s)",
        rounds_help="restarts of each kind (default 3 quick, 5 full)",
        extra=lambda parser: parser.add_argument(
            "--pending", type=int, default=10_000, help="messages left in the journal at the kill (default 10,000)"
        ),
    )
    if args is None:
        return
    started = time.perf_counter()
    plan = Plan(args.quick, args.rounds, args.pending)
    os.environ[WEBHOOK_SECRET_ENV] = "whsec_" + base64.b64encode(os.urandom(32)).decode()  # the runners' and receivers'
    print(f"hookrunner restart benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}", flush=True)  # fmt: skip
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hookrunner-bench-restart-") as tmp:
        workdir = Path(tmp)
        server = Server(plan.script(), workdir)
        try:
            filled = fill(plan, server, workdir)
            print(f"  .. fill: {plan.pending} messages journaled {filled['reached_s']:.2f} s after the start, "
                  f"SIGKILL at {filled['killed_s']:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
            template = Path(filled["template"])
            for rnd in range(plan.rounds):
                for kind in ("empty", "pending") if rnd % 2 == 0 else ("pending", "empty"):
                    result = restart(kind, plan, server, workdir, rnd + 1, template)
                    runs.append(result)
                    print(f"  .. restart {rnd + 1} {kind:<7}: first POST {_s(result['first_post_s'])} s, "
                          f"exit {_s(result['exit_s'])} s, {result['messages']} messages", file=sys.stderr, flush=True)  # fmt: skip
        finally:
            server.stop()
    report(plan, filled, runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"fill": filled, "restarts": runs}, indent=1) + "\n")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def report(plan: Plan, filled: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    sizes, contents = filled["sizes"], filled["contents"]
    rows = ", ".join(f"{table} {n}" for table, n in contents.get("rows", {}).items()) or contents.get("error", "")
    print(f"\nfill (the process route: a real `hookrunner run`, SIGKILL): {FILL_CALLS} calls x {plan.per_call} events at "
          f"once, webhook events = [\"*\"], receiver answering 503\n  {plan.pending} messages in the journal "
          f"{filled['reached_s']:.2f} s after the process started, SIGKILL at {filled['killed_s']:.2f} s; "
          f"{filled['requests_503']} POSTs answered 503 meanwhile\n  journal at the kill: {_mib(sizes['total'])} MiB "
          f"(db {_mib(sizes['db'])} + wal {_mib(sizes['wal'])} + shm {_mib(sizes['shm'])}), "
          f"{sizes['total'] / plan.pending:.0f} B a message; rows: {rows}")  # fmt: skip

    print(f"\nrestarts: `hookrunner run CONFIG --call FRESH` (a new call of {FRESH_EVENTS} events at once), receiver "
          f"answering 200; {plan.rounds} of each, alternating;\nseconds from just before the process started: its "
          "first log line, the log line saying the journal's messages are queued,\nthe first POST at the receiver, the "
          "fresh call's first POST, the last journaled message's POST, the exit; the process's CPU seconds")  # fmt: skip
    print(f"  {'journal':<8} {'round':>5} {'1st log':>8} {'queued':>7} {'1st POST':>8} {'fresh 1st':>9} "
          f"{'last pend.':>10} {'exit':>6} {'CPU s':>6} {'messages':>8}  checks")  # fmt: skip
    for r in runs:
        print(f"  {r['kind']:<8} {r['round']:>5} {_s(r['first_log_s']):>8} {_s(r['journal_read_s']):>7} "
              f"{_s(r['first_post_s']):>8} {_s(r['fresh_first_s']):>9} {_s(r['pending_last_s']):>10} "
              f"{_s(r['exit_s']):>6} {_s(r['cpu_s']):>6} {r['messages']:>8}  {_checks(r, plan)}")  # fmt: skip

    def m(kind: str, key: str) -> float:
        values = [r[key] for r in runs if r["kind"] == kind and r[key] is not None]
        return statistics.median(values) if values else float("nan")

    first_pending, first_empty = m("pending", "first_post_s"), m("empty", "first_post_s")
    last = m("pending", "pending_last_s")
    rate = plan.pending / (last - m("pending", "pending_first_s"))
    cpu = (m("pending", "cpu_s") - m("empty", "cpu_s")) * 1e6 / plan.pending
    print(f"\nmedians: first POST with {plan.pending} pending {first_pending:.2f} s / with an empty journal "
          f"{first_empty:.2f} s = {first_pending / first_empty:.2f}x (the issue's target: under {TARGET_S:g} s)\n"
          f"  the last of the {plan.pending}: {last:.2f} s ({rate:.0f} messages/s from the first, {cpu:.0f} us of CPU "
          "a message over the empty run's);\n  "
          f"the fresh call's first POST {m('pending', 'fresh_first_s'):.2f} s with the backlog / "
          f"{m('empty', 'fresh_first_s'):.2f} s without = {m('pending', 'fresh_first_s') / m('empty', 'fresh_first_s'):.2f}x")  # fmt: skip
    after = [r for r in runs if r["kind"] == "pending"]
    if after:
        a, c = after[-1]["journal_after"], after[-1]["journal_after_contents"]
        rows = ", ".join(f"{table} {n}" for table, n in c.get("rows", {}).items()) or c.get("error", "")
        free = c["free_pages"] / c["pages"] if c.get("pages") else float("nan")
        print(f"  journal after a pending restart (every message delivered, the process exited): {_mib(a['total'])} MiB "
              f"(db {_mib(a['db'])} + wal {_mib(a['wal'])} + shm {_mib(a['shm'])}), {free:.0%} of the database's pages "
              f"free; rows: {rows}")  # fmt: skip
    if first_pending >= TARGET_S:
        print(f"FLAG: the first POST after a restart with {plan.pending} pending came {first_pending:.2f} s after the "
              f"start (target under {TARGET_S:g} s)")  # fmt: skip
    for r in runs:
        if _checks(r, plan) != "ok":
            print(f"PROBLEM: restart {r['round']} {r['kind']}: {_checks(r, plan)}; log: {r['log_problems']}")


def _checks(r: dict[str, Any], plan: Plan) -> str:
    problems = []
    expected = FRESH_EVENTS + (plan.per_call * FILL_CALLS if r["kind"] == "pending" else 0)
    if r["messages"] != expected:
        problems.append(f"{r['messages']}/{expected} messages")
    for key in ("order_violations", "duplicates", "signatures_bad", "dead_letters"):
        if r[key]:
            problems.append(f"{r[key]} {key}")
    if r["returncode"]:
        problems.append(f"exit {r['returncode']}")
    if r["log_problems"]:
        problems.append(f"{len(r['log_problems'])}+ warning/error lines")
    return ", ".join(problems) or "ok"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f}"


if __name__ == "__main__":
    main()
