#!/usr/bin/env python3
"""What one webhook POST costs in CPU, client by client: httpx as the plugins use it, httpx trimmed, httpcore alone,
and HTTP/1.1 on trio sockets (h11 or llhttp through httptools), to the same loopback receiver.

    .venv/bin/python benchmarks/bench_http.py [--quick] [--rounds N] [--requests N] [--json FILE] [--only A,B]

Every figure is a ratio against the yardstick measured in the same run (``httpx.post``: a bare
``httpx.AsyncClient`` with its defaults), because these machines drift by tens of per cent from one minute to the
next. Each run is a fresh child process (``--child``) POSTing one message-sized body, signed-looking headers
included, N times, C at a time (1, 10, 50), to a fresh ``bench_webhook.py --receiver`` (``benchlib.ReceiverProcess``:
a raw asyncio server answering 200 at once, keep-alive, its CPU its own). The child counts its own CPU
(``time.process_time``) over the requests only: imports, client creation and closing are outside. Variants rotate
order between rounds; the table shows medians.

Variants (every one bounds the whole exchange with a trio cancel scope and the answer's size, as delivery must):

- ``httpx.post``: ``client.post`` on a default client (what ``bench_webhook.py``'s scenario 3 measures);
- ``bounded_http``: today's delivery path, ``hookrunner.delivery.request`` over a client configured as the
  runner's ``App.http`` (limits 200 / 100 kept alive, ``User-Agent``, timeout 30 s);
- ``httpx stream raw``: ``client.stream`` with a bounded ``aiter_raw`` and no rebuilt ``Response``;
- ``httpx transport``: ``AsyncHTTPTransport.handle_async_request``, the client's layer (auth, redirects, cookies,
  hooks, URL merging) skipped;
- ``httpcore pool``: ``httpcore.AsyncConnectionPool.request``'s streaming form, httpx skipped altogether;
- ``socket h11``: a minimal pool of kept-alive trio sockets per origin, h11 parsing;
- ``socket httptools``: the same with llhttp (``httptools``), as the event streams are read;
- ``hookrunner sockets``: hookrunner's own socket path (``hookrunner._core.http1``), as the bundled notifiers use it
  (``request`` over ``App.http``), built on the same pieces, with the ``httpx.Response`` it hands back.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import WEBHOOK_SECRET_ENV, ReceiverProcess

CONCURRENCY = (1, 10, 50)
VARIANTS = (
    "httpx.post",
    "bounded_http",
    "httpx stream raw",
    "httpx transport",
    "httpcore pool",
    "socket h11",
    "socket httptools",
    "hookrunner sockets",
)
YARDSTICK = "httpx.post"
TIMEOUT = 15.0  # an endpoint's default request timeout
MAX_BODY = 64 * 1024


def message_body() -> bytes:
    """A user_transcription message as the webhook plugin sends it (about 330 bytes)."""
    event = {"event_type": "user_transcription", "event_id": "CALL-BENCH-WHFLOOD-0_17_1795776193312",
             "timestamp": "2026-11-24T10:00:07.312Z", "call_id": "CALL-BENCH-WHFLOOD-0",
             "user_transcription_text": "I want to cancel my subscription please can you help me with the billing."}  # fmt: skip
    message = {"type": event["event_type"], "timestamp": event["timestamp"], "call_id": event["call_id"], "data": event}
    return json.dumps(message, separators=(",", ":")).encode()


def message_headers() -> dict[str, str]:
    return {"content-type": "application/json", "user-agent": "hookrunner/bench", "webhook-id": "msg_" + "0" * 32,
            "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1," + "A" * 44}  # fmt: skip


# --- the clients (inside a --child process) -------------------------------------------------------------------


class Bounded(Exception):
    """An exchange past its deadline (every variant raises it the same way)."""


def make_client(variant: str) -> tuple[Any, Any, Any]:
    """(post(url, body, headers) -> status, an async context manager to open the client in, its closing)."""
    import trio

    if variant == "httpx.post":
        import httpx

        client = httpx.AsyncClient(timeout=httpx.Timeout(30.0))

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            with trio.move_on_after(TIMEOUT):
                return (await client.post(url, content=body, headers=headers)).status_code
            raise Bounded

        return post, client, None

    if variant in ("bounded_http", "hookrunner sockets"):
        import httpx

        from hookrunner import __version__
        from hookrunner._core.bounded_http import request

        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
        client = httpx.AsyncClient(limits=limits, headers={"User-Agent": f"hookrunner/{__version__}"}, timeout=30.0)
        if variant == "hookrunner sockets":  # as the runner sets App.http up
            from hookrunner._core.bounded_http import use_socket_pool
            from hookrunner._core.http1 import SocketPool

            use_socket_pool(client, SocketPool(max_connections=200, max_idle=100))

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            response = await request(client, "POST", url, content=body, headers=headers, timeout=TIMEOUT, max_body=MAX_BODY)
            return response.status_code

        return post, client, None

    if variant == "httpx stream raw":
        import httpx

        from hookrunner._core.bounded_http import gather_at_most

        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=100), timeout=30.0)

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            with trio.move_on_after(TIMEOUT):
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    await gather_at_most(response.aiter_raw(), MAX_BODY)
                    return response.status_code
            raise Bounded

        return post, client, None

    if variant == "httpx transport":
        import httpx

        from hookrunner._core.bounded_http import gather_at_most

        transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=200, max_keepalive_connections=100))

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            with trio.move_on_after(TIMEOUT):
                request = httpx.Request("POST", url, content=body, headers=headers)
                response = await transport.handle_async_request(request)
                try:
                    await gather_at_most(response.stream, MAX_BODY)  # type: ignore[arg-type]
                finally:
                    await response.aclose()
                return response.status_code
            raise Bounded

        return post, transport, None

    if variant == "httpcore pool":
        import httpcore

        from hookrunner._core.bounded_http import gather_at_most

        pool = httpcore.AsyncConnectionPool(max_connections=200, max_keepalive_connections=100)

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            with trio.move_on_after(TIMEOUT):
                async with pool.stream("POST", url, headers=list(headers.items()), content=body) as response:
                    await gather_at_most(response.aiter_stream(), MAX_BODY)
                    return response.status
            raise Bounded

        return post, pool, None

    if variant in ("socket h11", "socket httptools"):
        pool = MinimalPool(h11=variant == "socket h11")
        return pool.post, None, pool.aclose

    raise SystemExit(f"unknown variant {variant!r}")


class MinimalPool:
    """The least an HTTP/1.1 client on trio sockets must do for delivery: kept-alive connections per origin (at most
    ``limit`` idle), a request written in one send, the answer parsed by h11 or llhttp, its body bounded, one retry
    on a fresh connection when a kept-alive one turns out closed. Only what the measurement needs: plain http."""

    def __init__(self, *, h11: bool, limit: int = 100) -> None:
        self._h11 = h11
        self._idle: dict[tuple[str, int], list[Any]] = {}
        self._limit = limit

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        import trio

        host, _, rest = url.removeprefix("http://").partition("/")
        name, _, port_text = host.partition(":")
        origin = (name, int(port_text or 80))
        head = [f"POST /{rest} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        head += [f"{key}: {value}" for key, value in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        with trio.move_on_after(TIMEOUT):
            for attempt in (0, 1):
                idle = self._idle.get(origin)
                reused = bool(idle)
                stream = idle.pop() if idle else await trio.open_tcp_stream(*origin)
                try:
                    status, keep = await (self._exchange_h11 if self._h11 else self._exchange_llhttp)(stream, data)
                except (OSError, trio.BrokenResourceError, _Closed):
                    await trio.aclose_forcefully(stream)
                    if reused and attempt == 0:
                        continue
                    raise
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
                if keep and len(self._idle.setdefault(origin, [])) < self._limit:
                    self._idle[origin].append(stream)
                else:
                    await trio.aclose_forcefully(stream)
                return status
        raise Bounded

    async def _exchange_llhttp(self, stream: Any, data: bytes) -> tuple[int, bool]:
        import httptools

        answer = _LlhttpAnswer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        await stream.send_all(data)
        size = 0
        while not answer.complete:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise _Closed
            parser.feed_data(chunk)
            size += len(chunk)
            if size > MAX_BODY + 65536:
                return parser.get_status_code(), False
        return parser.get_status_code(), answer.keep_alive

    async def _exchange_h11(self, stream: Any, data: bytes) -> tuple[int, bool]:
        import h11

        connection = h11.Connection(h11.CLIENT)
        # h11 wants to write the request itself: let it (the same bytes, its framing checks)
        request = _H11_REQUEST_CACHE.get(data)
        if request is None:
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ")
            headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
            request = _H11_REQUEST_CACHE[data] = (h11.Request(method=method, target=target, headers=headers), body)
        await stream.send_all(connection.send(request[0]) + connection.send(h11.Data(data=request[1])) + connection.send(h11.EndOfMessage()))
        status, size = 0, 0
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise _Closed
                connection.receive_data(chunk)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    return status, False
            elif isinstance(event, h11.EndOfMessage):
                return status, connection.our_state is h11.DONE and connection.their_state is h11.DONE
            elif isinstance(event, h11.ConnectionClosed):
                raise _Closed

    async def aclose(self) -> None:
        import trio

        for streams in self._idle.values():
            for stream in streams:
                await trio.aclose_forcefully(stream)


_H11_REQUEST_CACHE: dict[bytes, Any] = {}  # the same request every time: only the parsing of the answer is measured


class _Closed(Exception):
    pass


class _LlhttpAnswer:
    def __init__(self) -> None:
        self.complete = self.keep_alive = False
        self.body: list[bytes] = []
        self.parser: Any = None

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # (llhttp forgets it once the message is over)


def child_main(spec: dict[str, Any]) -> None:
    import trio

    post, opened, close = make_client(spec["variant"])
    body, headers = message_body(), message_headers()
    left = spec["requests"]
    statuses: list[int] = []
    measured: dict[str, float] = {}

    async def main() -> None:
        async def run() -> None:
            nonlocal left
            # one warm-up request per worker opens the connections outside the measurement
            async with trio.open_nursery() as nursery:
                for _ in range(spec["concurrency"]):
                    nursery.start_soon(post, spec["url"], body, headers)

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    statuses.append(await post(spec["url"], body, headers))

            cpu0, t0 = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(spec["concurrency"]):
                    nursery.start_soon(worker)
            measured.update(cpu_s=time.process_time() - cpu0, wall_s=time.perf_counter() - t0)

        if opened is not None:
            async with opened:
                await run()
        else:
            await run()
        if close is not None:
            await close()

    trio.run(main)
    print(json.dumps({**measured, "ok": statuses.count(200), "requests": spec["requests"]}), flush=True)


# --- the whole run --------------------------------------------------------------------------------------------


def run_once(variant: str, concurrency: int, requests: int, workdir: Path) -> dict[str, Any]:
    receiver = ReceiverProcess(workdir)
    spec = {"variant": variant, "concurrency": concurrency, "requests": requests, "url": receiver.url}
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                              timeout=600, check=False)  # fmt: skip
    finally:
        received = receiver.finish()
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"{variant} x{concurrency} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(variant=variant, concurrency=concurrency, connections=received["opened"],
                  received=received["requests"], receiver_cpu_s=received["cpu_s"])  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and one round (about a minute)")
    parser.add_argument("--rounds", type=int, help="runs per variant and concurrency (default: 1 quick, 3 full)")
    parser.add_argument("--requests", type=int, help="requests per run (default: 2,000 quick, 5,000 full)")
    parser.add_argument("--only", help="comma-separated variants (the yardstick is always measured)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's result, one JSON line each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(json.loads(args.child))
    rounds = args.rounds or (1 if args.quick else 3)
    requests = args.requests or (2000 if args.quick else 5000)
    variants = list(VARIANTS)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")} | {YARDSTICK}
        variants = [v for v in VARIANTS if v in wanted]
    os.environ.setdefault(WEBHOOK_SECRET_ENV, "whsec_" + base64.b64encode(os.urandom(32)).decode())  # the receiver's
    print(f"hookrunner HTTP client benchmark: {requests} POSTs of {len(message_body())} B per run, {rounds} round(s), "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", flush=True)  # fmt: skip
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hookrunner-bench-http-") as tmp:
        for rnd in range(rounds):
            shift = rnd % len(variants)
            for concurrency in CONCURRENCY:
                for variant in variants[shift:] + variants[:shift]:
                    result = run_once(variant, concurrency, requests, Path(tmp))
                    result["round"] = rnd + 1
                    runs.append(result)
                    print(f"  .. round {rnd + 1} {variant:<19} x{concurrency:<2} "
                          f"{result['cpu_s'] * 1e6 / result['requests']:7.1f} us/request", file=sys.stderr, flush=True)  # fmt: skip
    report(runs, variants)
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def report(runs: list[dict[str, Any]], variants: list[str]) -> None:
    print("\nCPU per request of the client process (requests only), median of the rounds; x = that over the yardstick "
          f"({YARDSTICK}) at the same concurrency,\nround by round; conns = connections the receiver saw; ok = answered 200")  # fmt: skip
    header = f"  {'variant':<19}" + "".join(f" {f'x{c} us':>8} {'ratio':>6} {'req/s':>6} {'conns':>5}" for c in CONCURRENCY)
    print(header + "  ok")
    for variant in variants:
        cells, ok = [], True
        for concurrency in CONCURRENCY:
            mine = [r for r in runs if r["variant"] == variant and r["concurrency"] == concurrency]
            base = {r["round"]: r for r in runs if r["variant"] == YARDSTICK and r["concurrency"] == concurrency}
            per = statistics.median(r["cpu_s"] * 1e6 / r["requests"] for r in mine)
            ratio = statistics.median((r["cpu_s"] / r["requests"]) / (base[r["round"]]["cpu_s"] / base[r["round"]]["requests"]) for r in mine)
            rate = statistics.median(r["requests"] / r["wall_s"] for r in mine)
            conns = max(r["connections"] for r in mine)
            ok = ok and all(r["ok"] == r["requests"] for r in mine)
            cells.append(f" {per:8.1f} {ratio:5.2f}x {rate:6.0f} {conns:>5}")
        print(f"  {variant:<19}" + "".join(cells) + f"  {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
