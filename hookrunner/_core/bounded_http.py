"""HTTP requests to outside services with a bound on both time and size: a deadline for the whole exchange and a
cap on the answer read.

httpx's timeouts are per phase (a receiver trickling one byte every 2 s never trips a 10 s read timeout) and
``response.read()`` takes whatever the server sends (a 1 GB answer is 1 GB of memory, twice). Every request the
runner and the bundled plugins make to a receiver, Slack or Atoms goes through ``request`` here, so no answer can
hold a delivery past its timeout or grow the process past ``max_body``.

A notifier sends one request per message (Standard Webhooks), and through httpx each costs 0.5 to 2.6 ms of CPU
on a 2-core machine, six to twenty times the same exchange on a kept-alive socket (``benchmarks/bench_http.py``).
So the runner gives plugins' client (``App.http``) a pool of kept-alive sockets (``use_socket_pool``, and
``_core/http1.py``), and ``request`` sends there what needs nothing of httpx's but the request it builds. The
caller cannot tell: the same ``httpx.Response``, the same exceptions, the same bounds.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import trio

from hookrunner._core.http1 import Answer, Origin, SocketPool

__all__ = [
    "request",
    "read_response",
    "read_at_most",
    "gather_at_most",
    "truncated",
    "use_socket_pool",
    "DeadlineExceeded",
    "ERROR_BODY_LIMIT",
]

#: Enough of an error or acknowledgement body to show its message; nothing a receiver sends back is longer.
ERROR_BODY_LIMIT = 64 * 1024
#: Headers whose meaning changes once the body was read and decoded here.
_BODY_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


class DeadlineExceeded(httpx.TimeoutException):
    """The whole exchange (connect, send, headers and body) did not finish within its deadline."""


_TRUNCATED = "hookrunner.truncated"
#: Clients whose ``request`` calls may go through a socket pool (the runner's ``App.http``), and their pool.
_socket_pools: weakref.WeakKeyDictionary[httpx.AsyncClient, SocketPool] = weakref.WeakKeyDictionary()
#: The keyword arguments the socket path takes; with any other (params, json, auth, files...) httpx sends it.
_SOCKET_KWARGS = frozenset({"content", "headers"})
#: What a header name may hold (an RFC 9110 token) and what no header may hold: h11 refuses the same.
_HEADER_NAMES = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_BODY_HEADERS_RAW = tuple(name.encode() for name in _BODY_HEADERS)
_FRAMING = (b"content-length", b"transfer-encoding")


def use_socket_pool(client: httpx.AsyncClient, pool: SocketPool) -> None:
    """Let ``request`` send ``client``'s requests through ``pool`` where it can: plain bodies (``content``) and
    ``headers``, to an http(s) URL no proxy applies to (``http1.proxied``), on a client with no auth, cookies, default
    params, redirects followed or response hooks. Everything else goes through httpx. The client's headers (its
    ``User-Agent``) and request hooks apply on both paths alike: the request is the one httpx would build."""
    _socket_pools[client] = pool


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of a streamed ``response``'s body, decoded (gzip and the like), and whether there
    was more (the rest is never read: closing the response drops the connection)."""
    return await gather_at_most(response.aiter_bytes(), limit)


async def gather_at_most(body: AsyncIterator[bytes], limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of a body read in chunks, and whether there was more (never read past the limit)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        size += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks), False


def truncated(response: httpx.Response) -> bool:
    """Whether ``request`` cut this answer's body at its ``max_body``."""
    return bool(response.extensions.get(_TRUNCATED))


async def request(
    client: httpx.AsyncClient, method: str, url: str, *, timeout: float, max_body: int = ERROR_BODY_LIMIT, **kwargs: Any
) -> httpx.Response:
    """Send one request and read its answer, all within ``timeout`` seconds, keeping at most ``max_body`` bytes.

    Returns a read ``httpx.Response`` (``.json()``, ``.text`` work) whose body holds at most ``max_body`` bytes
    (``truncated(response)`` says whether there was more). Raises ``DeadlineExceeded`` (an
    ``httpx.TimeoutException``) past the deadline, and httpx's own errors otherwise, as ``client.request`` would.
    On a client given a socket pool (``use_socket_pool``: the runner's ``App.http``) the request goes over it where
    nothing of httpx's is needed; the answer and the errors are the same.
    """
    # identity: a small compressed answer could inflate far past max_body before the cut
    kwargs["headers"] = {"Accept-Encoding": "identity", **(kwargs.get("headers") or {})}
    with trio.move_on_after(timeout):
        pool = _socket_pools.get(client) if _socket_pools else None
        if pool is not None and _socket_ready(client, method, kwargs):
            route = pool.route(url)
            if route is not None:
                return await _through_sockets(client, pool, route, method, kwargs, max_body)
        async with client.stream(method, url, timeout=timeout, **kwargs) as streamed:
            return await read_response(streamed, max_body)
    raise DeadlineExceeded(f"no complete answer within {timeout:g} s")


