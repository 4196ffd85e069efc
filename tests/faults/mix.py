"""A seed turned into a simulator script: calls made of a voice agent's usual events, each with a random subset of
the simulator's faults, and the plugins' own faults carried in the events themselves.

The script goes through the simulator's own model (``parse_script``), so the fault keys are checked like a
hand-written script's. Plugin faults are a ``chaos`` field on an event (Atoms' unknown fields reach plugins in
``event.raw``): ``{"sleep": s}`` for the slow plugin, ``{"raise": "ValueError"}`` for the raising one; exactly
one event of a run raises ``SystemExit``, and one call is answered 429 with ``Retry-After: 3600`` (more may be, by
chance). The last call, the canary, has no fault at all and ends last: it shows the runner still serving once
everything else has hit it.

Times: the script runs at ``SPEED`` (script seconds per wall second); stalls and Retry-After are wall seconds.
"""

from __future__ import annotations

import random
from typing import Any

from hookrunner._simulator import Script, SimCall, parse_script
from hookrunner.testing import TEST_API_KEY

__all__ = [
    "fault_mix", "describe_faults", "canary_id", "chaos", "CALL_FAULTS", "PLUGIN_FAULTS", "SPEED", "STALL_SECONDS",
    "HUGE_RETRY_AFTER", "HANG_SECONDS", "OVERSIZED_BYTES",
]  # fmt: skip

SPEED = 10.0
KEEPALIVE = 0.1  # wall seconds between keep-alive comments: far below the runner's idle timeout in the harness
STALL_SECONDS = 2.5  # wall seconds of silence: well over the harness's runner.idle_timeout (1.5 s)
LIVE_LEAD_IN = 20.0  # script seconds before a live call's first event: the runner has subscribed by then
HUGE_RETRY_AFTER = 3600.0  # a server asking for an hour: the runner must cap it (runner.reconnect.max_retry_after)
HANG_SECONDS = 5.0  # a plugin that hangs this long is cut by runner.hook_timeout (0.5 s in the harness)
OVERSIZED_BYTES = (150_000, 400_000)  # lines at least twice the harness's runner.max_event_bytes (64 KiB)

#: Faults of a call's stream, with the chance that a call gets each (independently: a random subset).
CALL_FAULTS = {
    "storm": 0.15,  # fail_first 1-3 with 500/502/503/429, maybe Retry-After
    "drop": 0.15,  # drop_after
    "end": 0.06,  # end_after: a clean end without sse_close
    "partial": 0.08,  # partial_after: half a line, no newline, then a cut
    "stall": 0.08,  # stall_after, STALL_SECONDS
    "malformed": 0.10,  # malformed_after
    "oversized": 0.08,  # oversized_after
    "duplicates": 0.15,  # script events sent twice with the same event_id
    "surrogate": 0.05,  # a transcript cut inside an emoji: a lone surrogate
    "live": 0.20,  # start = 0, late_join = "live": a reconnect skips what was due meanwhile (never sent)
}
#: The keys that make a call's stream other than plain.
STREAM_KEYS = frozenset({
    "start", "fail_first", "fail_reconnects", "drop_after", "end_after", "partial_after", "stall_after",
    "malformed_after", "oversized_after",
})  # fmt: skip
#: Given a fault that ends the first connection: the reconnects meet a storm too (fail_reconnects).
RECONNECT_STORM = 0.4
#: Of the storms, those that ask for HUGE_RETRY_AFTER.
HUGE = 0.1
#: Per event: the slow plugin sleeps a little, hangs, or the raising plugin raises.
PLUGIN_FAULTS = {"sleep": 0.08, "hang": 0.01, "raise": 0.03}
RAISED = ("RuntimeError", "ValueError", "KeyError", "ZeroDivisionError", "AttributeError")


def chaos(fields: Any) -> dict[str, Any]:
    """An event's plugin faults (its ``chaos`` field, or nothing)."""
    value = fields.get("chaos") if hasattr(fields, "get") else None
    return value if isinstance(value, dict) else {}


