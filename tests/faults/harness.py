"""One fault-injection run: the simulator playing a fault mix, the real runner following every call with three
chaos plugins and the bundled webhook plugin, a receiver that fails on purpose, and everything each of them saw.

Everything is real and on loopback, in one trio run: the simulator and the receiver are hypercorn, the runner is
built as ``hookrunner run`` builds it (``hookrunner.testing.make_runner``). What the run leaves behind for the
checker (``invariants.py``) is a ``FaultRun``: the frames the simulator wrote per call, the event keys each plugin
got per call, the webhook messages submitted, the ids the receiver accepted, the dead-letter and spool files, the
runner's counters, its exit code, and whatever escaped ``runner.run()``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from hookrunner import hookimpl
from hookrunner._delivery.dead_letters import read_dead_letters
from hookrunner._delivery.outbox import Outbox, OutboxMessage
from hookrunner._run.runner import Runner
from hookrunner._simulator import Script, SentFrame, running_simulator
from hookrunner._core.stats import Stats
from hookrunner.testing import TEST_API_KEY, Reply, config_table, make_runner, running_receiver

from .mix import HANG_SECONDS, canary_id, chaos

__all__ = [
    "FaultRun", "run_faults", "event_key", "frame_key", "Recording", "Slow", "Raising", "FlakyEndpoint",
    "OutboxTap", "Submitted", "runner_table", "WEBHOOK_EVENTS", "PLUGINS", "HOOK_TIMEOUT", "MAX_EVENT_BYTES",
]  # fmt: skip

log = logging.getLogger("faults.harness")

HOOK_TIMEOUT = 0.5  # runner.hook_timeout: a HANG_SECONDS sleep is cut; the small sleeps are far below it
IDLE_TIMEOUT = 1.5  # runner.idle_timeout: fifteen keep-alives, a loaded loop's worst lag many times; under a stall
MAX_EVENT_BYTES = 64 * 1024  # runner.max_event_bytes: the mix's oversized lines are at least twice as long
MAX_RETRY_AFTER = 0.3  # runner.reconnect.max_retry_after and the endpoint's: what a Retry-After of an hour gets
SHUTDOWN_GRACE = 6.0
#: The event types the webhook endpoint subscribes to: the default selection's finals and agent turns, and the
#: calls' lifecycle (call_end: the last message of a call).
WEBHOOK_EVENTS = ["user_transcription", "tts_completed", "call_end"]
WEBHOOK_SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64: a test secret
#: The plugins' names in the run (``hook_errors`` and ``hook_timeouts`` are keyed by them).
PLUGINS = ("chaos-recorder", "chaos-slow", "chaos-raiser")


def event_key(event: Any) -> str:
    """How the runner tells events apart: the event id; sse_init, which has none, is one per call."""
    if event.event_id is not None:
        return event.event_id
    return "sse_init" if event.event_type == "sse_init" else "\0" + json.dumps(event.raw, sort_keys=True)


class Recording:
    """Records per call the key of every event ``on_event`` got, in order; notes events whose fields UTF-8 cannot
    carry (a lone surrogate) and each call's finish reason."""

    def __init__(self) -> None:
        self.events: dict[str, list[str]] = defaultdict(list)
        self.types: dict[str, str] = {}
        self.unencodable: list[tuple[str, str]] = []
        self.finished: dict[str, list[str]] = defaultdict(list)

    @hookimpl
    def on_event(self, event: Any, call: Any) -> None:
        key = event_key(event)
        self.events[call.id].append(key)
        self.types[key] = event.event_type
        try:
            msgspec.json.encode(event.raw)
        except UnicodeEncodeError:
            self.unencodable.append((call.id, key))

    @hookimpl
    def on_call_finished(self, call: Any, reason: str) -> None:
        self.finished[call.id].append(reason)


