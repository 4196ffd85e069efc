"""HTTP/1.1 exchanges on kept-alive trio sockets, parsed by llhttp (``httptools``): the path of plugins' deliveries.

Through httpx one webhook POST costs 0.5 to 2.6 ms of CPU on a 2-core machine (the client's layer, httpcore's pool,
whose bookkeeping grows with the kept-alive connections, and h11); the same exchange on a kept-alive trio socket
parsed by llhttp costs a tenth of that or less (``benchmarks/bench_http.py``). A notifier sends one request per
message (Standard Webhooks), so that cost is paid per message. ``bounded_http.request`` sends here what it can
(see ``use_socket_pool``) and everything else through httpx.

What is kept of httpx: TLS with httpx's own trust settings (``httpx.create_ssl_context()``), redirects not
followed, at most ``max_connections`` connections per origin and ``max_idle`` kept alive, idle ones closed after
``keepalive_expiry`` seconds or once the server closed them (a readable idle socket, as httpcore checks), httpx's
exception classes for every failure. Where the environment names a proxy for an origin (``proxied``), this pool
does not take it: httpx does, which speaks to proxies. Deadlines are the caller's: a cancel scope around the call.

A kept-alive connection the server closed just as the request went out yields no byte of an answer; that request
is sent once more on a fresh connection. It is safe to: nothing was answered, and a delivery's id (``webhook-id``)
lets a receiver drop a copy it did take in, as it does for every retry.
"""

from __future__ import annotations

import functools
import select
import socket
import ssl
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httptools
import httpx
import trio

from hookrunner._core.text import one_line

__all__ = ["SocketPool", "Origin", "Answer", "connect", "proxied", "failure", "MAX_HEAD_BYTES"]

#: Bytes asked of the socket per read (an acknowledgement fits in one; a long answer takes a few).
RECEIVE_SIZE = 64 * 1024
#: The status line and headers of an answer: a server sending more is not answering a delivery.
MAX_HEAD_BYTES = 64 * 1024
#: URLs whose route (origin, or httpx for a proxied one) is remembered; past it the memory starts again.
ROUTE_CACHE_SIZE = 1024


#: Seconds a resolved address list is reused: every stream of every call and every new delivery connection
#: connects, a name is resolved in a thread (trio's getaddrinfo), and a changed DNS record is seen within this.
ADDRESS_TTL = 60.0
_addresses: dict[tuple[str, int], tuple[float, list[Any]]] = {}


async def connect(host: str, port: int) -> trio.SocketStream:
    """A TCP connection to ``host:port``, as ``trio.open_tcp_stream`` makes one, at a third of its cost: the
    addresses are resolved once a minute (``ADDRESS_TTL``) and tried one after another, without its happy-eyeballs
    nursery (an address that refuses fails at once on loopback and in a data centre alike). Raises OSError."""
    now = time.monotonic()
    cached = _addresses.get((host, port))
    if cached is None or cached[0] < now:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if len(_addresses) >= ROUTE_CACHE_SIZE:
            _addresses.clear()
        cached = _addresses[(host, port)] = (now + ADDRESS_TTL, infos)
    failed: OSError | None = None
    for family, kind, proto, _, address in cached[1]:
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.connect(address)
        except OSError as exc:
            sock.close()
            failed = exc
            continue
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)  # (TCP_NODELAY set)
    raise failed or OSError(f"no address for {host}:{port}")


def proxied(url: httpx.URL) -> bool:
    """Whether the environment sends requests for ``url`` through a proxy (the variables httpx honours too): such
    requests go through httpx, which speaks to proxies; the socket paths (this pool, the event streams) do not."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.host)


@dataclass(slots=True)
class Answer:
    """One answer, read: ``body`` holds at most the asked ``max_body`` bytes (``truncated``: there was more)."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    truncated: bool


class _Stale(Exception):
    """A kept-alive connection yielded no byte of an answer: the server had closed it."""


