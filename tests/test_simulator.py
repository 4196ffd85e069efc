"""The Atoms events simulator, driven as a client would: real httpx over loopback, raw SSE bytes checked."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hookrunner._simulator import Script, ScriptError, Simulator, default_script_path, load_script, parse_script, run_simulator_cli, running_simulator

from helpers import assert_one_line_script_error

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = [  # a captured stream, shaped like the real service's (event ids and timestamps of its own)
    {"event_type": "sse_init", "event_id": "c-1", "timestamp": "2026-11-24T10:00:12.000Z", "call_id": "CALL-J"},
    {"event_type": "call_start", "event_id": "c-2", "timestamp": "2026-11-24T10:00:12.000Z", "call_id": "CALL-J"},
    {"event_type": "tts_completed", "event_id": "c-3", "timestamp": "2026-11-24T10:00:12.400Z", "call_id": "CALL-J",
     "tts_text": "Hello", "tts_latency": 150},
    {"event_type": "user_transcription", "event_id": "c-4", "timestamp": 1795514413.9, "call_id": "CALL-J",
     "user_transcription_text": "Hi"},
    {"event_type": "sse_close", "event_id": "c-5", "timestamp": "2026-11-24T10:00:14.500Z", "call_id": "CALL-J"},
]  # fmt: skip
KEY = {"Authorization": "Bearer sim-key"}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def make_script(*calls: dict[str, Any], **settings: Any) -> Script:
    return parse_script({**settings, "calls": list(calls)}, source="test.toml")


def call(call_id: str = "CALL-1", *ats: float, **keys: Any) -> dict[str, Any]:
    """A call with one event per ``at``: event_type ``step``, a field ``n`` numbering them."""
    events = [{"at": at, "event_type": "step", "n": n} for n, at in enumerate(ats)]
    return {"id": call_id, "events": events, **keys}


def frames(text: str) -> list[tuple[str, str]]:
    """Split raw SSE text into ("data"|"comment"|"event", value) items, in order."""
    out = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith(":"):
                out.append(("comment", line[1:].strip()))
            elif line.startswith("data: "):
                out.append(("data", line[len("data: ") :]))
            elif line.startswith("event: "):
                out.append(("event", line[len("event: ") :]))
    return out


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(value) for kind, value in frames(text) if kind == "data"]


async def subscribe(
    sim: Simulator, call_id: str, *, headers: dict[str, str] = KEY, limit: float = 5.0
) -> tuple[httpx.Response, str, list[tuple[float, str]]]:
    """Read one whole subscription: the response, its body text, and (seconds since request, chunk) pairs."""
    chunks: list[tuple[float, str]] = []
    start = trio.current_time()
    with trio.fail_after(limit):
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", f"{sim.base_url}/events?callId={call_id}", headers=headers) as response:
                async for chunk in response.aiter_text():
                    chunks.append((trio.current_time() - start, chunk))
    return response, "".join(chunk for _, chunk in chunks), chunks


# -- the stream -------------------------------------------------------------------------------------------------


async def test_stream_sends_generated_sse_init_then_script_events_then_sse_close() -> None:
    script = make_script({
        "id": "CALL-7",
        "events": [
            {"at": 0, "event_type": "call_start", "telephony_id": "TEL-1"},
            {"at": 0.05, "event_type": "tts_completed", "tts_text": "Hi", "tts_latency": 5.713, "x": [1, {"a": None}]},
            {"at": 0.1, "event_type": "agent_node_state", "event_id": "mine", "timestamp": 1758124226.537},
        ],
    })  # fmt: skip
    async with running_simulator(script) as sim:
        response, text, _ = await subscribe(sim, "CALL-7")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert "server" not in response.headers
    assert all(kind == "data" for kind, _ in frames(text))
    assert "\n\n".join(f"data: {value}" for _, value in frames(text)) + "\n\n" == text  # compact, one line each
    init, start, tts, node, close = events(text)

    assert set(init) == {"event_type", "event_time", "call_id"}  # no event_id, like the vendor SDK documents
    assert init["event_type"] == "sse_init" and init["call_id"] == "CALL-7" and ISO_Z.match(init["event_time"])

    assert start["event_type"] == "call_start" and start["telephony_id"] == "TEL-1" and start["call_id"] == "CALL-7"
    assert re.fullmatch(r"CALL-7_0_\d{13}", start["event_id"])
    assert ISO_Z.match(start["timestamp"])
    assert tts["event_id"].startswith("CALL-7_1_")
    assert (tts["tts_text"], tts["tts_latency"], tts["x"]) == ("Hi", 5.713, [1, {"a": None}])
    assert (node["event_id"], node["timestamp"]) == ("mine", 1758124226.537)  # given fields are kept

    assert set(close) == {"event_type", "event_id", "call_id", "timestamp"}
    assert close["event_type"] == "sse_close" and close["call_id"] == "CALL-7" and ISO_Z.match(close["timestamp"])
    assert len({e.get("event_id") for e in (start, tts, node, close)}) == 4


async def test_events_arrive_on_the_call_clock_divided_by_speed() -> None:
    script = make_script(call("CALL-1", 0.0, 0.8, 1.6), speed=4.0)  # 0, 0.2, 0.4 s
    async with running_simulator(script) as sim:
        _, _, chunks = await subscribe(sim, "CALL-1")
    arrivals = {}
    for moment, chunk in chunks:
        for event in events(chunk):
            arrivals.setdefault(event.get("n", event["event_type"]), moment)
    # Never early; late by up to 0.4 s on a loaded machine (a full suite on 2 cores has made it 0.3 s), and still
    # well before 0.8 s and 1.6 s, where speed 1 would send them.
    assert arrivals[0] < 0.4
    assert 0.17 <= arrivals[1] < 0.6
    assert 0.37 <= arrivals[2] < 0.8
    assert arrivals["sse_close"] >= arrivals[2]


async def test_speed_argument_overrides_the_script() -> None:
    async with running_simulator(make_script(call("CALL-1", 0.0, 20.0)), speed=100.0) as sim:
        _, text, chunks = await subscribe(sim, "CALL-1")
    assert [e["event_type"] for e in events(text)] == ["sse_init", "step", "step", "sse_close"]
    assert chunks[-1][0] < 1.0


async def test_a_late_subscriber_gets_past_events_at_once_with_the_same_ids() -> None:
    script = make_script(call("CALL-1", 0.0, 0.1, 0.6))
    async with running_simulator(script) as sim:
        async with trio.open_nursery() as nursery:
            first: list[str] = []

            async def read_first() -> None:
                first.append((await subscribe(sim, "CALL-1"))[1])

            nursery.start_soon(read_first)
            await trio.sleep(0.3)  # the call is 0.3 s in: two events are past, one is to come
            _, second_text, chunks = await subscribe(sim, "CALL-1")
    first_events, second_events = events(first[0]), events(second_text)
    assert [e["event_type"] for e in second_events] == ["sse_init", "step", "step", "step", "sse_close"]
    assert first_events[1:] == second_events[1:]  # same ids and timestamps on every connection
    replayed = events(chunks[0][1])
    assert [e.get("n") for e in replayed] == [None, 0, 1]  # sse_init and both past events in the first chunk
    assert sim.connections == {"CALL-1": 2}


async def test_keepalive_comments_fill_silences_and_zero_turns_them_off() -> None:
    script = make_script(call("CALL-1", 0.0, 0.35), call("CALL-2", 0.0, 0.35), keepalive=0.1)
    async with running_simulator(script) as sim:
        _, text, _ = await subscribe(sim, "CALL-1")
    kinds = [kind for kind, _ in frames(text)]
    assert 2 <= kinds.count("comment") <= 3
    assert ": keep-alive\n\n" in text
    assert [value for kind, value in frames(text) if kind == "comment"][0] == "keep-alive"

    async with running_simulator(script, keepalive=0) as sim:
        _, text, _ = await subscribe(sim, "CALL-2")
    assert ":" not in [line[:1] for line in text.split("\n")]


async def test_event_message_framing_and_epoch_timestamps() -> None:
    script = make_script(call("CALL-1", 0.0), framing="event-message", timestamp_format="epoch")
    async with running_simulator(script) as sim:
        _, text, _ = await subscribe(sim, "CALL-1")
    assert text.startswith("event: message\ndata: {")
    assert [kind for kind, _ in frames(text)] == ["event", "data"] * 3
    step, close = events(text)[1:]
    for event in (step, close):
        assert isinstance(event["timestamp"], float)
        assert abs(event["timestamp"] - datetime.now().timestamp()) < 5
        assert event["timestamp"] == round(event["timestamp"], 3)
    assert ISO_Z.match(events(text)[0]["event_time"])  # sse_init's event_time stays ISO


async def test_script_sse_init_and_sse_close_lines_are_replaced_and_sse_close_sets_the_end() -> None:
    script = make_script({
        "id": "CALL-1",
        "events": [
            {"at": 0, "event_type": "sse_init", "event_id": "scripted-init"},
            {"at": 0, "event_type": "step"},
            {"at": 0.3, "event_type": "sse_close", "event_id": "scripted-close"},
        ],
    })  # fmt: skip
    async with running_simulator(script) as sim:
        _, text, chunks = await subscribe(sim, "CALL-1")
    sent = events(text)
    assert [e["event_type"] for e in sent] == ["sse_init", "step", "sse_close"]
    assert "scripted" not in text
    assert chunks[-1][0] >= 0.25


# -- answers other than 200 -------------------------------------------------------------------------------------


async def test_auth_call_id_and_route_errors_answer_json() -> None:
    script = make_script(call("CALL-1", 0.0), api_key="s3cret")
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        url = f"{sim.base_url}/events"
        answers = [
            await client.get(url, params={"callId": "CALL-1"}),
            await client.get(url, params={"callId": "CALL-1"}, headers=KEY),
            await client.get(url, headers={"Authorization": "Bearer s3cret"}),
            await client.get(url, params={"callId": "CALL-9"}, headers={"Authorization": "Bearer s3cret"}),
            await client.get(f"{sim.base_url}/nothing", headers={"Authorization": "Bearer s3cret"}),
            await client.post(url, params={"callId": "CALL-1"}, headers={"Authorization": "Bearer s3cret"}),
        ]
    assert [a.status_code for a in answers] == [401, 401, 400, 404, 404, 404]
    for answer in answers:
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["status"] is False
    assert answers[0].json() == {"status": False, "errors": ["Unauthorized: invalid API key"]}
    assert answers[3].json() == {"status": False, "errors": ["Call not found"]}
    assert sim.connections == {"CALL-1": 2, "CALL-9": 1}
    assert sim.statuses == [("CALL-1", 401), ("CALL-1", 401), ("", 400), ("CALL-9", 404)]


async def test_api_key_argument_overrides_the_script() -> None:
    async with running_simulator(make_script(call("CALL-1", 0.0)), api_key="other") as sim:
        denied, _, _ = await subscribe(sim, "CALL-1")
        allowed, _, _ = await subscribe(sim, "CALL-1", headers={"Authorization": "Bearer other"})
    assert (denied.status_code, allowed.status_code) == (401, 200)


async def test_completed_calls_answer_400() -> None:
    script = make_script(call("CALL-done", 0.0, status="completed"), call("CALL-1", 0.0, 0.1))
    only_active = {"status": False, "errors": ["Only active calls can be subscribed to"]}
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        declared = await client.get(f"{sim.base_url}/events?callId=CALL-done", headers=KEY)
        first, _, _ = await subscribe(sim, "CALL-1")  # runs the timeline to its end
        again = await client.get(f"{sim.base_url}/events?callId=CALL-1", headers=KEY)
    assert (declared.status_code, declared.json()) == (400, only_active)
    assert first.status_code == 200
    assert (again.status_code, again.json()) == (400, only_active)


# -- faults -----------------------------------------------------------------------------------------------------


async def test_fail_first_answers_the_status_with_retry_after_then_streams() -> None:
    script = make_script(call("CALL-1", 0.0, 0.2, fail_first=2, fail_status=503, retry_after=1))
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        failures = [await client.get(f"{sim.base_url}/events?callId=CALL-1", headers=KEY) for _ in range(2)]
        await trio.sleep(0.3)  # longer than the call: a failed subscription must not have started its clock
        response, text, _ = await subscribe(sim, "CALL-1")
    for failure in failures:
        assert failure.status_code == 503
        assert failure.headers["retry-after"] == "1"
        assert failure.headers["content-type"] == "application/json"
        assert failure.json()["status"] is False
    assert response.status_code == 200
    assert [e["event_type"] for e in events(text)] == ["sse_init", "step", "step", "sse_close"]
    assert sim.statuses == [("CALL-1", 503), ("CALL-1", 503), ("CALL-1", 200)]


async def test_fail_first_429_uses_the_rate_limit_body_and_no_retry_after_unless_set() -> None:
    script = make_script(
        call("CALL-1", 0.0, fail_first=1, fail_status=429, retry_after=2.5), call("CALL-2", fail_first=1)
    )
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        limited = await client.get(f"{sim.base_url}/events?callId=CALL-1", headers=KEY)
        unavailable = await client.get(f"{sim.base_url}/events?callId=CALL-2", headers=KEY)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2.5"
    assert limited.json()["retry_after"] == 2.5 and limited.json()["status"] is False
    assert unavailable.status_code == 503 and "retry-after" not in unavailable.headers


async def test_drop_after_cuts_the_first_connection_then_a_reconnect_gets_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    script = make_script(call("CALL-1", 0.0, 0.0, 0.1, 0.3, drop_after=2))
    async with running_simulator(script) as sim:
        received = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with httpx.AsyncClient(timeout=None) as client:
                async with client.stream("GET", sim.events_url("CALL-1"), headers=KEY) as response:
                    assert response.status_code == 200
                    async for chunk in response.aiter_text():
                        received.append(chunk)
        _, again, _ = await subscribe(sim, "CALL-1")
    assert [e.get("n") for e in events("".join(received))] == [None, 0, 1]  # sse_init + 2 events, no sse_close
    assert [e["event_type"] for e in events(again)] == ["sse_init"] + ["step"] * 4 + ["sse_close"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "no traceback for a deliberate cut"


async def test_end_after_ends_the_first_connection_cleanly_without_sse_close() -> None:
    script = make_script(call("CALL-1", 0.0, 0.05, 0.3, end_after=1))
    async with running_simulator(script) as sim:
        first, text, _ = await subscribe(sim, "CALL-1")
        _, again, _ = await subscribe(sim, "CALL-1")
    assert first.status_code == 200
    assert [e["event_type"] for e in events(text)] == ["sse_init", "step"]
    assert [e["event_type"] for e in events(again)] == ["sse_init", "step", "step", "step", "sse_close"]


async def test_malformed_after_sends_a_broken_line_and_an_untyped_object_then_goes_on() -> None:
    script = make_script(call("CALL-1", 0.0, 0.0, 0.3, malformed_after=1))
    texts: dict[str, str] = {}

    async def read(name: str) -> None:
        texts[name] = (await subscribe(sim, "CALL-1"))[1]

    async with running_simulator(script) as sim, trio.open_nursery() as nursery:
        nursery.start_soon(read, "first")
        await trio.sleep(0.1)
        nursery.start_soon(read, "second")
    data = [value for kind, value in frames(texts["first"]) if kind == "data"]
    assert data[2:4] == ["{this is not json", '{"no_event_type": true}']
    types = ["sse_init", "step", "step", "step", "sse_close"]
    assert [json.loads(d)["event_type"] for d in data[:2] + data[4:]] == types
    assert [e["event_type"] for e in events(texts["second"])] == types  # only the first connection is hit


async def test_stall_after_goes_silent_for_wall_seconds_even_at_high_speed() -> None:
    script = make_script(
        call("CALL-1", 0.0, 0.0, 0.0, stall_after=1, stall_seconds=0.4), keepalive=0.05, speed=50
    )
    async with running_simulator(script) as sim:
        _, text, chunks = await subscribe(sim, "CALL-1")
    gaps = [(b[0] - a[0], a[1]) for a, b in zip(chunks, chunks[1:])]
    longest, before = max(gaps)
    assert longest >= 0.38
    assert [e.get("n") for e in events(before)][-1] == 0  # silent right after the first event
    assert [e["event_type"] for e in events(text)] == ["sse_init", "step", "step", "step", "sse_close"]
    assert "keep-alive" not in text  # nothing at all during the stall, and the call has no other silence


async def test_repeat_makes_numbered_calls() -> None:
    script = make_script(call("CALL-{n}-x", 0.0, repeat=3))
    assert [c.id for c in script.calls] == ["CALL-0-x", "CALL-1-x", "CALL-2-x"]
    async with running_simulator(script, speed=10) as sim:
        _, text, _ = await subscribe(sim, "CALL-2-x")
    assert {e["call_id"] for e in events(text)} == {"CALL-2-x"}


async def test_500_concurrent_subscriptions_all_get_their_whole_call() -> None:
    script = make_script(call("CALL-{n}", 0.0, 0.2, 0.4, 0.6, repeat=500), keepalive=0.25)
    results: dict[str, list[str]] = {}
    async with running_simulator(script) as sim:
        limits = httpx.Limits(max_connections=600, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), limits=limits) as client:

            async def one(call_id: str) -> None:
                async with client.stream("GET", sim.events_url(call_id), headers=KEY) as response:
                    assert response.status_code == 200
                    text = "".join([chunk async for chunk in response.aiter_text()])
                results[call_id] = [e["event_type"] for e in events(text)]

            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:
                    for n in range(500):
                        nursery.start_soon(one, f"CALL-{n}")
    assert len(results) == 500
    assert all(types == ["sse_init", "step", "step", "step", "step", "sse_close"] for types in results.values())


# -- scripts ----------------------------------------------------------------------------------------------------


def test_default_script_has_three_short_realistic_calls() -> None:
    script = load_script(default_script_path())
    assert len(script.calls) == 3 and script.api_key == "sim-key" and script.speed == 1.0
    for sim_call in script.calls:
        types = [e.event_type for e in sim_call.events]
        assert 8 <= len(types) <= 14, sim_call.id
        assert 3.0 <= sim_call.end_at <= 5.0
        assert types[0] == "call_start" and types[-1] == "call_end"
        for needed in ("tts_completed", "user_transcription", "user_interim_transcription", "agent_node_state"):
            assert needed in types, (sim_call.id, needed)
        assert re.fullmatch(r"CALL-\d{13}-[0-9a-f]{6}", sim_call.id)
    everything = [e.event_type for c in script.calls for e in c.events]
    assert {"turn_latency", "metrics"} <= set(everything)


def write_capture(tmp_path: Path, lines: list[dict[str, Any]] = CAPTURE) -> Path:
    path = tmp_path / "capture.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_jsonl_scripts_time_events_by_their_timestamps_from_the_calls_first_line(tmp_path: Path) -> None:
    (sim_call,) = load_script(write_capture(tmp_path)).calls
    assert sim_call.id == "CALL-J"
    assert [e.event_type for e in sim_call.events] == ["call_start", "tts_completed", "user_transcription"]
    assert [e.at for e in sim_call.events] == [0.0, pytest.approx(0.4), pytest.approx(1.9)]  # ISO and epoch
    assert sim_call.end_at == pytest.approx(2.5)  # the captured sse_close sets the end
    assert sim_call.events[1].fields["event_id"] == "c-3"  # kept as given


def test_jsonl_mixes_epoch_and_iso_and_several_calls(tmp_path: Path) -> None:
    lines = [
        {"event_type": "call_start", "call_id": "A", "timestamp": 1758124226.5},
        {"event_type": "call_start", "call_id": "B", "timestamp": "2025-09-17T15:50:26.000Z"},
        {"event_type": "step", "call_id": "A", "timestamp": "2025-09-17T15:50:28.000Z"},
        {"event_type": "step", "call_id": "B", "timestamp": 1758124225.0},  # earlier than its call's start: clamped
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    a, b = load_script(path).calls
    assert (a.id, [e.at for e in a.events]) == ("A", [0.0, pytest.approx(1.5)])
    assert (b.id, [e.at for e in b.events]) == ("B", [0.0, 0.0])


async def test_a_jsonl_capture_streams_with_its_own_ids_and_timestamps(tmp_path: Path) -> None:
    async with running_simulator(write_capture(tmp_path), speed=100) as sim:
        _, text, _ = await subscribe(sim, "CALL-J")
    sent = events(text)
    assert [e["event_type"] for e in sent] == [
        "sse_init", "call_start", "tts_completed", "user_transcription", "sse_close"
    ]  # fmt: skip
    assert sent[1:4] == CAPTURE[1:4]  # sent unchanged
    assert sent[0]["event_time"] != CAPTURE[0]["timestamp"] and sent[-1]["event_id"] != "c-5"  # generated


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('spead = 2\n', 'calls.toml: spead: unknown key (did you mean \'speed\'?)'),
        ('[[calls]]\nid="A"\ndrop_afer=1\n', "calls.toml: calls[0].drop_afer: unknown key (did you mean 'drop_after'"),
        (
            '[[calls]]\nid="A"\n[[calls]]\nid="B"\n[[calls]]\nid="C"\n[[calls.events]]\nat = "x"\nevent_type = "s"\n',
            'calls.toml: calls[2].events[0].at: expected a number of seconds, got "x"',
        ),
        (
            '[[calls]]\nid="A"\n[[calls.events]]\nat=1\nevent_type="s"\n[[calls.events]]\nat=0.5\nevent_type="s"\n',
            "calls.toml: calls[0].events[1].at: expected a time not before the previous event's 1, got 0.5",
        ),
        ('[[calls]]\nid="A"\n[[calls.events]]\nevent_type="s"\n', "calls.toml: calls[0].events[0].at: required"),
        ('[[calls]]\nid="A"\n[[calls.events]]\nat=0\n', "calls.toml: calls[0].events[0].event_type: expected a"),
        ('[[calls]]\nid="A"\nrepeat=3\n', "calls.toml: calls[0].id: expected {n} in the id of a call with repeat"),
        ('[[calls]]\nid="A"\ndrop_after=1\n', "calls.toml: calls[0].drop_after: expected at most the call's 0 events"),
        ('[[calls]]\nid="A"\nfail_status=302\n', "calls.toml: calls[0].fail_status: expected an HTTP error status"),
        ('[[calls]]\nid="A"\nstall_after=0\n', "calls.toml: calls[0].stall_seconds: required with stall_after"),
        ('speed = 0\n', "calls.toml: speed: expected a number > 0, got 0"),
        ('framing = "sse"\n', "calls.toml: framing: expected one of 'data', 'event-message', got \"sse\""),
        ('[[calls]]\nid="A"\n[[calls]]\nid="A"\n', "calls.toml: calls: duplicate call id 'A'"),
        ("speed = = 2\n", "calls.toml: invalid TOML: "),
    ],
)
def test_script_errors_name_the_file_and_the_key_path(tmp_path: Path, text: str, message: str) -> None:
    assert_one_line_script_error(tmp_path, text, message)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    path.write_text('{"event_type": "a", "call_id": "C", "timestamp": 1}\n\n{"event_type": oops}\n')
    with pytest.raises(ScriptError, match=r"capture\.jsonl: line 3: invalid JSON: "):
        load_script(path)
    path.write_text('{"event_type": "a", "call_id": "C", "timestamp": "yesterday"}\n')
    with pytest.raises(ScriptError, match=r'capture\.jsonl: line 1: timestamp: expected .*, got "yesterday"'):
        load_script(path)
    with pytest.raises(ScriptError, match=r"nope\.yaml: cannot read"):
        load_script(tmp_path / "nope.yaml")
    (tmp_path / "calls.yaml").write_text("x")
    with pytest.raises(ScriptError, match=r"calls\.yaml: expected a \.toml or \.jsonl script"):
        load_script(tmp_path / "calls.yaml")


# -- the command-line entry -------------------------------------------------------------------------------------


def _cli(*args: object) -> subprocess.Popen[str]:
    code = f"import sys; from hookrunner._simulator import run_simulator_cli as r; sys.exit(r(*{args!r}))"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"}
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_prints_one_listening_line_serves_and_stops_on_a_signal(stop: signal.Signals) -> None:
    process = _cli(0, None, "k", 1.0)
    try:
        line = process.stdout.readline()
        match = re.fullmatch(
            r"simulator listening on (http://127\.0\.0\.1:\d+) \(3 calls: (.+)\); another call: POST (\S+)\n", line
        )
        assert match, line
        assert match[3] == f"{match[1]}/simulator/calls"  # how to start one more, on the same line
        assert match[2].split(", ") == [c.id for c in load_script(default_script_path()).calls]
        response = httpx.get(f"{match[1]}/events?callId=CALL-nope", headers={"Authorization": "Bearer k"})
        assert response.status_code == 404
        process.send_signal(stop)
        assert process.wait(timeout=10) == 0
        assert process.stdout.read() == "" and process.stderr.read() == ""
    finally:
        process.kill()
        process.wait()


def test_cli_reports_a_bad_script_in_one_line_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "calls.toml"
    bad.write_text("spead = 2\n")
    assert run_simulator_cli(0, str(bad), "k", 1.0) == 2  # in-process: returns before serving
    process = _cli(0, str(bad), "k", 1.0)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 2 and out == ""
    assert err == f"{bad}: spead: unknown key (did you mean 'speed'?)\n"


def test_cli_reports_a_port_in_use_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_simulator_cli(port, None, "k", 1.0) == 1
    out, err = capsys.readouterr()
    assert out == ""
    expected = rf"simulator: cannot listen on 127\.0\.0\.1:{port}: \[Errno \d+\] Address already in use\n"
    assert re.fullmatch(expected, err)
