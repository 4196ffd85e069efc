"""Opening one call's event stream and reading its body: on a trio socket with llhttp's parser, or through httpx.

A stream is read thousands of times over its life, and through httpx each read crosses httpx, httpcore and h11,
each with its own cancel scope, exception mapping and async iterator; the same bytes read on a socket cost a third
as much (issue 16's profile). So streams are read on a trio socket (``trio.SSLStream`` for https) and parsed by
``httptools`` (Node's llhttp: status line, headers, chunked framing), and every other request (listings, backfill,
plugins' deliveries) keeps using httpx. Where the environment names a proxy for the Atoms URL (``HTTPS_PROXY``,
``ALL_PROXY``, ... as httpx reads them), streams go through httpx too, which knows how to speak to proxies.

Both hand the subscription the same ``StreamAnswer``: a status, headers, and ``receive()`` for the body's next
bytes. Neither has timeouts of its own: the subscription bounds the opening by ``atoms.connect_timeout`` and every
read by ``runner.idle_timeout`` with cancel scopes, the same for both. Every failure of the connection is a
``StreamBroken`` saying what broke, so the subscription has one thing to catch.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol
from urllib.parse import quote

import httptools
import httpx
import trio

from hookrunner._core.bounded_http import gather_at_most
from hookrunner._core.http1 import MAX_HEAD_BYTES, connect, failure, proxied, trusted_tls

__all__ = ["StreamAnswer", "StreamBroken", "SocketStreams", "HttpxStreams", "stream_opener", "read_body"]

#: Bytes asked of the socket per read: a whole burst of a flood in one read, so one hand-off carries many events.
RECEIVE_SIZE = 64 * 1024


class StreamBroken(Exception):
    """The connection failed (refused, reset, closed inside the body, not HTTP): worth another attempt."""


class StreamAnswer(Protocol):
    """What the subscription reads of one answer."""

    status: int
    #: Header names in lower case; a repeated header keeps its last value.
    headers: dict[str, str]
    reason: str

    async def receive(self) -> bytes:
        """The body's next bytes (de-chunked), waiting for them; ``b""`` once the body is over."""
        ...


class StreamOpener(Protocol):
    def open(self, call_id: str, headers: Mapping[str, str]) -> AbstractAsyncContextManager[StreamAnswer]: ...


def stream_opener(base_url: str, client: httpx.AsyncClient, user_agent: str) -> SocketStreams | HttpxStreams:
    """The socket reader, or httpx where a proxy stands between hookrunner and Atoms."""
    url = httpx.URL(f"{base_url}/events")
    if proxied(url):
        return HttpxStreams(client, url)
    return SocketStreams(url, user_agent)


async def read_body(answer: StreamAnswer, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of the answer's body, and whether there was more (the rest is never read)."""

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await answer.receive():
            yield chunk

    return await gather_at_most(chunks(), limit)


class SocketStreams:
    """Streams read on trio sockets; one connection per stream, closed when the stream is (a stream is long, and a
    reconnect after a failure wants a fresh connection anyway)."""

    def __init__(self, events_url: httpx.URL, user_agent: str) -> None:
        if events_url.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {events_url}")
        self._url = events_url
        self._host = events_url.host
        self._port = events_url.port or (443 if events_url.scheme == "https" else 80)
        default_port = events_url.port is None
        self._authority = self._host if default_port else f"{self._host}:{self._port}"
        if ":" in self._host:  # an IPv6 literal
            self._authority = f"[{self._host}]" if default_port else f"[{self._host}]:{self._port}"
        self._user_agent = user_agent
        self._target = events_url.raw_path + (b"&" if events_url.query else b"?") + b"callId="
        self._ssl: ssl.SSLContext | None = trusted_tls() if events_url.scheme == "https" else None

    @asynccontextmanager
    async def open(self, call_id: str, headers: Mapping[str, str]) -> AsyncIterator[StreamAnswer]:
        """Connect, send the request and read the answer's head; the answer, open until the block ends."""
        target = self._target + quote(call_id, safe="").encode("ascii")  # (httpx's URL API costs 150 us here)
        lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + self._authority.encode("ascii")]
        for name, value in {"User-Agent": self._user_agent, "Accept": "text/event-stream", **headers}.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}".encode("latin-1"))
        request = b"\r\n".join(lines) + b"\r\n\r\n"
        stream: trio.abc.Stream
        try:
            tcp = stream = await connect(self._host, self._port)
        except OSError as exc:
            raise StreamBroken(failure(exc)) from None
        try:
            if self._ssl is not None:
                stream = trio.SSLStream(tcp, self._ssl, server_hostname=self._host, https_compatible=True)
            answer = _SocketAnswer(stream)
            try:
                await stream.send_all(request)
                await answer.read_head()
            except (OSError, trio.BrokenResourceError, httptools.HttpParserError) as exc:
                raise StreamBroken(failure(exc)) from None
            yield answer
        finally:
            # forcefully, and at once: trio's socket close is synchronous (aclose_forcefully's scope and checkpoint
            # cost 200 us a stream); TLS ends without its close_notify, as aclose_forcefully's would
            tcp.socket.close()


class _SocketAnswer:
    """One answer parsed by llhttp as its bytes arrive; the parser calls the ``on_*`` methods."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._parser = httptools.HttpResponseParser(self)
        self._head: list[tuple[bytes, bytes]] | None = []  # None once the head is complete (trailers are ignored)
        self._body: list[bytes] = []
        self._complete = False
        self._ended = False
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}

    # --- llhttp's callbacks ---

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head is not None:
            self._head.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._head is not None
        self.headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in self._head}
        self._head = None
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # ---

    async def read_head(self) -> None:
        size = 0
        while self._head is not None:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise StreamBroken("the server closed the connection before answering")
            size += len(data)
            if size > MAX_HEAD_BYTES and self._head is not None:
                raise StreamBroken(f"an answer whose headers are over {MAX_HEAD_BYTES} bytes")
            self._parser.feed_data(data)

    async def receive(self) -> bytes:
        while not self._body:
            if self._complete or self._ended:
                return b""
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (OSError, trio.BrokenResourceError) as exc:
                raise StreamBroken(failure(exc)) from None
            if not data:
                self._ended = True
                framed = "content-length" in self.headers or "chunked" in self.headers.get("transfer-encoding", "")
                if framed:  # (a body without framing ends with the connection: that is its end)
                    raise StreamBroken("the server closed the connection inside the body")
                return b""
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise StreamBroken(failure(exc)) from None
        body = self._body
        self._body = []
        return body[0] if len(body) == 1 else b"".join(body)


class HttpxStreams:
    """Streams through httpx (used where a proxy is configured): the same answer, one more layer per read."""

    def __init__(self, client: httpx.AsyncClient, events_url: httpx.URL) -> None:
        self._client = client
        self._url = events_url

    @asynccontextmanager
    async def open(self, call_id: str, headers: Mapping[str, str]) -> AsyncIterator[StreamAnswer]:
        # no timeouts here: the subscription's cancel scopes bound the opening and every read
        request = self._client.build_request(
            "GET",
            self._url,
            params={"callId": call_id},
            headers={"Accept": "text/event-stream", **headers},
            timeout=httpx.Timeout(None),
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise StreamBroken(failure(exc)) from None
        try:
            yield _HttpxAnswer(response)
        finally:
            await response.aclose()


class _HttpxAnswer:
    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.headers = {name.lower(): value for name, value in response.headers.items()}
        self._chunks = response.aiter_bytes()

    async def receive(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise StreamBroken(failure(exc)) from None
