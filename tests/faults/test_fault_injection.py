"""The runner under a seeded random mix of every fault the simulator, the plugins and a webhook receiver can
produce, over 200 concurrent calls, held to the invariants of ``invariants.py``.

``HOOKRUNNER_FAULT_SEED=N`` runs another seed; ``benchmarks/bench_faults.py`` sweeps many. A failure names the
seed, the call and the events or messages concerned, and says how to run that seed again.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import trio

from hookrunner._simulator import SentFrame, parse_script
from hookrunner._core.stats import Stats

from .harness import FaultRun, Submitted, run_faults
from .invariants import check, client_ends, report
from .mix import CALL_FAULTS, HANG_SECONDS, canary_id, chaos, describe_faults, fault_mix

__all__ = ["fault_mix"]  # the generator, for `from faults.test_fault_injection import fault_mix`

SEED = int(os.environ.get("HOOKRUNNER_FAULT_SEED", "1"))
CALLS = 200


def faults_of_mix(seed: int, calls: int) -> Counter[str]:
    """How many calls got each fault, and how many events each plugin fault."""
    counts: Counter[str] = Counter()
    for call in fault_mix(seed, calls).calls:
        described = describe_faults(call)
        for name, key in (
            ("storm", "fail_first"), ("drop", "drop_after"), ("end", "end_after"), ("partial", "partial_after"),
            ("stall", "stall_after"), ("malformed", "malformed_after"), ("oversized", "oversized_after"),
            ("duplicates", "duplicate ids"), ("surrogate", "lone surrogate"), ("live", "late_join=live"),
            ("reconnect storm", "fail_reconnects"), ("huge retry-after", "retry_after=3600"),
        ):  # fmt: skip
            counts[name] += key in described
        for event in call.events:
            tags = chaos(event.fields)
            counts["raise " + tags["raise"] if tags.get("raise") == "SystemExit" else "raise"] += "raise" in tags
            counts["hang" if tags.get("sleep") == HANG_SECONDS else "sleep"] += "sleep" in tags
    return counts


def test_a_fault_mix_is_its_seed_and_spreads_every_fault_over_the_calls() -> None:
    script = fault_mix(7, CALLS)
    assert script == fault_mix(7, CALLS) and script != fault_mix(8, CALLS)
    assert len(script.calls) == CALLS + 1 and len({call.id for call in script.calls}) == CALLS + 1
    canary = script.calls[-1]
    assert canary.id == canary_id(7) and describe_faults(canary) == "no faults"
    assert canary.end_at > max(call.end_at for call in script.calls[:-1])  # it ends last
    counts = faults_of_mix(7, CALLS)
    for fault in [*CALL_FAULTS, "reconnect storm", "huge retry-after", "raise", "sleep", "hang"]:
        assert counts[fault] >= 1, (fault, counts)
    assert counts["raise SystemExit"] == 1  # one BaseException per run
    faulty = sum(describe_faults(call) != "no faults" for call in script.calls)
    assert 0.6 * CALLS < faulty < CALLS  # most calls have faults, and some none


async def test_two_hundred_calls_under_a_seeded_fault_mix_keep_every_invariant(tmp_path: Path) -> None:
    script = fault_mix(SEED, CALLS)
    started = trio.current_time()
    run = await run_faults(script, tmp_path, seed=SEED, deadline=40.0)
    problems = check(run)
    assert not problems, report(run, problems)
    assert trio.current_time() - started < 50
    # The faults did happen: a simulator fault that silently stopped working cannot make this pass.
    stats = run.stats
    assert stats.duplicates_skipped and stats.malformed_lines and stats.reconnects, report(run, ["no faults seen"])
    assert sum(stats.hook_errors.values()) and sum(stats.hook_timeouts.values()), report(run, ["no plugin faults"])
    assert ("SystemExit" in {name for _, _, name in run.raised}) and run.dead_letters, report(run, ["no failures"])
    assert len(run.accepted) > len(run.submitted) / 2  # and most messages still got through


# --- the checker itself, on made-up runs -------------------------------------------------------------------------


def one_call_run(frames: list[SentFrame], got: list[str], ends: dict[int, str] | None = None) -> FaultRun:
    """A run of one call whose every plugin got ``got``, that ended normally."""
    script = parse_script({"calls": [{"id": "CALL-X", "events": [{"at": 0, "event_type": "step"}]}]})
    run = FaultRun(seed=99, script=script, exit_code=0, runner_state="stopped", canary="none")
    run.stats = Stats()
    run.stats.calls_finished["ended"] = 1
    run.sent = {"CALL-X": frames}
    run.ends = {"CALL-X": ends if ends is not None else {1: "closed", 2: "closed"}}
    run.received = {name: {"CALL-X": list(got)} for name in ("chaos-recorder", "chaos-slow", "chaos-raiser")}
    run.finished = {"CALL-X": ["ended"]}
    return run


def event(connection: int, event_id: str | None, event_type: str = "step") -> SentFrame:
    return SentFrame(connection, "event", 100, event_type if event_id else "sse_init", event_id)


def test_the_checker_names_the_call_and_the_events_no_counter_accounts_for() -> None:
    frames = [event(1, None), event(1, "e0"), event(1, "e1"), event(1, "e2"), event(1, "close", "sse_close")]
    problems = check(one_call_run(frames, ["sse_init", "e0", "e2", "close"]))
    assert problems == [
        "seed 99: CALL-X: sent but never reached any plugin, and no counter accounts for them: e1 (no faults)"
    ]


def test_the_checker_takes_a_replay_as_once_and_flags_twice_and_out_of_order() -> None:
    frames = [event(1, None), event(1, "e0"), event(1, "e1"), event(2, None), event(2, "e0"), event(2, "e1")]
    assert check(one_call_run(frames, ["sse_init", "e0", "e1"])) == []
    problems = check(one_call_run(frames, ["sse_init", "e1", "e0", "e1"]))
    assert "seed 99: CALL-X: chaos-recorder got events more than once: e1 (no faults)" in problems
    assert any("chaos-recorder got events out of order: e0 (sent #1) after e1 (sent #2)" in p for p in problems)


def test_what_went_only_to_a_stream_the_client_left_is_unread_but_not_after_what_it_read() -> None:
    # Connection 1 idle-timed out (the client left): e2 may never have been read. Connection 2 skipped it (live).
    frames = [event(1, None), event(1, "e0"), event(1, "e1"), event(1, "e2"), event(2, None), event(2, "e3")]
    ends = {1: "client", 2: "closed"}
    assert check(one_call_run(frames, ["sse_init", "e0", "e1", "e3"], ends)) == []
    # e1 was followed by e2, which the client read from that stream alone: e1 was read too, and then lost.
    problems = check(one_call_run(frames, ["sse_init", "e0", "e2", "e3"], ends))
    assert problems == [
        "seed 99: CALL-X: sent but never reached any plugin, and no counter accounts for them: e1 (no faults)"
    ]


def test_a_closed_stream_the_client_asked_for_again_was_not_read_to_its_end_but_the_last_one_was() -> None:
    # The client gave up waiting for connection 1's answer (a loaded loop), and the server, behind, then wrote the
    # whole stream; the runner stops at sse_close, so asking again shows it never read that one. Connection 2's
    # answer was a 400: the call was over.
    frames = [event(1, None), event(1, "e0"), event(1, "close", "sse_close")]
    run = one_call_run(frames, [], {1: "closed"})
    run.finished = {"CALL-X": ["completed"]}
    run.stats.calls_finished = Counter(completed=1)
    run.statuses = [("CALL-X", 503), ("CALL-X", 200), ("OTHER", 200), ("CALL-X", 400)]
    assert client_ends(run, "CALL-X") == {1: "client"}
    assert check(run) == []
    run.statuses = [("CALL-X", 503), ("CALL-X", 200)]  # nothing asked after it: it was read, and e0 was lost
    assert client_ends(run, "CALL-X") == {1: "closed"}
    assert "seed 99: CALL-X: sent but never reached any plugin, and no counter accounts for them: sse_init, e0, close (no faults)" in check(run)


def test_the_checker_counts_oversized_lines_against_malformed_lines() -> None:
    big = SentFrame(1, "oversized", 200_000, "step", "big")
    frames = [event(1, None), event(1, "e0"), big, event(1, "e1")]
    run = one_call_run(frames, ["sse_init", "e0", "e1"])
    run.max_event_size = 65_536
    run.stats.malformed_lines = run.stats.oversized_events = 1
    assert check(run) == []
    run.stats.malformed_lines = 0
    assert check(run) == [
        "seed 99: stats.malformed_lines is 0; the simulator sent 0 malformed lines, 1 oversized lines of events no "
        "plugin got and 0 half lines: between 1 and 1 should count"
    ]
    run = one_call_run(frames, ["sse_init", "e0", "big", "e1"])
    run.max_event_size = 65_536
    assert check(run) == [
        "seed 99: CALL-X: oversized event big (200000 bytes) reached plugins although runner.max_event_bytes is 65536"
    ]


def test_a_webhook_message_neither_received_nor_dead_lettered_is_named() -> None:
    frames = [event(1, None), event(1, "e0", "user_transcription"), event(1, "e1", "user_transcription")]
    run = one_call_run(frames, ["sse_init", "e0", "e1"])
    run.submitted = [Submitted("chaos", "CALL-X", f"msg_{n}", f"e{n}", None) for n in range(2)]
    run.accepted = {"msg_0"}
    run.outbox_counts = {"chaos": {"delivered": 1, "dead_lettered": 0, "pending": 1}}
    assert check(run) == [
        "seed 99: CALL-X: webhook messages neither received nor dead-lettered: msg_1 (e1)",
        "seed 99: outbox chaos: 2 messages submitted, 1 delivered + 0 dead-lettered = 1, 1 still pending at the end",
    ]
    run.dead_letters = [{"endpoint": "chaos", "id": "msg_1"}]
    run.outbox_counts = {"chaos": {"delivered": 1, "dead_lettered": 1, "pending": 0}}
    assert check(run) == []


def test_an_escaped_exception_and_an_unfinished_call_say_what_and_where() -> None:
    run = one_call_run([event(1, None)], ["sse_init"])
    run.exit_code, run.finished, run.runner_state = None, {}, "serving"

    def hook() -> None:
        raise SystemExit("chaos: SystemExit on CALL-X_3")

    try:
        try:
            hook()
        except SystemExit as exc:
            raise BaseExceptionGroup("run", [exc]) from None
    except BaseExceptionGroup as group:
        run.escaped = group
    problems = check(run)
    assert problems[0].startswith(
        "seed 99: an exception escaped runner.run(): SystemExit: chaos: SystemExit on CALL-X_3 "
        "(at test_fault_injection.py:"
    ), problems[0]
    assert problems[0].endswith(" in hook)")
    assert problems[1] == "seed 99: 1 calls never finished (no on_call_finished): CALL-X (no faults)"
