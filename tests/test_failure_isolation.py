"""A failure belongs to its call, message, endpoint or plugin, never to the process; every input has a bound.

Each test reproduces one way a single input used to stop or empty the runner, against the simulator on loopback.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hookrunner import hookimpl
from hookrunner._core.backoff import backoff_delay
from hookrunner._core.events import KNOWN_EVENT_TYPES
from hookrunner._core.logs import JsonFormatter, redact_in_logs, redacted
from hookrunner._delivery.outbox import RetryPolicy
from hookrunner._simulator import running_simulator
from hookrunner.testing import make_delivery, running_receiver

from helpers import Recorder, call_events, make_config, run_runner, script


# --- backoff arithmetic never overflows ------------------------------------------------------------------------


@dataclass
class Policy:
    initial_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 300.0


@pytest.mark.parametrize("attempt", [1_024, 1_025, 1_100, 10**6, 10**100])
def test_backoff_at_any_attempt_stays_within_max_delay(attempt: int) -> None:
    assert 0 <= backoff_delay(attempt, Policy()) <= 30.0
    assert 0 <= backoff_delay(attempt, RetryPolicy(max_attempts=0, initial_delay=0.5, max_delay=300.0)) <= 300.0


def test_retry_after_is_honoured_only_up_to_the_policys_max_retry_after() -> None:
    assert backoff_delay(1, Policy(), retry_after=86_400) == 300.0
    assert backoff_delay(1, Policy(initial_delay=0.01, max_delay=0.01, max_retry_after=0.5), retry_after=100_000) == 0.5
    assert backoff_delay(1, Policy(), retry_after=7) >= 7


async def test_a_reconnect_storm_of_1100_failures_with_no_attempt_limit_still_ends_in_every_event() -> None:
    """max_attempts = 0 (never give up) over 1,100 failed subscriptions: the attempt count passes 1,024, where
    2.0 ** attempt used to overflow and end the call's task."""
    recorder = Recorder()
    calls = [{"id": "CALL-STORM", "events": call_events(4), "fail_first": 1_100}]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, reconnect={"initial_delay": 0.0001, "max_delay": 0.0002, "max_attempts": 0})
        code, runner = await run_runner(config, ["CALL-STORM"], recorder)
    assert code == 0 and recorder.finished == {"CALL-STORM": "ended"}
    assert runner.stats.reconnects == 1_100
    assert len([e for e in recorder.events["CALL-STORM"] if e.event_type in ("tts_completed", "user_transcription")]) == 4


async def test_a_stream_retry_after_of_a_day_holds_the_call_only_runner_reconnect_max_retry_after() -> None:
    recorder = Recorder()
    calls = [{"id": "CALL-DAY", "events": call_events(2), "fail_first": 2, "fail_status": 429, "retry_after": 86_400}]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, reconnect={"initial_delay": 0.01, "max_delay": 0.02, "max_retry_after": 0.1})
        with trio.fail_after(5):  # a day without the cap
            code, _ = await run_runner(config, ["CALL-DAY"], recorder)
    assert code == 0 and recorder.finished == {"CALL-DAY": "ended"}


# --- a plugin's BaseException is a hook error ---------------------------------------------------------------------


class Exits:
    """A plugin that calls sys.exit() in a hook, raises KeyboardInterrupt in another, and ends its background
    task with SystemExit: three ways a plugin used to end the runner with a traceback."""

    def __init__(self) -> None:
        self.background_ran = trio.Event()

    @hookimpl
    def on_startup(self, app: Any) -> None:
        async def dies() -> None:
            self.background_ran.set()
            raise SystemExit(3)

        app.start_soon(dies)

    @hookimpl
    def on_user_transcription(self, event: Any) -> None:
        sys.exit(1)

    @hookimpl
    async def on_tts_completed(self, event: Any) -> None:
        await trio.sleep(0)
        raise KeyboardInterrupt


