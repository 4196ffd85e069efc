"""An HTTP receiver for tests of plugins that send things (webhooks, reports, chat messages): a plain ASGI app
served by hypercorn on trio, on 127.0.0.1. ``from hookrunner.testing import running_receiver``.

It records every request (path, query, headers, raw body bytes, when it arrived) and answers as the test scripts
it, per path: a list of replies given in order, then a default; or a function of the request. A reply has a
status, headers (``Retry-After``...), a body and a delay before answering; a client that gives up during the delay
is noted on the request (``disconnected``), so a test can tell an answer the sender saw from one it did not. A reply
with ``drop=True`` sends its status line and headers and then closes the connection mid-answer (``dropped``), as a
crashing endpoint or a proxy does: the sender sees a connection error, not the status.

``refusing_port()`` holds a loopback port that refuses connections (bound, not listening); serve a receiver on that
same port later (``running_receiver(port=...)``) to play an endpoint that was down and came back.

    async with running_receiver() as receiver:
        receiver.script("/hook", [Reply(500), Reply(429, {"retry-after": "1"})], then=Reply(200))
        url = receiver.url("/hook")
        ...
        await receiver.wait_for(3, path="/hook")
"""

from __future__ import annotations

import json
import logging
import socket
import time
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import trio

from hookrunner.testing.errors import plain_errors
from hookrunner._core.asgi import cancel_on_disconnect, lifespan, read_body, serve_asgi

__all__ = [
    "Reply", "ReceivedRequest", "Receiver", "running_receiver", "refusing_port", "RefusingPort", "LoopbackServer",
    "serving",
]  # fmt: skip

_log = logging.getLogger("hookrunner.testing.receiver")


@dataclass(frozen=True)
class Reply:
    """One answer: ``status`` and ``headers`` after ``delay`` seconds, with ``body``; with ``drop``, the connection
    is closed after the headers instead of sending the body."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b""
    drop: bool = False


@dataclass
class ReceivedRequest:
    """One request as it reached the receiver. ``headers`` has lower-case names (the last value of a repeated one)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes
    arrived: float  # trio.current_time() once the whole body was read
    wall: float  # time.time() at the same moment
    reply: Reply | None = None
    answered: float | None = None  # trio.current_time() when the answer was sent
    disconnected: bool = False  # the client went away before the answer was sent
    dropped: bool = False  # the reply was ``drop``: the connection was closed mid-answer

    @property
    def status(self) -> int | None:
        return None if self.reply is None else self.reply.status

    @property
    def succeeded(self) -> bool:
        """The sender got a 2xx for this request."""
        return self.answered is not None and not self.disconnected and self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[ReceivedRequest], "Reply | int | None"]


def _as_reply(value: Reply | int) -> Reply:
    return Reply(value) if isinstance(value, int) else value


class LoopbackServer(ABC):
    """An ASGI app (the subclass's ``_http`` answers each request) that serves itself on 127.0.0.1: ``serve()`` until cancelled, or
    ``async with serving(server)``. ``base_url`` is set once it listens."""

    base_url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    @abstractmethod
    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer one HTTP request (what the subclass is for)."""

    async def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started(base_url)`` once listening (port 0 picks a free one)."""
        async with trio.open_nursery() as nursery:
            # a short graceful_timeout: requests held by a long delay are cut at the end of the test
            self.base_url = await nursery.start(partial(serve_asgi, self, host, port, log=_log, graceful_timeout=0.2))
            task_status.started(self.base_url)


ServerT = TypeVar("ServerT", bound=LoopbackServer)


@asynccontextmanager
async def serving(server: ServerT, *, port: int = 0) -> AsyncIterator[ServerT]:
    """``server`` listening on 127.0.0.1 (a free port, or ``port``) for the ``async with`` block."""
    with plain_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(server.serve, port=port))
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()


