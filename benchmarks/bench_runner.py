#!/usr/bin/env python3
"""What the runner costs next to a bare consumer, measured in one run against one simulator.

    .venv/bin/python benchmarks/bench_runner.py [--quick] [--rounds N] [--json FILE] [--fixtures DIR]

The server is the project's own simulator started once as a ``hookrunner simulate`` subprocess, so its CPU is
never counted in a consumer's. Every consumer run is a fresh child process (this script with ``--child``), so
CPU (``time.process_time``), peak RSS (``ru_maxrss``) and the RSS marks belong to that consumer alone. Runs
alternate in rotating order (see ``CONSUMERS``) because these machines drift by tens of per cent between minutes.

  a. decode cost per line over the example streams' lines (``tests/streams/*.jsonl``, or ``--fixtures DIR``):
     ``decode_event`` vs ``json.loads`` vs ``msgspec`` to dict;
  b. flood (every event at at=0): the Runner with a no-op plugin, with the journal off and on, vs a bare trio +
     httpx + httpx-sse + json.loads consumer (no framework), once with its pool sized to the calls and once with the
     runner's pool limits: CPU us/event of the consumer process, events/s, peak RSS;
  c. a slow plugin (``trio.sleep`` per event) on a flood: RSS at 10 %, 50 % and 100 % of the events;
  d. paced calls (R events/s each, calls out of step): p50/p99 of plugin-receive time minus the simulator's
     ``timestamp`` (the event's scheduled send time, ISO with ms);
  e. the journal of the ``runner+journal`` runs of (b) and (d): its files' size (database, -wal, -shm) at their
     peak while the runner ran (sampled from outside every 50 ms) and after it finished, per 1,000 calls.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    FIXTURES,
    JOURNAL_LEGEND,
    JOURNAL_TARGET,
    KEY,
    CallIds,
    Server,
    bench_arguments,
    bench_config,
    epoch,
    event_mix,
    fixtures_argument,
    journal_table,
    median,
    peak_rss_mib,
    percentiles,
    rss_mib,
    run_child,
    stream_lines,
)

#: The consumers, in rotating order: the runner with the journal off (``[state] path = ""``); the same runner with
#: the journal on (``[state] path`` a fresh file in the run's temporary folder, the default commit_interval), as
#: ``hookrunner run`` has it by default; the bare consumer with its pool sized to the calls, as a plain trio + httpx +
#: httpx-sse client would have it; the same bare consumer with the runner's pool limits (no cap, 20 kept alive),
#: which tells the runner's own cost apart from httpcore's pool bookkeeping.
CONSUMERS = ("runner", "runner+journal", "bare", "bare-k20")
JOURNALED = "runner+journal"


class Plan(CallIds):
    """The scenarios of one run and the simulator script that serves them all (one ``[[calls]]`` per group)."""

    def __init__(self, quick: bool, rounds: int | None) -> None:
        super().__init__()
        self.rounds = rounds or (2 if quick else 3)
        self.paced_rounds = rounds or (1 if quick else 2)
        # (label, calls, events per call incl. the generated sse_init + sse_close)
        self.floods = [("flood 100x500", 100, 500), ("flood 500x100", 500, 100)] if quick else [
            ("flood 100x2000", 100, 2000), ("flood 500x200", 500, 200)]  # fmt: skip
        self.slow = ("slow plugin 40x3000, 1 ms/event", 40, 3000, 0.001) if quick else (
            "slow plugin 100x4000, 2 ms/event", 100, 4000, 0.002)  # fmt: skip
        self.paced = ("paced 200 calls x 5/s x 6 s", 200, 5.0, 6.0) if quick else (
            "paced 500 calls x 5/s x 20 s", 500, 5.0, 20.0)  # fmt: skip

    def script(self) -> dict[str, Any]:
        calls = []
        for index, (_, n, events) in enumerate(self.floods):
            calls.append(self.group(f"FLOOD{index}", n * self.rounds * len(CONSUMERS), event_mix(events - 2, seed=index)))
        _, n, events, _ = self.slow
        calls.append(self.group("SLOW", n, event_mix(events - 2, seed=7)))
        _, n, rate, seconds = self.paced
        per_call = int(rate * seconds)
        phases = 10  # calls out of step: ten groups, each shifted by a tenth of the interval
        for phase in range(phases):
            shift = phase / phases / rate
            n_group = -(-n // phases) * self.paced_rounds * len(CONSUMERS)
            mix = event_mix(per_call, seed=100 + phase, at=lambda i, s=shift: round(s + i / rate, 4))
            calls.append(self.group(f"PACED{phase}", n_group, mix))
        return {"api_key": KEY, "keepalive": 0, "timestamp_format": "iso", "calls": calls}

    def paced_ids(self, n: int) -> list[str]:
        ids: list[str] = []
        for i in range(n):
            ids += self.take(f"PACED{i % 10}", 1)
        return ids


# --- the consumers (run inside a --child process) ----------------------------------------------------------------


class Probe:
    """What a consumer records per event: count, RSS at fractions of the expected total, paced latency."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.expected = spec["expected"]
        self.count = 0
        self.marks = {round(self.expected * f): f"rss_at_{int(f * 100)}pct_mib" for f in (0.1, 0.5)}
        self.rss: dict[str, float] = {}
        self.latency = spec["mode"] == "paced"
        self.received: list[tuple[float, Any]] = []  # (time.time() at the plugin, the event's timestamp)

    def hit(self) -> None:
        self.count += 1
        if self.count in self.marks:
            self.rss[self.marks[self.count]] = rss_mib()


