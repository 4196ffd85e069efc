"""The event streams' own read path (``_stream/event_stream.py``): HTTP/1.1 parsed by llhttp on trio sockets, and
httpx where the environment names a proxy.

The simulator covers the usual answers (chunked streams, error bodies); here a raw loopback server sends exactly the
bytes each case needs: a body that ends with the connection, a chunked body cut in the middle, headers without
end, bytes that are not HTTP, and a proxy that the runner must go through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from helpers import API_KEY, Recorder, call_events, make_config, read_request_head, run_runner, script, serve_loopback
from hookrunner._core.stats import Stats
from hookrunner._core.config import ReconnectConfig
from hookrunner._core.http1 import proxied
from hookrunner._stream.event_stream import HttpxStreams, SocketStreams, stream_opener
from hookrunner._simulator import running_simulator
from hookrunner._stream.subscription import Subscription

Answer = Callable[[int, bytes], bytes]  # (connection number, request bytes) -> what the server sends


def events(call_id: str, n: int) -> list[bytes]:
    """``sse_init``, n user transcriptions, ``sse_close``: each one ``data: ...\\n\\n``."""
    kinds = ["sse_init"] + ["user_transcription"] * n + ["sse_close"]
    lines = []
    for index, kind in enumerate(kinds):
        body = {"event_type": kind, "event_id": f"{call_id}_{index}", "timestamp": "2026-12-03T10:00:00Z",
                "call_id": call_id, "user_transcription_text": f"turn {index}"}  # fmt: skip
        lines.append(b"data: " + json.dumps(body).encode() + b"\n\n")
    return lines


def chunked(parts: list[bytes], *, end: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    return body + (b"0\r\n\r\n" if end else b"")


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


class RawServer:
    """A loopback TCP server that reads one request per connection and sends what ``answer`` gives, then closes."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.port = 0

    async def _serve(self, stream: trio.SocketStream) -> None:
        request = await read_request_head(stream)
        if request is None:
            return
        self.requests.append(request)
        try:
            await stream.send_all(self.answer(len(self.requests), request))
        except trio.BrokenResourceError:
            pass
        await stream.aclose()

    async def start(self, nursery: trio.Nursery) -> None:
        self.port = await serve_loopback(nursery, self._serve)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/atoms/v1"


async def run_against(answer: Answer, call_id: str, **runner: Any) -> tuple[int, Any, Recorder, RawServer]:
    recorder = Recorder()
    server = RawServer(answer)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        config = make_config(server.base_url, reconnect={"initial_delay": 0.01, "max_delay": 0.05, "max_attempts": 3}, **runner)
        code, ran = await run_runner(config, [call_id], recorder)
        nursery.cancel_scope.cancel()
    return code, ran, recorder, server


def texts(recorder: Recorder, call_id: str) -> list[str]:
    return [event.event_type for event in recorder.events[call_id]]