@dataclass(slots=True, eq=False)
class _Connection:
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    socket: trio.socket.SocketType
    idle_since: float = 0.0
    used: bool = False  # an exchange completed on it: it is kept alive, and may have been closed meanwhile

    def readable(self) -> bool:
        """An idle connection with something to read is closed (or sending garbage): not to be used."""
        if isinstance(self.stream, trio.SSLStream) and self.stream.pending():  # decrypted bytes already waiting
            return True
        # poll, not select: a run following many calls holds descriptors past select's 1024
        poller = select.poll()
        try:
            poller.register(self.socket, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):  # closed under us
            return True

    def close(self) -> None:
        # trio's socket close is synchronous and tells trio's I/O manager; the stream objects go with it
        self.socket.close()


@dataclass(slots=True, eq=False)
class Origin:
    """One origin's connections: ``slots`` bounds them, ``idle`` holds those kept alive, the latest last."""

    scheme: str
    host: str
    port: int
    slots: trio.Semaphore
    idle: deque[_Connection] = field(default_factory=deque)


@functools.cache
def trusted_tls() -> ssl.SSLContext:
    """httpx's own TLS context (its trust store, ``SSL_CERT_FILE``...), made once per process and shared by every
    client of it: loading the CA bundle costs about 25 ms, and a run has several clients. All speak HTTP/1.1."""
    context = httpx.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class SocketPool:
    """Kept-alive HTTP/1.1 connections per origin (scheme, host, port), for ``bounded_http.request``.

    Open it with ``async with`` (or call ``close``) so that idle connections are closed with the run.
    """

    def __init__(self, *, max_connections: int = 200, max_idle: int = 100, keepalive_expiry: float = 5.0) -> None:
        self._max_connections = max_connections
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._origins: dict[tuple[str, str, int], Origin | None] = {}  # None: a proxy applies, httpx's
        self._routes: dict[str, tuple[Origin, httpx.URL] | None] = {}
        self._next_sweep = 0.0
        self._closed = False

    async def __aenter__(self) -> SocketPool:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection; the pool takes no more requests."""
        self._closed = True
        for origin in self._origins.values():
            while origin is not None and origin.idle:
                origin.idle.pop().close()

    def route(self, url: str | httpx.URL) -> tuple[Origin, httpx.URL] | None:
        """Where a request for ``url`` goes: an origin of this pool, or None for httpx (a proxy applies, not
        http(s), or the pool is closed). Remembered per URL: parsing one costs more than the rest of the check."""
        key = str(url)
        try:
            return self._routes[key]
        except KeyError:
            pass
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        route: tuple[Origin, httpx.URL] | None = None
        if parsed.scheme in ("http", "https") and parsed.host and not self._closed:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            origin_key = (parsed.scheme, parsed.host, port)
            if origin_key not in self._origins:  # once per origin: reading the environment costs tens of us
                slots = trio.Semaphore(self._max_connections)
                self._origins[origin_key] = None if proxied(parsed) else Origin(parsed.scheme, parsed.host, port, slots)
            origin = self._origins[origin_key]
            route = None if origin is None else (origin, parsed)
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[key] = route
        return route

    async def exchange(self, origin: Origin, request: bytes, max_body: int) -> Answer:
        """Send ``request`` (a whole HTTP/1.1 request: head and body) to ``origin`` and read its answer, keeping at
        most ``max_body`` bytes of the body. Raises httpx's exceptions (``ConnectError``, ``WriteError``,
        ``ReadError``, ``RemoteProtocolError``), as httpx would for the same failure; never times out by itself."""
        try:
            origin.slots.acquire_nowait()  # the usual case: no wait, and no extra trip through the scheduler
        except trio.WouldBlock:
            await origin.slots.acquire()
        try:
            connection = self._idle_connection(origin)
            if connection is not None:
                try:
                    return await self._exchange_on(origin, connection, request, max_body)
                except _Stale:
                    pass  # closed by the server while kept alive: once more, on a fresh connection
            # (a fresh connection is never stale: its failures are the server's answer, the caller's to retry)
            return await self._exchange_on(origin, await self._connect(origin), request, max_body)
        finally:
            origin.slots.release()

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        now = trio.current_time()
        if now >= self._next_sweep:  # every expiry interval, the idle connections of every origin
            self._next_sweep = now + self._keepalive_expiry
            for other in self._origins.values():
                if other is not None:
                    self._expire(other, now)
        else:
            self._expire(origin, now)
        while origin.idle:
            connection = origin.idle.pop()  # the most recently used: the least likely to be closed
            if not connection.readable():
                return connection
            connection.close()
        return None

    def _expire(self, origin: Origin, now: float) -> None:
        idle = origin.idle
        while idle and now - idle[0].idle_since > self._keepalive_expiry:
            idle.popleft().close()

    async def _connect(self, origin: Origin) -> _Connection:
        try:
            tcp = await connect(origin.host, origin.port)
        except OSError as exc:
            raise httpx.ConnectError(failure(exc)) from None
        if origin.scheme != "https":
            return _Connection(tcp, tcp.socket)
        stream = trio.SSLStream(tcp, trusted_tls(), server_hostname=origin.host, https_compatible=True)
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, OSError) as exc:
            tcp.socket.close()
            raise httpx.ConnectError(failure(exc.__cause__ or exc)) from None
        except BaseException:
            tcp.socket.close()
            raise
        return _Connection(stream, tcp.socket)

    async def _exchange_on(self, origin: Origin, connection: _Connection, request: bytes, max_body: int) -> Answer:
        """One exchange; the connection goes back to the idle ones only after a complete answer that allows it."""
        reader = _Reader(max_body)
        keep = False
        try:
            try:
                await connection.stream.send_all(request)
            except (trio.BrokenResourceError, OSError) as exc:
                if connection.used:
                    raise _Stale from None
                raise httpx.WriteError(failure(exc)) from None
            keep = await reader.read(connection)
        finally:
            if keep and not self._closed and len(origin.idle) < self._max_idle:
                connection.idle_since = trio.current_time()
                connection.used = True
                origin.idle.append(connection)
            else:
                connection.close()
        return reader.answer()


class _Reader:
    """One answer parsed by llhttp as its bytes arrive; the parser calls the ``on_*`` methods."""

    __slots__ = ("_parser", "_max_body", "status", "reason", "headers", "body", "size", "head_done", "complete",
                 "truncated", "keep_alive", "extra")  # fmt: skip

    def __init__(self, max_body: int) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = max_body
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.head_done = self.complete = self.truncated = self.keep_alive = self.extra = False

    # --- llhttp's callbacks ---

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the answer: nothing was asked for them, the connection is not reused
            self.extra = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason  # (may come in pieces)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:  # (trailers are not kept)
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if self.truncated:
            return
        if self.size + len(body) > self._max_body:
            self.body.append(body[: self._max_body - self.size])
            self.size = self._max_body
            self.truncated = True
            return
        self.size += len(body)
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200 and self.status != 101:  # an interim answer (103 Early Hints): the real one follows
            self.reason, self.headers, self.head_done = b"", [], False
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()  # (llhttp forgets it once the message is over)

    # ---

    async def read(self, connection: _Connection) -> bool:
        """Read until the answer is complete or its body past the limit; whether the connection may be reused."""
        received = 0
        while not (self.complete or self.truncated):
            try:
                data = await connection.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, OSError) as exc:
                if not received and connection.used:
                    raise _Stale from None
                raise httpx.ReadError(failure(exc)) from None
            if not data:
                if not received and connection.used:
                    raise _Stale
                self._end_at_close(received)
                return False
            received += len(data)
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError(f"not an HTTP/1.1 answer ({failure(exc)})") from None
            if not self.head_done and received > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(f"an answer whose headers are over {MAX_HEAD_BYTES} bytes")
        return self.complete and self.keep_alive and not self.extra and not self.truncated

    def _end_at_close(self, received: int) -> None:
        """The server closed the connection: the answer's end if it had no other framing, else a broken answer."""
        if not received:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if not self.head_done:
            raise httpx.RemoteProtocolError("Server disconnected inside the answer's headers.")
        framed = any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
        if framed:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        self.complete = True  # a body that ends with the connection: that is its end

    def answer(self) -> Answer:
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        return Answer(self.status, self.reason, self.headers, body, self.truncated)


def failure(exc: BaseException) -> str:
    """What broke, on one line: the exception's class and its message (cut at 200 characters)."""
    return f"{type(exc).__name__}: {one_line(str(exc) or 'no detail', 200)}"
