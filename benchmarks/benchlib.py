"""What more than one benchmark script uses, in one place: the simulator (and how a server child stops), fresh call
ids, the event mix, child processes and their journals, the shared options, percentiles and medians.

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import KEY, Server, ...

The scripts used to import these from ``bench_runner.py`` (and ``bench_restart.py`` from ``bench_webhook.py``), private
names included, so one script's helpers were every script's and could not change without reading them all. Here is
only what is shared; what one script alone uses stays in it, private to it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "streams"  # the project's example streams; --fixtures DIR reads others
#: The simulator's API key: ``Server`` starts it with this one, and every runner child and script asks with it.
KEY = "bench-key"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
#: ``bench_runner.py``: its ``--child`` is the runner (and bare) consumer ``run_child`` starts, for
#: ``bench_service.py``'s flood as well as its own.
RUNNER_SCRIPT = Path(__file__).with_name("bench_runner.py")
#: ``bench_webhook.py``: its ``--receiver`` is the webhook receiver ``ReceiverProcess`` starts, for
#: ``bench_restart.py`` as well as for it.
WEBHOOK_SCRIPT = Path(__file__).with_name("bench_webhook.py")

#: What the issue ("Durable by default") allows the journal to add to the runner's CPU per event.
JOURNAL_TARGET = 1.15


# --- what the simulator serves -----------------------------------------------------------------------------------

WORDS = (  # noqa: SIM905  (a sentence reads better than a list of 62 words)
    "i want to cancel my subscription please can you help me with the billing issue on my account yes that is "
    "right no i did not order that what is the status of my refund could you transfer me to a human agent thank "
    "you very much okay sure the card ending in four two one seven was charged twice last month"
).split()
TTS = [
    "Sure, I can help you with that.",
    "I understand you would like to cancel your subscription. Before I do that, may I ask what prompted it?",
    "Thank you for your patience. I can see two charges on the card ending in 4217; I'll refund the duplicate.",
    "Is there anything else I can help you with?",
]


def event_mix(n: int, seed: int, at: Any = 0.0) -> list[dict[str, Any]]:
    """n scripted events: call_start, a realistic mix (70 % interim, 10 % final, 8 % tts, 6 % turn_latency,
    6 % metrics), call_end. ``at`` is a number or a function of the index."""
    rng = random.Random(seed)
    when = at if callable(at) else (lambda i: at)
    events: list[dict[str, Any]] = []
    for i in range(n):
        e: dict[str, Any]
        if i == 0:
            e = {"event_type": "call_start", "telephony_id": "TEL-7f3a9c21", "agent_id": "agent-bench"}
        elif i == n - 1:
            e = {"event_type": "call_end", "metadata": {"duration_seconds": 42.0, "end_reason": "user_hangup"}}
        else:
            r = rng.random()
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 16)))
            if r < 0.70:
                e = {"event_type": "user_interim_transcription", "interim_transcription_text": words}
            elif r < 0.80:
                e = {"event_type": "user_transcription", "user_transcription_text": words.capitalize() + "."}
            elif r < 0.88:
                e = {"event_type": "tts_completed", "tts_text": TTS[i % len(TTS)], "tts_latency": round(rng.uniform(0.1, 1), 3)}
            elif r < 0.94:
                e = {"event_type": "turn_latency", "turn_index": i // 8, "total_turn_ms": round(rng.uniform(300, 2000), 1),
                     "llm_api_ms": round(rng.uniform(100, 800), 1), "interrupted": False}  # fmt: skip
            else:
                e = {"event_type": "metrics", "metrics": [
                    {"processor": "DeepgramSTTService", "model": "nova-3", "value": round(rng.random(), 3)},
                    {"processor": "OpenAILLMService", "model": "gpt-4o-mini", "value": {"prompt_tokens": 500 + i % 300}},
                ]}  # fmt: skip
        events.append({"at": when(i), **e})
    return events


#: Ten ``keywords`` rules as an operations team would write them for support calls: word phrases, two fuzzy rules,
#: a pattern, and an absence rule (checked on every agent turn, fired at the end of a call without it).
#: ``bench_keywords.py`` measures them in process, ``compare.py``'s realistic stack in the runner.
KEYWORD_RULES: list[dict[str, Any]] = [
    {"name": "cancel-intent", "phrases": ["cancel my subscription", "cancel my account", "close my account"],
     "interim": True, "severity": "warning", "labels": {"team": "retention"}},
    {"name": "escalation", "phrases": ["speak to a manager", "speak to a supervisor", "talk to a human"],
     "interim": True, "severity": "critical", "labels": {"team": "escalations"}},
    {"name": "fraud", "phrases": ["fraud", "someone used my card", "charge I didn't make", "stolen card"],
     "interim": True, "severity": "critical", "labels": {"team": "fraud"}},
    {"name": "refund", "phrases": ["refund", "money back", "charged twice"], "severity": "warning"},
    {"name": "outage", "phrases": ["outage", "outages", "internet has been dropping", "no internet"],
     "speaker": "any"},
    {"name": "reschedule", "phrases": ["reschedule", "move my appointment", "cancel my appointment"],
     "cooldown": 60},
    {"name": "cancel-fuzzy", "phrases": ["cancel my subscriptions", "cancel the subscription"], "match": "fuzzy",
     "threshold": 85, "interim": True, "max_per_call": 1},
    {"name": "manager-fuzzy", "phrases": ["speak to the manager", "talk to your supervisor"], "match": "fuzzy",
     "threshold": 80},
    {"name": "phone-number", "patterns": [r"\b\d{3}[ .-]?\d{3}[ .-]?\d{4}\b"], "labels": {"pii": "phone"}},
    {"name": "recording-disclosure", "phrases": ["this call may be recorded", "this call is recorded"],
     "speaker": "agent", "absent_within": 30, "severity": "warning"},
]  # fmt: skip


class CallIds:
    """Groups of simulated calls (one ``[[calls]]`` with ``repeat`` each) and fresh ids out of them: a finished
    call answers 400, so every run subscribes to calls never used before."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    @staticmethod
    def group(prefix: str, repeat: int, events: list[dict[str, Any]]) -> dict[str, Any]:
        # No underscore in call ids: receivers read the event's index out of "{call_id}_{index}_{epoch_ms}".
        return {"id": f"CALL-BENCH-{prefix}-{{n}}", "repeat": repeat, "events": events}

    def take(self, prefix: str, n: int) -> list[str]:
        """n call ids of group ``prefix`` never subscribed before."""
        start = self._next.get(prefix, 0)
        self._next[prefix] = start + n
        return [f"CALL-BENCH-{prefix}-{i}" for i in range(start, start + n)]


