"""What a fault-injection run must show, whatever the faults: ``check(run)`` returns one line per broken promise,
naming the seed, the call and the events or messages concerned (an empty list: every invariant held).

1. **Events**: every event the simulator sent for a call (its frames, duplicates removed, first sending first)
   reaches every plugin once and in order, or its loss is accounted for by a counter the runner exposes: an
   oversized line by ``malformed_lines`` (and ``oversized_events`` where the runner has it), an event received but
   not dispatched by ``events_spooled`` (and the spool file), any other by a gap counter (a ``Stats`` field named
   for gaps or lost events, where the runner has one). What the simulator never sent (a live reconnect skipped it,
   the call ended while its stream was down) is not the runner's to deliver.
2. **The runner ends normally**: nothing escapes ``runner.run()``, it does not outlive the deadline, every call
   finishes once (ended or completed), the exit code is 0, and the canary (no faults, ends last) gets its whole
   stream.
3. **Webhook messages**: every message the webhook plugin submitted was received (the receiver answered it 2xx, by
   webhook-id; duplicates allowed) or is in the dead-letter file, and its outbox's counts add up with nothing
   pending.
4. **Plugin failures are counted**: every raise (``SystemExit`` included) in the raising plugin's ``hook_errors``,
   every hang in the slow plugin's ``hook_timeouts``, and no other plugin blamed.
5. **Text**: events reach plugins with text UTF-8 can carry (a lone surrogate replaced at decode).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from typing import Any

from hookrunner._simulator import SentFrame, SimCall

from .harness import PLUGINS, WEBHOOK_EVENTS, FaultRun, frame_key
from .mix import describe_faults

__all__ = ["check", "summary", "report", "expected_stream", "Expected", "client_ends"]

OK_REASONS = ("ended", "completed")
SHOWN = 12  # ids shown per line; the rest are counted
LINES = 25  # lines per invariant when a run went badly wrong; the rest are counted


@dataclasses.dataclass
class Expected:
    """What a call's frames promise: the event keys in order (duplicates removed) and their types; per oversized
    event its frames' indexes and its line's length; and which frames the client may not have read.

    A client reads a prefix of each stream. Of a stream the server ended (closed, ended, cut) it read every frame;
    of one the client left first (``ends`` says ``"client"``: an idle timeout gave up on it; ``client_ends`` also
    says so of a closed stream the client asked for again) it read up to the
    last frame it certainly read, the last one whose event reached the recorder and was sent on no other
    connection: the frames after that may have been written after the client stopped reading. An event all of
    whose frames are such is ``unread``, not lost.
    """

    keys: list[str]
    types: dict[str, str | None]
    oversized: dict[str, tuple[list[int], int]]
    maybe_unread: list[bool]  # per frame
    unread: set[str]


def expected_stream(
    frames: list[SentFrame], ends: dict[int, str] | None = None, recorded: set[str] | None = None
) -> Expected:
    ends, recorded = ends or {}, recorded or set()
    keys: list[str] = []
    types: dict[str, str | None] = {}
    oversized: dict[str, tuple[list[int], int]] = {}
    carriers: dict[str, list[int]] = defaultdict(list)  # key -> frame indexes
    for index, frame in enumerate(frames):
        if frame.kind not in ("event", "oversized"):
            continue
        key = frame_key(frame)
        carriers[key].append(index)
        if frame.kind == "oversized":
            oversized.setdefault(key, ([], frame.size))[0].append(index)
        if key not in types:
            types[key] = frame.event_type
            keys.append(key)
    horizon: dict[int, int] = {}  # connection the client left -> index of the last frame it certainly read
    for connection in {frame.connection for frame in frames}:
        if ends.get(connection, "client") != "client":
            continue  # a stream the server ended was read to its end (what was open at a cut-short end: left)
        horizon[connection] = max(
            (
                index
                for key, indexes in carriers.items()
                if key in recorded and {frames[i].connection for i in indexes} == {connection}
                for index in indexes
            ),
            default=-1,
        )
    maybe_unread = [
        frame.connection in horizon and index > horizon[frame.connection] for index, frame in enumerate(frames)
    ]
    unread = {key for key, indexes in carriers.items() if all(maybe_unread[i] for i in indexes)}
    return Expected(keys, types, oversized, maybe_unread, unread)


def client_ends(run: FaultRun, call_id: str) -> dict[int, str]:
    """How each of the call's streams ended, as the client lived them: the simulator's ``ends``, except that a
    stream the server closed (its sse_close written) is ``"client"`` when the call was asked for again after it.

    The runner stops at sse_close and never asks again, so such a stream's end was not read: on a loaded loop
    the client gave up waiting for its answer while the server, still behind, wrote it into a socket nobody read.
    The server cannot see that (its writes succeed); the later request shows it. The n-th 200 in ``statuses``
    is the call's connection n (the simulator numbers a stream as it answers 200, with nothing in between).
    """
    ends = dict(run.ends.get(call_id, {}))
    connection, asked_after = 0, {}
    for asked, status in run.statuses:
        if asked != call_id:
            continue
        for opened in asked_after:
            asked_after[opened] = True
        if status == 200:
            connection += 1
            asked_after[connection] = False
    for opened, asked_again in asked_after.items():
        if asked_again and ends.get(opened) == "closed":
            ends[opened] = "client"
    return ends


def check(run: FaultRun) -> list[str]:
    """Every invariant, in the order above; each line starts with the seed."""
    problems: list[str] = []
    for invariant in (_runner_ended, _events_delivered, _webhook_accounted, _failures_counted, _text_valid):
        found = invariant(run)
        if len(found) > LINES:
            found = found[:LINES] + [f"... and {len(found) - LINES} more like these"]
        problems += found
    return [f"seed {run.seed}: {problem}" for problem in problems]


def ended_normally(run: FaultRun) -> bool:
    return run.escaped is None and not run.timed_out


# --- 2. the runner ends normally -------------------------------------------------------------------------------


def _runner_ended(run: FaultRun) -> list[str]:
    problems = []
    calls = run.script.calls
    if run.escaped is not None:
        problems.append(f"an exception escaped runner.run(): {_describe_exception(run.escaped)}")
    unfinished = [call for call in calls if not run.finished.get(call.id)]
    if run.timed_out:
        late = [call for call in calls if call.id in set(run.unfinished)]
        problems.append(
            f"the runner was still running at the deadline and had to be stopped; {len(late)} calls had not "
            f"finished: {_calls(late)}"
        )
    elif unfinished:
        problems.append(f"{len(unfinished)} calls never finished (no on_call_finished): {_calls(unfinished)}")
    if run.exit_code is not None and run.exit_code != 0:
        problems.append(f"exit code {run.exit_code}, expected 0 (every call ends, or had completed)")
    if ended_normally(run) and run.runner_state != "stopped":
        problems.append(f"runner.state is {run.runner_state!r} after run() returned, expected 'stopped'")
    for call in calls:
        reasons = run.finished.get(call.id, [])
        if len(reasons) > 1:
            problems.append(f"{call.id}: on_call_finished called {len(reasons)} times ({', '.join(reasons)})")
        if reasons and reasons[0] not in OK_REASONS:
            problems.append(
                f"{call.id}: finished as {reasons[0]!r}, expected ended or completed ({describe_faults(call)})"
            )
    finished = sum(run.stats.calls_finished.values())
    if ended_normally(run) and finished != len(calls):
        problems.append(f"stats.calls_finished counts {finished} calls, the runner followed {len(calls)}")
    canary = next((call for call in calls if call.id == run.canary), None)
    if canary is not None and ended_normally(run):
        expected = expected_stream(run.sent.get(canary.id, []), client_ends(run, canary.id)).keys
        got = run.received.get("chaos-recorder", {}).get(canary.id, [])
        if got != expected or run.finished.get(canary.id) != ["ended"]:
            missing = [key for key in expected if key not in got]
            how = f"is missing {_ids(missing)}" if missing else "got them out of order or twice"
            problems.append(
                f"{canary.id}: the canary (no faults, ends last) {how} and finished as "
                f"{', '.join(run.finished.get(canary.id, [])) or 'never'}: the runner was not fully alive at the end"
            )
    return problems


# --- 1. events ---------------------------------------------------------------------------------------------------


def _events_delivered(run: FaultRun) -> list[str]:
    problems: list[str] = []
    stats = run.stats
    webhook: dict[str, list[str]] = defaultdict(list)
    for submitted in run.submitted:
        webhook[submitted.call_id].append(submitted.event_key or "\0no event_id")
    # Lines the runner should have counted as malformed (oversized ones too): at least those certainly read, at
    # most all that were sent (and half lines cut by a drop, should a reader count them).
    malformed = {"low": 0, "high": 0}
    oversized_lines = {"low": 0, "high": 0}
    unexplained: dict[str, list[str]] = {}
    for call in run.script.calls:
        if not run.finished.get(call.id) and not ended_normally(run):
            continue  # reported by _runner_ended: a run cut short says nothing about what this call was owed
        frames = run.sent.get(call.id, [])
        recorded = set(run.received.get("chaos-recorder", {}).get(call.id, []))
        expected = expected_stream(frames, client_ends(run, call.id), recorded)
        spooled = set(run.spooled.get(call.id, []))
        skipped = {key for key in expected.oversized if key not in recorded}  # the runner dropped the line
        for index, frame in enumerate(frames):
            skipped_line = frame.kind == "oversized" and frame_key(frame) in skipped
            if frame.kind == "malformed" or skipped_line:
                malformed["low"] += not expected.maybe_unread[index]
                malformed["high"] += 1
            if skipped_line:
                oversized_lines["low"] += not expected.maybe_unread[index]
                oversized_lines["high"] += 1
            if frame.kind == "partial":
                malformed["high"] += 1
        bound = run.max_event_size
        for key, (_, size) in expected.oversized.items():
            if bound is not None and size - len("data: \n\n") > bound and key in recorded:
                problems.append(
                    f"{call.id}: oversized event {key} ({size} bytes) reached plugins although runner.max_event_bytes "
                    f"is {bound}"
                )
        plugins: list[tuple[str, list[str], list[str]]] = [
            (name, expected.keys, run.received.get(name, {}).get(call.id, [])) for name in PLUGINS
        ]
        wanted = [key for key in expected.keys if expected.types.get(key) in WEBHOOK_EVENTS]
        plugins.append(("webhook", wanted, webhook.get(call.id, [])))
        for plugin, keys, got in plugins:
            problems += _compare(call, plugin, keys, got)
            missing = [key for key in keys if key not in set(got)]
            dispatched_elsewhere = [key for key in missing if key in recorded]
            if plugin != "chaos-recorder" and dispatched_elsewhere:
                problems.append(
                    f"{call.id}: {_ids(dispatched_elsewhere)} reached chaos-recorder but not {plugin} "
                    f"({describe_faults(call)})"
                )
            if plugin == "chaos-recorder":
                accounted = skipped | spooled | expected.unread
                lost = [key for key in missing if key not in accounted]
                if lost:
                    unexplained[call.id] = lost
    gaps = _gap_count(stats)
    total_unexplained = sum(len(keys) for keys in unexplained.values())
    if total_unexplained and total_unexplained > gaps:
        by_id = {call.id: call for call in run.script.calls}
        for call_id, keys in unexplained.items():
            problems.append(
                f"{call_id}: sent but never reached any plugin, and no counter accounts for them: {_ids(keys)} "
                f"({describe_faults(by_id[call_id])})"
            )
        if gaps:
            problems.append(f"the runner's gap counters say {gaps} events were lost; {total_unexplained} are missing")
    if ended_normally(run) and not malformed["low"] <= stats.malformed_lines <= malformed["high"]:
        problems.append(
            f"stats.malformed_lines is {stats.malformed_lines}; the simulator sent {_frames(run, 'malformed')} "
            f"malformed lines, {oversized_lines['high']} oversized lines of events no plugin got and "
            f"{_frames(run, 'partial')} half lines: between {malformed['low']} and {malformed['high']} should count"
        )
    oversized_counted = getattr(stats, "oversized_events", None)
    if ended_normally(run) and oversized_counted is not None and not (
        oversized_lines["low"] <= oversized_counted <= oversized_lines["high"]
    ):
        problems.append(
            f"stats.oversized_events is {oversized_counted}; between {oversized_lines['low']} and "
            f"{oversized_lines['high']} oversized lines of events no plugin got were read"
        )
    spooled_total = sum(len(keys) for keys in run.spooled.values())
    if stats.events_spooled != spooled_total:
        problems.append(f"stats.events_spooled is {stats.events_spooled}; the spool file holds {spooled_total} events")
    return problems


def _compare(call: SimCall, plugin: str, expected: list[str], got: list[str]) -> list[str]:
    """Once, known, in order; what is missing is judged by the caller."""
    problems = []
    counts = Counter(got)
    twice = [key for key, n in counts.items() if n > 1]
    if twice:
        problems.append(f"{call.id}: {plugin} got events more than once: {_ids(twice)} ({describe_faults(call)})")
    position = {key: index for index, key in enumerate(expected)}
    unknown = [key for key in counts if key not in position]
    if unknown:
        problems.append(f"{call.id}: {plugin} got events the simulator never sent: {_ids(unknown)}")
    known = [key for key in counts if key in position]
    for before, after in zip(known, known[1:]):
        if position[after] < position[before]:
            problems.append(
                f"{call.id}: {plugin} got events out of order: {after} (sent #{position[after]}) after {before} "
                f"(sent #{position[before]}) ({describe_faults(call)})"
            )
            break
    return problems


def _gap_count(stats: Any) -> int:
    """The sum of the runner's counters of events it knows it lost (none yet: gaps, events_lost, ...)."""
    total = 0
    for item in dataclasses.fields(stats):
        if "gap" in item.name or item.name.startswith("events_lost"):
            value = getattr(stats, item.name)
            total += sum(value.values()) if isinstance(value, Counter) else int(value)
    return total


