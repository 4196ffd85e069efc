#!/usr/bin/env python3
"""What the bundled ``keywords`` plugin costs per event, for ten rules and for ten thousand phrases.

    .venv/bin/python benchmarks/bench_keywords.py [--quick] [--events N] [--rounds N] [--json FILE] [--profile]
        [--fixtures DIR]

In-process, no server: the example streams' calls (``tests/streams/*.jsonl``, or ``--fixtures DIR``; decoded once
with ``decode_event``) are replayed, repeated under fresh call ids, into the real ``KeywordsPlugin`` hooks, the way
the runner calls them (``on_startup`` with a stand-in ``App``, ``on_call_subscribed``, the transcript hooks,
``on_call_finished``). The stand-in's ``emit_trigger`` records ``time.perf_counter_ns()``, so arrival -> trigger is
the time from entering the hook to the trigger being handed to the runner (the runner's own dispatch, and the
notifier, come after). Each scenario runs in a fresh child process (this script with ``--child``), so the build's
RSS and the GC state are its own; scenarios alternate in rotating order over rounds, and the table shows the median
of the rounds.

Per scenario:
  build   ``parse_rules`` and ``PhraseMatcher`` timed alone; the memory they hold (tracemalloc, which sees
          pyahocorasick's allocations) and the RSS growth of the real ``on_startup``;
  scan    ``PhraseMatcher.find(text)`` (every rule) per event: p50/p99;
  split   the parts of ``find``, each timed over all events: normalising (plain / numbers as digits), the
          automaton scan with its word-boundary checks, the fuzzy phrases, the regexes; and the plugin's
          per-event rule filter (which rules listen to this speaker and kind of event);
  hooks   events/s through the hooks, hook time p50/p99, and arrival -> trigger p50/p99/max for the events
          that fired.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import FIXTURES, KEYWORD_RULES, bench_arguments, fixtures_argument, median_at, rss_mib, stream_lines

# --- the rules -----------------------------------------------------------------------------------------------

#: (a) Ten rules as an operations team would write them for these calls (``benchlib.KEYWORD_RULES``, which
#: ``compare.py``'s realistic stack runs too): word phrases, two fuzzy rules, a pattern, and an absence rule.
REALISTIC_RULES: list[dict[str, Any]] = KEYWORD_RULES

#: (b, c) Ten word rules of the shapes a large list is split into (speaker, interim), each with phrases that
#: occur in the fixtures' transcripts (so triggers fire) ahead of its generated ones. "tuesday at three pm" and
#: "between 8 and 10" are said the other way round ("3 pm", "eight and ten"): they match only with numbers=true.
SHAPES: list[tuple[str, bool, list[str]]] = [
    ("user", True, ["cancel my subscription", "internet has been dropping"]),
    ("user", True, ["speak to a manager", "someone used my card"]),
    ("user", True, ["move my appointment", "charge I didn't make"]),
    ("user", True, ["every evening", "next Tuesday"]),
    ("user", False, ["keeps happening", "415 555 0134"]),
    ("user", False, ["tomorrow morning", "that's all"]),
    ("user", False, ["I think someone", "perfect"]),
    ("agent", False, ["block the card", "technician visit", "between 8 and 10"]),
    ("agent", False, ["outages in your area", "Tuesday at three pm", "transferring you to a supervisor"]),
    ("any", True, ["Northwind Bank", "Brightline Internet", "account number", "line test"]),
]
BRANDS = ["brightline", "northwind", "ortiz", "ava", "clearwave", "summit", "harbor", "pinecrest"]
PRODUCTS = ["fiber", "router", "modem", "card", "bundle", "plan", "package", "account", "line", "visit",
            "appointment", "subscription", "voucher", "extender"]  # fmt: skip
TIERS = ["plus", "pro", "max", "lite", "gold", "platinum", "basic", "premium", "home", "business"]


def fixture_vocabulary() -> list[str]:
    from hookrunner_plugins.keywords.normalize import normalize

    words = {word for text in fixture_texts() for word in normalize(text).text.split()}
    return sorted(words)


def many_phrases(per_rule: int, seed: int = 5) -> list[list[str]]:
    """``per_rule`` distinct phrases for each of the ten ``SHAPES``: its phrases from the transcripts first, then
    generated ones: numbered product names ("northwind fiber 417"), a fixture word + product + tier ("evening
    router plus"), and three fixture words ("hear outages tomorrow": prefixes the automaton walks on real text)."""
    from hookrunner_plugins.keywords.normalize import normalize_phrase

    rng = random.Random(seed)
    vocabulary = fixture_vocabulary()
    seen = {normalize_phrase(phrase) for _, _, hits in SHAPES for phrase in hits}
    lists: list[list[str]] = []
    for _, _, hits in SHAPES:
        phrases = list(hits)
        while len(phrases) < per_rule:
            kind = rng.random()
            if kind < 0.5:
                phrase = f"{rng.choice(BRANDS)} {rng.choice(PRODUCTS)} {rng.randint(1, 999)}"
            elif kind < 0.8:
                phrase = f"{rng.choice(vocabulary)} {rng.choice(PRODUCTS)} {rng.choice(TIERS)}"
            else:
                phrase = " ".join(rng.choice(vocabulary) for _ in range(3))
            key = normalize_phrase(phrase)
            if key not in seen:
                seen.add(key)
                phrases.append(phrase)
        lists.append(phrases[:per_rule])
    return lists


def shaped_rules(phrase_lists: list[list[str]], *, numbers: bool = False) -> list[dict[str, Any]]:
    return [
        {"name": f"list-{index}", "phrases": phrases, "speaker": speaker, "interim": interim, "numbers": numbers}
        for index, ((speaker, interim, _), phrases) in enumerate(zip(SHAPES, phrase_lists))
    ]


def one_rule_per_phrase(phrase_lists: list[list[str]]) -> list[dict[str, Any]]:
    """The same phrases, one rule each (what a config generated from a catalogue would look like)."""
    rules = []
    for (speaker, interim, _), phrases in zip(SHAPES, phrase_lists):
        for phrase in phrases:
            rules.append({"name": f"p{len(rules)}", "phrases": [phrase], "speaker": speaker, "interim": interim})
    return rules


def scenario(name: str) -> tuple[list[dict[str, Any]], float]:
    """The rules of scenario ``name`` and the share of ``--events`` to replay (the slow stress case gets less)."""
    if name == "10 rules":
        return REALISTIC_RULES, 1.0
    if name == "10 phrases":
        return shaped_rules(many_phrases(1)), 1.0
    if name == "10,000 phrases":
        return shaped_rules(many_phrases(1000)), 1.0
    if name == "10,000 numbers":
        return shaped_rules(many_phrases(1000), numbers=True), 1.0
    if name == "10,000 rules":
        return one_rule_per_phrase(many_phrases(1000)), 0.1
    raise SystemExit(f"unknown scenario {name!r}")


SCENARIOS = {
    "10 rules": "(a) 10 realistic rules: 7 word (1 absence), 2 fuzzy, 1 pattern",
    "10 phrases": "    10 word rules x 1 phrase: the baseline for the rows below",
    "10,000 phrases": "(b) 10 word rules x 1,000 phrases",
    "10,000 numbers": "(c) the same with numbers = true",
    "10,000 rules": "    the same phrases as 10,000 one-phrase rules (stress; fewer events)",
}


# --- the fixtures --------------------------------------------------------------------------------------------


def fixture_lines() -> list[tuple[str, list[str]]]:
    """(call id, its JSON lines) per example stream file in ``FIXTURES``."""
    stream_lines(FIXTURES)  # exits if there are none
    calls = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines:
            calls.append((json.loads(lines[0]).get("call_id") or path.stem, lines))
    return calls


def fixture_texts() -> list[str]:
    """Every transcript text of the fixtures (user interim and final, agent speech), in stream order."""
    texts = []
    for _, lines in fixture_lines():
        for line in lines:
            raw = json.loads(line)
            for key in ("interim_transcription_text", "user_transcription_text", "tts_text"):
                if raw.get(key):
                    texts.append(raw[key])
    return texts


# --- one scenario (inside a --child process) -----------------------------------------------------------------

KINDS = {"user_interim_transcription": "interim", "user_transcription": "final", "tts_completed": "tts"}


class StandInApp:
    """What ``on_startup`` gets: the plugin's settings, a ``start_soon`` that starts nothing (the absence timer is
    not what is measured) and an ``emit_trigger`` that records when each trigger left the plugin. Triggers are not
    kept (thousands of them would lengthen every full GC collection), only their times, and which rules fired on
    the calls in ``watch``."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.name = "keywords"
        self.settings = settings
        self.emitted: list[int] = []  # perf_counter_ns of each trigger
        self.watch: set[str] = set()
        self.fired: dict[str, int] = {}  # "rule (event kind)" -> triggers on the watched calls

    def emit_trigger(self, trigger: Any) -> None:
        self.emitted.append(time.perf_counter_ns())
        if trigger.call_id in self.watch:
            key = f"{trigger.rule} ({KINDS.get(trigger.event_type, trigger.event_type)})"
            self.fired[key] = self.fired.get(key, 0) + 1

    def start_soon(self, fn: Any, *args: Any) -> None:
        pass


def _percentiles_us(ns: list[int]) -> dict[str, float]:
    values = sorted(ns)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": values[len(values) // 2] / 1000,
        "p99": values[min(len(values) - 1, int(len(values) * 0.99))] / 1000,
        "max": values[-1] / 1000,
        "mean": sum(values) / len(values) / 1000,
    }


def child_main(spec: dict[str, Any]) -> None:
    import gc
    import tracemalloc

    from hookrunner_plugins.keywords import KeywordsPlugin
    from hookrunner_plugins.keywords.matcher import PhraseMatcher, RuleMatchSpec
    from hookrunner_plugins.keywords.normalize import normalize
    from hookrunner_plugins.keywords.settings import parse_rules
    from rapidfuzz import fuzz

    from hookrunner._run.context import CallContext
    from hookrunner._core.events import decode_event

    global FIXTURES
    FIXTURES = Path(spec.get("fixtures", FIXTURES))  # before scenario(): its generated phrases use the streams' words
    rules_settings, share = scenario(spec["scenario"])
    settings = {"rules": rules_settings}
    n_events = max(1000, int(spec["events"] * share))

    # The fixtures' transcript events, decoded once: what reaches the plugin's hooks.
    calls = []
    for call_id, lines in fixture_lines():
        events = [decode_event(line, call_id, None) for line in lines]
        hooked = [event for event in events if type(event).HOOK and hasattr(KeywordsPlugin, type(event).HOOK)]
        calls.append((call_id, hooked))  # an event type without a class (HOOK None) reaches only on_event
    per_pass = sum(len(events) for _, events in calls)
    passes = math.ceil(n_events / per_pass)
    stream = [event for _ in range(passes) for _, events in calls for event in events]

    def specs(rules: list[Any]) -> Any:  # as KeywordsPlugin.on_startup builds them
        return (RuleMatchSpec(r.index, r.phrases, r.patterns, r.fuzzy, r.threshold, r.numbers) for r in rules)

    # build: the real on_startup (RSS growth), then each part alone (time), then held memory (tracemalloc)
    gc.collect()
    rss0 = rss_mib()
    plugin, app = KeywordsPlugin(), StandInApp(settings)
    t0 = time.perf_counter()
    plugin.on_startup(app)
    startup_s = time.perf_counter() - t0
    rss_delta = rss_mib() - rss0
    t0 = time.perf_counter()
    rules, problems = parse_rules(settings)
    parse_s = time.perf_counter() - t0
    if problems:
        raise SystemExit(f"{spec['scenario']}: {problems[:3]}")
    t0 = time.perf_counter()
    matcher = PhraseMatcher(specs(rules))
    matcher_s = time.perf_counter() - t0
    tracemalloc.start()
    held_plugin = KeywordsPlugin()
    held_plugin.on_startup(StandInApp(settings))
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del held_plugin
    nodes = sum(automaton.get_stats()["nodes_count"] for automaton in matcher._automata.values())

    # scan: PhraseMatcher.find over every event's text, all rules
    texts = [event.text for event in stream]
    find = matcher.find
    for text in texts[:per_pass]:
        find(text)  # warm-up
    scan_ns = []
    clock = time.perf_counter_ns
    for text in texts:
        t0 = clock()
        find(text)
        scan_ns.append(clock() - t0)

    # split: each part of find() alone, over the same texts (mirrors PhraseMatcher.find)
    forms_needed = sorted(set(matcher._automata) | {numbers for *_, numbers in matcher._fuzzy})
    split: dict[str, float] = {}
    normalized: dict[bool, list[Any]] = {}
    for numbers in forms_needed:
        t0 = clock()
        normalized[numbers] = [normalize(text, numbers=numbers) for text in texts]
        split["normalize numbers" if numbers else "normalize"] = (clock() - t0) / len(texts) / 1000
    t0 = clock()
    hits = 0
    for numbers, automaton in matcher._automata.items():
        for form in normalized[numbers]:
            hits += len(list(PhraseMatcher._scan(automaton, form, None)))
    split["automaton"] = (clock() - t0) / len(texts) / 1000
    raw_hits = sum(
        1 for numbers, automaton in matcher._automata.items() for form in normalized[numbers]
        for _ in automaton.iter(form.text)
    )  # fmt: skip
    fuzzy_match = getattr(matcher, "_fuzzy_match", None)
    t0 = clock()
    for rule, phrase, key, numbers in matcher._fuzzy:
        cutoff = matcher._thresholds[rule]
        for form in normalized[numbers]:
            if fuzzy_match is not None:
                fuzzy_match(rule, phrase, key, form)
            else:
                fuzz.partial_ratio_alignment(key, form.text, score_cutoff=cutoff)
    split["fuzzy"] = (clock() - t0) / len(texts) / 1000
    t0 = clock()
    for _, pattern in matcher._patterns:
        for text in texts:
            pattern.search(text)
    split["regex"] = (clock() - t0) / len(texts) / 1000
    speakers = [("agent" if event.event_type == "tts_completed" else "user", "interim" in event.event_type)
                for event in stream]  # fmt: skip
    listening = {  # built once, as KeywordsPlugin.on_startup does
        (speaker, interim): frozenset(
            r.index for r in rules if r.hears(speaker) and (not interim or (r.interim and r.absent_within is None))
        )
        for speaker in ("user", "agent")
        for interim in (False, True)
    }
    fired: set[int] = set()
    t0 = clock()
    for speaker, interim in speakers:  # as KeywordsPlugin._scan does: a lookup, minus rules fired this turn
        chosen = listening[(speaker, interim)]
        if fired:
            chosen = chosen - fired
    split["rule filter"] = (clock() - t0) / len(texts) / 1000
    del normalized

    # hooks: the plugin as the runner drives it
    def replay(limit: int | None = None) -> tuple[float, list[int], list[int], int]:
        hook_ns: list[int] = []
        trigger_ns: list[int] = []
        at_end = 0
        emitted = app.emitted
        count = 0
        t_start = time.perf_counter()
        for rep in range(passes):
            for call_id, events in calls:
                call = CallContext(id=f"{call_id}#{rep}")
                plugin.on_call_subscribed(call)
                for event in events:
                    hook = getattr(plugin, event.HOOK)
                    before = len(emitted)
                    t0 = clock()
                    hook(event, call)
                    t1 = clock()
                    hook_ns.append(t1 - t0)
                    if len(emitted) > before:
                        trigger_ns.append(emitted[before] - t0)
                    count += 1
                before = len(emitted)
                plugin.on_call_finished(call, "ended")
                at_end += len(emitted) - before
                if limit and count >= limit:
                    return time.perf_counter() - t_start, hook_ns, trigger_ns, at_end
        return time.perf_counter() - t_start, hook_ns, trigger_ns, at_end

    app.emitted.clear()
    replay(per_pass)  # warm-up
    app.emitted.clear()
    app.watch = {f"{call_id}#0" for call_id, _ in calls}
    pauses: list[tuple[int, int]] = []  # (generation, ns) of each collection during the replay
    gc_started = [0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = clock()
        else:
            pauses.append((info["generation"], clock() - gc_started[0]))

    gc.collect()
    gc.callbacks.append(on_gc)
    wall, hook_ns, trigger_ns, at_end = replay()
    gc.callbacks.remove(on_gc)

    result = {
        "scenario": spec["scenario"],
        "rules": len(rules),
        "phrases": matcher.phrase_count,
        "patterns": sum(len(r.patterns) for r in rules),
        "fuzzy_phrases": len(matcher._fuzzy),
        "automaton_nodes": nodes,
        "startup_ms": startup_s * 1000,
        "parse_ms": parse_s * 1000,
        "matcher_ms": matcher_s * 1000,
        "traced_mib": traced / 2**20,
        "rss_delta_mib": rss_delta,
        "events": len(hook_ns),
        "events_per_pass": per_pass,
        "calls_per_pass": len(calls),
        "wall_s": wall,
        "events_per_s": len(hook_ns) / wall,
        "hook_us": _percentiles_us(hook_ns),
        "scan_us": _percentiles_us(scan_ns),
        "trigger_us": _percentiles_us(trigger_ns),
        "triggers": len(app.emitted),
        "triggers_at_call_end": at_end,
        "fired_per_pass": app.fired,
        "gc_during_hooks": [sum(1 for g, _ in pauses if g == gen) for gen in range(3)],
        "gc_max_ms": max((ns for _, ns in pauses), default=0) / 1e6,
        "split_us": split,
        "automaton_hits_per_event": raw_hits / len(texts),
        "word_hits_per_event": hits / len(texts),
    }
    if spec.get("profile"):
        import cProfile
        import io
        import pstats

        app.emitted.clear()
        profiler = cProfile.Profile()
        profiler.enable()
        replay(min(len(stream), 5000))
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        result["profile"] = out.getvalue()
    print(json.dumps(result), flush=True)


# --- the whole run -------------------------------------------------------------------------------------------


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"child {spec['scenario']} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--events", type=int, help="transcript events per scenario (default 20,000; quick 5,000)")
        parser.add_argument("--profile", action="store_true", help="also print a cProfile of the hooks per scenario")
        fixtures_argument(parser)

    args = bench_arguments(
        __doc__,
        child_main,
        quick_help="5,000 events, one round (about 15 s)",
        rounds_help="runs per scenario (default 3; quick 1)",
        extra=options,
    )
    if args is None:
        return
    stream_lines(Path(args.fixtures))  # exits at once, not in the first child, if the directory holds no streams

    started = time.perf_counter()
    events = args.events or (5000 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    names = list(SCENARIOS)
    print(f"hookrunner keywords benchmark ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}; {events} transcript events per scenario, median of {rounds} "
          f"round(s)", flush=True)  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rnd in range(rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            result = run_child({"scenario": name, "events": events, "profile": args.profile and rnd == 0,
                                "fixtures": args.fixtures})  # fmt: skip
            runs[name].append(result)
            print(f"  .. {name:<16} {result['events']:>6} events {result['wall_s']:6.2f} s "
                  f"{result['hook_us']['mean']:8.1f} us/ev", file=sys.stderr, flush=True)  # fmt: skip

    first = {name: results[0] for name, results in runs.items()}
    r0 = first[names[0]]
    print(f"\nexample streams: {r0['events_per_pass']} transcript events per pass of the {r0['calls_per_pass']} calls "
          f"in {args.fixtures} (user interim, user final, "
          f"tts_completed), replayed under fresh call ids; hooks called directly (no runner, no decode)")  # fmt: skip
    for name in names:
        print(f"  {name:<16} {SCENARIOS[name]}")

    print("\nbuild (on_startup's two parts timed alone; memory: held after on_startup)")
    print(f"  {'scenario':<16} {'rules':>6} {'phrases':>7} {'AC nodes':>8} {'parse ms':>9} {'matcher ms':>10} "
          f"{'startup ms':>10} {'traced MiB':>10} {'RSS +MiB':>8}")  # fmt: skip
    for name, results in runs.items():
        r = results[0]
        print(f"  {name:<16} {r['rules']:>6} {r['phrases']:>7} {r['automaton_nodes']:>8} {median_at(results, 'parse_ms'):9.1f} "
              f"{median_at(results, 'matcher_ms'):10.1f} {median_at(results, 'startup_ms'):10.1f} "
              f"{median_at(results, 'traced_mib'):10.2f} {median_at(results, 'rss_delta_mib'):8.1f}")  # fmt: skip

    print("\nper event (us); hooks = the plugin's hook, entry to return; trigger = hook entry -> emit_trigger, "
          "first trigger of each event that fired;\n  GC: the longest collection during the hooks (GC stays on: a full "
          "collection walks this whole process, so the max columns depend on its heap, not on the rules)")  # fmt: skip
    print(f"  {'scenario':<16} {'events':>6} {'events/s':>9} {'hook p50':>8} {'hook p99':>8} {'scan p50':>8} "
          f"{'scan p99':>8} {'fired':>6} {'trig p50':>8} {'trig p99':>8} {'trig max':>8}  {'GC max ms':>9} "
          f"GC runs 0/1/2")  # fmt: skip
    for name, results in runs.items():
        r = results[0]
        print(f"  {name:<16} {r['events']:>6} {median_at(results, 'events_per_s'):9.0f} {median_at(results, 'hook_us', 'p50'):8.1f} "
              f"{median_at(results, 'hook_us', 'p99'):8.1f} {median_at(results, 'scan_us', 'p50'):8.1f} "
              f"{median_at(results, 'scan_us', 'p99'):8.1f} {r['trigger_us']['n']:>6} "
              f"{median_at(results, 'trigger_us', 'p50'):8.1f} {median_at(results, 'trigger_us', 'p99'):8.1f} "
              f"{median_at(results, 'trigger_us', 'max'):8.1f}  {median_at(results, 'gc_max_ms'):9.1f} "
              f"{'/'.join(str(n) for n in r['gc_during_hooks'])}")  # fmt: skip

    parts = ["normalize", "normalize numbers", "automaton", "fuzzy", "regex"]
    print("\ncost split: mean us per event of each part of PhraseMatcher.find, timed alone over the same texts; "
          "'rule filter' is the plugin's per-event selection of listening rules")  # fmt: skip
    print(f"  {'scenario':<16} {'normalize':>9} {'+numbers':>9} {'automaton':>9} {'fuzzy':>9} {'regex':>9} "
          f"{'sum':>7} {'find':>7} {'filter':>9} {'AC hits/ev':>10}")  # fmt: skip
    for name, results in runs.items():
        values = [median_at(results, "split_us", part) for part in parts]
        total = sum(v for v in values if not math.isnan(v))
        cells = " ".join(f"{v:9.1f}" if not math.isnan(v) else f"{'-':>9}" for v in values)
        r = results[0]
        print(f"  {name:<16} {cells} {total:7.1f} {median_at(results, 'scan_us', 'mean'):7.1f} "
              f"{median_at(results, 'split_us', 'rule filter'):9.1f} "
              f"{r['automaton_hits_per_event']:5.2f}/{r['word_hits_per_event']:.2f}")  # fmt: skip

    print("\ntriggers per pass of the example streams (first pass), by rule")
    for name in names:
        fired = first[name]["fired_per_pass"]
        listed = ", ".join(f"{rule} {n}" for rule, n in sorted(fired.items())) or "none"
        print(f"  {name:<16} {sum(fired.values()):>3}: {listed}")

    base = "10 phrases"
    print(f"\nagainst '{base}' (hook mean us/event):")
    base_us = median_at(runs[base], "hook_us", "mean")
    flags = []
    for name in names:
        us = median_at(runs[name], "hook_us", "mean")
        print(f"  {name:<16} {us:8.1f} us  {us / base_us:6.2f}x")
        if name.startswith("10,000") and us > 2 * base_us:
            split = runs[name][0]["split_us"]
            worst = max(split, key=split.get)
            flags.append(f"FLAG: {name}: {us / base_us:.1f}x the cost of {base} per event; the largest part is "
                         f"'{worst}' at {split[worst]:.0f} us/event")  # fmt: skip
    for line in flags:
        print(line)
    if args.profile:
        for name in names:
            print(f"\nprofile, {name} (hooks, up to 5,000 events, cProfile on):\n{first[name].get('profile', '')}")
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for results in runs.values() for r in results) + "\n")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