# --- the server ----------------------------------------------------------------------------------------------


class Server:
    """``hookrunner simulate SCRIPT --port 0`` as a subprocess; ``cpu()`` is its user+system CPU seconds."""

    def __init__(self, script: dict[str, Any], workdir: Path) -> None:
        import tomli_w

        path = workdir / "bench-script.toml"
        path.write_bytes(tomli_w.dumps(script).encode())
        self._out = open(workdir / "simulator.out", "w+")  # noqa: SIM115  (open for the simulator's life)
        self._err = open(workdir / "simulator.err", "w+")  # noqa: SIM115
        hookrunner = str(Path(sys.executable).with_name("hookrunner"))
        self.proc = subprocess.Popen(
            [hookrunner, "--log-level", "warning", "simulate", str(path), "--port", "0", "--api-key", KEY],
            stdout=self._out, stderr=self._err, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            self._out.seek(0)
            line = self._out.readline()
            if line.startswith("simulator listening on "):
                self.base_url = line.split()[3]
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._err.seek(0)
                raise SystemExit(f"the simulator did not start: {self._err.read().strip()}")
            time.sleep(0.05)

    def cpu(self) -> float:
        return process_cpu_s(self.proc.pid)

    def stop(self) -> None:
        stop_server(self.proc, self._err, signal.SIGINT, "simulator", slice(None, 500))


def stop_server(proc: subprocess.Popen[str], err: IO[str], stop_signal: signal.Signals, name: str, shown: slice) -> None:
    """Stop a server child with ``stop_signal`` (its clean shutdown), killed if still up 10 s later, then print
    ``shown`` of what it wrote to ``err``: its warnings live in a file of the run's temporary folder and would be
    lost with it. The simulator (``Server``) and ``sse_server.py``'s ``SseServer`` stop this way."""
    if proc.poll() is None:
        proc.send_signal(stop_signal)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err.seek(0)
    errors = err.read().strip()
    if errors:
        print(f"({name} stderr: {errors[shown]})", file=sys.stderr)


class GcWatch:
    """``gc.callbacks``: each collection's pause, and collections per generation."""

    def __init__(self) -> None:
        self.started = 0.0
        self.max_s = 0.0
        self.total_s = 0.0
        self.counts = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        pause = time.perf_counter() - self.started
        self.total_s += pause
        self.max_s = max(self.max_s, pause)
        self.counts[info["generation"]] += 1


def process_cpu_s(pid: int | str) -> float:
    """User + system CPU seconds of process ``pid`` (or "self") so far, from ``/proc/PID/stat``: a server's CPU,
    read from outside so that no consumer's figure includes it; a worker's, read by compare.py's probe."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat(5))


# --- child processes -------------------------------------------------------------------------------------------


def run_child(spec: dict[str, Any], server: Server) -> dict[str, Any]:
    """Run one ``bench_runner.py --child`` consumer; with ``spec["journal"]`` (its ``[state] path``), also what its
    journal weighed."""
    cpu0 = server.cpu()
    watch = JournalWatch(Path(spec["journal"])) if spec.get("journal") else None
    proc = run_watched([sys.executable, str(RUNNER_SCRIPT), "--child", json.dumps(spec)], watch, timeout=600)
    server_cpu = server.cpu() - cpu0
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"child {spec['consumer']} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["server_cpu_us_per_event"] = server_cpu * 1e6 / max(result["events"], 1)
    result["calls"] = len(spec["calls"])
    if watch is not None:
        result["journal"] = watch.report()
    if proc.stderr.strip():
        result["stderr_tail"] = proc.stderr.strip().splitlines()[-3:]
    return result


def run_watched(command: list[str], watch: JournalWatch | None, timeout: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout)``, sampling ``watch`` meanwhile."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, err = proc.communicate(timeout=JOURNAL_SAMPLE_S if watch is not None else timeout)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                raise
            if watch is not None:
                watch.sample()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# --- the journal's files -----------------------------------------------------------------------------------------

JOURNAL_SAMPLE_S = 0.05  # how often the journal's files are measured while a child runs


def journal_sizes(path: Path) -> dict[str, int]:
    """Bytes of a journal's files: the SQLite database, its ``-wal`` and ``-shm`` (0 when absent), and the total."""
    sizes: dict[str, int] = {}
    for name, suffix in (("db", ""), ("wal", "-wal"), ("shm", "-shm")):
        try:
            sizes[name] = os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            sizes[name] = 0
    sizes["total"] = sizes["db"] + sizes["wal"] + sizes["shm"]
    return sizes


def journal_contents(path: Path) -> dict[str, Any]:
    """Rows per table and pages (used, free) of a journal no process has open; whatever tables it has."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            rows = {table: db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}
            page_size, pages, free = (db.execute(f"PRAGMA {name}").fetchone()[0]
                                      for name in ("page_size", "page_count", "freelist_count"))  # fmt: skip
        finally:
            db.close()
    except sqlite3.Error as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"rows": rows, "page_size": page_size, "pages": pages, "free_pages": free}


#: How to read ``journal_table``.
JOURNAL_LEGEND = (
    "  Size of the database + its -wal + its -shm, MiB: peak = the largest total sampled every "
    f"{JOURNAL_SAMPLE_S * 1000:.0f} ms from outside\n  while the runner ran; after = once it exited, every call over; "
    "/1k calls and B/ev = the same per 1,000 calls of the run and\n  per event; free = the database's free pages "
    "after the run (SQLite reuses them but does not give them back)"
)


class JournalWatch:
    """A journal's file sizes while a child process writes it, sampled from this process (the child pays nothing),
    the largest total seen (with its parts), and after the child ended, its size and rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peak = journal_sizes(path)
        self.samples = 0

    def sample(self) -> None:
        sizes = journal_sizes(self.path)
        self.samples += 1
        if sizes["total"] > self.peak["total"]:
            self.peak = sizes

    def report(self) -> dict[str, Any]:
        """The peak and the files now (call once the child ended)."""
        after = journal_sizes(self.path)
        return {"peak": self.peak, "samples": self.samples, "after": after, **journal_contents(self.path)}


def journal_table(results: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> list[str]:
    """Lines of a journal-size table, one per run with a ``journal`` report: calls, events (and ``messages``, when
    the runs have them) per call, the files' size at their peak and after the run (database + -wal + -shm, MiB),
    each also per 1,000 calls and per event, the database's free pages and the rows left after the run."""
    messages = any("messages" in r for r in results)
    nan = float("nan")
    lines = [(f"  {'run':<34} {'calls':>5} {'ev/call':>7} " + (f"{'msg/call':>8} " if messages else "")
              + f"{'peak MiB':>8} {'db+wal+shm':>16} {'/1k calls':>9} {'B/ev':>6}  {'after MiB':>9} {'/1k calls':>9} "
              f"{'B/ev':>6} {'free':>4}  rows after")]  # fmt: skip
    for r in results:
        journal = r.get("journal")
        if not journal:
            continue
        calls, events = max(r["calls"], 1), max(r["events"], 1)
        peak, after = journal["peak"]["total"], journal["after"]["total"]
        free = journal["free_pages"] / journal["pages"] if journal.get("pages") else nan
        rows = ", ".join(f"{table} {n}" for table, n in journal.get("rows", {}).items()) or journal.get("error", "")
        lines.append(
            f"  {label(r):<34} {r['calls']:>5} {r['events'] / calls:7.0f} "
            + (f"{r.get('messages', 0) / calls:8.0f} " if messages else "")
            + f"{peak / 2**20:8.2f} {_parts(journal['peak']):>16} {peak / 2**20 * 1000 / calls:9.1f} {peak / events:6.0f}  "
            f"{after / 2**20:9.2f} {after / 2**20 * 1000 / calls:9.1f} {after / events:6.0f} {free:4.0%}  {rows}"
        )
    return lines


def _parts(sizes: dict[str, int]) -> str:
    """The database's, the -wal's and the -shm's size, MiB."""
    return "+".join(f"{sizes[name] / 2**20:.2f}" for name in ("db", "wal", "shm"))


# --- measuring a process (inside its child) ---------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident memory now, MiB (``/proc/self/statm``): the RSS marks of every child."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB (``ru_maxrss``), as every child reports it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the runner's config --------------------------------------------------------------------------------------


def without_backfill() -> dict[str, Any]:
    """``{"backfill": {"enabled": False}}`` where this hookrunner has ``[backfill]``, else nothing.

    Backfill asks Atoms for every ended call's conversation, through the REST rate limiter
    (``atoms.max_requests_per_second``, 10 by default): a flood of 500 calls would wait 50 s for it at its end,
    which is neither what these benchmarks measure nor a quick run. Its cost is a benchmark of its own."""
    from hookrunner._core import config

    return {"backfill": {"enabled": False}} if "backfill" in getattr(config, "TOP_SCHEMA", {}) else {}


def bench_config(base_url: str, overlay: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config table of every benchmark runner (console off, 3 reconnect attempts, no backfill, no journal),
    with ``overlay``'s tables merged over it key by key: ``{"server": {"enabled": True, "port": 0}}``."""
    table: dict[str, Any] = {
        "atoms": {"base_url": base_url, "api_key": KEY},
        "runner": {"reconnect": {"max_attempts": 3}},
        "plugins": {"disable": ["console"]},
        "state": {"path": ""},  # the journal is the runner+journal consumer's (a file of its own per run)
        **without_backfill(),
    }
    for section, values in (overlay or {}).items():
        table[section] = {**table.get(section, {}), **values}
    return table


# --- figures ----------------------------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of ``seconds``, in ms ({} for none): one way to read every latency the benchmarks give."""
    values = sorted(seconds)
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": 1000 * values[len(values) // 2],
        "p99": 1000 * values[min(len(values) - 1, int(len(values) * 0.99))],
        "max": 1000 * values[-1],
    }


def epoch(value: Any) -> float:
    """Epoch seconds of an event's ``timestamp`` (a datetime, the simulator's ISO string, or a number), to subtract
    from an arrival's ``time.time()``."""
    from datetime import datetime

    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()  # Python 3.11 reads the trailing Z
    return float(value)


def median(results: list[dict[str, Any]], key: str) -> float:
    """The median of ``key`` over the runs that have it (nan for none): a table's cell over rounds of runs."""
    values = [r[key] for r in results if key in r]
    return statistics.median(values) if values else float("nan")


def median_at(results: list[dict[str, Any]], *path: str) -> float:
    """The median over the runs of the number at ``path``, keys into nested tables (``"receiver", "latency_ms",
    "p99"``), nan where no run has one: unlike ``median``, a failed run that lacks the figure is passed over, so a
    table still prints. ``compare.py``'s and ``bench_keywords.py``'s tables read their cells through it."""
    values = []
    for r in results:
        value: Any = r
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            values.append(value)
    return statistics.median(values) if values else float("nan")


# --- the example streams and the options ------------------------------------------------------------------------


def stream_lines(directory: Path) -> list[str]:
    """Every non-blank line of the ``*.jsonl`` example streams in ``directory``; exits if there are none."""
    lines = [
        line
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if not lines:
        raise SystemExit(f"no *.jsonl stream lines in {directory}")
    return lines


def bench_arguments(
    doc: str,
    child_main: Callable[[dict[str, Any]], None],
    *,
    quick_help: str,
    rounds_help: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace | None:
    """The options every benchmark takes (``--quick``, ``--rounds``, ``--json``, and the hidden ``--child`` with
    which a benchmark starts itself as a runner process); None once it ran as such a child."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--rounds", type=int, help=rounds_help)
    parser.add_argument("--json", metavar="FILE", help="also write every run's result to FILE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return None
    return args


def fixtures_argument(parser: argparse.ArgumentParser) -> None:
    """``--fixtures DIR``: the ``*.jsonl`` example streams a benchmark reads (default: the repository's own)."""
    parser.add_argument(
        "--fixtures",
        metavar="DIR",
        default=str(FIXTURES),
        help="directory of *.jsonl example streams to read (default: tests/streams)",
    )


# --- the webhook receiver -------------------------------------------------------------------------------------

#: The environment variable holding the webhook endpoint's secret: the runner signs with it, the receiver checks.
WEBHOOK_SECRET_ENV = "BENCH_WEBHOOK_SECRET"


class ReceiverProcess:
    """A ``bench_webhook.py --receiver`` child answering ``status`` to every request; ``finish()`` stops it and
    returns its report. Here because ``bench_restart.py`` delivers to it too."""

    def __init__(self, workdir: Path, status: int = 200) -> None:
        self._err = open(workdir / "receiver.err", "w+")  # noqa: SIM115  (open for the receiver's life)
        self.proc = subprocess.Popen(
            [sys.executable, str(WEBHOOK_SCRIPT), "--receiver", str(status)],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("receiver listening on "):
            self.proc.kill()
            raise SystemExit(f"the receiver did not start: {line!r}")
        self.url = f"http://127.0.0.1:{line.split()[3]}/hooks"

    def finish(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=300)
        if self.proc.returncode != 0 or not out.strip():
            self._err.seek(0)
            raise SystemExit(f"the receiver failed ({self.proc.returncode}): {self._err.read()[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])
