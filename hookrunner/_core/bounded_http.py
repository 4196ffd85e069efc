"""HTTP requests to outside services with a bound on both time and size: a deadline for the whole exchange and a
cap on the answer read.

httpx's timeouts are per phase (a receiver trickling one byte every 2 s never trips a 10 s read timeout) and
``response.read()`` takes whatever the server sends (a 1 GB answer is 1 GB of memory, twice). Every request the
runner and the bundled plugins make to a receiver, Slack or Atoms goes through ``request`` here, so no answer can
hold a delivery past its timeout or grow the process past ``max_body``.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio

__all__ = ["request", "read_response", "read_at_most", "truncated", "DeadlineExceeded", "ERROR_BODY_LIMIT"]

#: Enough of an error or acknowledgement body to show its message; nothing a receiver sends back is longer.
ERROR_BODY_LIMIT = 64 * 1024
#: Headers whose meaning changes once the body was read and decoded here.
_BODY_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


class DeadlineExceeded(httpx.TimeoutException):
    """The whole exchange (connect, send, headers and body) did not finish within its deadline."""


_TRUNCATED = "hookrunner.truncated"


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of a streamed ``response``'s body, decoded (gzip and the like), and whether there
    was more (the rest is never read: closing the response drops the connection)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
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
    """
    # identity: a small compressed answer could inflate far past max_body before the cut
    kwargs["headers"] = {"Accept-Encoding": "identity", **(kwargs.get("headers") or {})}
    with trio.move_on_after(timeout):
        async with client.stream(method, url, timeout=timeout, **kwargs) as streamed:
            return await read_response(streamed, max_body)
    raise DeadlineExceeded(f"no complete answer within {timeout:g} s")


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
