"""Plugins' deliveries go over kept-alive trio sockets (``hookrunner._core.http1``), keeping every guarantee httpx
gave them (issue 16): one connection for many messages, a kept-alive connection the receiver closed costs no
retry, one the receiver dropped mid-request is sent once more on a fresh connection (and a fresh one never is),
the whole exchange is bounded in time and the answer in size, TLS is checked with httpx's trust settings,
redirects are not followed, and where the environment names a proxy the request goes through httpx to it.

Every test runs over real loopback sockets against a receiver written here on h11, whose every move (answer,
close, trickle, flood) the test decides, and which counts connections and requests as it sees them.
"""

from __future__ import annotations

import base64
import os
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trustme
from standardwebhooks.webhooks import Webhook

from hookrunner import __version__, hookimpl
from hookrunner._core import bounded_http
from hookrunner._core.bounded_http import DeadlineExceeded, request, truncated, use_socket_pool
from hookrunner._core.http1 import SocketPool, trusted_tls
from hookrunner.testing import run_plugins

SECRET_ENV = "HR_TEST_WH_SOCKETS"
FAST = {"timeout": 2.0, "retry_initial_delay": 0.05, "retry_max_delay": 0.2, "max_attempts": 3}


# -- a receiver whose every move the test decides --------------------------------------------------------------


@dataclass
class Seen:
    """One request as the receiver read it."""

    connection: int  # which connection (0, 1, ...), in the order they were accepted
    number: int  # which request on that connection (0, 1, ...)
    target: str
    headers: dict[str, str]
    body: bytes


class Connection:
    """One accepted connection: read requests with h11, answer with h11 or with raw bytes (then it is over)."""

    def __init__(self, receiver: Receiver, stream: trio.abc.Stream, index: int) -> None:
        self.receiver, self.stream, self.index = receiver, stream, index
        self.h11 = h11.Connection(h11.SERVER)
        self.count = 0

    async def next_request(self) -> Seen | None:
        """The next request, or None once the client closed the connection."""
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        head: h11.Request | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self.h11.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                headers = {name.decode().lower(): value.decode() for name, value in head.headers}
                seen = Seen(self.index, self.count, head.target.decode(), headers, body)
                self.count += 1
                self.receiver.seen.append(seen)
                return seen
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def answer(self, status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
        """A complete answer; the connection stays open for the next request (unless the headers say close)."""
        headers = [("content-length", str(len(body))), *(headers or [])]
        data = self.h11.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase))
        data += self.h11.send(h11.Data(data=body)) if body else b""
        data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        self.receiver.answered.append((self.index, self.count - 1))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)


Handler = Callable[[Connection], Awaitable[None]]


@dataclass
class Receiver:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    answered: list[tuple[int, int]] = field(default_factory=list)  # (connection, request number) answered
    connections: int = 0


async def answer_everything(connection: Connection) -> None:
    while await connection.next_request() is not None:
        await connection.answer(200)