async def child_runner(spec: dict[str, Any], probe: Probe) -> dict[str, Any]:
    import trio

    from hookrunner import hookimpl
    from hookrunner._core.config import config_from_dict
    from hookrunner._run.plugins import PluginInfo, load_plugins, validate_plugin_settings
    from hookrunner._service.intakes import service_runner

    delay = spec.get("sleep", 0.0)
    # spec["config"]: tables merged over the benchmark's config (bench_service.py turns the server on with it).
    config_table = bench_config(spec["base"], spec.get("config"))
    service = bool(config_table.get("server", {}).get("enabled") or config_table.get("discovery", {}).get("poll"))
    calls_left = [len(spec["calls"])]

    class NoOp:
        """The benchmark's plugin: counts, and sleeps when the scenario asks for a slow plugin."""

        if delay:

            @hookimpl
            async def on_event(self, event: Any, call: Any) -> None:
                probe.hit()
                await trio.sleep(delay)

        elif probe.latency:

            @hookimpl
            def on_event(self, event: Any, call: Any) -> None:
                probe.hit()
                if event.event_type != "sse_init":
                    probe.received.append((time.time(), event.timestamp))

        else:

            @hookimpl
            def on_event(self, event: Any, call: Any) -> None:
                probe.hit()

        if service:  # a service runs until stopped: stop it once every given call is over

            @hookimpl
            def on_call_finished(self, call: Any, reason: str) -> None:
                calls_left[0] -= 1
                if not calls_left[0]:
                    runner.stop()

    config = config_from_dict(config_table, source="<bench>")
    loaded = load_plugins(config)
    loaded.pm.register(NoOp(), name="bench")
    loaded.infos.append(PluginInfo("bench", "benchmark", None, active=True))
    validate_plugin_settings(config, loaded)
    runner = service_runner(config, loaded, api_key=KEY, calls=spec["calls"])
    if spec.get("histogram") is False:
        runner.dispatcher.observe = None  # the server without its per-hook histogram
    code = await runner.run()
    errors = [] if code == 0 else [f"exit code {code}: {runner.stats.summary()}"]
    outcome: dict[str, Any] = {"errors": errors, "stats": runner.stats.summary()}
    if config.server.enabled:
        outcome["hook_observations"] = sum(
            sample.value
            for family in runner.metrics.registry.collect()
            if family.name == "hookrunner_hook_duration_seconds"
            for sample in family.samples
            if sample.name.endswith("_count")
        )
    return outcome


