"""Log records carry what they are about as fields (a pipeline filters on them), a call's binding stays in its own
task, and /metrics has the process series every exporter has."""

from __future__ import annotations

import json
import logging

import trio

from hookrunner._core.logs import JsonFormatter, TextFormatter, bind_log_fields, log_fields
from hookrunner._core.stats import Stats
from hookrunner._run.callbook import CallBook
from hookrunner._run.metrics import RunnerMetrics


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("hookrunner.test").makeRecord(
        "hookrunner.test", logging.WARNING, __file__, 1, message, (), None, extra=extra
    )
    return made


def test_json_has_the_fields_as_keys_and_text_adds_those_the_message_does_not_show() -> None:
    line = record("webhook hooks-a: message msg_1 attempt 2 failed (answered 503)",
                  **log_fields(plugin="webhook", endpoint="hooks-a", message_id="msg_1", attempt=2, status=503))  # fmt: skip
    entry = json.loads(JsonFormatter().format(line))
    assert {key: entry[key] for key in ("plugin", "endpoint", "message_id", "attempt", "status")} == {
        "plugin": "webhook", "endpoint": "hooks-a", "message_id": "msg_1", "attempt": 2, "status": 503
    }  # fmt: skip
    assert "call_id" not in entry  # a field that is not set is left out, not null
    text = TextFormatter().format(line)
    assert text.endswith("failed (answered 503)")  # every value is in the message already: nothing added
    quiet = record("outbox full", **log_fields(plugin="slack", endpoint="ops", status=None))
    assert TextFormatter().format(quiet).endswith("outbox full plugin=slack endpoint=ops")


async def test_a_tasks_bound_call_id_is_on_its_records_and_never_on_another_tasks() -> None:
    seen: dict[str, object] = {}

    async def call_task(call_id: str, ready: trio.Event) -> None:
        bind_log_fields(call_id=call_id)
        await ready.wait()
        seen[call_id] = json.loads(JsonFormatter().format(record(f"{call_id}: reconnecting"))).get("call_id")

    async def other_task() -> None:
        await trio.sleep(0.01)
        seen["other"] = json.loads(JsonFormatter().format(record("listing failed"))).get("call_id")

    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call_task, "CALL-A", ready)
        nursery.start_soon(call_task, "CALL-B", ready)
        nursery.start_soon(other_task)
        await trio.sleep(0.02)
        ready.set()
    assert seen == {"CALL-A": "CALL-A", "CALL-B": "CALL-B", "other": None}
    overridden = json.loads(JsonFormatter().format(record("x", call_id="CALL-OWN")))
    assert overridden["call_id"] == "CALL-OWN"


def test_metrics_show_the_process_series() -> None:
    page = RunnerMetrics(Stats(), CallBook(5)).render().decode()
    names = {line.split(" ")[0] for line in page.splitlines() if line.startswith("process_")}
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} <= names


def test_the_end_of_run_line_counts_one_of_a_thing_in_the_singular() -> None:
    stats = Stats()
    stats.calls_finished["ended"] = 1
    stats.events_by_type["user_transcription"] = 1
    stats.triggers = 2
    assert stats.summary().startswith("1 call (1 ended); 1 event; 2 triggers; 0 reconnects; 0 malformed lines;")


async def test_a_known_event_without_its_text_field_is_passed_on_but_counted_and_logged(caplog) -> None:
    from hookrunner.testing import run_plugins

    caplog.set_level(logging.WARNING)
    events = [
        {"at": 0.0, "event_type": "tts_completed", "text": "Hello, how can I help?"},  # the wrong field name
        {"at": 0.01, "event_type": "user_transcription", "user_transcription_text": "my bill"},
    ]
    result = await run_plugins([], [{"id": "CALL-NOTEXT", "events": events}])
    turns = [event for event in result.events["CALL-NOTEXT"] if event.event_type in ("tts_completed", "user_transcription")]
    assert [event.text for event in turns] == ["", "my bill"]  # still dispatched, in order
    assert result.stats.events_without_text == 1
    [line] = [r.getMessage() for r in caplog.records if "without tts_text" in r.getMessage()]
    assert line == "CALL-NOTEXT: a tts_completed event without tts_text: passed on with empty text (1 on this call)"
