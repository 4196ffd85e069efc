"""The simulator's faults added for fault injection, read as a client reads them: raw bytes over real httpx."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from hookrunner._simulator import Script, ScriptError, SentFrame, Simulator, parse_script, running_simulator

KEY = {"Authorization": "Bearer sim-key"}


def make_script(*calls: dict[str, Any], **settings: Any) -> Script:
    return parse_script({"keepalive": 0, **settings, "calls": list(calls)}, source="test.toml")


def call(call_id: str, n: int, **keys: Any) -> dict[str, Any]:
    """A call of ``n`` events at once (event_type ``step``, a field ``n`` numbering them) that ends 0.3 s after its
    start, so a reconnect soon after a fault still finds it active."""
    events: list[dict[str, Any]] = [{"at": 0, "event_type": "step", "n": i} for i in range(n)]
    return {"id": call_id, "events": [*events, {"at": 0.3, "event_type": "sse_close"}], **keys}


async def read(sim: Simulator, call_id: str) -> tuple[int, dict[str, str], str, str | None]:
    """One subscription: status, headers, the body text as far as it came, and the error that ended it, if any."""
    chunks: list[str] = []
    error = None
    with trio.fail_after(5):
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", sim.events_url(call_id), headers=KEY) as response:
                try:
                    async for chunk in response.aiter_text():
                        chunks.append(chunk)
                except httpx.RemoteProtocolError as exc:
                    error = str(exc)
    return response.status_code, dict(response.headers), "".join(chunks), error


def data_lines(text: str) -> list[str]:
    """The ``data:`` lines of complete events (a blank line after them)."""
    complete = text.rsplit("\n\n", 1)[0] if "\n\n" in text else ""
    return [line[len("data: ") :] for line in complete.split("\n") if line.startswith("data: ")]


def events(text: str) -> list[dict[str, Any]]:
    """The complete events' JSON objects (lines that are not JSON objects left out)."""
    out = []
    for line in data_lines(text):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


async def test_oversized_after_sends_one_valid_event_line_of_oversized_bytes_and_the_stream_goes_on() -> None:
    script = make_script(call("CALL-BIG", 3, oversized_after=1, oversized_bytes=100_000))
    async with running_simulator(script) as sim:
        status, _, text, error = await read(sim, "CALL-BIG")
        sent = sim.sent["CALL-BIG"]
    assert status == 200 and error is None
    got = events(text)
    assert [e["event_type"] for e in got] == ["sse_init", "step", "tts_completed", "step", "step", "sse_close"]
    big = got[2]
    assert big["event_id"] == "CALL-BIG_oversized_1" and big["call_id"] == "CALL-BIG"
    assert set(big["tts_text"]) == {"x"}
    assert len("data: " + data_lines(text)[2] + "\n\n") == 100_000  # the whole frame is oversized_bytes long
    assert [(f.kind, f.event_id) for f in sent][2] == ("oversized", "CALL-BIG_oversized_1")
    assert sent[2].size == 100_000


async def test_partial_after_sends_half_a_line_without_a_newline_then_cuts_and_a_reconnect_gets_everything() -> None:
    script = make_script(call("CALL-HALF", 4, partial_after=2))
    async with running_simulator(script) as sim:
        _, _, first, error = await read(sim, "CALL-HALF")
        _, _, second, second_error = await read(sim, "CALL-HALF")
        sent = sim.sent["CALL-HALF"]
    assert error is not None  # an incomplete body: the connection was cut
    assert [e.get("n") for e in events(first)] == [None, 0, 1]  # sse_init, then the two events before the cut
    tail = first.rsplit("\n\n", 1)[1]
    assert tail.startswith('data: {"event_type":"step","event_id":"CALL-HALF_2_') and "\n" not in tail
    assert second_error is None
    assert [e["event_type"] for e in events(second)] == ["sse_init"] + ["step"] * 4 + ["sse_close"]
    partial = [f for f in sent if f.kind == "partial"]
    assert len(partial) == 1 and partial[0].connection == 1 and partial[0].size == len(tail.encode())


async def test_fail_reconnects_answers_the_reconnects_after_a_drop_with_fail_status_and_retry_after() -> None:
    script = make_script(
        call("CALL-STORM", 3, fail_first=1, fail_status=429, retry_after=0.5, drop_after=1, fail_reconnects=2)
    )
    async with running_simulator(script) as sim:
        answers = [await read(sim, "CALL-STORM") for _ in range(5)]
        statuses = [status for _, status in sim.statuses]
    assert statuses == [429, 200, 429, 429, 200]  # fail_first, the dropped stream, the storm, then served
    for status, headers, text, _ in answers:
        if status == 429:
            assert headers["retry-after"] == "0.5"
            assert json.loads(text)["retry_after"] == 0.5
    assert [e["event_type"] for e in events(answers[4][2])] == ["sse_init", "step", "step", "step", "sse_close"]