async def child_bare(spec: dict[str, Any], probe: Probe) -> dict[str, Any]:
    """A plain consumer, no framework: one AsyncClient sized to the calls, aconnect_sse, json.loads."""
    import httpx
    import trio
    from httpx_sse import aconnect_sse

    errors: list[str] = []
    loads = json.loads

    async def follow(client: httpx.AsyncClient, call_id: str) -> None:
        last = None
        try:
            async with aconnect_sse(client, "GET", f"{spec['base']}/events", params={"callId": call_id},
                                    headers={"Authorization": f"Bearer {KEY}"}) as source:  # fmt: skip
                source.response.raise_for_status()
                async for sse in source.aiter_sse():
                    event = loads(sse.data)
                    probe.hit()
                    last = event["event_type"]
                    if probe.latency and last != "sse_init":
                        probe.received.append((time.time(), event.get("timestamp")))
        except Exception as exc:  # noqa: BLE001  (any failure of a stream is that call's, and is reported)
            errors.append(f"{call_id}: {type(exc).__name__}: {exc}")
            return
        if last != "sse_close":
            errors.append(f"{call_id}: ended after {last}")

    n = len(spec["calls"])
    if spec["consumer"] == "bare-k20":
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)  # what the Runner uses
    else:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)  # the yardstick's pool
    timeout = httpx.Timeout(connect=30.0, read=None, write=30.0, pool=None)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client, trio.open_nursery() as nursery:
        for call_id in spec["calls"]:
            nursery.start_soon(follow, client, call_id)
    return {"errors": errors}


def child_main(spec: dict[str, Any]) -> None:
    # Imports are not part of the measurement.
    import httpx_sse  # noqa: F401
    import trio

    import hookrunner._run.runner  # noqa: F401

    probe = Probe(spec)
    consumer = child_runner if spec["consumer"].startswith("runner") else child_bare
    rss_start = rss_mib()
    cpu0, t0, wall0 = time.process_time(), time.perf_counter(), time.time()
    outcome = trio.run(consumer, spec, probe)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    result = {
        "consumer": spec["consumer"],
        "events": probe.count,
        "expected": probe.expected,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_us_per_event": cpu * 1e6 / max(probe.count, 1),
        "events_per_s": probe.count / wall,
        "rss_start_mib": rss_start,
        "rss_end_mib": rss_mib(),
        "peak_rss_mib": peak_rss_mib(),
        **probe.rss,
        **outcome,
    }
    if probe.received:
        # All events, and the steady part: without the first 2 s (every call subscribes at once) and the last
        # 1 s (every call ends within a fifth of a second), bursts a real fleet of calls does not have.
        steady = (wall0 + 2, wall0 + wall - 1)
        result["latency_ms"] = percentiles([received - epoch(sent) for received, sent in probe.received])
        result["steady_latency_ms"] = percentiles(
            [received - epoch(sent) for received, sent in probe.received if steady[0] <= received <= steady[1]]
        )
    print(json.dumps(result), flush=True)


# --- a. decode cost ------------------------------------------------------------------------------------------


def decode_cost(quick: bool, fixtures: Path = FIXTURES) -> tuple[list[tuple[str, float]], str]:
    import msgspec

    from hookrunner._core.events import decode_event

    lines = stream_lines(fixtures)
    source = f"{len(lines)} example stream lines"
    msgspec_decode = msgspec.json.Decoder().decode
    candidates = {
        "decode_event (typed Event)": lambda line: decode_event(line, "CALL-X", None),
        "json.loads (dict)": json.loads,
        "msgspec.json.decode (dict)": msgspec_decode,
    }
    loops, reps = (200, 5) if quick else (1000, 9)
    timings: dict[str, list[float]] = {name: [] for name in candidates}
    for rep in range(reps):
        order = list(candidates.items())
        if rep % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(loops):
                for line in lines:
                    fn(line)
            timings[name].append((time.perf_counter() - t0) * 1e6 / (loops * len(lines)))
    return [(name, statistics.median(values)) for name, values in timings.items()], source