def _frames(run: FaultRun, kind: str) -> int:
    return sum(1 for frames in run.sent.values() for frame in frames if frame.kind == kind)


# --- 3. webhook messages -----------------------------------------------------------------------------------------


def _webhook_accounted(run: FaultRun) -> list[str]:
    problems: list[str] = []
    dead = {(record.get("endpoint"), record.get("id")) for record in run.dead_letters}
    missing: dict[str, list[str]] = defaultdict(list)
    for message in run.submitted:
        if message.message_id not in run.accepted and (message.outbox, message.message_id) not in dead:
            missing[message.call_id].append(f"{message.message_id} ({message.event_key})")
    if missing and not ended_normally(run):  # on_shutdown never closed the outbox: one line, not one per call
        problems.append(
            f"{sum(map(len, missing.values()))} webhook messages of {len(missing)} calls neither received nor "
            f"dead-lettered: the run did not end normally, so the outbox was never closed"
        )
        missing.clear()
    for call_id, messages in missing.items():
        problems.append(f"{call_id}: webhook messages neither received nor dead-lettered: {_ids(messages)}")
    submitted_ids = {(message.outbox, message.message_id) for message in run.submitted}
    strays = [f"{endpoint}/{msg_id}" for endpoint, msg_id in dead if (endpoint, msg_id) not in submitted_ids]
    if strays:
        problems.append(f"dead letters for messages never submitted: {_ids(strays)}")
    per_outbox = Counter(message.outbox for message in run.submitted)
    for name, counts in run.outbox_counts.items():
        total = counts["delivered"] + counts["dead_lettered"]
        if ended_normally(run) and (total != per_outbox[name] or counts["pending"]):
            problems.append(
                f"outbox {name}: {per_outbox[name]} messages submitted, {counts['delivered']} delivered + "
                f"{counts['dead_lettered']} dead-lettered = {total}, {counts['pending']} still pending at the end"
            )
    return problems


