"""A stream can carry anything: every line and event has a bound, text is always UTF-8 and always encodable.

The reader is checked alone (examples and properties over arbitrary bytes cut into arbitrary chunks), then the
runner against the simulator and against a loopback server sending what the simulator cannot (a BOM, a charset).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookrunner._core.asgi import lifespan, serve_asgi
from hookrunner._simulator import running_simulator
from hookrunner._stream.sse import OVERSIZED, SseReader
from hookrunner._core.text import json_line

from helpers import Recorder, call_events, make_config, run_runner, script


def read_all(data: bytes, max_size: int = 1000, cuts: list[int] | None = None) -> list[Any]:
    reader = SseReader(max_size)
    out: list[Any] = []
    points = sorted(set(cuts or [])) + [len(data)]
    start = 0
    for point in points:
        if point > start:
            out += reader.feed(data[start:point])
            start = point
    return out


def test_lines_end_in_crlf_lf_or_cr_and_data_lines_join_with_newlines() -> None:
    data = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: one\ndata:two\n: a keep-alive\n\n"
    expected = ["a", "b", "c", "one\ntwo"]
    assert read_all(data) == expected
    assert read_all(data, cuts=list(range(len(data)))) == expected  # byte by byte, a CR split from its LF


def test_one_leading_byte_order_mark_is_dropped_and_the_first_event_kept() -> None:
    data = "\ufeffdata: first\n\n\ufeffdata: second\n\n".encode()
    # the BOM's three bytes cut apart; only the stream's first character may be a BOM: later, "\ufeffdata" is
    # another field's name, which the standard says to ignore
    assert read_all(data, cuts=[1, 2]) == ["first"]
    assert read_all(b"data: no bom\n\n") == ["no bom"]


def test_bytes_are_utf8_whatever_they_hold_and_invalid_ones_become_replacement_characters() -> None:
    data = "data: ñ 👋\n\n".encode() + b"data: \xff\xfe\n\n"
    assert read_all(data, cuts=[8, 9, 10, 11]) == ["ñ 👋", "\ufffd\ufffd"]


def test_an_oversized_line_skips_its_event_once_and_the_stream_goes_on() -> None:
    data = b"data: ok1\n\ndata: " + b"x" * 5000 + b"\n\ndata: ok2\n\n"
    assert read_all(data, max_size=100) == ["ok1", OVERSIZED, "ok2"]
    assert read_all(data, max_size=100, cuts=list(range(0, len(data), 7))) == ["ok1", OVERSIZED, "ok2"]


def test_an_event_whose_data_lines_add_up_past_the_bound_is_skipped() -> None:
    data = b"".join(b"data: 0123456789\n" for _ in range(50)) + b"\ndata: next\n\n"
    assert read_all(data, max_size=100) == [OVERSIZED, "next"]


def test_a_line_that_never_ends_is_not_kept_in_memory() -> None:
    reader = SseReader(1000)
    for _ in range(1000):  # 10 MB with no newline
        assert reader.feed(b"y" * 10_000) == []
    assert reader._pending_size == 0 and reader._pending.getvalue() == ""  # nothing of it kept past the bound
    assert reader.feed(b"\n\ndata: after\n\n") == [OVERSIZED, "after"]


def test_an_event_left_unfinished_when_the_stream_ends_is_not_passed_on() -> None:
    assert read_all(b"data: done\n\ndata: half") == ["done"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=30), max_size=st.integers(1, 200))
def test_any_bytes_in_any_chunks_read_the_same_within_the_bound(data: bytes, cuts: list[int], max_size: int) -> None:
    """No input raises, every event's data is within the bound, and where the chunks are cut changes nothing
    (except a leading BOM split from the rest, which is still dropped)."""
    whole = read_all(data, max_size)
    chunked = read_all(data, max_size, [cut for cut in cuts if cut < len(data)])
    assert chunked == whole
    for item in whole:
        assert item is OVERSIZED or (isinstance(item, str) and 0 < len(item) <= max_size)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b":", b"data", b": ", b"x", b"\xef\xbb\xbf", b"\xc3"]), max_size=60),
    cuts=st.lists(st.integers(0, 200), max_size=40),
)
def test_sse_framing_read_the_same_however_the_chunks_fall(pieces: list[bytes], cuts: list[int]) -> None:
    """Arbitrary bytes rarely spell SSE; these do: line ends, colons and field names in every order, cut anywhere
    (a CR in one chunk and its LF alone in the next included)."""
    data = b"".join(pieces)
    cut_points = [cut for cut in cuts if cut < len(data)]
    assert read_all(data, 50, cut_points) == read_all(data, 50)
    assert read_all(data, 50, list(range(len(data)))) == read_all(data, 50)


def test_a_crlf_whose_lf_arrives_alone_ends_one_line_only() -> None:
    reader = SseReader(100)
    assert reader.feed(b"data: a\r") == [] and reader.feed(b"\n") == [] and reader.feed(b"\ndata: b\n\n") == ["a", "b"]


def test_a_million_short_data_lines_are_bounded_like_one_long_one() -> None:
    reader = SseReader(64 * 1024)
    for _ in range(100):
        assert reader.feed(b"data:x\n" * 10_000) == []
    assert len(reader._data) * 64 <= 64 * 1024  # what it holds is bounded by the setting, objects included
    assert reader.feed(b"\n") == [OVERSIZED]


def test_an_oversized_comment_line_is_dropped_alone_and_its_event_kept() -> None:
    data = b"data: kept\n:" + b"k" * 5000 + b"\n\n"
    assert read_all(data, 200) == ["kept"]
    assert read_all(data, 200, cuts=list(range(0, len(data), 100))) == ["kept"]


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), min_size=1), max_size=20),
    line_end=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_events_written_by_any_sse_server_are_read_back_exactly(events: list[str], line_end: str) -> None:
    data = "".join(f"data: {text}{line_end}{line_end}" for text in events).encode()
    expected = [text if len(text) + 1 <= 10_000 else OVERSIZED for text in events]
    assert read_all(data, 10_000, cuts=list(range(0, len(data), 5))) == expected


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
))  # fmt: skip
def test_any_json_value_with_any_text_writes_as_one_utf8_line(value: Any) -> None:
    """Lone surrogates included (st.text() draws them): the dead-letter file and the spool can write anything."""
    line = json_line(value)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    json.loads(line.decode("utf-8"))


# --- the runner ------------------------------------------------------------------------------------------------


async def test_an_oversized_event_and_a_line_cut_without_newline_cost_one_event_each_and_the_call_goes_on() -> None:
    events = call_events(8, spacing=0.05)  # the call is still live when the runner reconnects
    sim_script = script(
        [{"id": "CALL-BIG", "events": events, "oversized_after": 2, "oversized_bytes": 300_000, "partial_after": 5}]
    )
    recorder = Recorder()
    async with running_simulator(sim_script) as sim:
        code, runner = await run_runner(make_config(sim.base_url, max_event_bytes=100_000), ["CALL-BIG"], recorder)
        kinds = [frame.kind for frame in sim.sent["CALL-BIG"]]
    assert "oversized" in kinds and "partial" in kinds  # the faults really were on the wire
    assert code == 0
    assert runner.stats.oversized_events == 1 and runner.stats.malformed_lines == 1
    texts = [event.raw.get("tts_text") or event.raw.get("user_transcription_text") for event in recorder.events["CALL-BIG"]]
    assert [text for text in texts if text] == [f"turn {i}" for i in range(8)]  # the oversized one was extra
    assert recorder.finished == {"CALL-BIG": "ended"} and runner.stats.reconnects == 1


async def test_a_lone_surrogate_becomes_a_replacement_character_in_text_and_raw() -> None:
    events = [{"at": 0, "event_type": "user_transcription", "user_transcription_text": "card \ud83d cut"}]
    recorder = Recorder()
    async with running_simulator(script([{"id": "CALL-SUR", "events": events}])) as sim:
        code, _ = await run_runner(make_config(sim.base_url), ["CALL-SUR"], recorder)
    assert code == 0
    (event,) = [event for event in recorder.events["CALL-SUR"] if event.event_type == "user_transcription"]
    assert event.text == "card \ufffd cut" and event.raw["user_transcription_text"] == "card \ufffd cut"
    event.text.encode("utf-8")  # every sink can write it


class _Charset:
    """An Atoms-like stream that starts with a BOM and names a charset that is not the one it uses."""

    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.body = body
        self.content_type = content_type

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", self.content_type)]})
        await send({"type": "http.response.body", "body": self.body})


async def test_a_stream_is_read_as_utf8_with_its_bom_dropped_whatever_its_content_type_says() -> None:
    lines = [
        {"event_type": "sse_init", "event_id": "e0"},
        {"event_type": "user_transcription", "event_id": "e1", "user_transcription_text": "ñ 👋"},
        {"event_type": "sse_close", "event_id": "e2"},
    ]
    body = "\ufeff".encode() + b"".join(b"data: " + json.dumps(line, ensure_ascii=False).encode() + b"\n\n" for line in lines)
    app = _Charset(body, b"text/event-stream; charset=iso-8859-1")
    recorder = Recorder()
    import logging

    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(partial(serve_asgi, app, "127.0.0.1", 0, log=logging.getLogger("test")))
        code, _ = await run_runner(make_config(base_url), ["CALL-UTF8"], recorder)
        nursery.cancel_scope.cancel()
    assert code == 0
    received = recorder.events["CALL-UTF8"]
    assert [event.event_id for event in received] == ["e0", "e1", "e2"]  # the first event, behind the BOM, kept
    assert received[1].text == "ñ 👋"