async def test_sys_exit_and_keyboard_interrupt_in_a_plugin_are_hook_errors_and_every_event_still_reaches_the_others() -> None:
    recorder, exits = Recorder(), Exits()
    async with running_simulator(script([{"id": "CALL-EXIT", "events": call_events(6)}])) as sim:
        code, runner = await run_runner(make_config(sim.base_url), ["CALL-EXIT"], recorder, exits)
    assert code == 0 and recorder.finished == {"CALL-EXIT": "ended"}
    assert exits.background_ran.is_set()
    assert len(recorder.events["CALL-EXIT"]) == 8  # sse_init, six turns, sse_close
    assert runner.stats.hook_errors["test-plugin-1"] == 6 + 1  # six hooks and the background task


# --- a failure while following one call is that call's -----------------------------------------------------------


async def test_an_unforeseen_error_in_one_calls_stream_finishes_that_call_as_failed_and_the_others_go_on(
    monkeypatch, caplog
) -> None:
    from hookrunner._stream import subscription

    real = subscription.decode_event

    def decode(data: Any, call_id: str, received_at: Any = None) -> Any:
        if call_id == "CALL-BAD" and "turn 3" in data:
            raise RuntimeError("a bug met\nin the decoder")
        return real(data, call_id, received_at)

    monkeypatch.setattr(subscription, "decode_event", decode)
    recorder = Recorder()
    calls = [{"id": "CALL-BAD", "events": call_events(6, 0.01)}, {"id": "CALL-GOOD", "events": call_events(6, 0.01)}]
    async with running_simulator(script(calls)) as sim:
        code, runner = await run_runner(make_config(sim.base_url), ["CALL-BAD", "CALL-GOOD"], recorder)
    assert recorder.finished == {"CALL-BAD": "failed", "CALL-GOOD": "ended"}
    assert len(recorder.events["CALL-BAD"]) == 4 and len(recorder.events["CALL-GOOD"]) == 8  # received: dispatched
    assert code == 1  # a listed call failed: the exit code says so
    from hookrunner._run.callbook import Offer

    assert runner.calls.offer("CALL-BAD", 10**9) is Offer.FINISHED  # never followed again (it would replay)
    (line,) = [r.getMessage() for r in caplog.records if "failed: RuntimeError" in r.getMessage()]
    assert line.startswith("CALL-BAD: failed: RuntimeError:") and "\n" not in line


# --- bounded metrics labels ------------------------------------------------------------------------------------


async def test_3000_made_up_event_types_add_one_other_label_to_metrics() -> None:
    events = [{"at": 0, "event_type": f"made_up_{i}"} for i in range(3_000)]
    events += [{"at": 0, "event_type": "agent_log"}, {"at": 0, "event_type": "user_transcription", "user_transcription_text": "hi"}]
    recorder = Recorder()
    async with running_simulator(script([{"id": "CALL-TYPES", "events": events}])) as sim:
        code, runner = await run_runner(make_config(sim.base_url), ["CALL-TYPES"], recorder)
    assert code == 0 and len(recorder.events["CALL-TYPES"]) == 3_004  # every event still dispatched
    families = {f.name: f for f in text_string_to_metric_families(runner.metrics.render().decode())}
    labels = {sample.labels["type"]: sample.value for sample in families["hookrunner_events"].samples if sample.name.endswith("_total")}
    assert labels == {"other": 3_000, "agent_log": 1, "user_transcription": 1, "sse_init": 1, "sse_close": 1}
    assert set(labels) <= KNOWN_EVENT_TYPES | {"other"}


# --- secrets never reach a log line -------------------------------------------------------------------------------


async def test_an_api_key_quoted_by_httpx_in_an_exception_never_reaches_a_formatted_log_line() -> None:
    key = "sk-live-5ecret\n"  # with the newline a secret file leaves: httpx refuses it and quotes it
    redact_in_logs(key)
    async with running_receiver() as atoms, httpx.AsyncClient() as client:
        with pytest.raises(httpx.HTTPError) as raised:  # LocalProtocolError: Illegal header value b'Bearer sk-...\n'
            await client.get(atoms.url("/events"), headers={"Authorization": f"Bearer {key}"})
    assert "5ecret" in str(raised.value)
    record = logging.LogRecord("hookrunner.subscription", logging.WARNING, __file__, 1, "CALL-1: connection failed (%s)", (raised.value,), None)
    text = logging.Formatter("%(message)s")
    assert "5ecret" in text.format(record)  # what a plain formatter would print
    from hookrunner._core.logs import _Redacting

    assert "5ecret" not in _Redacting("%(message)s").format(record)
    assert "5ecret" not in JsonFormatter().format(record)
    assert "[redacted]" in redacted(str(raised.value))