# --- 4. plugin failures ------------------------------------------------------------------------------------------


def _failures_counted(run: FaultRun) -> list[str]:
    problems = []
    errors, timeouts = run.stats.hook_errors, run.stats.hook_timeouts
    raised = Counter(name for _, _, name in run.raised)
    if errors.get("chaos-raiser", 0) != len(run.raised) and ended_normally(run):
        shown = ", ".join(f"{n} {name}" for name, n in sorted(raised.items()))
        problems.append(
            f"chaos-raiser raised {len(run.raised)} times ({shown}); hook_errors counts "
            f"{errors.get('chaos-raiser', 0)}"
        )
    if timeouts.get("chaos-slow", 0) < len(run.hung) and ended_normally(run):
        problems.append(
            f"chaos-slow hung {len(run.hung)} times (each longer than runner.hook_timeout); hook_timeouts counts "
            f"{timeouts.get('chaos-slow', 0)}"
        )
    for plugin, n in errors.items():
        if plugin != "chaos-raiser" and n:
            problems.append(f"plugin {plugin}: {n} hook errors, but only chaos-raiser raises (see the run's log)")
    for plugin, n in timeouts.items():
        if plugin != "chaos-slow" and n:
            problems.append(f"plugin {plugin}: {n} hook timeouts, but only chaos-slow is slow (see the run's log)")
    return problems