async def test_a_body_that_ends_with_the_connection_is_read_to_its_end() -> None:
    call = "CALL-CLOSE-DELIMITED"
    code, runner, recorder, server = await run_against(lambda n, request: HEAD + b"\r\n" + b"".join(events(call, 3)), call)
    assert code == 0 and recorder.finished[call] == "ended"
    assert texts(recorder, call) == ["sse_init"] + ["user_transcription"] * 3 + ["sse_close"]
    request = server.requests[0]
    assert request.startswith(b"GET /atoms/v1/events?callId=CALL-CLOSE-DELIMITED HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer " in request and b"\r\nAccept-Encoding: identity\r\n" in request
    assert b"\r\nHost: 127.0.0.1:" in request and b"\r\nUser-Agent: hookrunner/" in request


async def test_a_chunked_body_cut_inside_is_a_failed_connection_and_the_next_one_goes_on(caplog: Any) -> None:
    call = "CALL-CUT"
    lines = events(call, 4)

    def answer(connection: int, request: bytes) -> bytes:
        if connection == 1:  # three events, then half a chunk, then the connection closes
            return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(lines[:3], end=False) + b"40\r\ndata: {"
        return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(lines)  # the server replays the whole call

    with caplog.at_level(logging.WARNING):
        code, runner, recorder, server = await run_against(answer, call)
    assert code == 0 and [request.split(b" ")[1].split(b"?")[0] for request in server.requests[:2]] == [b"/atoms/v1/events"] * 2
    assert texts(recorder, call) == ["sse_init"] + ["user_transcription"] * 4 + ["sse_close"]  # each once
    assert runner.stats.duplicates_skipped == 2  # the two transcriptions the first connection already gave
    assert any(
        "CALL-CUT: connection failed (the server closed the connection inside the body)" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    "answer, why",
    [
        (lambda n, request: b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 70_000 + b"\r\n\r\n", "headers are over"),
        (lambda n, request: b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "HttpParserError"),
        (lambda n, request: b"", "closed the connection before answering"),
    ],
    ids=["endless headers", "not HTTP", "closed at once"],
)
async def test_an_answer_that_is_not_a_stream_is_retried_then_given_up(answer: Answer, why: str, caplog: Any) -> None:
    call = "CALL-BROKEN"
    with caplog.at_level(logging.WARNING):
        code, runner, recorder, server = await run_against(answer, call)
    assert code == 1 and recorder.finished[call] == "gave_up"
    streams = [request for request in server.requests if b" /atoms/v1/events?" in request]
    assert len(streams) == 4  # the first attempt and three more (reconnect.max_attempts)
    assert any(r.getMessage().startswith(f"{call}: connection failed (") and why in r.getMessage() for r in caplog.records)


async def test_with_a_proxy_in_the_environment_streams_go_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner must not dial Atoms itself when the environment names a proxy: ``atoms.invalid`` does not even
    resolve, so only the proxy (this raw server, answering as the far end would) can bring the events."""
    call = "CALL-PROXIED"
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    recorder = Recorder()
    server = RawServer(lambda n, request: HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(events(call, 2)))
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
        config = make_config("http://atoms.invalid/atoms/v1", reconnect={"max_attempts": 1})
        code, _ = await run_runner(config, [call], recorder)
        nursery.cancel_scope.cancel()
    assert code == 0
    assert texts(recorder, call) == ["sse_init", "user_transcription", "user_transcription", "sse_close"]
    # a proxy is asked with the whole URL (absolute form), which only httpx's proxy support sends
    assert server.requests[0].startswith(b"GET http://atoms.invalid/atoms/v1/events?callId=CALL-PROXIED HTTP/1.1\r\n")


def test_which_reader_a_url_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = httpx.AsyncClient()
    url = "https://api.smallest.ai/atoms/v1"
    assert isinstance(stream_opener(url, client, "ua"), SocketStreams)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxied(httpx.URL(url + "/events"))
    assert isinstance(stream_opener(url, client, "ua"), HttpxStreams)
    assert isinstance(stream_opener("http://127.0.0.1:9/atoms/v1", client, "ua"), SocketStreams)  # http: not proxied
    monkeypatch.setenv("NO_PROXY", "api.smallest.ai")
    assert isinstance(stream_opener(url, client, "ua"), SocketStreams)


async def test_both_readers_give_a_subscription_the_same_events() -> None:
    """The same simulated call through the socket reader and through httpx: the same events."""
    seen: dict[str, list[str]] = {}
    calls = [{"id": f"CALL-READER-{index}", "events": call_events(6)} for index in range(2)]
    async with running_simulator(script(calls)) as sim, httpx.AsyncClient() as client:
        url = httpx.URL(f"{sim.base_url}/events")
        for name, streams in (("socket", SocketStreams(url, "ua")), ("httpx", HttpxStreams(client, url))):
            call = f"CALL-READER-{len(seen)}"
            send, receive = trio.open_memory_channel[Any](100)
            subscription = Subscription(
                call, streams=streams, api_key=API_KEY, connect_timeout=5, idle_timeout=5,
                reconnect=ReconnectConfig(initial_delay=0.01, max_delay=0.05, max_attempts=2, max_retry_after=1),
                stats=Stats(),
            )  # fmt: skip
            reason = await subscription.run(send)
            send.close()
            items = [item async for item in receive]
            seen[name] = [event.event_type for batch in items if isinstance(batch, list) for event in batch]
            assert reason == "ended"
    assert seen["socket"] == seen["httpx"]
    assert seen["socket"][0] == "sse_init" and seen["socket"][-1] == "sse_close"
    assert seen["socket"].count("user_transcription") == 3 and seen["socket"].count("tts_completed") == 3