def test_the_runner_keeps_its_api_key_out_of_every_log_line() -> None:
    from helpers import build_runner
    from hookrunner.testing import TEST_API_KEY

    build_runner(make_config("http://127.0.0.1:9"), ["CALL-1"])  # registers the key, before anything connects
    assert redacted(f"Illegal header value b'Bearer {TEST_API_KEY}'") == "Illegal header value b'Bearer [redacted]'"


def test_a_plugin_calling_sys_exit_as_it_is_imported_is_one_error_line(cli, tmp_path: Path) -> None:
    from helpers import finish, write_config

    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n", encoding="utf-8")
    config = write_config(tmp_path, make_config("http://127.0.0.1:9", plugins={"load": ["exits.py"]}))
    code, out, err = finish(cli("check", str(config)))
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "exits.py" in line and "SystemExit" in line


# --- what cannot be dispatched is written out -------------------------------------------------------------------


class SlowPlatform:
    """Holds every platform webhook past the grace, so the later ones are left undispatched."""

    @hookimpl
    async def on_platform_webhook(self, delivery: Any) -> None:
        await trio.sleep(10)


async def _leave_platform_webhooks(spool: Path) -> Any:
    async with running_simulator(script([{"id": "CALL-P", "events": call_events(2, 0.05)}])) as sim:
        config = make_config(sim.base_url, shutdown_grace=0.4, spool_file=str(spool), hook_timeout=5.0)
        from helpers import build_runner

        runner = build_runner(config, ["CALL-P"], SlowPlatform())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            while runner.state != "serving":
                await trio.sleep(0.01)
            for index in range(3):  # a lone surrogate in the body: read as U+FFFD, so the spool can write it
                assert runner.dispatch_platform_webhook(make_delivery(delivery_id=f"dlv-{index}", text="ñ \ud83d"))
            await trio.sleep(0.05)
            runner.stop()
    return runner