class Receiver(LoopbackServer):
    """The ASGI app and what it recorded; ``serve()`` puts it on a port (see ``running_receiver``)."""

    def __init__(self, default: Reply | int = 200) -> None:
        self.default = _as_reply(default)
        self.base_url = ""
        self.requests: list[ReceivedRequest] = []
        self._scripted: dict[str, deque[Reply]] = defaultdict(deque)
        self._then: dict[str, Reply] = {}
        self._responders: dict[str, Responder] = {}
        self._changed = trio.Event()

    # --- scripting ----------------------------------------------------------------------------------------------

    def script(self, path: str, replies: Sequence[Reply | int] = (), *, then: Reply | int | None = None) -> None:
        """Answer requests to ``path`` with ``replies`` in order, then with ``then`` (default: the receiver's)."""
        self._scripted[path] = deque(_as_reply(reply) for reply in replies)
        if then is not None:
            self._then[path] = _as_reply(then)

    def respond(self, path: str, responder: Responder) -> None:
        """Answer requests to ``path`` with ``responder(request)`` (None: fall back to the script or default)."""
        self._responders[path] = responder

    def _choose(self, request: ReceivedRequest) -> Reply:
        responder = self._responders.get(request.path)
        if responder is not None:
            chosen = responder(request)
            if chosen is not None:
                return _as_reply(chosen)
        queue = self._scripted.get(request.path)
        if queue:
            return queue.popleft()
        return self._then.get(request.path, self.default)

    # --- what was received ----------------------------------------------------------------------------------------

    def url(self, path: str = "/hook", query: str = "") -> str:
        return f"{self.base_url}{path}" + (f"?{query}" if query else "")

    def at(self, path: str) -> list[ReceivedRequest]:
        return [request for request in self.requests if request.path == path]

    async def wait_for(self, count: int, path: str | None = None, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Wait until ``count`` requests (to ``path``, or any) have arrived; fails after ``timeout`` seconds."""
        with trio.fail_after(timeout):
            while True:
                got = self.requests if path is None else self.at(path)
                if len(got) >= count:
                    return list(got)
                self._changed = trio.Event() if self._changed.is_set() else self._changed
                await self._changed.wait()

    # --- ASGI -------------------------------------------------------------------------------------------------

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(receive)
        if body is None:
            return
        raw_headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"]]
        request = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=dict(raw_headers),
            raw_headers=raw_headers,
            body=body,
            arrived=trio.current_time(),
            wall=time.time(),
        )
        self.requests.append(request)
        self._changed.set()
        reply = request.reply = self._choose(request)
        if reply.delay > 0:
            with trio.CancelScope() as waiting:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_on_disconnect, receive, waiting)
                    await trio.sleep(reply.delay)
                    nursery.cancel_scope.cancel()
            if waiting.cancelled_caught:
                request.disconnected = True
                self._changed.set()
                return
        headers = [(name.lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in reply.headers.items()]
        if reply.drop:
            # Returning with the body unfinished makes hypercorn close the connection: the sender reads the
            # headers, then an incomplete body.
            request.dropped = True
            try:
                await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            except Exception:  # the client went away just now
                request.disconnected = True
            self._changed.set()
            return
        headers.append((b"content-length", str(len(reply.body)).encode()))
        try:
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body, "more_body": False})
        except Exception:  # the client went away just now
            request.disconnected = True
        else:
            request.answered = trio.current_time()
        self._changed.set()



@asynccontextmanager
async def running_receiver(default: Reply | int = 200, *, port: int = 0) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 (a free port, or ``port``) for the ``async with`` block."""
    async with serving(Receiver(default), port=port) as receiver:
        yield receiver


@dataclass
class RefusingPort:
    """A loopback port held by a bound socket that does not listen: connecting to it is refused."""

    port: int
    _socket: socket.socket | None

    def url(self, path: str = "/hook", query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def release(self) -> int:
        """Free the port (to serve a receiver on it); returns it."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        return self.port


@contextmanager
def refusing_port() -> Iterator[RefusingPort]:
    """Hold a port that refuses connections until ``release()`` or the end of the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    held = RefusingPort(sock.getsockname()[1], sock)
    try:
        yield held
    finally:
        held.release()