@asynccontextmanager
async def receiver(handle: Handler = answer_everything, tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    """A loopback receiver calling ``handle`` for each connection (closed once it returns)."""
    state = Receiver()

    async def serve(stream: trio.abc.Stream) -> None:
        index = state.connections
        state.connections += 1
        try:
            await handle(Connection(state, stream, index))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass  # the client went away: what a test asserts is in state
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        if tls is None:
            listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        else:
            listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, serve, 0, tls, host="127.0.0.1", https_compatible=True))
        port = listeners[0].transport_listener.socket.getsockname()[1] if tls else listeners[0].socket.getsockname()[1]
        state.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/hooks"
        yield state
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def plugin_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client set up as the runner sets up ``App.http``: its User-Agent, and request() through a socket pool."""
    headers = {"User-Agent": f"hookrunner/{__version__}"}
    async with httpx.AsyncClient(headers=headers, timeout=30.0) as client, SocketPool() as pool:
        use_socket_pool(client, pool)
        yield client


async def post(client: httpx.AsyncClient, url: str, body: bytes = b'{"n": 1}', **keys: Any) -> httpx.Response:
    keys.setdefault("timeout", 2.0)
    return await request(client, "POST", url, content=body, headers={"content-type": "application/json"}, **keys)


@pytest.fixture(autouse=True)
def no_proxy_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy named by the machine's environment would take these requests to httpx (the proxy test sets one)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- the runner: App.http's deliveries over one kept-alive connection -------------------------------------------


class SeesTheSocketPool:
    """Records whether ``request(app.http, ...)`` would go through a socket pool in this run."""

    def __init__(self) -> None:
        self.pooled: bool | None = None

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.pooled = app.http in bounded_http._socket_pools


async def test_many_webhook_messages_share_one_kept_alive_connection_signed_and_with_hookrunners_user_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(SECRET_ENV, secret)
    events = [{"at": i * 0.01, "event_type": "user_transcription", "user_transcription_text": f"turn {i}"} for i in range(20)]
    seer = SeesTheSocketPool()
    async with receiver() as got:
        point = {"name": "one", "url": got.url, "secret_env": SECRET_ENV, "events": ["user_transcription"], "max_in_flight": 1, **FAST}
        settings = {"webhook": {"endpoints": [point], "dead_letter": str(tmp_path / "dead.jsonl")}}
        with trio.fail_after(20):
            result = await run_plugins([seer], [{"id": "CALL-KEEP", "events": events}], enable=["webhook"], settings=settings)
    assert result.exit_code == 0
    assert seer.pooled is True
    assert len(got.seen) == 20, [seen.body for seen in got.seen]
    assert got.connections == 1, f"{got.connections} connections for 20 messages"
    webhook = Webhook(secret)
    for seen in got.seen:
        assert seen.headers["user-agent"] == f"hookrunner/{__version__}"
        assert seen.headers["content-type"] == "application/json"
        webhook.verify(seen.body, seen.headers)  # raises on a bad signature
    assert not (tmp_path / "dead.jsonl").exists()


async def test_a_receiver_closing_every_kept_alive_connection_still_gets_each_message_once_with_no_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The receiver answers and closes without saying so (no ``Connection: close``): the client sees the idle
    socket closed before reusing it and opens a fresh one, so no attempt fails."""
    monkeypatch.setenv(SECRET_ENV, "whsec_" + base64.b64encode(os.urandom(32)).decode())

    async def answer_then_close(connection: Connection) -> None:
        if await connection.next_request() is not None:
            await connection.answer(200)

    events = [{"at": i * 0.05, "event_type": "user_transcription", "user_transcription_text": f"turn {i}"} for i in range(8)]
    async with receiver(answer_then_close) as got:
        point = {"name": "closer", "url": got.url, "secret_env": SECRET_ENV, "events": ["user_transcription"], "max_in_flight": 1, **FAST}
        settings = {"webhook": {"endpoints": [point], "dead_letter": str(tmp_path / "dead.jsonl")}}
        with trio.fail_after(20):
            result = await run_plugins([], [{"id": "CALL-CLOSE", "events": events}], enable=["webhook"], settings=settings)
    assert result.exit_code == 0
    assert [seen.connection for seen in got.seen] == list(range(8)), "each message once, each on a new connection"
    assert not [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert not (tmp_path / "dead.jsonl").exists()


# -- request() over a socket pool ------------------------------------------------------------------------------


async def test_a_kept_alive_connection_dropped_with_the_request_in_it_is_retried_once_on_a_fresh_connection() -> None:
    """The receiver reads the second request of each connection and closes without a word (it had closed the idle
    connection just as the request went out): no byte of an answer, so the request goes once more, fresh."""

    async def drop_the_second(connection: Connection) -> None:
        while (seen := await connection.next_request()) is not None:
            if seen.number == 1:
                return  # closed, unanswered
            await connection.answer(200)

    async with receiver(drop_the_second) as got, plugin_client() as client:
        first = await post(client, got.url, b"1")
        second = await post(client, got.url, b"2")
    assert (first.status_code, second.status_code) == (200, 200)
    assert [(seen.connection, seen.body) for seen in got.seen] == [(0, b"1"), (0, b"2"), (1, b"2")]
    assert got.answered == [(0, 0), (1, 0)], "each message answered once"


async def test_a_kept_alive_connection_on_a_descriptor_past_1024_is_still_reused() -> None:
    """A run following many calls holds more than 1,024 descriptors (the runner raises the limit): checking an idle
    connection with select() would fail there and throw every kept-alive connection away."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"the hard open-file limit ({hard}) leaves no room for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [socket.socket() for _ in range(1100)]
    try:
        async with receiver() as got, plugin_client() as client:
            for _ in range(5):
                await post(client, got.url)
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(got.seen) == 5 and got.connections == 1


async def test_a_fresh_connection_closed_without_an_answer_is_not_sent_again() -> None:
    async def drop_everything(connection: Connection) -> None:
        await connection.next_request()

    async with receiver(drop_everything) as got, plugin_client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(client, got.url)
    assert len(got.seen) == 1


async def cut_at_deadline(serve: Handler, *, timeout: float, within: float) -> Receiver:
    """Post to a receiver answering with ``serve``: the post fails with DeadlineExceeded, ``within`` s at most."""
    async with receiver(serve) as got, plugin_client() as client:
        started = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await post(client, got.url, timeout=timeout)
        assert trio.current_time() - started < within
    return got


async def test_a_trickled_answer_is_cut_at_the_deadline() -> None:
    async def trickle(connection: Connection) -> None:
        await connection.next_request()
        await connection.send_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        for _ in range(100):
            await connection.send_raw(b"x")
            await trio.sleep(0.1)

    got = await cut_at_deadline(trickle, timeout=0.5, within=0.8)
    assert len(got.seen) == 1


async def test_headers_sent_one_byte_at_a_time_are_cut_at_the_deadline_too() -> None:
    async def slow_head(connection: Connection) -> None:
        await connection.next_request()
        for byte in b"HTTP/1.1 200 OK\r\nx-padding: " + b"y" * 100:
            await connection.send_raw(bytes([byte]))
            await trio.sleep(0.05)

    await cut_at_deadline(slow_head, timeout=0.4, within=0.7)


async def test_an_oversized_answer_is_cut_at_max_body_and_its_connection_not_reused() -> None:
    async def flood_then_answer(connection: Connection) -> None:
        while (seen := await connection.next_request()) is not None:
            await connection.answer(200, b"z" * 1_000_000 if seen.body == b"big" else b"small")

    async with receiver(flood_then_answer) as got, plugin_client() as client:
        big = await post(client, got.url, b"big", max_body=1000)
        small = await post(client, got.url, b"next", max_body=1000)
    assert big.status_code == 200 and big.content == b"z" * 1000 and truncated(big)
    assert small.content == b"small" and not truncated(small)
    assert [seen.connection for seen in got.seen] == [0, 1], "the cut answer's connection was dropped"


async def test_the_answer_reads_as_httpxs_would_status_reason_headers_json_and_its_request() -> None:
    async def answer_json(connection: Connection) -> None:
        while await connection.next_request() is not None:
            await connection.answer(429, b'{"ok": false, "error": "ratelimited"}', [("retry-after", "7"), ("content-type", "application/json")])

    async with receiver(answer_json) as got, plugin_client() as client:
        response = await post(client, got.url)
    assert response.status_code == 429 and response.reason_phrase == "Too Many Requests"
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"ok": False, "error": "ratelimited"}
    assert response.request.url == got.url and response.request.method == "POST"
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()
    [seen] = got.seen
    assert seen.headers["accept-encoding"] == "identity"  # no compressed answer can inflate past max_body


async def test_a_redirect_is_returned_not_followed() -> None:
    async def redirect(connection: Connection) -> None:
        while await connection.next_request() is not None:
            await connection.answer(302, headers=[("location", "http://127.0.0.1:9/elsewhere")])

    async with receiver(redirect) as got, plugin_client() as client:
        response = await post(client, got.url)
    assert response.status_code == 302 and response.headers["location"].endswith("/elsewhere")
    assert len(got.seen) == 1


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with receiver() as got, plugin_client() as client:
        with pytest.raises(httpx.LocalProtocolError):
            await request(client, "POST", got.url, content=b"{}", headers={"x-note": "a\r\nx-forged: 1"}, timeout=2.0)
    assert got.seen == []


async def test_a_refused_connection_is_httpxs_connect_error() -> None:
    async with plugin_client() as client:
        with pytest.raises(httpx.ConnectError):
            await post(client, "http://127.0.0.1:9/hooks")


class Refusing(httpx.AsyncBaseTransport):
    """An httpx transport failing every request: what reaches it did not go over the socket pool."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise AssertionError("went through httpx's transport")


async def test_requests_go_through_the_socket_pool_not_httpxs_transport() -> None:
    """With a pool, request() never reaches the client's transport (here one that fails every request)."""
    async with receiver() as got, httpx.AsyncClient(transport=Refusing()) as client, SocketPool() as pool:
        use_socket_pool(client, pool)
        assert (await post(client, got.url)).status_code == 200
        with pytest.raises(AssertionError):  # what the pool does not take (params) still goes through httpx
            await request(client, "POST", got.url, params={"a": "1"}, timeout=2.0)


# -- TLS with httpx's trust settings ---------------------------------------------------------------------------


@pytest.fixture
def tls_receiver_context(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, Path]]:
    """A server context with a certificate for 127.0.0.1 from a test CA, and that CA's PEM file. The trust settings
    are read once per process (``trusted_tls``): forgotten around the test, which sets its own."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    trusted_tls.cache_clear()
    yield context, pem
    trusted_tls.cache_clear()


async def test_https_is_verified_with_httpxs_trust_settings_ssl_cert_file_included(
    tls_receiver_context: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, pem = tls_receiver_context
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))  # httpx.create_ssl_context() trusts it, as App.http would
    async with receiver(tls=context) as got, plugin_client() as client:
        first = await post(client, got.url)
        second = await post(client, got.url)
    assert (first.status_code, second.status_code) == (200, 200)
    assert got.connections == 1


async def test_an_https_receiver_with_an_untrusted_certificate_is_refused(
    tls_receiver_context: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, _ = tls_receiver_context
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with receiver(tls=context) as got, plugin_client() as client:
        with pytest.raises(httpx.ConnectError):
            await post(client, got.url)
    assert got.seen == []


# -- a proxy in the environment --------------------------------------------------------------------------------


async def test_where_the_environment_names_a_proxy_the_request_goes_through_httpx_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async with receiver() as direct, receiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/hooks"))
        async with plugin_client() as client:  # (httpx reads the environment when a client is made)
            response = await post(client, direct.url)
    assert response.status_code == 200
    assert direct.seen == []
    [seen] = proxy.seen
    assert seen.target == direct.url, "a proxy is asked for the absolute URL"
    assert seen.headers["user-agent"] == f"hookrunner/{__version__}"


async def test_a_host_no_proxy_exempts_goes_over_the_socket_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    async with receiver() as direct, receiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/hooks"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with httpx.AsyncClient(transport=Refusing()) as client, SocketPool() as pool:
            use_socket_pool(client, pool)
            response = await post(client, direct.url)
    assert response.status_code == 200
    assert proxy.seen == [] and len(direct.seen) == 1