async def test_platform_webhooks_left_at_a_stop_are_written_whole_to_the_spool_file(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    runner = await _leave_platform_webhooks(spool)
    lines = [json.loads(line) for line in spool.read_text(encoding="utf-8").splitlines()]
    kept = [line for line in lines if "platform_webhook" in line]
    assert [line["delivery_id"] for line in kept] == ["dlv-1", "dlv-2"]  # dlv-0 was being dispatched when cut
    assert kept[0]["platform_webhook"]["metadata"]["text"] == "ñ \ufffd"
    assert runner.stats.platform_webhooks["not_dispatched"] == 2


async def test_when_the_spool_cannot_be_written_the_platform_webhooks_go_whole_into_the_log(tmp_path: Path, caplog) -> None:
    unwritable = tmp_path / "a-directory"
    unwritable.mkdir()
    await _leave_platform_webhooks(unwritable)
    spooled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spooled: ")]
    assert [json.loads(line[len("spooled: ") :])["delivery_id"] for line in spooled] == ["dlv-1", "dlv-2"]


# --- an endpoint's delivery task that fails is restarted, its messages kept --------------------------------------


def _overflowing_backoff(monkeypatch, times: float) -> list[int]:
    """Make the outbox's backoff arithmetic raise ``times`` times, as 2.0 ** 1025 did: a failure of the delivery
    loop itself, not of a delivery."""
    from hookrunner._delivery import outbox as outbox_module

    real_backoff = outbox_module.backoff_delay
    blown: list[int] = []

    def overflowing(attempt: int, policy: Any, retry_after: Any = None) -> float:
        if len(blown) < times:
            blown.append(attempt)
            raise OverflowError("(34, 'Numerical result out of range')")
        return real_backoff(attempt, policy, retry_after)

    monkeypatch.setattr(outbox_module, "backoff_delay", overflowing)
    return blown


async def test_a_failing_delivery_loop_starts_again_and_loses_no_message(tmp_path: Path, monkeypatch) -> None:
    """The old failure: backoff arithmetic overflowing inside the delivery task killed it, silently, and every
    later message of the endpoint waited for ever."""
    from hookrunner._delivery.dead_letters import DeadLetterFile, read_dead_letters
    from hookrunner._delivery.outbox import Outbox, OutboxMessage, Outcome

    blown = _overflowing_backoff(monkeypatch, times=1)
    delivered: list[str] = []
    tries: dict[str, int] = {}

    async def deliver(batch: list[OutboxMessage]) -> Outcome:
        tries[batch[0].id] = tries.get(batch[0].id, 0) + 1
        if batch[0].id == "m0" and tries["m0"] == 1:
            return Outcome.retry("503")  # its retry meets the overflow
        delivered.extend(message.id for message in batch)
        return Outcome.delivered(200)

    outbox = Outbox(
        "ep", deliver, DeadLetterFile(tmp_path / "dead.jsonl"), plugin="test", policy=RetryPolicy(initial_delay=0.01, max_delay=0.02)
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run)
        outbox.submit(OutboxMessage(id="m0", key="CALL-A", body={}))
        await trio.sleep(0.1)
        for index in range(1, 4):
            outbox.submit(OutboxMessage(id=f"m{index}", key="CALL-A", body={}))
        with trio.fail_after(5):
            while len(delivered) < 4:
                await trio.sleep(0.01)
        started = trio.current_time()
        await outbox.close(3.0)
        assert trio.current_time() - started < 1.0  # nothing pending: close does not wait out its timeout
    assert blown and delivered == ["m0", "m1", "m2", "m3"]  # m0 again after the restart, then the rest in order
    assert not (tmp_path / "dead.jsonl").exists() or read_dead_letters(tmp_path / "dead.jsonl") == []


async def test_a_delivery_loop_that_keeps_failing_stops_the_endpoint_and_dead_letters_everything(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    from hookrunner._delivery.dead_letters import DeadLetterFile, read_dead_letters
    from hookrunner._delivery.outbox import MAX_RESTARTS, Outbox, OutboxMessage, Outcome

    blown = _overflowing_backoff(monkeypatch, times=float("inf"))

    async def deliver(batch: list[OutboxMessage]) -> Outcome:
        return Outcome.retry("503")

    outbox = Outbox("ep", deliver, DeadLetterFile(tmp_path / "dead.jsonl"), plugin="test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run)
        for index in range(3):
            outbox.submit(OutboxMessage(id=f"m{index}", key=f"CALL-{index}", body={}))
        with trio.fail_after(5):
            while not any("endpoint stopped" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.01)
        await trio.sleep(0.3)
        outbox.submit(OutboxMessage(id="late", key="CALL-9", body={}))  # after the stop: straight to dead letters
        started = trio.current_time()
        await outbox.close(3.0)
        assert trio.current_time() - started < 1.0
    letters = read_dead_letters(tmp_path / "dead.jsonl")
    assert sorted(letter.record["id"] for letter in letters) == ["late", "m0", "m1", "m2"]
    failures = [r for r in caplog.records if r.getMessage().startswith("ep: the delivery task failed")]
    assert len(failures) == MAX_RESTARTS  # stopped: the loop is not started again
    assert blown


async def test_a_long_outage_logs_a_few_dozen_reconnect_lines_not_one_per_attempt(caplog) -> None:
    caplog.set_level(logging.INFO)
    calls = [{"id": "CALL-LONG", "events": call_events(2), "fail_first": 1_000}]
    async with running_simulator(script(calls)) as sim:
        config = make_config(sim.base_url, reconnect={"initial_delay": 0.0001, "max_delay": 0.0002, "max_attempts": 0})
        code, runner = await run_runner(config, ["CALL-LONG"])
    assert code == 0 and runner.stats.reconnects == 1_000
    lines = [r for r in caplog.records if "reconnecting in" in r.getMessage() and r.levelno >= logging.WARNING]
    assert [int(r.getMessage().split("(attempt ")[1].rstrip(")")) for r in lines] == [1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512]