async def test_a_reconnect_after_a_clean_stream_is_not_failed_without_fail_reconnects() -> None:
    script = make_script(call("CALL-CALM", 2, end_after=1, fail_first=1))
    async with running_simulator(script) as sim:
        for _ in range(3):
            await read(sim, "CALL-CALM")
        statuses = [status for _, status in sim.statuses]
    assert statuses == [503, 200, 200]


async def test_a_lone_surrogate_in_a_field_is_sent_as_its_json_escape() -> None:
    cut = "I want to cancel \ud83d"  # the first half of an emoji's surrogate pair, as a text cut inside it has
    final = {"at": 0, "event_type": "user_transcription", "user_transcription_text": cut}
    script = make_script({"id": "CALL-EMOJI", "events": [final]})
    async with running_simulator(script) as sim:
        status, _, text, error = await read(sim, "CALL-EMOJI")
    assert status == 200 and error is None
    line = data_lines(text)[1]
    assert "\\ud83d" in line
    assert json.loads(line)["user_transcription_text"] == cut
    assert events(text)[-1]["event_type"] == "sse_close"  # the stream went on


async def test_sent_lists_every_frame_of_every_connection_in_order_with_duplicate_ids_as_given() -> None:
    events_data = [
        {"at": 0, "event_type": "step", "n": 0},
        {"at": 0, "event_type": "step", "n": 1, "event_id": "same"},
        {"at": 0, "event_type": "step", "n": 2, "event_id": "same"},
        {"at": 0.3, "event_type": "sse_close"},
    ]
    script = make_script({"id": "CALL-LOG", "events": events_data, "malformed_after": 1, "drop_after": 2})
    async with running_simulator(script) as sim:
        _, _, first, _ = await read(sim, "CALL-LOG")
        _, _, second, _ = await read(sim, "CALL-LOG")
        sent = sim.sent["CALL-LOG"]
        assert sim.sent["CALL-LOG"] is not sim.app.calls.states["CALL-LOG"].sent  # a copy, safe to keep
    on_wire = [e.get("event_id") for e in events(first) + events(second) if "event_type" in e]
    kinds = [(f.connection, f.kind, f.event_type) for f in sent]
    assert kinds == [
        (1, "event", "sse_init"), (1, "event", "step"), (1, "malformed", None), (1, "malformed", None),
        (1, "event", "step"),
        (2, "event", "sse_init"), (2, "event", "step"), (2, "event", "step"), (2, "event", "step"),
        (2, "event", "sse_close"),
    ]  # fmt: skip
    assert [f.event_id for f in sent if f.kind == "event"] == on_wire
    assert [f.event_id for f in sent if f.connection == 2][2:4] == ["same", "same"]
    assert all(isinstance(f, SentFrame) and f.size > 0 for f in sent)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"partial_after": 3}, "test.toml: calls[0].partial_after: expected at most the call's 2 events, got 3"),
        ({"oversized_after": 5}, "test.toml: calls[0].oversized_after: expected at most the call's 2 events, got 5"),
        ({"oversized_bytes": 10}, "test.toml: calls[0].oversized_bytes: only with oversized_after"),
        ({"oversized_after": 1, "oversized_bytes": 0},
         "test.toml: calls[0].oversized_bytes: expected a whole number of at least 1"),
        ({"fail_reconnects": -1}, "test.toml: calls[0].fail_reconnects: expected a whole number of at least 0"),
        ({"partial_afer": 1}, "test.toml: calls[0].partial_afer: unknown key (did you mean 'partial_after'?)"),
    ],
)
def test_new_fault_keys_are_checked_at_load_time(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ScriptError) as caught:
        make_script(call("CALL-1", 2, **keys))
    assert str(caught.value).startswith(message), str(caught.value)


async def test_ends_says_how_each_stream_ended_and_a_client_that_leaves_first_is_told_apart() -> None:
    script = make_script(
        call("CALL-CUT", 2, drop_after=1),
        call("CALL-END", 2, end_after=1),
        call("CALL-LEFT", 2, stall_after=1, stall_seconds=2),
    )
    async with running_simulator(script) as sim:
        await read(sim, "CALL-CUT")
        await read(sim, "CALL-CUT")
        await read(sim, "CALL-END")
        with pytest.raises(httpx.ReadTimeout):  # the client gives up during the stall
            async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=0.2)) as client:
                async with client.stream("GET", sim.events_url("CALL-LEFT"), headers=KEY) as response:
                    async for _ in response.aiter_bytes():
                        pass
        with trio.fail_after(2):
            while not sim.ends["CALL-LEFT"]:
                await trio.sleep(0.01)
        ends = sim.ends
    assert ends["CALL-CUT"] == {1: "cut", 2: "closed"}
    assert ends["CALL-END"] == {1: "ended"}
    assert ends["CALL-LEFT"] == {1: "client"}
