"""The line between the supervisor and one worker process: JSON objects, one per line, over a socket pair.

A socket pair rather than the worker's stdin and stdout: a plugin that prints must not be able to break it, and
its end-of-file is how each side learns the other is gone (a worker whose supervisor was killed stops; a
supervisor whose worker died restarts it). Sending never waits on the other side inside the caller: messages go
into a queue that one task writes out, so a runner's synchronous callbacks can report without blocking.
"""

from __future__ import annotations

import math
import socket
from typing import Any

import msgspec
import trio

__all__ = ["Link", "LinkClosed", "MAX_LINE"]

#: The longest message: a worker's metrics page is the largest (tens of KiB for thousands of label sets).
MAX_LINE = 64 * 1024 * 1024
_RECEIVE_SIZE = 64 * 1024


class LinkClosed(Exception):
    """The other side closed the link, or sent something that is not a message of this protocol."""


class Link:
    """One end of the link. ``post`` queues a message; ``run`` writes the queue out until the link closes."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._buffer = bytearray()
        self._outgoing, self._queued = trio.open_memory_channel[bytes](math.inf)
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(dict[str, Any]).decode

    def post(self, message: dict[str, Any]) -> None:
        """Queue ``message`` for the other side (never waits; dropped once the link is closed)."""
        try:
            self._outgoing.send_nowait(self._encode(message) + b"\n")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def run(self) -> None:
        """Write queued messages until the link breaks or ``close`` is called."""
        async for data in self._queued:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the other side has closed the link."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                try:
                    return self._decode(line)
                except msgspec.DecodeError as exc:
                    raise LinkClosed(f"not a message: {exc}") from None
            if len(self._buffer) > MAX_LINE:
                raise LinkClosed(f"a message over {MAX_LINE} bytes")
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
            if not data:
                return None
            self._buffer += data

    def close(self) -> None:
        """Stop sending; the socket closes with it (the other side reads end-of-file)."""
        self._outgoing.close()
        self._stream.socket.close()
