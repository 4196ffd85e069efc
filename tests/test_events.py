"""The decoder as a specification: what every shape of stream line becomes.

The shapes come from the vendor's event reference (the documented stream format) and from what real streams look
like beside it (epoch-number timestamps, float latencies, ``event_time``, lifecycle events without ids, extra
fields, about twenty event types). The project's example streams in ``tests/streams`` carry those shapes and must
decode line for line.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookrunner import CallEnd, CallStart, Event, Metrics, SseClose, SseInit, Trigger, TtsCompleted, TurnLatency, UnknownEvent, UserInterimTranscription, UserTranscription
from hookrunner._core.events import MalformedEvent, decode_event

STREAMS = Path(__file__).resolve().parent / "streams"  # the project's example streams, one JSON event a line
SUBSCRIBED = "CALL-1758124225863-80752e"  # the call id the subscription was opened for
RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
UTC = timezone.utc

#: The typed classes, written out here rather than taken from the package: this table is the specification.
KNOWN: dict[str, type[Event]] = {
    "sse_init": SseInit,
    "sse_close": SseClose,
    "user_interim_transcription": UserInterimTranscription,
    "user_transcription": UserTranscription,
    "tts_completed": TtsCompleted,
    "call_start": CallStart,
    "call_end": CallEnd,
    "turn_latency": TurnLatency,
    "metrics": Metrics,
}


def decode(payload: dict[str, Any] | str, call_id: str = SUBSCRIBED) -> Event:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return decode_event(data, call_id, RECEIVED_AT)


def ev(event_type: str, **fields: Any) -> dict[str, Any]:
    """A well-formed event in the documented shape, with ``fields`` added or replacing the defaults."""
    return {
        "event_type": event_type,
        "event_id": f"{SUBSCRIBED}_3_1758124226537",
        "timestamp": "2025-09-17T15:50:26.537Z",
        "call_id": SUBSCRIBED,
        **fields,
    }


# --- the example streams ---------------------------------------------------------------------------------------

LIFECYCLE = ("sse_init", "sse_close")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _stream_lines() -> list[Any]:
    lines = [
        pytest.param(line, id=f"{path.stem}:{number}")
        for path in sorted(STREAMS.glob("*.jsonl"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    assert lines, f"{STREAMS} holds no *.jsonl lines"  # a collection error, never a skip
    return lines


STREAM_LINES = _stream_lines()


def _recorded_moment(raw: dict[str, Any]) -> datetime:
    """The line's own time, read here without the decoder: ``timestamp``, else ``event_time``; ISO 8601 (naive is
    UTC) or Unix epoch seconds. Anything else in a stream line is a mistake in the stream."""
    value = raw["timestamp"] if "timestamp" in raw else raw["event_time"]
    if isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    assert isinstance(value, (int, float)) and not isinstance(value, bool), value
    return EPOCH + timedelta(seconds=value)


@pytest.mark.parametrize("line", STREAM_LINES)
def test_every_example_stream_line_decodes_to_its_class_with_raw_equal_to_the_json(line: str) -> None:
    expected = json.loads(line)
    event = decode_event(line, "CALL-OF-THE-SUBSCRIPTION", RECEIVED_AT)
    assert type(event) is KNOWN.get(expected["event_type"], UnknownEvent)
    assert event.raw == expected
    assert event.event_type == expected["event_type"]
    assert event.event_id == expected.get("event_id")  # None for a lifecycle line without one
    assert event.call_id == expected.get("call_id", "CALL-OF-THE-SUBSCRIPTION")  # its own call id wins
    assert event.timestamp == _recorded_moment(expected)  # never the moment of receipt: every line has a time
    assert event.timestamp.utcoffset() == timedelta(0)
    if isinstance(event, UserTranscription):
        assert event.text == expected["user_transcription_text"]
    elif isinstance(event, UserInterimTranscription):
        assert event.text == expected["interim_transcription_text"]
    elif isinstance(event, TtsCompleted):
        assert (event.text, event.latency_ms) == (expected["tts_text"], expected.get("tts_latency"))
    elif isinstance(event, CallStart):
        assert event.telephony_id == expected.get("telephony_id")
    elif isinstance(event, CallEnd):
        assert event.metadata == expected.get("metadata", {})
    elif isinstance(event, TurnLatency):
        assert (event.turn_index, event.total_turn_ms) == (expected.get("turn_index"), expected.get("total_turn_ms"))
    elif isinstance(event, Metrics):
        assert event.metrics == expected.get("metrics", [])


def test_the_example_streams_carry_every_shape_real_streams_have() -> None:
    """The streams are the evidence that real traffic decodes, so each shape real streams carry beyond the vendor's
    reference is on at least one of their lines: trimming a stream cannot quietly drop one."""
    raws = [json.loads(param.values[0]) for param in STREAM_LINES]
    common = {"event_type", "event_id", "timestamp", "call_id"}

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    shapes = {
        "every typed class": set(KNOWN) <= {raw["event_type"] for raw in raws},
        "a type without a class": any(raw["event_type"] not in KNOWN for raw in raws),
        "an ISO 8601 timestamp": any(isinstance(raw.get("timestamp"), str) for raw in raws),
        "an epoch-number timestamp": any(
            number(raw.get("timestamp")) and raw["event_type"] not in LIFECYCLE for raw in raws
        ),
        "a fractional float tts_latency": any(
            isinstance(raw.get("tts_latency"), float) and not raw["tts_latency"].is_integer() for raw in raws
        ),
        "an integral float tts_latency": any(
            isinstance(raw.get("tts_latency"), float) and raw["tts_latency"].is_integer() for raw in raws
        ),
        "a null tts_latency": any("tts_latency" in raw and raw["tts_latency"] is None for raw in raws),
        "a tts_completed without tts_latency": any(
            raw["event_type"] == "tts_completed" and "tts_latency" not in raw for raw in raws
        ),
        "a lifecycle event without event_id": any(
            raw["event_type"] in LIFECYCLE and "event_id" not in raw for raw in raws
        ),
        "a lifecycle event with event_time and no timestamp": any(
            raw["event_type"] in LIFECYCLE and "event_time" in raw and "timestamp" not in raw for raw in raws
        ),
        "an epoch-number event_time": any(number(raw.get("event_time")) for raw in raws),
        "extra fields on a transcript event": any(
            raw["event_type"] in ("user_transcription", "user_interim_transcription", "tts_completed")
            and set(raw) - common - set(ALL_22_TYPES[raw["event_type"]])
            for raw in raws
        ),
        "an id shaped {call_id}_{n}_{epoch_ms}": any(
            str(raw.get("event_id", "")).startswith(f"{raw['call_id']}_") for raw in raws
        ),
    }
    assert [shape for shape, present in shapes.items() if not present] == []


# --- timestamps: ISO 8601 or epoch numbers, always aware UTC ---------------------------------------------------

MOMENT = datetime(2025, 9, 17, 15, 50, 26, 537000, tzinfo=UTC)  # = epoch 1758124226.537


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        pytest.param(1758124226.537, MOMENT, id="epoch-seconds-with-fraction"),
        pytest.param(1758124226, MOMENT.replace(microsecond=0), id="epoch-seconds-integer"),
        pytest.param(1758124226537, MOMENT, id="epoch-milliseconds"),
        pytest.param("2025-09-17T15:50:26.537Z", MOMENT, id="iso-z"),
        pytest.param("2025-09-17T15:50:26Z", MOMENT.replace(microsecond=0), id="iso-z-whole-seconds"),
        pytest.param("2025-09-17T17:50:26.537+02:00", MOMENT, id="iso-positive-offset"),
        pytest.param("2025-09-17T10:20:26.537-05:30", MOMENT, id="iso-negative-offset"),
        pytest.param("2025-09-17T15:50:26.537+00:00", MOMENT, id="iso-explicit-utc"),
        pytest.param("2025-09-17T15:50:26.537", MOMENT, id="iso-naive-taken-as-utc"),
        pytest.param("2025-09-17T15:50:26.537000", MOMENT, id="iso-naive-microseconds"),
    ],
)
def test_timestamp_in_any_real_shape_becomes_an_aware_utc_datetime(timestamp: Any, expected: datetime) -> None:
    event = decode(ev("tts_completed", timestamp=timestamp, tts_text="hi", tts_latency=10))
    assert event.timestamp == expected
    assert event.timestamp.tzinfo is not None and event.timestamp.utcoffset() == timedelta(0)
    assert event.raw["timestamp"] == timestamp  # as received, not rewritten


@pytest.mark.parametrize("event_type", ["sse_init", "sse_close"])
@pytest.mark.parametrize("event_time", ["2025-09-17T15:50:26.537Z", 1758124226.537], ids=["iso", "epoch"])
def test_lifecycle_event_with_event_time_instead_of_timestamp_takes_its_time_from_it(
    event_type: str, event_time: Any
) -> None:
    event = decode({"event_type": event_type, "event_time": event_time})
    assert event.timestamp == MOMENT
    assert event.raw == {"event_type": event_type, "event_time": event_time}


def test_timestamp_wins_over_event_time_when_both_are_sent() -> None:
    event = decode({"event_type": "sse_init", "timestamp": 1758124226.537, "event_time": "2030-01-01T00:00:00Z"})
    assert event.timestamp == MOMENT


def test_unusable_timestamp_falls_back_to_event_time() -> None:
    event = decode({"event_type": "sse_close", "timestamp": "yesterday-ish", "event_time": "2025-09-17T15:50:26.537Z"})
    assert event.timestamp == MOMENT
    assert event.raw["timestamp"] == "yesterday-ish"


@pytest.mark.parametrize("fields", [{}, {"timestamp": None}, {"timestamp": "not a date"}, {"timestamp": True}])
def test_event_without_a_usable_time_is_stamped_with_the_moment_it_was_received(fields: dict[str, Any]) -> None:
    assert decode({"event_type": "sse_init", **fields}).timestamp == RECEIVED_AT


def test_without_received_at_the_fallback_time_is_now_in_utc() -> None:
    before = datetime.now(UTC)
    event = decode_event('{"event_type": "sse_init"}', SUBSCRIBED)
    assert before <= event.timestamp <= datetime.now(UTC)
    assert event.timestamp.utcoffset() == timedelta(0)


# --- tts_latency: kept as sent, never converted --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "latency_ms"),
    [
        pytest.param({"tts_latency": 212}, 212, id="integer-ms"),
        pytest.param({"tts_latency": 5.713}, 5.713, id="float-kept"),
        pytest.param({"tts_latency": 200.0}, 200, id="integral-float-becomes-int"),
        pytest.param({"tts_latency": None}, None, id="null"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_tts_latency_is_exposed_as_received(fields: dict[str, Any], latency_ms: Any) -> None:
    event = decode(ev("tts_completed", tts_text="Sure, I can help.", **fields))
    assert isinstance(event, TtsCompleted)
    assert event.text == "Sure, I can help."
    assert event.latency_ms == latency_ms
    assert type(event.latency_ms) is type(latency_ms)
    assert event.raw == ev("tts_completed", tts_text="Sure, I can help.", **fields)  # raw keeps 200.0, 5.713


def test_integral_float_latency_stays_a_float_in_raw() -> None:
    event = decode('{"event_type": "tts_completed", "tts_text": "ok", "tts_latency": 200.0}')
    assert isinstance(event.raw["tts_latency"], float)


# --- ids and call ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["sse_init", "sse_close"])
def test_lifecycle_event_without_event_id_or_call_id_belongs_to_the_subscribed_call(event_type: str) -> None:
    event = decode({"event_type": event_type, "event_time": "2025-09-17T15:50:26.537Z"}, call_id="CALL-SUBSCRIBED")
    assert type(event) is KNOWN[event_type]
    assert event.event_id is None
    assert event.call_id == "CALL-SUBSCRIBED"
    assert "call_id" not in event.raw and "event_id" not in event.raw  # nothing invented in raw


def test_event_id_is_kept_opaque() -> None:
    event = decode(ev("user_transcription", event_id="weird id/with:anything_9_x", user_transcription_text="hi"))
    assert event.event_id == "weird id/with:anything_9_x"


# --- extra fields and unknown types ---------------------------------------------------------------------------


def test_extra_fields_on_a_known_type_are_kept_in_raw() -> None:
    payload = ev(
        "user_transcription",
        user_transcription_text="I want to cancel.",
        observer_class="TranscriptionObserver",
        source={"kind": "stt", "vendor": "deepgram"},
        confidence=0.93,
    )
    event = decode(payload)
    assert isinstance(event, UserTranscription)
    assert event.text == "I want to cancel."
    assert event.raw == payload


def test_unknown_event_type_is_an_unknown_event_with_everything_in_raw() -> None:
    payload = ev("sentiment_shift", score=-0.8, window={"from": 3, "to": 7}, tags=["angry", None])
    event = decode(payload)
    assert type(event) is UnknownEvent
    assert event.event_type == "sentiment_shift"
    assert event.event_id == payload["event_id"]
    assert event.timestamp == MOMENT
    assert event.raw == payload


#: One example of each of the 22 types named in the vendor's event reference, with the fields listed there.
ALL_22_TYPES: dict[str, dict[str, Any]] = {
    "sse_init": {"event_time": "2025-09-17T15:50:26.537Z"},
    "sse_close": {"event_time": "2025-09-17T15:50:26.537Z"},
    "call_start": {"telephony_id": "TEL-7f3a9c21"},
    "call_end": {"metadata": {"duration_seconds": 4.3, "end_reason": "user_hangup"}},
    "agent_error": {"metadata": {"node": "n1"}, "error": "LLM timeout"},
    "agent_log": {"metadata": {"level": "info", "message": "node entered"}},
    "turn_latency": {
        "turn_latency": 807.4, "stt_api_ms": 142.0, "stt_to_llm_ms": 18.5, "smart_turn_ms": 61.2,
        "llm_api_ms": 388.4, "llm_to_tts_ms": 12.1, "tts_api_ms": 164.9, "tts_to_audio_ms": 20.3,
        "total_turn_ms": 807.4, "turn_index": 1, "interrupted": False, "smart_turn_enabled": True,
    },  # fmt: skip
    "user_interim_transcription": {"interim_transcription_text": "hey, i'm"},
    "user_transcription": {"user_transcription_text": "Hey, I'm in Lisbon."},
    "tts_completed": {"tts_text": "Sorry about that.", "tts_latency": 5.713},
    "metrics": {
        "metrics": [
            {"processor": "DeepgramSTTService", "model": "nova-3", "value": 0.142},
            {"processor": "OpenAILLMService", "model": "gpt-4o-mini", "value": {"prompt_tokens": 612}},
        ]
    },
    "agent_node_state": {"node_id": "n1", "node_name": "Greeting", "node_type": "conversation", "context": {}},
    "hopping": {"from_node_id": "n1", "to_node_id": "n2"},
    "knowledgebase": {
        "knowledge_base_id": "kb1", "user_transcript": "opening hours?", "response": "9 to 5", "latency": 41.5,
        "error": None,
    },  # fmt: skip
    "variable_extraction": {
        "variables": {"name": "Ana"}, "variable_extraction_prompt": "...", "latency": 3, "error": None,
    },  # fmt: skip
    "pre_call_api": {
        "method": "POST", "headers": {"X-A": "1"}, "body": {"q": 1}, "timeout": 5, "response": {"ok": True},
        "extracted_variables": {}, "next_node_id": "n2", "success": True, "error": None,
    },  # fmt: skip
    "post_call_api": {"method": "GET", "success": False, "error": "HTTP 500", "response": None},
    "tool_call_start": {"turn_id": "t1", "tool_call_id": "tc1", "function_name": "lookup", "context": {"a": 1}},
    "tool_call_end": {
        "turn_id": "t1", "tool_call_id": "tc1", "function_name": "lookup", "response": [1], "success": True,
        "latency_ms": 12.5,
    },  # fmt: skip
    "tool_call_error": {
        "turn_id": "t1", "tool_call_id": "tc1", "function_name": "lookup", "error": "boom", "success": False,
    },  # fmt: skip
    "call_cancelled": {},
    "call_recording": {"recording_url": "https://example.com/r.wav", "status": "ready"},
}


def test_the_documented_list_has_22_types_of_which_9_have_classes() -> None:
    assert len(ALL_22_TYPES) == 22
    assert set(KNOWN) <= set(ALL_22_TYPES)
    assert len(KNOWN) == 9


@pytest.mark.parametrize("event_type", sorted(ALL_22_TYPES))
def test_each_of_the_22_documented_types_decodes_with_every_field_kept(event_type: str) -> None:
    payload = ev(event_type, **ALL_22_TYPES[event_type])
    event = decode(payload)
    assert type(event) is KNOWN.get(event_type, UnknownEvent)
    assert event.event_type == event_type
    assert event.raw == payload


def test_typed_attributes_of_the_known_types_come_from_their_fields() -> None:
    start = decode(ev("call_start", **ALL_22_TYPES["call_start"]))
    assert isinstance(start, CallStart) and start.telephony_id == "TEL-7f3a9c21"
    end = decode(ev("call_end", **ALL_22_TYPES["call_end"]))
    assert isinstance(end, CallEnd) and end.metadata == {"duration_seconds": 4.3, "end_reason": "user_hangup"}
    latency = decode(ev("turn_latency", **ALL_22_TYPES["turn_latency"]))
    assert isinstance(latency, TurnLatency) and (latency.turn_index, latency.total_turn_ms) == (1, 807.4)
    metrics = decode(ev("metrics", **ALL_22_TYPES["metrics"]))
    assert isinstance(metrics, Metrics)
    assert [m["value"] for m in metrics.metrics] == [0.142, {"prompt_tokens": 612}]
    interim = decode(ev("user_interim_transcription", **ALL_22_TYPES["user_interim_transcription"]))
    assert isinstance(interim, UserInterimTranscription) and interim.text == "hey, i'm"


def test_known_types_without_their_optional_fields_still_decode() -> None:
    for event_type, cls in KNOWN.items():
        event = decode({"event_type": event_type})
        assert type(event) is cls
        assert event.raw == {"event_type": event_type}
    assert decode({"event_type": "call_end"}).metadata == {}
    assert decode({"event_type": "metrics"}).metrics == []
    assert decode({"event_type": "tts_completed"}).latency_ms is None


def test_known_type_with_fields_of_unexpected_types_is_still_delivered() -> None:
    payload = ev("metrics", metrics={"asr_latency_ms": 120})  # an object where a list is documented
    event = decode(payload)
    assert isinstance(event, Metrics) and event.metrics == [] and event.raw == payload
    payload = ev("user_transcription", user_transcription_text=None)
    event = decode(payload)
    assert isinstance(event, UserTranscription) and event.text == "" and event.raw == payload


def test_bytes_and_text_decode_alike() -> None:
    line = json.dumps(ev("user_transcription", user_transcription_text="olá ✓"))
    assert decode_event(line.encode(), SUBSCRIBED, RECEIVED_AT) == decode_event(line, SUBSCRIBED, RECEIVED_AT)


# --- malformed lines ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("{this is not json", id="not-json"),
        pytest.param('[{"event_type": "sse_init"}]', id="json-array"),
        pytest.param('"sse_init"', id="json-string"),
        pytest.param("null", id="json-null"),
        pytest.param('{"no_event_type": true}', id="no-event-type"),
        pytest.param('{"event_type": 5}', id="event-type-a-number"),
        pytest.param('{"event_type": null}', id="event-type-null"),
        pytest.param('{"event_type": ["tts_completed"]}', id="event-type-a-list"),
        pytest.param('{"event_type": ""}', id="event-type-empty"),
        pytest.param("", id="empty-string"),
        pytest.param('{"event_type": "sse_init"} trailing', id="trailing-text"),
    ],
)
def test_malformed_line_raises_malformed_event_carrying_the_line(line: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        decode_event(line, SUBSCRIBED, RECEIVED_AT)
    assert caught.value.line == line
    assert caught.value.reason


def test_malformed_bytes_line_is_carried_as_text() -> None:
    with pytest.raises(MalformedEvent) as caught:
        decode_event(b"{broken \xff", SUBSCRIBED, RECEIVED_AT)
    assert isinstance(caught.value.line, str) and caught.value.line.startswith("{broken ")


# --- immutability ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", [*KNOWN, "tool_call_end"])
@pytest.mark.parametrize("attribute", ["event_type", "event_id", "call_id", "timestamp", "raw", "added_later"])
def test_events_are_immutable(event_type: str, attribute: str) -> None:
    event = decode(ev(event_type, **ALL_22_TYPES[event_type]))
    with pytest.raises(AttributeError):
        setattr(event, attribute, "changed")
    assert getattr(event, attribute, None) != "changed"


def test_typed_attributes_are_immutable_too() -> None:
    event = decode(ev("tts_completed", tts_text="hi", tts_latency=3))
    for attribute in ("text", "latency_ms"):
        with pytest.raises(AttributeError):
            setattr(event, attribute, 0)
    assert (event.text, event.latency_ms) == ("hi", 3)


# --- triggers -------------------------------------------------------------------------------------------------


def test_trigger_is_immutable_and_its_full_type_is_trigger_dot_type() -> None:
    trigger = Trigger(type="keyword", call_id=SUBSCRIBED, rule="cancel-intent", event_id="e1", severity="warning")
    assert trigger.full_type == "trigger.keyword"
    for attribute, value in [("type", "other"), ("severity", "critical"), ("source", "me"), ("new_field", 1)]:
        with pytest.raises(AttributeError):
            setattr(trigger, attribute, value)
    assert (trigger.type, trigger.severity, trigger.source) == ("keyword", "warning", None)
    changed = msgspec.structs.replace(trigger, source="detector")  # the way to get a changed copy
    assert changed.source == "detector" and trigger.source is None
    assert changed.full_type == "trigger.keyword"
    assert trigger.detected_at.utcoffset() == timedelta(0)


def test_json_that_msgspec_refuses_but_the_stdlib_reads_is_still_an_event() -> None:
    # A transcription cut inside an emoji leaves a lone surrogate; an absurd number overflows float.
    cut = decode_event('{"event_type": "user_transcription", "user_transcription_text": "ok \\ud83d"}', "CALL-1")
    assert isinstance(cut, UserTranscription) and cut.text == "ok \ufffd"  # every sink can write it
    assert cut.raw["user_transcription_text"] == "ok \ufffd"
    huge = decode_event('{"event_type": "metrics", "metrics": [{"value": 1e400}]}', "CALL-1")
    assert huge.raw["metrics"][0]["value"] == float("inf")


def test_a_numeric_event_id_is_kept_as_text_so_it_still_deduplicates() -> None:
    event = decode_event('{"event_type": "call_start", "event_id": 42, "turn_index": 1.0}', "CALL-1")
    assert event.event_id == "42" and event.raw["event_id"] == 42
