#!/usr/bin/env python3
"""What service mode costs and how fast it finds calls: pushes, listings, the hook histogram, /metrics, memory.

    .venv/bin/python benchmarks/bench_service.py [--quick] [--rounds N] [--json FILE]

Every figure is taken against the project's simulator over loopback sockets, as in ``bench_runner.py``
(``benchlib.Server``: a ``hookrunner simulate`` subprocess, a fresh one per scenario so that a listing shows only that
scenario's calls). The runner is a fresh child process per run (this script with ``--child``): a ``Runner`` in
service mode with the installed plugins but ``console``, plus a recorder plugin that notes ``time.time()`` at each
``on_call_subscribed`` and stops the runner once the expected calls are over. Pushes, ``POST``s and scrapes come
from this process, so none of their CPU lands in the runner's; times across processes are ``time.time()``.

  1. push latency: signed pre-conversation webhooks (HMAC-SHA256, hex, as the simulator signs them) POSTed to
     ``/atoms/webhook``, paced and in one burst: the POST's own round trip, and from the POST being sent and from
     its answer to the runner's ``on_call_subscribed`` (target: 200 ms);
  2. listing discovery: calls starting at staggered times (``start`` + ``start_every``), found by
     ``discovery.interval = 1``: from the call's start (its ``createdAt`` in the listing, ms) to the hook (target:
     interval + 1 s); listing requests per second, pages per listing, how long a whole listing took;
  3. the hook-duration histogram: ``bench_runner.py``'s flood (same call mix) with ``[server] enabled`` (port 0) and
     without, and with the server but its histogram removed: CPU us per event; then in-process, the histogram's
     ``observe`` alone and ``HookDispatcher.call`` with and without it;
  4. ``/metrics``: 50 scrapes (10/s, one kept-alive connection) while 500 calls stream 2 events/s each: time to
     serve, time to render alone (in the runner), body size;
  5. memory: thousands of short calls pushed one after another: RSS as they finish, the call book's and the
     delivery window's sizes, and what each remembered id costs (tracemalloc) up to their 100,000-id caps.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    KEY,
    CallIds,
    Server,
    bench_arguments,
    bench_config,
    event_mix,
    median,
    peak_rss_mib,
    percentiles,
    rss_mib,
    run_child,
)

SECRET_ENV, SECRET = "BENCH_ATOMS_WEBHOOK_SECRET", "whsec-bench-service"
SERVER_ON = {"server": {"enabled": True, "port": 0}}
#: The flood's variants, in rotating order: name -> (config overlay, histogram kept).
FLOOD_VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "server off": ({}, True),
    "server, no histogram": (SERVER_ON, False),
    "server on": (SERVER_ON, True),
}
PUSH_TARGET_MS = 200.0


class Plan:
    def __init__(self, quick: bool, rounds: int | None) -> None:
        self.quick = quick
        self.flood_rounds = rounds or (2 if quick else 3)
        self.push_calls, self.push_rate, self.burst_calls = (200, 50.0, 200) if quick else (500, 50.0, 200)
        # listing: (calls, seconds between starts, call length s, page sizes)
        self.listing = (60, 0.1, 3.0, (10,)) if quick else (300, 0.1, 20.0, (500, 50))
        self.flood = (100, 500)  # bench_runner's quick flood: calls, events per call incl. sse_init and sse_close
        self.scrape_calls, self.scrapes = 500, 50
        self.short_calls, self.short_rate = (2000, 250.0) if quick else (5000, 200.0)


# --- the runner (inside a --child process) ------------------------------------------------------------------------


def child_main(spec: dict[str, Any]) -> None:
    """A service-mode runner: prints ``READY URL TIME`` once it follows calls, then its result as one JSON line."""
    import trio

    import hookrunner._run.runner  # noqa: F401  (imports are not part of the measurement)
    from hookrunner import hookimpl
    from hookrunner._core.config import config_from_dict
    from hookrunner._stream.listing import ListingPoller
    from hookrunner._run.plugins import PluginInfo, load_plugins, validate_plugin_settings
    from hookrunner._service.intakes import service_runner
    from hookrunner._service.server import ServiceApp

    os.environ[SECRET_ENV] = SECRET
    expected, every = spec.get("expected"), spec.get("rss_every") or 0
    subscribed: dict[str, float] = {}
    rss_marks: list[tuple[int, float]] = []  # (calls finished, RSS MiB)
    counts = {"finished": 0, "max_active": 0}

    class Recorder:
        @hookimpl
        def on_call_subscribed(self, call: Any) -> None:
            subscribed[call.id] = time.time()
            counts["max_active"] = max(counts["max_active"], len(runner.calls.active))

        @hookimpl
        def on_call_finished(self, call: Any, reason: str) -> None:
            counts["finished"] += 1
            if every and counts["finished"] % every == 0:
                rss_marks.append((counts["finished"], rss_mib()))
            if expected and counts["finished"] == expected:
                runner.stop()

    config = config_from_dict(bench_config(spec["base"], spec.get("config")), source="<bench>")
    loaded = load_plugins(config)
    loaded.pm.register(Recorder(), name="bench")
    loaded.infos.append(PluginInfo("bench", "benchmark", None, active=True))
    validate_plugin_settings(config, loaded)
    runner = service_runner(config, loaded, api_key=KEY, calls=spec.get("calls", []))

    full_gcs: list[float] = []  # seconds of each full (generation 2) garbage collection
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                full_gcs.append(time.perf_counter() - gc_started[0])

    gc.callbacks.append(on_gc)
    renders: list[tuple[float, bool]] = []  # (seconds per /metrics render, a full collection ran inside it)
    render = runner.metrics.render

    def timed_render() -> bytes:
        collections = len(full_gcs)
        t0 = time.perf_counter()
        body = render()
        renders.append((time.perf_counter() - t0, len(full_gcs) > collections))
        return body

    runner.metrics.render = timed_render  # type: ignore[method-assign]
    listings: list[tuple[float, int]] = []  # (seconds a whole listing took, ids in it)
    list_calls = ListingPoller.list_calls

    async def timed_list_calls(self: ListingPoller) -> list[str]:
        t0 = time.perf_counter()
        ids = await list_calls(self)
        listings.append((time.perf_counter() - t0, len(ids)))
        return ids

    ListingPoller.list_calls = timed_list_calls  # type: ignore[method-assign]
    apps: list[Any] = []
    ready = [math.nan]

    async def main() -> int:
        async def announce() -> None:
            while runner.state != "serving":
                await trio.sleep(0.005)
            apps.extend(o for o in gc.get_objects() if isinstance(o, ServiceApp))  # its delivery window, for later
            ready[0] = time.time()
            print(f"READY {runner.server_url or '-'} {ready[0]:.6f}", flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(announce)
            code = await runner.run()
            nursery.cancel_scope.cancel()
        return code

    rss_start = rss_mib()
    cpu0, t0 = time.process_time(), time.perf_counter()
    code = trio.run(main)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = runner.stats
    result = {
        "code": code,
        "wall_s": wall,
        "cpu_s": cpu,
        "ready_at": ready[0],
        "stopped_at": time.time(),
        "subscribed": subscribed,
        "finished": counts["finished"],
        "max_active": counts["max_active"],
        "events": sum(stats.events_by_type.values()),
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
        "rss_marks": rss_marks,
        "listings": stats.listings,
        "listing_requests": stats.listing_requests,
        "listing_failures": stats.listing_failures,
        "listing_runs": listings,
        "calls_discovered": dict(stats.calls_discovered),
        "platform_webhooks": dict(stats.platform_webhooks),
        "book_finished": len(runner.calls._finished),
        "book_active": len(runner.calls.active),
        "seen_deliveries": sum(len(app._seen._ids) for app in apps),
        "renders": renders,
        "full_gc_s": full_gcs,
        "summary": stats.summary(),
    }
    print(json.dumps(result), flush=True)


class RunnerChild:
    """A ``--child`` runner process; ``url`` is its server's base URL (None without a server) once it follows calls."""

    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        self._err = open(workdir / f"runner-{spec['name']}.err", "w+")  # noqa: SIM115  (open for the child's life)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, stderr=self._err, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            self._err.seek(0)
            raise SystemExit(f"runner {spec['name']} did not start: {line.strip()[:300]!r}\n{self._err.read()[-3000:]}")
        _, url, ready = line.split()
        self.url = None if url == "-" else url
        self.ready_at = float(ready)

    def stop(self) -> None:
        """A SIGINT: the runner stops as a service does."""
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 120) -> dict[str, Any]:
        """Its result; a runner still running after ``timeout`` s is stopped, and its result says so."""
        stopped = False
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stopped = True
            self.stop()
            try:
                out, _ = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise SystemExit(f"a runner child did not stop within {timeout + 30:g} s") from None
        self._err.seek(0)
        err = self._err.read()
        if self.proc.returncode != 0 or not out.strip():
            raise SystemExit(f"a runner child failed ({self.proc.returncode}):\n{err[-3000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        problems = [line for line in err.splitlines() if "WARNING" in line or "ERROR" in line or "Traceback" in line]
        result["log_problems"], result["log_sample"] = len(problems), problems[:3]
        result["timed_out"] = stopped
        return result


# --- what this process sends --------------------------------------------------------------------------------------


def delivery(call_id: str, push_url: str) -> tuple[bytes, str]:
    """A pre-conversation delivery for ``call_id`` as the simulator builds it, and its X-Signature (hex)."""
    body = json.dumps({
        "id": f"dlv_{uuid.uuid4().hex}",
        "event": "agent-bench.pre-conversation",
        "url": push_url,
        "description": "Sent before the conversation starts (benchmark)",
        "metadata": {"callId": call_id, "agentId": "agent-bench", "eventType": "pre-conversation",
                     "conversationType": "inbound", "fromPhone": "+15550100", "toPhone": "+15550199"},
    }, separators=(",", ":")).encode()  # fmt: skip
    return body, hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


async def post_pushes(url: str, call_ids: list[str], rate: float | None) -> list[dict[str, Any]]:
    """POST a signed delivery per call, ``rate`` a second (each its own task) or all at once; how each went."""
    import httpx
    import trio

    results: list[dict[str, Any]] = []

    async def push(client: httpx.AsyncClient, call_id: str) -> None:
        body, signature = delivery(call_id, url)
        headers = {"content-type": "application/json", "x-signature": signature}
        sent = time.time()
        try:
            response = await client.post(url, content=body, headers=headers)
            answer = response.json() if response.headers.get("content-type") == "application/json" else {}
            status, error = response.status_code, None
        except httpx.HTTPError as exc:
            answer, status, error = {}, None, f"{type(exc).__name__}: {exc}"
        results.append({"call_id": call_id, "sent": sent, "answered": time.time(), "status": status,
                        "result": answer.get("result"), "error": error})  # fmt: skip

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client, trio.open_nursery() as nursery:
        start = trio.current_time()
        for index, call_id in enumerate(call_ids):
            if rate:
                await trio.sleep_until(start + index / rate)
            nursery.start_soon(push, client, call_id)
    return results


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listening socket's accept queue was full (system-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split())).get("ListenOverflows", 0))
    return 0


def listed_starts(base_url: str) -> dict[str, float]:
    """Every call the simulator lists (any status) -> its ``createdAt`` (its start) as epoch seconds."""
    import httpx

    starts: dict[str, float] = {}
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        for page in range(1, 1000):
            data = client.get(f"{base_url}/conversation", params={"limit": 500, "page": page}).json()["data"]
            for entry in data["logs"]:
                starts[entry["callId"]] = datetime.fromisoformat(entry["createdAt"]).timestamp()
            if not data["pagination"]["hasMore"]:
                return starts
    return starts


# --- 1. push latency ----------------------------------------------------------------------------------------------


def push_latency(plan: Plan, workdir: Path) -> list[dict[str, Any]]:
    import trio

    ids = CallIds()
    short = event_mix(6, seed=21, at=lambda i: round(i * 0.2, 3))  # a call of 1 s
    variants = [(f"paced, {plan.push_rate:g}/s", plan.push_calls, plan.push_rate), ("burst, all at once", plan.burst_calls, None)]
    script = {"api_key": KEY, "keepalive": 0, "calls": [ids.group(f"PUSH{i}", n, short) for i, (_, n, _) in enumerate(variants)]}
    server = Server(script, workdir)
    rows = []
    try:
        for index, (label, n, rate) in enumerate(variants):
            config = {**SERVER_ON, "discovery": {"webhook_secret_env": SECRET_ENV}}
            child = RunnerChild({"name": f"push{index}", "base": server.base_url, "config": config, "expected": n}, workdir)
            calls = ids.take(f"PUSH{index}", n)
            overflows = listen_overflows()
            pushes = trio.run(post_pushes, f"{child.url}/atoms/webhook", calls, rate)
            overflows = listen_overflows() - overflows
            result = child.finish(timeout=30)
            subscribed = result["subscribed"]
            answered = [p for p in pushes if p["status"] == 200 and p["result"] == "new"]
            row = {
                "label": label,
                "n": n,
                "accepted": len(answered),
                "subscribed": sum(p["call_id"] in subscribed for p in pushes),
                "post_ms": percentiles([p["answered"] - p["sent"] for p in answered]),
                "from_send_ms": percentiles([subscribed[p["call_id"]] - p["sent"] for p in answered if p["call_id"] in subscribed]),
                "from_answer_ms": percentiles([subscribed[p["call_id"]] - p["answered"] for p in answered if p["call_id"] in subscribed]),
                "over_target": sum(subscribed[p["call_id"]] - p["sent"] > PUSH_TARGET_MS / 1000 for p in answered if p["call_id"] in subscribed),
                "errors": _errors(pushes),
                "listen_overflows": overflows,
                "max_active": result["max_active"],
                "runner": _trim(result),
            }  # fmt: skip
            rows.append(row)
            _progress("push", label, f"{row['subscribed']}/{n} subscribed, p99 {row['from_send_ms'].get('p99', math.nan):.1f} ms")
    finally:
        server.stop()
    return rows


# --- 2. listing discovery -----------------------------------------------------------------------------------------


def listing_latency(plan: Plan, workdir: Path) -> list[dict[str, Any]]:
    n, every, length, page_sizes = plan.listing
    first_start = 3.0  # seconds after the simulator serves: the runner child is up and listing by then
    per_call = max(2, int(length * 2) + 1)  # 2 events/s
    mix = event_mix(per_call, seed=51, at=lambda i: round(i * length / (per_call - 1), 3))
    rows = []
    for page_size in page_sizes:
        group = {"id": "CALL-BENCH-LIST-{n}", "repeat": n, "start": first_start, "start_every": every,
                 "late_join": "replay", "events": mix}  # fmt: skip
        server = Server({"api_key": KEY, "keepalive": 0, "calls": [group]}, workdir)
        try:
            config = {"discovery": {"poll": True, "interval": 1.0, "page_size": page_size}}
            child = RunnerChild({"name": f"list{page_size}", "base": server.base_url, "config": config, "expected": n}, workdir)
            result = child.finish()
            starts = listed_starts(server.base_url)
        finally:
            server.stop()
        subscribed = result["subscribed"]
        latencies = [subscribed[call_id] - start for call_id, start in starts.items() if call_id in subscribed]
        seconds = result["stopped_at"] - result["ready_at"]
        pages = [math.ceil(count / page_size) if count else 1 for _, count in result["listing_runs"]]
        row = {
            "label": f"{n} calls, 1 every {every:g} s, {length:g} s each, page_size {page_size}",
            "n": n,
            "subscribed": len(latencies),
            "latency_ms": percentiles(latencies),
            "over_target": sum(latency > 2.0 for latency in latencies),
            "early": sum(start < result["ready_at"] for start in starts.values()),
            "requests_per_s": result["listing_requests"] / seconds,
            "listings_per_s": result["listings"] / seconds,
            "pages_per_listing": result["listing_requests"] / max(result["listings"], 1),
            "max_pages": max(pages, default=0),
            "max_listed": max((count for _, count in result["listing_runs"]), default=0),
            "listing_ms": percentiles([duration for duration, _ in result["listing_runs"]]),
            "failures": result["listing_failures"],
            "runner": _trim(result),
        }
        rows.append(row)
        _progress("listing", f"page_size {page_size}", f"{row['subscribed']}/{n} subscribed, p99 {row['latency_ms'].get('p99', math.nan):.0f} ms")
    return rows


# --- 3. the histogram's cost per event ----------------------------------------------------------------------------


def flood_cost(plan: Plan, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    ids = CallIds()
    n, events = plan.flood
    # The same event mix as bench_runner.py's first flood (seed 0).
    script = {"api_key": KEY, "keepalive": 0, "timestamp_format": "iso",
              "calls": [ids.group("FLOOD", n * plan.flood_rounds * len(FLOOD_VARIANTS), event_mix(events - 2, seed=0))]}  # fmt: skip
    server = Server(script, workdir)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in FLOOD_VARIANTS}
    names = list(FLOOD_VARIANTS)
    try:
        for rnd in range(plan.flood_rounds):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                overlay, histogram = FLOOD_VARIANTS[name]
                spec = {"consumer": "runner", "base": server.base_url, "mode": "flood", "calls": ids.take("FLOOD", n),
                        "expected": n * events, "config": overlay, "histogram": histogram}  # fmt: skip
                result = run_child(spec, server)
                runs[name].append(result)
                _progress("flood", name, f"{result['events']}/{result['expected']} events, {result['cpu_us_per_event']:.1f} us/ev")
    finally:
        server.stop()
    return runs


def histogram_in_process(quick: bool) -> dict[str, float]:
    """ns per ``observe_hook``; us per ``HookDispatcher.call('on_event')`` over 3 no-op plugins, with and without."""
    import trio

    from hookrunner import hookimpl
    from hookrunner._run.callbook import CallBook
    from hookrunner._run.dispatch import HookDispatcher
    from hookrunner._run.metrics import RunnerMetrics
    from hookrunner._run.plugins import new_plugin_manager
    from hookrunner._core.stats import Stats

    metrics = RunnerMetrics(Stats(), CallBook(1))
    observe = metrics.observe_hook
    loops = 200_000 if quick else 1_000_000
    observe_ns = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(loops):
            observe("bench", "on_event", 2e-5)
        observe_ns.append((time.perf_counter() - t0) * 1e9 / loops)

    class NoOp:
        @hookimpl
        def on_event(self, event: Any, call: Any) -> None:
            pass

    pm = new_plugin_manager()
    for index in range(3):
        pm.register(NoOp(), name=f"noop{index}")
    dispatcher = HookDispatcher(pm, 10.0, Stats())
    arguments = {"event": None, "call": None}
    calls = loops // 4
    timings: dict[str, list[float]] = {"off": [], "on": []}

    async def run(kind: str) -> float:
        dispatcher.observe = observe if kind == "on" else None
        t0 = time.perf_counter()
        for _ in range(calls):
            await dispatcher.call("on_event", arguments)
        return (time.perf_counter() - t0) * 1e6 / calls

    for rep in range(6):
        for kind in ("off", "on") if rep % 2 else ("on", "off"):
            timings[kind].append(trio.run(run, kind))
    off, on = statistics.median(timings["off"]), statistics.median(timings["on"])
    return {"observe_ns": statistics.median(observe_ns), "dispatch_off_us": off, "dispatch_on_us": on,
            "per_hook_call_us": (on - off) / 3}  # fmt: skip


# --- 4. /metrics --------------------------------------------------------------------------------------------------


def scrape_cost(plan: Plan, workdir: Path) -> dict[str, Any]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    ids = CallIds()
    n = plan.scrape_calls
    mix = event_mix(240, seed=31, at=lambda i: round(i * 0.5, 3))  # 2 events/s for 2 minutes: stopped long before
    server = Server({"api_key": KEY, "keepalive": 0, "calls": [ids.group("SCRAPE", n, mix)]}, workdir)
    try:
        child = RunnerChild({"name": "scrape", "base": server.base_url, "config": SERVER_ON, "calls": ids.take("SCRAPE", n)}, workdir)
        times, sizes, body = [], [], b""
        try:
            with httpx.Client(timeout=30.0) as client:
                deadline = time.monotonic() + 120
                while client.get(f"{child.url}/healthz").json()["calls_active"] < n:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"/healthz never showed {n} active calls")
                    time.sleep(0.1)
                time.sleep(1.0)  # every call has had its first events: the histogram has all its series
                started = time.perf_counter()
                for index in range(plan.scrapes):
                    time.sleep(max(0.0, started + index * 0.1 - time.perf_counter()))
                    t0 = time.perf_counter()
                    response = client.get(f"{child.url}/metrics")
                    times.append(time.perf_counter() - t0)
                    body = response.content
                    sizes.append(len(body))
                active = client.get(f"{child.url}/healthz").json()["calls_active"]
        finally:
            child.stop()
        result = child.finish()
    finally:
        server.stop()
    families = list(text_string_to_metric_families(body.decode()))
    series = sum(len(family.samples) for family in families)
    hook_pairs = {(s.labels["plugin"], s.labels["hook"]) for f in families if f.name == "hookrunner_hook_duration_seconds" for s in f.samples}
    row = {
        "calls_active": active,
        "scrape_ms": percentiles(times),
        "render_ms": percentiles([seconds for seconds, _ in result["renders"]]),
        "render_no_gc_ms": percentiles([seconds for seconds, full_gc in result["renders"] if not full_gc]),
        "renders_with_gc": sum(full_gc for _, full_gc in result["renders"]),
        "full_gc_ms": percentiles(result["full_gc_s"]),
        "body_bytes": statistics.median(sizes),
        "samples": series,
        "hook_series": len(hook_pairs),
        "plugins": len({plugin for plugin, _ in hook_pairs}),
        "events_per_s": result["events"] / result["wall_s"],
        "runner": _trim(result),
    }  # fmt: skip
    _progress("scrape", f"{n} calls", f"p99 {row['scrape_ms'].get('p99', math.nan):.1f} ms, {row['body_bytes']:.0f} B")
    return row