# --- 5. text -----------------------------------------------------------------------------------------------------


def _text_valid(run: FaultRun) -> list[str]:
    by_call: dict[str, list[str]] = defaultdict(list)
    for call_id, key in run.unencodable:
        by_call[call_id].append(key)
    return [
        f"{call_id}: events reached plugins with text UTF-8 cannot carry (a lone surrogate): {_ids(keys)}"
        for call_id, keys in by_call.items()
    ]


# --- counts --------------------------------------------------------------------------------------------------


def summary(run: FaultRun) -> dict[str, Any]:
    """The run's counts, for the benchmark's table and a failing test's message."""
    stats = run.stats
    sent = {call.id: expected_stream(run.sent.get(call.id, []), client_ends(run, call.id)) for call in run.script.calls}
    scripted = sum(  # distinct script events, sse_init and sse_close
        len({e.fields.get("event_id") or i for i, e in enumerate(call.events)}) + 2 for call in run.script.calls
    )
    sent_events = sum(len(e.keys) - len(e.oversized) for e in sent.values())
    recorded = run.received.get("chaos-recorder", {})
    unread = sum(len(e.unread - set(recorded.get(call_id, []))) for call_id, e in sent.items())
    dead = {record.get("id") for record in run.dead_letters}
    return {
        "seed": run.seed,
        "calls": len(run.script.calls),
        "elapsed_s": round(run.elapsed, 2),
        "exit_code": run.exit_code,
        "frames": sum(len(frames) for frames in run.sent.values()),
        "events_sent": sent_events,
        "not_sent": scripted - sent_events,  # a live reconnect skipped them, or the call ended while down
        "unread": unread,  # written only to streams the client had left (an idle timeout): never received
        "dispatched": sum(len(keys) for keys in run.received.get("chaos-recorder", {}).values()),
        "duplicates_skipped": stats.duplicates_skipped,
        "malformed_lines": stats.malformed_lines,
        "oversized_sent": _frames(run, "oversized"),
        "reconnects": stats.reconnects,
        "hook_errors": sum(stats.hook_errors.values()),
        "hook_timeouts": sum(stats.hook_timeouts.values()),
        "webhook_submitted": len(run.submitted),
        "webhook_received": sum(1 for m in run.submitted if m.message_id in run.accepted),
        "dead_lettered": len(dead),
        "receiver_requests": run.requests,
        "spooled": stats.events_spooled,
        "max_loop_lag_s": round(run.max_loop_lag, 3),
    }


