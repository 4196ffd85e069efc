"""Serving a plain ASGI app with hypercorn on trio: the pieces every loopback server here needs.

The simulator uses it, and so do the runner's own server and the tests' webhook receiver and fake Slack; one place
keeps their quirks in step (hypercorn's own log lines silenced, a free port reported back, clients that leave
mid-response noticed, and, for the runner's server, a cap on open connections).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import hypercorn.config
import msgspec
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

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
    max_connections: int | None = None,
    idle_timeout: float | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; ``task_status.started(base_url)`` once listening (port 0 picks a free one).

    ``log`` receives hypercorn's error log (a Logger is used as it is: no handler of hypercorn's own); there is
    no access log and no server header. ``idle_timeout`` closes a connection that sends no request for that
    long after it opened or was last answered (hypercorn's keep-alive timeout; 5 s when None).
    ``max_connections`` caps the connections open at once: one more is accepted by closing the one quiet for
    longest, so a flood of idle connections can take neither every file descriptor nor the room a request needs.
    Cancelling cuts open connections at once (``graceful_timeout`` only bounds a shutdown hypercorn starts
    itself, which never happens here).

    This is ``hypercorn.trio.serve`` for one plain-HTTP bind, written out because hypercorn builds its listener
    itself and offers no cap: its lifespan, then its ``TCPServer`` for each accepted connection.
    """
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
    config.graceful_timeout = graceful_timeout
    if backlog is not None:
        config.backlog = backlog
    if idle_timeout is not None:
        config.keep_alive_timeout = idle_timeout
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, state)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        [sock] = config.create_sockets().insecure_sockets
        sock.listen(config.backlog)
        listener: trio.abc.Listener[Any] = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        if max_connections is not None:
            listener = _CappedListener(listener, max_connections, log)
        handler = partial(TCPServer, asgi, config, WorkerContext(None), ConnectionState(state.copy()))
        await nursery.start(trio.serve_listeners, handler, [listener])
        task_status.started("http://" + repr_socket_addr(sock.family, sock.getsockname()))


class _Connection(trio.abc.HalfCloseableStream):
    """A trio ``SocketStream`` (final, so wrapped) that notes when it last carried bytes and leaves ``open`` once
    closed. It has ``socket`` and no ``do_handshake``, so hypercorn's ``TCPServer`` serves it as plain TCP."""

    def __init__(self, stream: trio.SocketStream, open_: set[_Connection]) -> None:
        self._stream, self.socket, self._open = stream, stream.socket, open_
        self.active = trio.current_time()
        open_.add(self)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        self.active = trio.current_time()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)
        self.active = trio.current_time()

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    def close(self) -> None:
        """Close now, from any task: the task serving it gets ``ClosedResourceError`` and ends."""
        self._open.discard(self)
        self.socket.close()

    async def aclose(self) -> None:
        self._open.discard(self)
        await self._stream.aclose()


class _CappedListener(trio.abc.Listener[_Connection]):
    """Never more than ``limit`` connections open: accepting one more closes the one quiet for longest first (a
    client that sent nothing since it connected, or an idle keep-alive one, rather than one sending a request)."""

    def __init__(self, listener: trio.abc.Listener[trio.SocketStream], limit: int, log: logging.Logger) -> None:
        self._listener, self._limit, self._log = listener, limit, log
        self._open: set[_Connection] = set()
        self._warn_after = -float("inf")

    async def accept(self) -> _Connection:
        connection = _Connection(await self._listener.accept(), self._open)
        if len(self._open) > self._limit:
            min(self._open, key=lambda open_: open_.active).close()
            if trio.current_time() >= self._warn_after:  # once a minute at most: a flood would flood the log
                self._log.warning("%d connections open, the most allowed: a new one closes the quietest", self._limit)
                self._warn_after = trio.current_time() + 60
        return connection

    async def aclose(self) -> None:
        await self._listener.aclose()


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