def _socket_ready(client: httpx.AsyncClient, method: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether nothing in this request or ``client`` needs httpx (see ``use_socket_pool``)."""
    return (
        kwargs.keys() <= _SOCKET_KWARGS
        and isinstance(kwargs.get("content", b""), bytes)
        and method.upper() not in ("HEAD", "CONNECT")  # (a HEAD answer announces a body it does not send)
        and client.auth is None
        and not client.follow_redirects
        and not client.params
        and not client.cookies
        and not client.event_hooks["response"]
    )


async def _through_sockets(
    client: httpx.AsyncClient,
    pool: SocketPool,
    route: tuple[Origin, httpx.URL],
    method: str,
    kwargs: Mapping[str, Any],
    max_body: int,
) -> httpx.Response:
    origin, url = route
    content: bytes = kwargs.get("content") or b""
    # The request httpx would send (the client's headers, the call's over them, Host, Content-Length), built as
    # a transport builds one: request hooks see it, the answer carries it.
    headers = _wire_headers(client, kwargs["headers"], url, len(content))
    sent = httpx.Request(method, url, headers=headers, stream=httpx.ByteStream(content))
    sent.read()
    for hook in client.event_hooks["request"]:  # e.g. the runner's refusal of asyncio callers
        await hook(sent)
    raw = sent.headers.raw
    names = b"".join(name for name, _ in raw)
    if not _HEADER_NAMES.fullmatch(names) or any(_BAD_VALUE.search(value) for _, value in raw):
        raise httpx.LocalProtocolError("a header name or value holds a character HTTP does not allow", request=sent)
    start = sent.method.encode("ascii") + b" " + sent.url.raw_path + b" HTTP/1.1"
    head = b"\r\n".join([start, *(name + b": " + value for name, value in raw)])
    try:
        answer = await pool.exchange(origin, head + b"\r\n\r\n" + content, max_body)
    except httpx.RequestError as exc:
        exc.request = sent
        raise
    return await _response(answer, sent, max_body)


def _wire_headers(
    client: httpx.AsyncClient, call_headers: Mapping[str, str | bytes], url: httpx.URL, length: int
) -> list[tuple[bytes, bytes]]:
    """``client``'s headers with the call's over them (names in any case), as httpx merges them; Host unless one is
    given; the framing always this body's (a given Content-Length could only be wrong). Names and values are
    encoded as httpx encodes them (ASCII: anything else fails here as it would there)."""
    given: dict[bytes, tuple[bytes, bytes]] = {}
    for name, value in call_headers.items():
        raw = name.encode("ascii") if isinstance(name, str) else name
        given[raw.lower()] = (raw, value.encode("ascii") if isinstance(value, str) else value)
    headers = [(name, value) for name, value in client.headers.raw if name.lower() not in given]
    headers += given.values()
    if b"host" not in given and not any(name.lower() == b"host" for name, _ in headers):
        headers.insert(0, (b"Host", url.netloc))
    if b"content-length" in given or b"transfer-encoding" in given:
        headers = [(name, value) for name, value in headers if name.lower() not in _FRAMING]
    headers.append((b"Content-Length", b"%d" % length))
    return headers


async def _response(answer: Answer, sent: httpx.Request, max_body: int) -> httpx.Response:
    """The read ``httpx.Response`` of a socket answer: what ``read_response`` makes of httpx's own."""
    extensions = {"reason_phrase": answer.reason, "http_version": b"HTTP/1.1", _TRUNCATED: answer.truncated}
    encoding = next((value for name, value in answer.headers if name.lower() == b"content-encoding"), b"identity")
    if encoding.strip().lower() != b"identity":  # compressed though identity was asked: httpx's decoders, bounded
        stream = httpx.ByteStream(answer.body)
        streamed = httpx.Response(answer.status, headers=answer.headers, stream=stream, request=sent, extensions=extensions)
        response = await read_response(streamed, max_body)
        response.extensions[_TRUNCATED] = answer.truncated or truncated(response)
        return response
    headers = [(name, value) for name, value in answer.headers if name.lower() not in _BODY_HEADERS_RAW]
    return httpx.Response(answer.status, headers=headers, content=answer.body, request=sent, extensions=extensions)


async def read_response(streamed: httpx.Response, max_body: int = ERROR_BODY_LIMIT) -> httpx.Response:
    """A read copy of a streamed response, its body cut at ``max_body`` bytes (see ``truncated``)."""
    body, cut = await read_at_most(streamed, max_body)
    headers = [(key, value) for key, value in streamed.headers.multi_items() if key.lower() not in _BODY_HEADERS]
    return httpx.Response(
        streamed.status_code,
        headers=headers,
        content=body,
        request=streamed.request,
        extensions={"reason_phrase": streamed.reason_phrase.encode("latin-1", "replace"), _TRUNCATED: cut},
    )