class Slow:
    """Sleeps as the event's ``chaos.sleep`` says (a few ms, or a hang the hook timeout must cut); records what it
    got at entry, and which events it hung on."""

    def __init__(self) -> None:
        self.events: dict[str, list[str]] = defaultdict(list)
        self.hung: list[tuple[str, str]] = []

    @hookimpl
    async def on_event(self, event: Any, call: Any) -> None:
        key = event_key(event)
        self.events[call.id].append(key)
        delay = chaos(event.raw).get("sleep", 0)
        if delay >= HANG_SECONDS:
            self.hung.append((call.id, key))
        await trio.sleep(delay)


EXCEPTIONS: dict[str, type[BaseException]] = {
    "RuntimeError": RuntimeError, "ValueError": ValueError, "KeyError": KeyError,
    "ZeroDivisionError": ZeroDivisionError, "AttributeError": AttributeError, "SystemExit": SystemExit,
}  # fmt: skip


class Raising:
    """Raises what the event's ``chaos.raise`` names (once a run: ``SystemExit``); records what it got at entry and
    what it raised on."""

    def __init__(self) -> None:
        self.events: dict[str, list[str]] = defaultdict(list)
        self.raised: list[tuple[str, str, str]] = []  # (call, event key, exception name)

    @hookimpl
    def on_event(self, event: Any, call: Any) -> None:
        key = event_key(event)
        self.events[call.id].append(key)
        name = chaos(event.raw).get("raise")
        if name:
            self.raised.append((call.id, key, name))
            raise EXCEPTIONS[name](f"chaos: {name} on {key}")


