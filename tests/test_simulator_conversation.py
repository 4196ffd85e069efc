"""The simulator's stored conversations (``GET /conversation/{callId}``) and the ``reconnect_skips`` fault, driven
as a client would: real httpx over loopback, compared with what the streams really sent."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from helpers import assert_one_line_script_error

from hookrunner._simulator import Script, Simulator, parse_script, running_simulator

KEY = {"Authorization": "Bearer sim-key"}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LIFECYCLE = ("sse_init", "sse_close")


def make_script(*calls: dict[str, Any], **settings: Any) -> Script:
    return parse_script({"keepalive": 0, **settings, "calls": list(calls)}, source="test.toml")


def call(call_id: str, *ats: float, **keys: Any) -> dict[str, Any]:
    """A call with one event per ``at``: event_type ``step``, a field ``n`` numbering them."""
    return {"id": call_id, "events": [{"at": at, "event_type": "step", "n": n} for n, at in enumerate(ats)], **keys}


async def at_offset(sim: Simulator, seconds: float) -> None:
    """Sleep until ``seconds`` after the simulator started serving."""
    assert sim.started_at is not None
    await trio.sleep_until(sim.started_at + seconds)


async def conversation(sim: Simulator, call_id: str, headers: dict[str, str] | None = KEY) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(sim.conversation_url(call_id), headers=headers or {})


async def data(sim: Simulator, call_id: str) -> dict[str, Any]:
    response = await conversation(sim, call_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] is True
    return body["data"]


async def read_stream(
    sim: Simulator, call_id: str, *, stop: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """One subscription's events, in order, and whether it was cut. ``stop``: the client leaves right after the
    first event it is true of."""
    received: list[dict[str, Any]] = []
    pending = ""
    with trio.fail_after(5):
        try:
            async with (
                httpx.AsyncClient(timeout=None) as client,
                client.stream("GET", sim.events_url(call_id), headers=KEY) as response,
            ):
                assert response.status_code == 200
                async for chunk in response.aiter_text():
                    pending += chunk
                    *blocks, pending = pending.split("\n\n")
                    for block in blocks:
                        if block.startswith("data: "):
                            received.append(json.loads(block[len("data: ") :]))
                            if stop is not None and stop(received[-1]):
                                return received, False
        except httpx.RemoteProtocolError:
            return received, True
    return received, False


async def wait_for_end(sim: Simulator, call_id: str, connection: int) -> None:
    """Until the server has seen stream ``connection`` of the call end (a client leaving takes a moment)."""
    with trio.fail_after(2):
        while connection not in sim.ends[call_id]:
            await trio.sleep(0.005)


def script_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["event_type"] not in LIFECYCLE]


def iso_of(value: str | float) -> str:
    """An event timestamp (ISO string or epoch seconds) as ISO 8601 with milliseconds and Z."""
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
    else:
        moment = datetime.fromtimestamp(round(value * 1000) / 1000, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- who may read what ------------------------------------------------------------------------------------------


async def test_the_conversation_needs_the_api_key() -> None:
    async with running_simulator(make_script(call("CALL-1", 0.0))) as sim:
        missing = await conversation(sim, "CALL-1", headers=None)
        wrong = await conversation(sim, "CALL-1", headers={"Authorization": "Bearer nope"})
        basic = await conversation(sim, "CALL-1", headers={"Authorization": "Basic sim-key"})
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.json() == {"status": False, "errors": ["Unauthorized: invalid API key"]}
    assert [(r.call_id, r.status, r.call_status) for r in sim.conversation_log] == [("CALL-1", 401, None)] * 3
    assert sim.conversation_requests == 3


async def test_an_unknown_call_is_not_found_and_the_path_id_is_percent_decoded() -> None:
    script = make_script(call("CALL 1/a", 0.0))
    async with running_simulator(script) as sim:
        unknown = await conversation(sim, "CALL-404")
        empty = await conversation(sim, "")
        async with httpx.AsyncClient() as client:
            encoded = await client.get(f"{sim.base_url}/conversation/CALL%201%2Fa", headers=KEY)
    assert unknown.status_code == 404 and empty.status_code == 404
    assert unknown.json() == {"status": False, "errors": ["Call not found"]}
    assert encoded.status_code == 200 and encoded.json()["data"]["callId"] == "CALL 1/a"
    assert [(r.call_id, r.status) for r in sim.conversation_log] == [("CALL-404", 404), ("", 404), ("CALL 1/a", 200)]


async def test_a_call_is_not_found_before_its_scripted_start_and_in_progress_from_it() -> None:
    script = make_script(call("CALL-1", 0.0, 2.0, start=0.6), speed=2.0)  # starts 0.3 s after serving
    async with running_simulator(script) as sim:
        before = await conversation(sim, "CALL-1")
        await at_offset(sim, 0.35)
        after = await conversation(sim, "CALL-1")
    assert before.status_code == 404 and before.json() == {"status": False, "errors": ["Call not found"]}
    assert after.status_code == 200
    assert after.json()["data"]["status"] == "in_progress"
    assert [event["n"] for event in after.json()["data"]["events"]] == [0]
    assert [r.status for r in sim.conversation_log] == [404, 200]
    assert sim.conversation_log[0].at < 0.3 <= sim.conversation_log[1].at


# -- what it holds ----------------------------------------------------------------------------------------------


async def test_an_active_call_is_in_progress_with_only_the_events_due_so_far() -> None:
    script = make_script(call("CALL-1", 0.0, 0.2, 1.6, 2.0, start=0), speed=2.0)  # due 0, 0.1, 0.8, end 1.0
    async with running_simulator(script) as sim:
        await at_offset(sim, 0.3)
        early = await data(sim, "CALL-1")
        await at_offset(sim, 0.85)
        later = await data(sim, "CALL-1")
    assert (early["status"], early["duration"]) == ("in_progress", None)
    assert [event["n"] for event in early["events"]] == [0, 1]
    assert [event["n"] for event in later["events"]] == [0, 1, 2]
    assert later["events"][:2] == early["events"]  # the same events, ids and timestamps, each time
    assert [r.call_status for r in sim.conversation_log] == ["in_progress", "in_progress"]


async def test_a_call_nobody_subscribed_to_is_in_progress_with_no_events_and_a_declared_completed_one_has_all() -> None:
    script = make_script(call("CALL-WAITING", 0.0, 0.1), call("CALL-DONE", 0.0, 0.5, status="completed"))
    async with running_simulator(script) as sim:
        waiting = await data(sim, "CALL-WAITING")
        done = await data(sim, "CALL-DONE")
    assert (waiting["status"], waiting["events"], waiting["transcript"]) == ("in_progress", [], [])
    assert (done["status"], done["duration"]) == ("completed", 0.5)
    assert [event["n"] for event in done["events"]] == [0, 1]
    assert all(event["call_id"] == "CALL-DONE" and ISO_Z.match(event["timestamp"]) for event in done["events"])


async def test_a_completed_conversation_holds_every_event_exactly_as_the_stream_sent_it() -> None:
    events = [
        {"at": 0.0, "event_type": "call_start", "telephony_id": "T-1", "agent_id": "agent-7", "direction": "outbound"},
        {"at": 0.05, "event_type": "tts_completed", "tts_text": "Hello", "tts_latency": 5.713, "x": [1, {"a": None}]},
        {"at": 0.1, "event_type": "agent_node_state", "event_id": "mine", "timestamp": 1758124226.537},
        {"at": 0.15, "event_type": "user_transcription", "user_transcription_text": "Hi"},
        {"at": 0.2, "event_type": "sse_close"},
    ]  # fmt: skip
    script = make_script({"id": "CALL-7", "events": events, "from_phone": "+15550001", "to_phone": "+15550002"})
    async with running_simulator(script) as sim:
        streamed, cut = await read_stream(sim, "CALL-7")
        stored = await data(sim, "CALL-7")
    assert not cut and streamed[-1]["event_type"] == "sse_close"
    assert stored["events"] == script_events(streamed)  # every field, same ids and timestamps, script order
    sent_ids = [frame.event_id for frame in sim.sent["CALL-7"] if frame.event_type not in LIFECYCLE]
    assert [event["event_id"] for event in stored["events"]] == sent_ids
    assert stored["events"][2]["event_id"] == "mine" and stored["events"][2]["timestamp"] == 1758124226.537
    assert {key: stored[key] for key in ("callId", "status", "duration", "from", "to", "type", "agent")} == {
        "callId": "CALL-7",
        "status": "completed",
        "duration": 0.2,
        "from": "+15550001",
        "to": "+15550002",
        "type": "telephony_outbound",
        "agent": {"_id": "agent-7"},
    }
    assert stored["variables"] == {"agent_name": "agent-7", "current_date": stored["variables"]["current_date"],
                                   "default_language": "en"}  # fmt: skip
    assert stored["recordingUrl"] == "https://recordings.simulator.invalid/CALL-7.wav"  # completed: a recording
    assert isinstance(stored["_id"], str) and stored["_id"] and stored["_id"] != "CALL-7"


@pytest.mark.parametrize("timestamp_format", ["iso", "epoch"])
async def test_the_transcript_has_the_user_and_agent_turns_with_iso_timestamps(timestamp_format: str) -> None:
    events = [
        {"at": 0.0, "event_type": "call_start"},
        {"at": 0.01, "event_type": "tts_completed", "tts_text": "How can I help?"},
        {"at": 0.02, "event_type": "user_interim_transcription", "interim_transcription_text": "my bi"},
        {"at": 0.03, "event_type": "user_transcription", "user_transcription_text": "My bill is wrong"},
        {"at": 0.04, "event_type": "metrics", "metrics": []},
        {"at": 0.05, "event_type": "tts_completed", "tts_text": "Let me look.", "timestamp": "2026-07-28T15:46:12Z"},
        {"at": 0.06, "event_type": "tts_completed"},  # no text: not a turn
    ]  # fmt: skip
    script = make_script({"id": "CALL-T", "events": events}, timestamp_format=timestamp_format)
    async with running_simulator(script) as sim:
        streamed, _ = await read_stream(sim, "CALL-T")
        stored = await data(sim, "CALL-T")
    agent, user = script_events(streamed)[1], script_events(streamed)[3]
    assert stored["transcript"] == [
        {"role": "agent", "content": "How can I help?", "timestamp": iso_of(agent["timestamp"])},
        {"role": "user", "content": "My bill is wrong", "timestamp": iso_of(user["timestamp"])},
        {"role": "agent", "content": "Let me look.", "timestamp": "2026-07-28T15:46:12.000Z"},  # normalised
    ]  # fmt: skip
    assert all(ISO_Z.match(turn["timestamp"]) for turn in stored["transcript"])
    assert stored["type"] == "telephony_inbound"


# -- faults -----------------------------------------------------------------------------------------------------


async def test_conversation_lag_answers_processing_with_nothing_then_completed_with_everything() -> None:
    script = make_script(call("CALL-1", 0.0, 0.8, start=0, conversation_lag=0.8), speed=2.0)  # end 0.4, lag 0.4
    async with running_simulator(script) as sim:
        await at_offset(sim, 0.1)
        live = await data(sim, "CALL-1")
        await at_offset(sim, 0.5)
        processing = await data(sim, "CALL-1")
        await at_offset(sim, 0.85)
        completed = await data(sim, "CALL-1")
    assert (live["status"], [event["n"] for event in live["events"]]) == ("in_progress", [0])
    assert (processing["status"], processing["events"], processing["transcript"]) == ("processing", [], [])
    assert processing["duration"] is None
    assert (completed["status"], completed["duration"]) == ("completed", 0.4)
    assert [event["n"] for event in completed["events"]] == [0, 1]
    assert completed["events"][0] == live["events"][0]
    assert [r.call_status for r in sim.conversation_log] == ["in_progress", "processing", "completed"]


async def test_conversation_fail_first_answers_the_error_then_the_conversation() -> None:
    script = make_script(
        call("CALL-RATE", 0.0, conversation_fail_first=2, conversation_fail_status=429, retry_after=1.5),
        call("CALL-BAD", 0.0, conversation_fail_first=1, fail_status=502),  # the stream's fail_status, reused
    )
    async with running_simulator(script) as sim:
        rate = [await conversation(sim, "CALL-RATE") for _ in range(3)]
        bad = [await conversation(sim, "CALL-BAD") for _ in range(2)]
        streamed, _ = await read_stream(sim, "CALL-BAD")  # the stream has no fault: fail_first is 0
    assert [response.status_code for response in rate] == [429, 429, 200]
    assert rate[0].headers["retry-after"] == "1.5"
    rate_limited = {"status": False, "error": "Too many requests (simulated)", "code": 429, "retry_after": 1.5}
    assert rate[0].json() == rate_limited
    assert [response.status_code for response in bad] == [502, 200]
    assert "retry-after" not in bad[0].headers
    assert bad[0].json() == {"status": False, "errors": ["Bad Gateway (simulated)"]}
    assert [event["event_type"] for event in streamed] == ["sse_init", "step", "sse_close"]
    assert [(r.call_id, r.status) for r in sim.conversation_log] == [
        ("CALL-RATE", 429), ("CALL-RATE", 429), ("CALL-RATE", 200), ("CALL-BAD", 502), ("CALL-BAD", 200),
    ]  # fmt: skip
    assert sim.conversation_requests == 5


@pytest.mark.parametrize("fault", ["drop_after", "end_after", "partial_after"])
async def test_a_reconnect_after_a_drop_resumes_past_skipped_events_that_only_the_conversation_has(fault: str) -> None:
    ats = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35]
    script = make_script(call("CALL-1", *ats, reconnect_skips=3, **{fault: 2}))
    async with running_simulator(script) as sim:
        first, first_cut = await read_stream(sim, "CALL-1")
        again, again_cut = await read_stream(sim, "CALL-1")
        stored = await data(sim, "CALL-1")
    assert [event.get("n") for event in first] == [None, 0, 1]  # sse_init, 2 events, no sse_close
    assert first_cut == (fault != "end_after") and not again_cut
    assert sim.ends["CALL-1"] == {1: "ended" if fault == "end_after" else "cut", 2: "closed"}
    assert [event["event_type"] for event in again] == ["sse_init", "step", "step", "step", "sse_close"]
    assert [event["n"] for event in script_events(again)] == [5, 6, 7]  # not 0, 1 again, and 2-4 skipped
    assert stored["status"] == "completed"
    assert [event["n"] for event in stored["events"]] == list(range(8))
    skipped = [event["event_id"] for event in stored["events"][2:5]]
    assert sim.skipped["CALL-1"] == skipped
    streamed_ids = {frame.event_id for frame in sim.sent["CALL-1"]}
    assert streamed_ids.isdisjoint(skipped)  # never sent on any stream
    assert script_events(first) + script_events(again) == [stored["events"][n] for n in (0, 1, 5, 6, 7)]


async def test_after_a_client_leaves_the_reconnect_skips_and_later_connections_replay_all_but_the_skipped() -> None:
    ats = [0.0, 0.0, 0.0, 0.4, 0.5, 0.6, 0.9, 1.0]
    script = make_script(call("CALL-1", *ats, reconnect_skips=2))
    async with running_simulator(script) as sim:
        first, _ = await read_stream(sim, "CALL-1", stop=lambda event: event.get("n") == 2)
        await wait_for_end(sim, "CALL-1", 1)
        second, _ = await read_stream(sim, "CALL-1", stop=lambda event: event.get("n") == 5)
        await wait_for_end(sim, "CALL-1", 2)
        third, cut = await read_stream(sim, "CALL-1")
        stored = await data(sim, "CALL-1")
    assert sim.ends["CALL-1"] == {1: "client", 2: "client", 3: "closed"}
    assert [event["n"] for event in script_events(first)] == [0, 1, 2]
    assert [event["n"] for event in script_events(second)] == [5]  # 3 and 4 skipped
    assert [event["n"] for event in script_events(third)] == [0, 1, 2, 5, 6, 7]  # a replay, without 3 and 4
    assert not cut and third[-1]["event_type"] == "sse_close"
    assert sim.skipped["CALL-1"] == [stored["events"][3]["event_id"], stored["events"][4]["event_id"]]
    assert [event["n"] for event in stored["events"]] == list(range(8))


async def test_without_reconnect_skips_a_reconnect_replays_and_nothing_is_skipped() -> None:
    script = make_script(call("CALL-1", 0.0, 0.0, 0.05, 0.1, drop_after=2))
    async with running_simulator(script) as sim:
        await read_stream(sim, "CALL-1")
        again, _ = await read_stream(sim, "CALL-1")
    assert [event["n"] for event in script_events(again)] == [0, 1, 2, 3]
    assert sim.skipped == {"CALL-1": []}


# -- script validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[calls]]\nid="A"\nreconnect_skip=1\n', "calls.toml: calls[0].reconnect_skip: unknown key (did you mean"),
        ('[[calls]]\nid="A"\nreconnect_skips=-1\n', "calls.toml: calls[0].reconnect_skips: expected a whole number of"),
        ('[[calls]]\nid="A"\nreconnect_skips=1\n', "calls.toml: calls[0].reconnect_skips: expected at most the call's"),
        (
            '[[calls]]\nid="A"\nstatus="completed"\nreconnect_skips=1\n[[calls.events]]\nat=0\nevent_type="s"\n',
            'calls.toml: calls[0].reconnect_skips: cannot be combined with status = "completed"',
        ),
        ('[[calls]]\nid="A"\nconversation_lag="soon"\n', 'calls.toml: calls[0].conversation_lag: expected a number of'),
        ('[[calls]]\nid="A"\nconversation_lag=-1\n', "calls.toml: calls[0].conversation_lag: expected a number of sec"),
        (
            '[[calls]]\nid="A"\nstatus="completed"\nconversation_lag=1\n',
            'calls.toml: calls[0].conversation_lag: cannot be combined with status = "completed"',
        ),
        ('[[calls]]\nid="A"\nconversation_fail_first=1.5\n', "calls.toml: calls[0].conversation_fail_first: expected"),
        (
            '[[calls]]\nid="A"\nconversation_fail_first=1\nconversation_fail_status=302\n',
            "calls.toml: calls[0].conversation_fail_status: expected an HTTP error status (400-599), got 302",
        ),
        (
            '[[calls]]\nid="A"\nconversation_fail_status=503\n',
            "calls.toml: calls[0].conversation_fail_status: only with conversation_fail_first",
        ),
    ],
)
def test_the_new_keys_are_checked_at_load_time(tmp_path: Path, text: str, message: str) -> None:
    assert_one_line_script_error(tmp_path, text, message)


def test_the_conversation_keys_are_read_with_their_defaults(tmp_path: Path) -> None:
    script = make_script(
        call("A", 0.0, 0.1, reconnect_skips=2, conversation_lag=1.5, conversation_fail_first=1, fail_status=429),
        call("B", 0.0, conversation_fail_first=1, conversation_fail_status=500),
        call("C", 0.0),
    )
    a, b, c = script.calls
    assert (a.reconnect_skips, a.conversation_lag, a.conversation_fail_first, a.conversation_fail_status) == (
        2, 1.5, 1, 429,
    )  # fmt: skip
    assert (b.conversation_fail_status, b.fail_status) == (500, 503)
    assert (c.reconnect_skips, c.conversation_lag, c.conversation_fail_first) == (0, 0.0, 0)
