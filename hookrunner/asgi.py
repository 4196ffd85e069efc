"""Serving a plain ASGI app with hypercorn on trio: the pieces every loopback server here needs.

The simulator uses it, and so do the tests' webhook receiver and fake Slack; one place keeps their quirks in
step (hypercorn's own log lines silenced, a free port reported back, clients that leave mid-response noticed).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import hypercorn.config
import hypercorn.trio
import msgspec
import trio

_encode = msgspec.json.Encoder().encode

__all__ = [
    "serve_asgi", "lifespan", "cancel_on_disconnect", "read_body", "BodyTooLarge", "send_body", "send_json",
    "errors", "header",
]  # fmt: skip


async def serve_asgi(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log: logging.Logger,
    graceful_timeout: float = 0.5,
    backlog: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; ``task_status.started(base_url)`` once listening (port 0 picks a free one).

    ``log`` receives hypercorn's error log (a Logger is used as it is: no handler of hypercorn's own, so no
    "Running on" lines); there is no access log and no server header.
    """
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
    config.graceful_timeout = graceful_timeout
    if backlog is not None:
        config.backlog = backlog
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hypercorn.trio.serve, app, config, mode="asgi"))
        task_status.started(binds[0])  # e.g. "http://127.0.0.1:54321"


async def lifespan(receive: Any, send: Any) -> None:
    """Answer the ASGI lifespan protocol: nothing to set up or tear down."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def cancel_on_disconnect(receive: Any, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away; hypercorn would otherwise accept writes into a closed socket."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


class BodyTooLarge(Exception):
    """The request body is longer than the reader's limit (nothing past the limit was kept)."""


async def read_body(receive: Any, limit: int | None = None) -> bytes | None:
    """The whole request body, or None when the client went away before sending it; ``BodyTooLarge`` past
    ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def errors(message: str) -> dict[str, Any]:
    """Atoms' usual error body, ``{"status": false, "errors": [message]}``: the simulator and the runner's own
    server answer in it."""
    return {"status": False, "errors": [message]}


def header(scope: dict[str, Any], name: bytes) -> str | None:
    """A request header's value (``name`` lower-case), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def send_body(
    send: Any, status: int, body: bytes, content_type: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole response: status, content type and length, ``headers``, then ``body``."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *(headers or ()),
        ],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Any, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_body(send, status, _encode(body), "application/json", headers)