class FlakyEndpoint:
    """Answers the webhook's POSTs like an endpoint having a bad day. Each message's fate comes from the seed and
    its webhook-id: 2 % are never accepted (500 to every attempt: retried, then dead-lettered), 2 % are refused
    (400: dead-lettered at once); the rest get, per attempt, 429 asking for an hour (the endpoint's
    max_retry_after must cap it), 503 with a short Retry-After, 500, a connection dropped mid-answer, an answer
    slower than the endpoint's timeout, a slow but timely 200, or a 200. And from 1.0 s to 1.6 s after the start,
    everything is answered 503 (an outage)."""

    OUTAGE = (1.0, 1.6)

    def __init__(self, seed: int, timeout: float) -> None:
        self.seed = seed
        self.timeout = timeout
        self.attempts: dict[str, int] = defaultdict(int)
        self.started = trio.current_time()

    def _unit(self, *parts: object) -> float:
        digest = hashlib.sha256(":".join(map(str, (self.seed, *parts))).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def __call__(self, request: Any) -> Reply:
        msg_id = request.headers.get("webhook-id", "")
        self.attempts[msg_id] += 1
        since = trio.current_time() - self.started
        if self.OUTAGE[0] <= since < self.OUTAGE[1]:
            return Reply(503, {"retry-after": "0.1"})
        fate = self._unit(msg_id)
        if fate < 0.02:
            return Reply(500)
        if fate < 0.04:
            return Reply(400, body=b'{"error": "schema mismatch"}')
        u = self._unit(msg_id, self.attempts[msg_id])
        if u < 0.02:
            return Reply(429, {"retry-after": "3600"})
        if u < 0.08:
            return Reply(503, {"retry-after": "0.05"})
        if u < 0.14:
            return Reply(500)
        if u < 0.18:
            return Reply(200, drop=True)
        if u < 0.22:
            return Reply(200, delay=self.timeout * 1.6)
        if u < 0.30:
            return Reply(200, delay=self.timeout * 0.2)
        return Reply(200)


@dataclass
class Submitted:
    """One webhook message as the plugin handed it to its outbox."""

    outbox: str
    call_id: str
    message_id: str
    event_key: str | None  # the event it is about (its event_id)
    event_type: str | None


class OutboxTap:
    """What every outbox was given (``Outbox.submit``, the public way in), for the duration of ``tapping()``."""

    def __init__(self) -> None:
        self.submitted: list[Submitted] = []
        self.outboxes: dict[str, Outbox] = {}

    @contextmanager
    def tapping(self) -> Iterator[OutboxTap]:
        original = Outbox.submit
        tap = self

        def submit(outbox: Outbox, message: OutboxMessage) -> None:
            tap.outboxes[outbox.name] = outbox
            data = message.body.get("data", {}) if isinstance(message.body, dict) else {}
            tap.submitted.append(
                Submitted(outbox.name, message.key, message.id, data.get("event_id"), data.get("event_type"))
            )
            original(outbox, message)

        Outbox.submit = submit  # type: ignore[method-assign]
        try:
            yield self
        finally:
            Outbox.submit = original  # type: ignore[method-assign]


@dataclass
class FaultRun:
    """Everything a run left behind, for the checker and the benchmark's counts."""

    seed: int
    script: Script
    exit_code: int | None = None
    escaped: BaseException | None = None  # what escaped runner.run() (not cancellation)
    timed_out: bool = False  # still running at the deadline: stopped (runner.stop()), or cancelled
    unfinished: list[str] = field(default_factory=list)  # calls not finished at the deadline
    elapsed: float = 0.0
    stats: Stats = field(default_factory=Stats)
    runner_state: str = ""
    sent: dict[str, list[SentFrame]] = field(default_factory=dict)
    ends: dict[str, dict[int, str]] = field(default_factory=dict)  # call -> connection -> how its stream ended
    statuses: list[tuple[str, int]] = field(default_factory=list)
    subscriptions: dict[str, list[float]] = field(default_factory=dict)  # call -> when each 200 was answered
    received: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # plugin -> call -> event keys
    event_types: dict[str, str] = field(default_factory=dict)  # event key -> type, as the recorder saw them
    finished: dict[str, list[str]] = field(default_factory=dict)  # call -> reasons given to on_call_finished
    unencodable: list[tuple[str, str]] = field(default_factory=list)
    raised: list[tuple[str, str, str]] = field(default_factory=list)
    hung: list[tuple[str, str]] = field(default_factory=list)
    submitted: list[Submitted] = field(default_factory=list)
    outbox_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> delivered, dead_lettered, pending
    accepted: set[str] = field(default_factory=set)  # webhook-ids the receiver answered 2xx
    requests: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    spooled: dict[str, list[str]] = field(default_factory=dict)  # call -> event keys written to the spool file
    max_event_size: int | None = None  # runner.max_event_bytes as the runner read it
    canary: str = ""
    log_file: Path | None = None
    #: The longest the event loop was late waking a 10 ms sleep during the run: a loaded machine (or a blocking
    #: call somewhere) shows here, and explains idle timeouts that are not the stream's fault.
    max_loop_lag: float = 0.0


def runner_table(workdir: Path) -> dict[str, Any]:
    """``[runner]`` for the run: every delay small, so 200 calls and their faults take seconds."""
    return {
        "hook_timeout": HOOK_TIMEOUT,
        "idle_timeout": IDLE_TIMEOUT,
        "shutdown_grace": SHUTDOWN_GRACE,
        "buffer": 8,  # small: the slow plugin's sleeps push back on the streams
        "spool_file": str(workdir / "undispatched.jsonl"),
        "max_event_bytes": MAX_EVENT_BYTES,
        "reconnect": {"initial_delay": 0.02, "max_delay": 0.2, "max_attempts": 12, "max_retry_after": MAX_RETRY_AFTER},
    }


def webhook_table(url: str, workdir: Path, timeout: float) -> dict[str, Any]:
    return {
        "dead_letter": str(workdir / "dead-letters.jsonl"),
        "endpoints": [
            {
                "name": "chaos",
                "url": url,
                "secret": WEBHOOK_SECRET,
                "events": WEBHOOK_EVENTS,
                "timeout": timeout,
                "retry_initial_delay": 0.01,
                "retry_max_delay": 0.1,
                "max_attempts": 5,
                "max_retry_after": MAX_RETRY_AFTER,
                "max_in_flight": 32,
            }
        ],
    }


async def run_faults(script: Script, workdir: Path, *, seed: int, deadline: float = 45.0) -> FaultRun:
    """Run the runner over ``script`` until every call is over (or ``deadline`` s: then it is stopped the graceful
    way, and cut if that does not end it); what happened, for ``invariants.check``."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = FaultRun(seed=seed, script=script, canary=canary_id(seed), log_file=workdir / "run.log")
    recording, slow, raising, tap = Recording(), Slow(), Raising(), OutboxTap()
    handler = logging.FileHandler(run.log_file, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(relativeCreated)8.0f %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("hookrunner")
    logger.addHandler(handler)
    try:
        async with running_simulator(script, api_key=TEST_API_KEY) as sim, running_receiver() as receiver:
            timeout = 0.25
            receiver.respond("/hook", FlakyEndpoint(seed, timeout))
            config = config_table(
                sim.base_url,
                settings={"webhook": webhook_table(receiver.url("/hook"), workdir, timeout)},
                enable=["webhook"],
                runner=runner_table(workdir),
            )
            # The invariants hold the runner to what the stream sent; backfill (events from the stored
            # conversation, after the live ones) has its own tests in test_backfill.py.
            config["backfill"] = {"enabled": False}
            with tap.tapping():
                runner = make_runner(
                    config,
                    {"chaos-recorder": recording, "chaos-slow": slow, "chaos-raiser": raising},
                    calls=[call.id for call in script.calls],
                    base_dir=workdir,
                )
                run.max_event_size = runner.config.runner.max_event_bytes
                started = trio.current_time()
                await _run(runner, run, deadline, recording.finished)
                run.elapsed = trio.current_time() - started
            run.sent = sim.sent
            run.ends = sim.ends
            run.statuses = list(sim.statuses)
            run.subscriptions = sim.subscriptions
            run.requests = len(receiver.requests)
            run.accepted = {r.headers.get("webhook-id", "") for r in receiver.requests if r.succeeded}
    finally:
        logger.removeHandler(handler)
        handler.close()
    run.stats = runner.stats
    run.runner_state = runner.state
    run.received = {"chaos-recorder": dict(recording.events), "chaos-slow": dict(slow.events),
                    "chaos-raiser": dict(raising.events)}  # fmt: skip
    run.event_types = recording.types
    run.finished = dict(recording.finished)
    run.unencodable = recording.unencodable
    run.raised, run.hung = raising.raised, slow.hung
    run.submitted = tap.submitted
    run.outbox_counts = {
        name: {"delivered": o.stats.delivered, "dead_lettered": o.stats.dead_lettered, "pending": o.pending}
        for name, o in tap.outboxes.items()
    }
    dead = workdir / "dead-letters.jsonl"
    run.dead_letters = [letter.record for letter in read_dead_letters(dead)] if dead.exists() else []
    spool = workdir / "undispatched.jsonl"
    if spool.exists():
        for line in spool.read_bytes().splitlines():
            raw = json.loads(line)
            run.spooled.setdefault(raw.get("call_id", ""), []).append(raw.get("event_id") or raw.get("event_type"))
    return run


async def _run(runner: Runner, run: FaultRun, deadline: float, finished: dict[str, list[str]]) -> None:
    done = trio.Event()

    async def follow() -> None:
        try:
            run.exit_code = await runner.run()
        except BaseException as exc:  # what escaped is the finding; cancellation is ours and goes on
            if _cancellation_only(exc):
                raise
            run.escaped = exc
        finally:
            done.set()

    async def watch_lag() -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(0.01)
            run.max_loop_lag = max(run.max_loop_lag, trio.current_time() - before - 0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        nursery.start_soon(watch_lag)
        with trio.move_on_after(deadline):
            await done.wait()
        if not done.is_set():
            run.timed_out = True
            run.unfinished = [call.id for call in run.script.calls if not finished.get(call.id)]
            log.warning("seed %s: still running after %g s: stopping the runner", run.seed, deadline)
            runner.stop()
            with trio.move_on_after(SHUTDOWN_GRACE + 2):
                await done.wait()
        nursery.cancel_scope.cancel()


def _cancellation_only(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_cancellation_only(inner) for inner in exc.exceptions)
    return False


def frame_key(frame: SentFrame) -> str:
    """``event_key`` of a frame the simulator sent."""
    return frame.event_id if frame.event_id is not None else "sse_init"