# --- 5. memory over many calls ------------------------------------------------------------------------------------


def memory_over_calls(plan: Plan, workdir: Path) -> dict[str, Any]:
    import trio

    ids = CallIds()
    n, rate = plan.short_calls, plan.short_rate
    server = Server({"api_key": KEY, "keepalive": 0, "calls": [ids.group("SHORT", n, event_mix(8, seed=41))]}, workdir)
    try:
        config = {**SERVER_ON, "discovery": {"webhook_secret_env": SECRET_ENV}}
        child = RunnerChild({"name": "memory", "base": server.base_url, "config": config, "expected": n, "rss_every": n // 20}, workdir)
        pushes = trio.run(post_pushes, f"{child.url}/atoms/webhook", ids.take("SHORT", n), rate)
        result = child.finish(timeout=30)
    finally:
        server.stop()
    marks = result["rss_marks"]
    tail = [(count, rss) for count, rss in marks if count >= n // 2]
    row = {
        "n": n,
        "rate": rate,
        "accepted": sum(p["status"] == 200 and p["result"] == "new" for p in pushes),
        "errors": _errors(pushes),
        "finished": result["finished"],
        "cpu_ms_per_call": result["cpu_s"] * 1000 / n,
        "rss_start_mib": result["rss_start_mib"],
        "rss_marks": marks,
        "rss_end_mib": result["rss_end_mib"],
        "peak_rss_mib": result["peak_rss_mib"],
        "slope_kib_per_1000": _slope(tail) * 1024 * 1000 if len(tail) > 2 else math.nan,
        "book_finished": result["book_finished"],
        "seen_deliveries": result["seen_deliveries"],
        "max_active": result["max_active"],
        "runner": _trim(result),
        **remembered_id_cost(),
    }
    _progress("memory", f"{n} calls", f"RSS {row['rss_end_mib']:.1f} MiB, book {row['book_finished']}")
    return row


def remembered_id_cost() -> dict[str, float]:
    """Bytes per id the call book and the delivery window keep, measured with tracemalloc at their caps."""
    import tracemalloc

    from hookrunner._run.callbook import CallBook
    from hookrunner._service.atoms_webhook import SeenDeliveries

    cap = 100_000
    tracemalloc.start()
    book = CallBook(max_calls=500, remember=cap)
    for index in range(cap + 10):
        call_id = f"CALL-{uuid.uuid4().hex[:12]}-{index}"  # Atoms' ids are ~25 characters
        book.offer(call_id)
        book.finish(call_id)
    book_bytes, _ = tracemalloc.get_traced_memory()
    seen = SeenDeliveries(limit=cap)
    for _ in range(cap + 10):
        seen.first_time(f"dlv_{uuid.uuid4().hex}")
    both, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"book_bytes_per_id": book_bytes / cap, "seen_bytes_per_id": (both - book_bytes) / cap, "cap": cap}


# --- helpers ------------------------------------------------------------------------------------------------------


def _errors(pushes: list[dict[str, Any]]) -> dict[str, int]:
    """How the pushes that were not answered ``new`` went, counted."""
    kinds: dict[str, int] = {}
    for p in pushes:
        if p["status"] != 200 or p["result"] != "new":
            kind = (p["error"] or f"{p['status']} {p['result']}")[:70]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares MiB per call."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def _trim(result: dict[str, Any]) -> dict[str, Any]:
    """A child's result without its per-call maps, for --json."""
    return {key: value for key, value in result.items() if key not in ("subscribed", "renders", "full_gc_s")}


def _progress(scenario: str, label: str, text: str) -> None:
    print(f"  .. {scenario:<8} {label:<32} {text}", file=sys.stderr, flush=True)


def _ms(p: dict[str, float]) -> str:
    nan = math.nan
    return f"{p.get('p50', nan):8.1f} {p.get('p99', nan):8.1f} {p.get('max', nan):8.1f}"


# --- the whole run ------------------------------------------------------------------------------------------------


def main() -> None:
    args = bench_arguments(
        __doc__,
        child_main,
        quick_help="smaller loads (under a minute)",
        rounds_help="flood runs per variant (default 2 quick, 3 full)",
    )
    if args is None:
        return

    started = time.perf_counter()
    plan = Plan(args.quick, args.rounds)
    print(f"hookrunner service benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hookrunner-bench-service-") as tmp:
        workdir = Path(tmp)
        pushes = push_latency(plan, workdir)
        listings = listing_latency(plan, workdir)
        floods = flood_cost(plan, workdir)
        in_process = histogram_in_process(args.quick)
        scrape = scrape_cost(plan, workdir)
        memory = memory_over_calls(plan, workdir)

    problems: list[str] = []
    print(f"\n(1) push latency: signed pre-conversation POSTs to /atoms/webhook (one kept-alive pool), runner "
          f"on_call_subscribed minus POST sent / answered; target {PUSH_TARGET_MS:.0f} ms")  # fmt: skip
    print(f"  {'':<20} {'':>9} {'POST round trip':^26}  {'sent -> subscribed':^26}  {'answered -> subscribed':^26}")
    print(f"  {'pushes':<20} {'followed':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8}  {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  over target  listen overflows")  # fmt: skip
    for row in pushes:
        print(f"  {row['label']:<20} {row['subscribed']:>4}/{row['n']:<4} {_ms(row['post_ms'])}  "
              f"{_ms(row['from_send_ms'])}  {_ms(row['from_answer_ms'])}  {row['over_target']:>11}  "
              f"{row['listen_overflows']:>16}")  # fmt: skip
    print("  (listen overflows: connections the kernel dropped from a full accept queue during the POSTs, system-wide; "
          "a dropped connect is retried after 1 s)")  # fmt: skip
    for row in pushes:
        if row["subscribed"] != row["n"] or row["accepted"] != row["n"]:
            problems.append(f"push {row['label']}: {row['accepted']} accepted, {row['subscribed']}/{row['n']} subscribed; {row['errors']}")

    print("\n(2) listing discovery, discovery.interval = 1 s: runner on_call_subscribed minus the call's start "
          "(listing createdAt, ms); target interval + 1 s = 2000 ms")  # fmt: skip
    print(f"  {'calls':<52} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'req/s':>6} {'pages':>6} {'max':>4} "
          f"{'listed':>6} {'listing p50/max ms':>19}  over target")  # fmt: skip
    for row in listings:
        p = row["listing_ms"]
        print(f"  {row['label']:<52} {_ms(row['latency_ms'])} {row['requests_per_s']:6.2f} {row['pages_per_listing']:6.2f} "
              f"{row['max_pages']:>4} {row['max_listed']:>6} {p.get('p50', math.nan):9.1f}/{p.get('max', math.nan):<9.1f}  "
              f"{row['over_target']}")  # fmt: skip
        if row["subscribed"] != row["n"] or row["failures"] or row["early"]:
            problems.append(f"listing {row['label']}: {row['subscribed']}/{row['n']} subscribed, {row['failures']} failed "
                            f"listings, {row['early']} calls started before the runner was ready")  # fmt: skip

    n, events = plan.flood
    print(f"\n(3) hook-duration histogram: flood {n} calls x {events} events (bench_runner's mix), median of "
          f"{plan.flood_rounds} rotating runs; runner process CPU")  # fmt: skip
    print(f"  {'variant':<22} {'CPU us/ev':>9} {'events/s':>9} {'peak RSS':>9} {'obs/ev':>7}  runs (us/ev)")
    base = median(floods["server off"], "cpu_us_per_event")
    for name, results in floods.items():
        obs = median(results, "hook_observations") / (n * events) if name == "server on" else 0.0
        each = ", ".join(f"{r['cpu_us_per_event']:.1f}" for r in results)
        print(f"  {name:<22} {median(results, 'cpu_us_per_event'):9.1f} {median(results, 'events_per_s'):9.0f} "
              f"{median(results, 'peak_rss_mib'):7.1f}Mi {obs:7.2f}  {each}")  # fmt: skip
        for r in results:
            if r["errors"] or r["events"] != r["expected"]:
                problems.append(f"flood {name}: {r['events']}/{r['expected']} events; {r['errors'][:2]}")
    on, no_hist = median(floods["server on"], "cpu_us_per_event"), median(floods["server, no histogram"], "cpu_us_per_event")
    obs_per_event = median(floods["server on"], "hook_observations") / (n * events)
    print(f"  difference: server on - off {on - base:+.2f} us/ev ({(on - base) / base * 100:+.1f} %); "
          f"histogram (on - no histogram) {on - no_hist:+.2f} us/ev")  # fmt: skip
    print(f"  in process: observe_hook {in_process['observe_ns']:.0f} ns; HookDispatcher.call(on_event) over 3 no-op "
          f"plugins {in_process['dispatch_off_us']:.2f} us without, {in_process['dispatch_on_us']:.2f} us with "
          f"= {in_process['per_hook_call_us'] * 1000:.0f} ns a hook call\n  x {obs_per_event:.2f} hook calls an event "
          f"= {in_process['per_hook_call_us'] * obs_per_event:.2f} us an event expected from the histogram")  # fmt: skip

    s = scrape
    print(f"\n(4) /metrics: {plan.scrapes} scrapes, 10/s, one kept-alive connection, {s['calls_active']} calls active "
          f"(2 events/s each: {s['events_per_s']:.0f} events/s through the runner)")  # fmt: skip
    print(f"  served (client round trip) p50/p99/max {_ms(s['scrape_ms'])} ms")
    print(f"  rendered (RunnerMetrics.render in the runner)  {_ms(s['render_ms'])} ms; without the "
          f"{s['renders_with_gc']} render(s) a full GC ran in: {_ms(s['render_no_gc_ms'])} ms")  # fmt: skip
    print(f"  full GC collections in the runner during the run: {s['full_gc_ms'].get('n', 0)}, p50/max "
          f"{s['full_gc_ms'].get('p50', math.nan):.1f}/{s['full_gc_ms'].get('max', math.nan):.1f} ms each")  # fmt: skip
    print(f"  body {s['body_bytes'] / 1024:.1f} KiB, {s['samples']} samples; hook histogram: {s['hook_series']} "
          f"(plugin, hook) series over {s['plugins']} plugins")  # fmt: skip

    m = memory
    marks = "  ".join(f"{count}: {rss:.1f}" for count, rss in m["rss_marks"][:: max(1, len(m["rss_marks"]) // 5)])
    print(f"\n(5) memory: {m['n']} short calls (8 events each) pushed at {m['rate']:g}/s, one after another "
          f"(at most {m['max_active']} at once; {m['cpu_ms_per_call']:.2f} ms of runner CPU a call); runner RSS")  # fmt: skip
    print(f"  at start {m['rss_start_mib']:.1f} MiB; calls finished: MiB  {marks}  end {m['rss_end_mib']:.1f}")
    print(f"  growth over the second half: {m['slope_kib_per_1000']:.0f} KiB per 1,000 calls; call book remembers "
          f"{m['book_finished']} finished ids, delivery window {m['seen_deliveries']} ids")  # fmt: skip
    print(f"  each remembered id costs {m['book_bytes_per_id']:.0f} B in the call book and {m['seen_bytes_per_id']:.0f} B "
          f"in the delivery window (tracemalloc): at their {m['cap']:,}-id caps, "
          f"{m['cap'] * (m['book_bytes_per_id'] + m['seen_bytes_per_id']) / 2**20:.0f} MiB together")  # fmt: skip
    if m["finished"] != m["n"] or m["accepted"] != m["n"]:
        problems.append(f"memory: {m['accepted']} accepted, {m['finished']}/{m['n']} finished; {m['errors']}")

    children = [row["runner"] for row in pushes + listings] + [scrape["runner"], memory["runner"]]
    for result in children:
        if result["timed_out"]:
            problems.append(f"a runner child was still waiting for calls and was stopped: {result['summary']}")
        if result["log_problems"]:
            problems.append(f"runner log: {result['log_problems']} warning/error lines, e.g. {result['log_sample'][:2]}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        raw = {"pushes": pushes, "listings": listings, "floods": floods, "in_process": in_process, "scrape": scrape, "memory": memory}
        Path(args.json).write_text(json.dumps(raw, indent=1) + "\n")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