def canary_id(seed: int) -> str:
    return f"CALL-FAULT-{seed}-canary"


def fault_mix(seed: int, calls: int = 200) -> Script:
    """``calls`` calls with random faults, then the canary; the same seed gives the same script."""
    rng = random.Random(seed)
    tables = [_call(rng, f"CALL-FAULT-{seed}-{index:03d}") for index in range(calls)]
    if tables:
        # One SystemExit per run, in the first half (later calls see its aftermath), on a call whose stream has
        # no fault, so that the event surely reaches the plugins. That call also lasts until nearly the end: on a
        # starved loop its first connection can go unanswered past the idle timeout while the simulator plays the
        # call to nobody, and a call that is still active when the runner reconnects is replayed from its start.
        first_half = tables[: max(1, calls // 2)]
        sure = [table for table in first_half if not STREAM_KEYS & set(table)]
        exiting = rng.choice(sure or first_half)
        event = rng.choice(exiting["events"][1:])
        event["chaos"] = {**event.get("chaos", {}), "raise": "SystemExit"}
        event["chaos"].pop("sleep", None)
        exiting["events"][-1]["at"] = max(table["events"][-1]["at"] for table in tables) + 5.0
        # And one rate-limit answer asking for an hour, whatever else the dice gave.
        others = [table for table in tables if "fail_first" not in table and table is not exiting]
        rng.choice(others or tables).update(fail_first=1, fail_status=429, retry_after=HUGE_RETRY_AFTER)
    longest = max((table["events"][-1]["at"] for table in tables), default=1.0)
    tables.append(_canary(rng, canary_id(seed), longest + 10.0))
    data = {
        "api_key": TEST_API_KEY,
        "speed": SPEED,
        "keepalive": KEEPALIVE,
        "timestamp_format": rng.choice(["iso", "epoch"]),
        "framing": rng.choice(["data", "event-message"]),
        "calls": tables,
    }
    return parse_script(data, source=f"<fault mix, seed {seed}>")


def _conversation(
    rng: random.Random, call_id: str, *, turns: int, spacing: tuple[float, float]
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"at": 0.0, "event_type": "call_start", "agent_id": "agent-faults", "direction": "inbound"}
    ]
    at = 0.0
    for turn in range(turns):
        at += rng.uniform(*spacing)
        events.append({"at": round(at, 3), "event_type": "tts_completed", "tts_text": f"{call_id} agent {turn}",
                       "tts_latency": rng.randint(80, 400)})  # fmt: skip
        if rng.random() < 0.5:
            at += rng.uniform(0.1, 0.5)
            events.append({"at": round(at, 3), "event_type": "user_interim_transcription",
                           "interim_transcription_text": "i wa"})  # fmt: skip
        at += rng.uniform(*spacing)
        events.append({"at": round(at, 3), "event_type": "user_transcription",
                       "user_transcription_text": f"{call_id} caller {turn}"})  # fmt: skip
    at += rng.uniform(*spacing)
    events.append({"at": round(at, 3), "event_type": "call_end", "metadata": {"turns": turns}})
    return events


def _call(rng: random.Random, call_id: str) -> dict[str, Any]:
    events = _conversation(rng, call_id, turns=rng.randint(3, 8), spacing=(0.3, 2.0))
    table: dict[str, Any] = {"id": call_id}
    picked = {name for name, chance in CALL_FAULTS.items() if rng.random() < chance}

    for event in events[1:]:
        tags: dict[str, Any] = {}
        if rng.random() < PLUGIN_FAULTS["sleep"]:
            tags["sleep"] = round(rng.uniform(0.001, 0.01), 4)
        elif rng.random() < PLUGIN_FAULTS["hang"]:
            tags["sleep"] = HANG_SECONDS
        if rng.random() < PLUGIN_FAULTS["raise"]:
            tags["raise"] = rng.choice(RAISED)
        if tags:
            event["chaos"] = tags
    if "duplicates" in picked:  # before any *_after is chosen: the copies are script events too
        for copy in range(rng.randint(1, 2)):
            index = rng.randrange(1, len(events) - 1)
            original = events[index]
            original.setdefault("event_id", f"{call_id}_dup_{copy}")
            later = rng.randrange(index + 1, len(events))
            events.insert(later + 1, {**original, "at": events[later]["at"]})  # the same event, sent again later
    if "surrogate" in picked:
        finals = [event for event in events if event["event_type"] == "user_transcription"]
        rng.choice(finals)["user_transcription_text"] += " \ud83d"  # the first half of an emoji's pair

    n = len(events)
    for name, key in (
        ("drop", "drop_after"), ("end", "end_after"), ("partial", "partial_after"), ("stall", "stall_after"),
        ("malformed", "malformed_after"), ("oversized", "oversized_after"),
    ):  # fmt: skip
        if name in picked:
            table[key] = rng.randint(1, n - 1)
    if "stall_after" in table:
        table["stall_seconds"] = STALL_SECONDS
    if "oversized_after" in table:
        table["oversized_bytes"] = rng.randint(*OVERSIZED_BYTES)
    ends_first_stream = bool({"drop_after", "end_after", "partial_after", "stall_after"} & set(table))
    reconnect_storm = ends_first_stream and rng.random() < RECONNECT_STORM
    if "storm" in picked:
        table["fail_first"] = rng.randint(1, 3)
    if reconnect_storm:
        table["fail_reconnects"] = rng.randint(1, 3)
    if "storm" in picked or reconnect_storm:
        table["fail_status"] = rng.choice([500, 502, 503, 429])
        retry_after = rng.choice([None, 0.05, 0.2, HUGE_RETRY_AFTER if rng.random() < HUGE else 0.1])
        if retry_after is not None:
            table["retry_after"] = retry_after
    if "live" in picked:
        table["start"] = 0.0
        table["late_join"] = "live"
        for event in events:  # the call runs whoever listens: start talking once the runner is there
            event["at"] = round(event["at"] + LIVE_LEAD_IN, 3)
    table["events"] = events
    return table


def _canary(rng: random.Random, call_id: str, until: float) -> dict[str, Any]:
    """No fault of any kind, and it ends after every other call (``until`` script seconds)."""
    events = _conversation(rng, call_id, turns=6, spacing=(0.5, 1.0))
    events[-1]["at"] = max(events[-1]["at"], until)
    return {"id": call_id, "events": events}


def describe_faults(call: SimCall) -> str:
    """The faults a call was given, as the script keys and per-event tags read: for failure messages."""
    parts = []
    if call.fail_first:
        parts.append(f"fail_first={call.fail_first}x{call.fail_status}")
    if call.fail_reconnects:
        parts.append(f"fail_reconnects={call.fail_reconnects}x{call.fail_status}")
    if (call.fail_first or call.fail_reconnects) and call.retry_after is not None:
        parts.append(f"retry_after={call.retry_after:g}")
    for key in ("drop_after", "end_after", "partial_after", "stall_after", "malformed_after", "oversized_after"):
        if getattr(call, key) is not None:
            parts.append(f"{key}={getattr(call, key)}")
    if call.start is not None:
        parts.append(f"late_join={call.late_join}")
    ids = [event.fields.get("event_id") for event in call.events if event.fields.get("event_id")]
    if len(ids) != len(set(ids)):
        parts.append("duplicate ids " + ",".join(sorted({i for i in ids if ids.count(i) > 1})))
    for index, event in enumerate(call.events):
        tags = chaos(event.fields)
        if "raise" in tags:
            parts.append(f"raise {tags['raise']} @{index}")
        if tags.get("sleep") == HANG_SECONDS:
            parts.append(f"hang @{index}")
        if any(isinstance(value, str) and _has_surrogate(value) for value in event.fields.values()):
            parts.append(f"lone surrogate @{index}")
    return ", ".join(parts) or "no faults"


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)