def event_sizes(n: int) -> tuple[float, float, float]:
    """Mean bytes of one flood event: on the wire (as the simulator frames it), held as a decoded Event, and
    what the runner keeps per event after dispatching it (the dedupe id in ``SeenEvents``, transcript turns)."""
    import tracemalloc

    from hookrunner._run.context import Turn
    from hookrunner._core.events import TtsCompleted, UserTranscription, decode_event
    from hookrunner._stream.subscription import SeenEvents

    call_id = "CALL-BENCH-SLOW-17"
    lines = [json.dumps({"event_type": e.pop("event_type"), "event_id": f"{call_id}_{i}_1764000000000",
                         "timestamp": "2026-11-24T10:00:07.000Z", "call_id": call_id,
                         **{k: v for k, v in e.items() if k != "at"}}, separators=(",", ":"))
             for i, e in enumerate(event_mix(n, seed=7))]  # fmt: skip
    wire = statistics.mean(len(line) + len("data: \n\n") for line in lines)
    tracemalloc.start()
    held = [decode_event(line, call_id, None) for line in lines]
    size, _ = tracemalloc.get_traced_memory()
    seen, turns = SeenEvents(), []
    for event in held:
        seen.add(event.event_id or "")
        if isinstance(event, (UserTranscription, TtsCompleted)):
            turns.append(Turn(speaker="user", text=event.text, event_id=event.event_id, timestamp=event.timestamp))
    count = len(held)
    del held, event
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return wire, size / count, kept / count


# --- the whole run -------------------------------------------------------------------------------------------