def report(run: FaultRun, problems: list[str]) -> str:
    """A failing run as a person reads it: the problems, the counts, where the log is, how to run it again."""
    lines = [f"{len(problems)} invariant failures with seed {run.seed} ({len(run.script.calls)} calls):"]
    lines += [f"  {problem}" for problem in problems]
    lines.append(f"counts: {summary(run)}")
    if run.log_file is not None:
        lines.append(f"the run's warnings and errors: {run.log_file}")
    lines.append(
        f"again: HOOKRUNNER_FAULT_SEED={run.seed} .venv/bin/pytest tests/faults -k invariant, or "
        f".venv/bin/python benchmarks/bench_faults.py --first-seed {run.seed} --seeds 1 "
        f"--calls {len(run.script.calls) - 1}"
    )
    return "\n".join(lines)


# --- wording -------------------------------------------------------------------------------------------------


def _ids(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def _calls(calls: list[SimCall]) -> str:
    return "; ".join(f"{call.id} ({describe_faults(call)})" for call in calls[:SHOWN]) + (
        f"; and {len(calls) - SHOWN} more" if len(calls) > SHOWN else ""
    )


def _describe_exception(exc: BaseException) -> str:
    """Each leaf of a group as ``Type: message (at file:line in function)``."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(exc)
    parts = []
    for leaf in leaves[:5]:
        tb = leaf.__traceback__
        where = ""
        if tb is not None:
            while tb.tb_next is not None:
                tb = tb.tb_next
            code = tb.tb_frame.f_code
            where = f" (at {code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno} in {code.co_name})"
        parts.append(f"{type(leaf).__name__}: {leaf}{where}")
    return "; ".join(parts) + (f"; and {len(leaves) - 5} more" if len(leaves) > 5 else "")