def main() -> None:
    args = bench_arguments(
        __doc__,
        child_main,
        quick_help="smaller loads (about 1.5 minutes)",
        rounds_help="runs per consumer and scenario (default: floods 2 quick, 3 full; paced 1 quick, 2 full)",
        extra=fixtures_argument,
    )
    if args is None:
        return

    started = time.perf_counter()
    plan = Plan(args.quick, args.rounds)
    print(f"hookrunner benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}", flush=True)  # fmt: skip

    decode, source = decode_cost(args.quick, Path(args.fixtures))
    print(f"\n(a) decode cost per line, {source}, median of repetitions")
    base = dict(decode)["json.loads (dict)"]
    for name, us in decode:
        print(f"  {name:<30} {us:7.2f} us/line  ({us / base:4.2f}x json.loads)")

    all_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hookrunner-bench-") as tmp:

        def consumer_spec(consumer: str, **fields: Any) -> dict[str, Any]:
            spec = {"consumer": consumer, "base": server.base_url, **fields}
            if consumer == JOURNALED:  # a journal file of its own, new, in the run's temporary folder
                path = Path(tmp) / f"journal-{len(all_runs) + 1}.db"
                spec.update(journal=str(path), config={"state": {"path": str(path)}})
            return spec

        t0 = time.perf_counter()
        server = Server(plan.script(), Path(tmp))
        print(f"\nsimulator: `hookrunner simulate` subprocess (pid {server.proc.pid}, its CPU not counted in the "
              f"consumers'), {server.base_url}, ready in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        try:
            rows = []
            # b. flood, alternating the runner (journal off, on) and bare
            for index, (label, n, events) in enumerate(plan.floods):
                runs: dict[str, list[dict[str, Any]]] = {consumer: [] for consumer in CONSUMERS}
                for rnd in range(plan.rounds):
                    shift = rnd % len(CONSUMERS)
                    for consumer in CONSUMERS[shift:] + CONSUMERS[:shift]:
                        spec = consumer_spec(consumer, mode="flood", calls=plan.take(f"FLOOD{index}", n),
                                             expected=n * events)  # fmt: skip
                        result = run_child(spec, server)
                        result.update(scenario=label, round=rnd + 1)
                        runs[consumer].append(result)
                        all_runs.append(result)
                        _progress(label, result)
                rows.append((label, runs))

            # c. slow plugin on a flood: the runner only
            label, n, events, delay = plan.slow
            spec = {"consumer": "runner", "base": server.base_url, "mode": "slow", "sleep": delay,
                    "calls": plan.take("SLOW", n), "expected": n * events}  # fmt: skip
            slow = run_child(spec, server)
            slow["scenario"] = label
            all_runs.append(slow)
            _progress(label, slow)

            # d. paced latency, alternating
            label, n, rate, seconds = plan.paced
            paced: dict[str, list[dict[str, Any]]] = {consumer: [] for consumer in CONSUMERS}
            for rnd in range(plan.paced_rounds):
                shift = rnd % len(CONSUMERS)
                for consumer in CONSUMERS[shift:] + CONSUMERS[:shift]:
                    spec = consumer_spec(consumer, mode="paced", calls=plan.paced_ids(n),
                                         expected=n * (int(rate * seconds) + 2))  # fmt: skip
                    result = run_child(spec, server)
                    result.update(scenario=label, round=rnd + 1)
                    paced[consumer].append(result)
                    all_runs.append(result)
                    _progress(label, result)
        finally:
            server.stop()

    print(f"\n(b) flood: all events at at=0; median of {plan.rounds} alternating runs per consumer; "
          "CPU and RSS of the consumer process only")  # fmt: skip
    print(f"  {'scenario':<16} {'consumer':<14} {'CPU us/ev':>9} {'events/s':>9} {'peak RSS':>9} {'RSS start':>9} "
          f"{'srv us/ev':>9}  complete")  # fmt: skip
    journal_ratios: list[tuple[str, float]] = []
    for label, runs in rows:
        for consumer, results in runs.items():
            complete = sum(r["events"] == r["expected"] and not r["errors"] for r in results)
            print(f"  {label:<16} {consumer:<14} {median(results, 'cpu_us_per_event'):9.1f} "
                  f"{median(results, 'events_per_s'):9.0f} {median(results, 'peak_rss_mib'):7.1f}Mi "
                  f"{median(results, 'rss_start_mib'):7.1f}Mi {median(results, 'server_cpu_us_per_event'):9.1f}  "
                  f"{complete}/{len(results)}")  # fmt: skip
        runner_cpu = median(runs["runner"], "cpu_us_per_event")
        ratios = ", ".join(f"{runner_cpu / median(runs[c], 'cpu_us_per_event'):.2f}x {c}" for c in CONSUMERS[2:])
        print(f"  {'':<16} runner CPU per event = {ratios}")
        line, ratio = journal_on_off(runs["runner"], runs[JOURNALED])
        journal_ratios.append((label, ratio))
        print(f"  {'':<16} {line}")

    label, n, events, delay = plan.slow
    wire, held, kept = event_sizes(events - 2)
    total = n * events
    print(f"\n(c) {label}, runner only: {slow['events']}/{slow['expected']} events in {slow['wall_s']:.1f} s. The "
          f"server writes each call's whole stream at once:\n  {total * wire / 2**20:.0f} MiB on the wire; "
          f"~{total * held / 2**20:.0f} MiB if every event were held decoded ({held:.0f} B each); "
          f"the runner keeps ~{kept:.0f} B an event after dispatch\n  (dedupe id + transcript turn) = "
          f"~{total * kept / 2**20:.0f} MiB of expected growth over the run (bounded per call by SEEN_IDS_KEPT)")  # fmt: skip
    print(f"  RSS at start {slow['rss_start_mib']:.1f} Mi, at 10 % {slow.get('rss_at_10pct_mib', float('nan')):.1f} Mi, "
          f"at 50 % {slow.get('rss_at_50pct_mib', float('nan')):.1f} Mi, at 100 % {slow['rss_end_mib']:.1f} Mi, "
          f"peak {slow['peak_rss_mib']:.1f} Mi")  # fmt: skip
    growth = slow["peak_rss_mib"] - slow.get("rss_at_10pct_mib", float("nan"))
    print(f"  growth from 10 % to the peak: {growth:.0f} MiB, against ~{0.9 * total * kept / 2**20:.0f} MiB of bookkeeping "
          f"for the last 90 % of the events and ~{0.9 * total * held / 2**20:.0f} MiB had they been buffered")  # fmt: skip

    print(f"\n(d) {plan.paced[0]}: plugin time minus the simulator's timestamp (scheduled send time, ms resolution); "
          f"{plan.paced_rounds} run(s) per consumer")  # fmt: skip
    print(f"  {'':<14} {'all events':^26} {'steady (from 2 s to end-1 s)':^28}")
    print(f"  {'consumer':<14} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'CPU us/ev':>9} {'peak RSS':>9}  events")  # fmt: skip
    nan = float("nan")
    for consumer, results in paced.items():
        for r in results:
            a, b = r.get("latency_ms", {}), r.get("steady_latency_ms", {})
            print(f"  {consumer:<14} {a.get('p50', nan):8.1f} {a.get('p99', nan):8.1f} {a.get('max', nan):8.1f}  "
                  f"{b.get('p50', nan):8.1f} {b.get('p99', nan):8.1f} {b.get('max', nan):8.1f} "
                  f"{r['cpu_us_per_event']:9.1f} {r['peak_rss_mib']:7.1f}Mi  {r['events']}/{r['expected']}")  # fmt: skip
    line, ratio = journal_on_off(paced["runner"], paced[JOURNALED])
    journal_ratios.append((plan.paced[0], ratio))
    print(f"  {line}")

    def p99(results: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key]["p99"] for r in results) if all(r.get(key) for r in results) else nan

    off, on = paced["runner"], paced[JOURNALED]
    print(f"  journal on/off p99 latency: all events {p99(on, 'latency_ms'):.1f} / {p99(off, 'latency_ms'):.1f} ms "
          f"= {p99(on, 'latency_ms') / p99(off, 'latency_ms'):.2f}x, steady {p99(on, 'steady_latency_ms'):.1f} / "
          f"{p99(off, 'steady_latency_ms'):.1f} ms = {p99(on, 'steady_latency_ms') / p99(off, 'steady_latency_ms'):.2f}x")  # fmt: skip

    print(f"\n(e) the journal of the {JOURNALED} runs: what the runner itself keeps there (no plugin here submits "
          "outbox messages: see\n  bench_webhook.py)\n" + JOURNAL_LEGEND)  # fmt: skip
    for line in journal_table([r for r in all_runs if r["consumer"] == JOURNALED], lambda r: f"{r['scenario']} #{r['round']}"):
        print(line)

    print("\njournal on/off, runner CPU per event: " + ", ".join(f"{label} {ratio:.2f}x" for label, ratio in journal_ratios)
          + f" (the issue's target: at most {JOURNAL_TARGET:.2f}x)")  # fmt: skip
    for label, ratio in journal_ratios:
        if ratio > JOURNAL_TARGET:
            print(f"FLAG: {label}: the journal costs {ratio:.2f}x the runner's CPU per event without it "
                  f"(target {JOURNAL_TARGET:.2f}x)")  # fmt: skip

    problems = [r for r in all_runs if r["errors"] or r["events"] != r["expected"]]
    for r in problems:
        print(f"INCOMPLETE: {r['scenario']} {r['consumer']}: {r['events']}/{r['expected']} events; {r['errors'][:3]}")
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in all_runs) + "\n")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def journal_on_off(off: list[dict[str, Any]], on: list[dict[str, Any]]) -> tuple[str, float]:
    """One line comparing the runner's CPU per event with the journal on and off (medians, and per round: the
    two runs of a round are close in time), and the ratio of the medians."""
    on_cpu, off_cpu = median(on, "cpu_us_per_event"), median(off, "cpu_us_per_event")
    ratio = on_cpu / off_cpu
    rounds = {r["round"]: r["cpu_us_per_event"] for r in off}
    paired = [r["cpu_us_per_event"] / rounds[r["round"]] for r in on if r["round"] in rounds]
    per_round = f" (per round: {', '.join(f'{x:.2f}x' for x in paired)})" if len(paired) > 1 else ""
    return f"journal on/off: runner CPU {on_cpu:.1f} / {off_cpu:.1f} us/ev = {ratio:.2f}x{per_round}", ratio


def _progress(label: str, result: dict[str, Any]) -> None:
    print(f"  .. {label:<32} {result['consumer']:<14} {result['events']:>7}/{result['expected']:<7} events "
          f"{result['wall_s']:6.2f} s  {result['cpu_us_per_event']:6.1f} us/ev", file=sys.stderr, flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
