#!/usr/bin/env python3
"""A fast SSE server for ``compare.py``: raw asyncio, HTTP/1.1, chunked, pre-rendered events, one timer for all calls.

    .venv/bin/python benchmarks/sse_server.py SPEC_JSON     # prints "sse server listening on PORT"

``SPEC_JSON`` is ``{"key": KEY, "flood_chunks": "write" | "event", "scenarios": {NAME: {"mode": "flood" |
"paced" | "quiet", "events": E, "rate": R, "duration": S, "ping": S, "seed": N}}}``. It serves
``GET /events?callId=CALL-<NAME>-<run>-<n>`` for any run and n of a scenario it was given (so each consumer run
asks for ids never used before), with ``Authorization: Bearer KEY`` (401 otherwise, 404 for an unknown scenario),
as ``200``, ``Content-Type: text/event-stream``, ``Transfer-Encoding: chunked``, ``Connection: close``, events as
``data: <json>`` and a blank line, one chunk per event (and per keep-alive comment), except in a flood: one chunk
per write unless ``flood_chunks`` is ``"event"``. Every event's JSON has ``event_type``, ``event_id``
(``{call_id}_{seq}``), ``timestamp`` (ISO 8601 with ms: the scheduled send time), ``call_id``, the mix's own fields
(``benchlib.event_mix``, 16 variants per scenario by n), ``bench_seq`` and, last, ``bench_sent_ns``
(``time.time_ns()`` when the event was handed to the socket). The first event is ``sse_init``, the last
``sse_close``; then the terminating chunk and the server closes.

- ``flood``: E events written as fast as the socket takes them (64, about 16 KiB, a write, with one stamp; a full
  socket pauses the call until it drains);
- ``paced``: ``sse_init`` at once, then R events/s; call n's first event is offset by a fraction of 1/R set by n
  (golden-ratio spacing), so calls are out of step; ``call_end`` and ``sse_close`` go out together;
- ``quiet``: ``sse_init``, then only ``: ping`` comments every ``ping`` s, and ``sse_close`` after ``duration`` s.

Paced and quiet calls share one heap of due writes and one asyncio timer (never a task or timer per call), so
per write the server does a heap pop and push, the join of ten pre-rendered byte strings, and one ``send``.
``GET /stats`` answers the events written so far and how late the timed writes were since the last
``/stats?reset=1``. GC is off (the server makes no cycles). ``SseServer`` below starts it as a subprocess.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import json
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import event_mix, process_cpu_s, stop_server

#: Event variants per scenario: call n serves variant n % VARIANTS (pre-rendered once each).
VARIANTS = 16
#: Events per write in a flood (about 16 KiB), stamped with one ``bench_sent_ns``.
FLOOD_BATCH = 64
#: Bytes the transport may buffer beyond the socket before a flooding call pauses.
HIGH_WATER = 16 * 1024
#: Timed writes due within this many seconds of now go out in the same timer pass.
SLACK = 0.0005
GOLDEN = 0.6180339887498949

TS_LEN = 24  # "2026-11-24T10:00:07.312Z"
SENT_LEN = 19  # time.time_ns() has 19 digits until 2286
END = b"}\n\n"  # the event's closing brace and the SSE blank line
CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
PING = b"8\r\n: ping\n\n\r\n"
HEAD_200 = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")  # fmt: skip
CALL_ID = re.compile(r"CALL-([A-Za-z0-9]+)-(\d+)-(\d+)")

# --- rendering -------------------------------------------------------------------------------------------------

#: One event, pre-rendered: (its size less the call id's two copies, p0, p1, p2, p3); on the wire it is p0 + call
#: id + p1 + timestamp + p2 + call id + p3 + bench_sent_ns + END, in a chunk of its own or with others.
Template = tuple[int, bytes, bytes, bytes, bytes]


def render(events: int, seed: int) -> list[Template]:
    """``events`` events: sse_init, ``events - 2`` of ``event_mix``, sse_close."""
    bodies: list[dict[str, Any]] = [{"event_type": "sse_init"}]
    bodies += [{k: v for k, v in e.items() if k != "at"} for e in event_mix(events - 2, seed)] if events > 2 else []
    bodies.append({"event_type": "sse_close", "reason": "call_ended"})
    templates = []
    for seq, body in enumerate(bodies):
        event_type = body.pop("event_type")
        rest = json.dumps(body, separators=(",", ":"))[1:-1]
        p0 = b'data: {"event_type":' + json.dumps(event_type).encode() + b',"event_id":"'
        p1 = f'_{seq}","timestamp":"'.encode()
        p2 = b'","call_id":"'
        p3 = ('",' + (rest + "," if rest else "") + f'"bench_seq":{seq},"bench_sent_ns":').encode()
        size = len(p0) + len(p1) + len(p2) + len(p3) + TS_LEN + SENT_LEN + len(END)
        templates.append((size, p0, p1, p2, p3))
    return templates


class IsoMs:
    """``time.time()`` as ISO 8601 UTC with milliseconds, bytes; the seconds part formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def __call__(self, t: float) -> bytes:
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        return self._prefix + b".%03dZ" % int((t - second) * 1000)


iso_ms = IsoMs()


class Scenario:
    def __init__(self, name: str, table: dict[str, Any], index: int) -> None:
        self.name = name
        self.mode = table["mode"]
        self.events = 2 if self.mode == "quiet" else int(table["events"])
        self.rate = float(table.get("rate", 5.0))
        self.duration = float(table.get("duration", 10.0))
        self.ping = float(table.get("ping", 3.0))
        seed = int(table.get("seed", index))
        self.variants = [render(self.events, seed * 1000 + v) for v in range(VARIANTS)]


# --- serving ---------------------------------------------------------------------------------------------------


class Server:
    """The scenarios, the heap of timed writes and its one timer, the counters."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.auth = f"Bearer {spec['key']}".encode()
        self.chunk_per_event = spec.get("flood_chunks") == "event"
        self.scenarios = {name: Scenario(name, table, i) for i, (name, table) in enumerate(spec["scenarios"].items())}
        self.loop = asyncio.get_running_loop()
        self.heap: list[tuple[float, int, Stream]] = []
        self.order = 0  # heap tie-breaker
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = float("inf")
        self.written = 0  # events written, all calls
        self.connections = 0
        self.open = 0
        self.late = [0] * 1001  # timed writes by lateness, ms (the last bin: 1 s or more)

    def schedule(self, due: float, stream: Stream) -> None:
        self.order += 1
        heapq.heappush(self.heap, (due, self.order, stream))
        if due < self.timer_due:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_due = due
            self.timer = self.loop.call_at(due, self.tick)

    def tick(self) -> None:
        heap, late, pop = self.heap, self.late, heapq.heappop
        now = self.loop.time()
        limit = now + SLACK
        while heap and heap[0][0] <= limit:
            due, _, stream = pop(heap)
            if stream.closed:
                continue
            late[min(1000, max(0, int((now - due) * 1000)))] += 1
            stream.due(due)
        self.timer = None
        self.timer_due = float("inf")
        if heap:
            self.timer_due = heap[0][0]
            self.timer = self.loop.call_at(self.timer_due, self.tick)

    def stats(self, reset: bool) -> bytes:
        n = sum(self.late)
        cells: dict[str, Any] = {"n": n}
        if n:
            seen, marks = 0, {}
            for ms, count in enumerate(self.late):
                seen += count
                for name, share in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
                    if name not in marks and seen >= share * n:
                        marks[name] = ms
            cells.update(marks)
        if reset:
            self.late = [0] * 1001
        body = {"events_written": self.written, "connections": self.connections, "open": self.open, "late_ms": cells}
        return json.dumps(body).encode()


class Stream(asyncio.Protocol):
    """One connection: its request, then one call's events."""

    server: Server

    def __init__(self) -> None:
        self.buffer = b""
        self.closed = False
        self.paused = False
        self.started = False
        self.seq = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections += 1
        self.server.open += 1
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.open -= 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.started and self.scenario.mode == "flood":
            self.pump()

    def data_received(self, data: bytes) -> None:
        if self.started:
            return  # nothing more is read of a request
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > 65536:
                self.answer(431, b"request header too large\n")
            return
        self.started = True
        self.request(self.buffer[:end])

    def answer(self, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
        reason = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
                  400: b"Bad Request", 431: b"Request Header Fields Too Large"}[status]  # fmt: skip
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (status, reason, content_type, len(body), body))  # fmt: skip
        self.transport.close()

    def request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        try:
            method, target, _ = lines[0].split(b" ", 2)
        except ValueError:
            return self.answer(400, b"bad request line\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        path, _, query = target.partition(b"?")
        if method != b"GET":
            return self.answer(405, b"GET only\n")
        if path == b"/stats":
            return self.answer(200, self.server.stats(b"reset=1" in query), b"application/json")
        if path != b"/events":
            return self.answer(404, b"not found\n")
        if headers.get(b"authorization") != self.server.auth:
            return self.answer(401, b'{"error":"invalid API key"}', b"application/json")
        call_id = parse_qs(query.decode("latin-1")).get("callId", [""])[0]
        match = CALL_ID.fullmatch(call_id)
        scenario = self.server.scenarios.get(match.group(1)) if match else None
        if match is None or scenario is None:
            return self.answer(404, b'{"error":"call not found"}', b"application/json")
        n = int(match.group(3))
        self.scenario = scenario
        self.templates = scenario.variants[n % VARIANTS]
        self.cid = call_id.encode()
        self.extra = 2 * len(self.cid)
        self.transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
        self.transport.write(HEAD_200)
        loop = self.server.loop
        self.t0, self.wall0 = loop.time(), time.time()
        if scenario.mode == "flood":
            self.ts = iso_ms(self.wall0)  # every event is scheduled at once
            self.pump()
            return
        self.write_event(0, iso_ms(self.wall0))  # sse_init at once
        if scenario.mode == "paced":
            self.seq = 1
            self.first = self.t0 + (n * GOLDEN % 1.0) / scenario.rate
            self.server.schedule(self.first, self)
        else:
            self.end = self.t0 + scenario.duration
            self.server.schedule(min(self.t0 + scenario.ping, self.end), self)

    def event(self, seq: int, ts: bytes, sent: bytes) -> tuple[bytes, ...]:
        """Event ``seq`` as a chunk of its own."""
        size, p0, p1, p2, p3 = self.templates[seq]
        return b"%x\r\n" % (size + self.extra), p0, self.cid, p1, ts, p2, self.cid, p3, sent, END, CRLF

    def write_event(self, seq: int, ts: bytes, last: bytes = b"") -> None:
        self.transport.write(b"".join(self.event(seq, ts, b"%d" % time.time_ns())) + last)
        self.server.written += 1

    def pump(self) -> None:
        """Flood: write the call's events, FLOOD_BATCH a write (one chunk a write, or one an event), until the
        socket is full (``resume_writing`` calls again) or they are out."""
        n, seq, ts, templates, cid, extra = len(self.templates), self.seq, self.ts, self.templates, self.cid, self.extra
        per_event = self.server.chunk_per_event
        write = self.transport.write
        while not self.paused and seq < n and not self.closed:
            stop = min(n, seq + FLOOD_BATCH)
            sent = b"%d" % time.time_ns()
            parts: list[bytes] = []
            total = 0
            for i in range(seq, stop):
                size, p0, p1, p2, p3 = templates[i]
                if per_event:
                    parts += (b"%x\r\n" % (size + extra), p0, cid, p1, ts, p2, cid, p3, sent, END, CRLF)
                else:
                    parts += (p0, cid, p1, ts, p2, cid, p3, sent, END)
                    total += size + extra
            if not per_event:
                parts.insert(0, b"%x\r\n" % total)
                parts.append(CRLF)
            self.server.written += stop - seq
            seq = stop
            if seq == n:
                parts.append(LAST_CHUNK)
            write(b"".join(parts))
        self.seq = seq
        if seq == n:
            self.transport.close()

    def due(self, due: float) -> None:
        """A timed write: a paced call's next event (and, after call_end, sse_close), or a quiet call's ping or end."""
        scenario = self.scenario
        if scenario.mode == "quiet":
            if due >= self.end:
                self.write_event(1, iso_ms(self.wall0 + (due - self.t0)), LAST_CHUNK)
                self.transport.close()
            else:
                self.transport.write(PING)
                self.server.schedule(min(due + scenario.ping, self.end), self)
            return
        seq, n = self.seq, len(self.templates)
        ts = iso_ms(self.wall0 + (due - self.t0))
        if seq == n - 2:  # call_end, then sse_close in the same write
            sent = b"%d" % time.time_ns()
            self.transport.write(b"".join((*self.event(seq, ts, sent), *self.event(seq + 1, ts, sent), LAST_CHUNK)))
            self.server.written += 2
            self.transport.close()
            return
        self.write_event(seq, ts)
        self.seq = seq + 1
        self.server.schedule(self.first + (self.seq - 1) / scenario.rate, self)  # event k (k >= 1): first + (k-1)/R


async def serve(spec: dict[str, Any]) -> None:
    server = Server(spec)
    Stream.server = server
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener = await loop.create_server(Stream, "127.0.0.1", spec.get("port", 0), backlog=4096)
    print(f"sse server listening on {listener.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    listener.close()


def server_main(spec: dict[str, Any]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()
    asyncio.run(serve(spec))


# --- the process, from the benchmark's side --------------------------------------------------------------------


class SseServer:
    """This module as a subprocess serving ``spec``; ``cpu()`` is its CPU seconds so far, ``stats()`` its counters."""

    def __init__(self, spec: dict[str, Any], workdir: Path) -> None:
        self._err = open(workdir / "sse-server.err", "w+")  # noqa: SIM115  (open for the server's life)
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(spec)], stdout=subprocess.PIPE,
                                     stderr=self._err, text=True)  # fmt: skip
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("sse server listening on "):
            self.proc.kill()
            self._err.seek(0)
            raise SystemExit(f"the SSE server did not start: {line!r} {self._err.read()[-2000:]}")
        self.port = int(line.split()[-1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ready_s = time.perf_counter() - started

    def cpu(self) -> float:
        return process_cpu_s(self.proc.pid)

    def stats(self, reset: bool = False) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/stats{'?reset=1' if reset else ''}", timeout=30) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def stop(self) -> None:
        stop_server(self.proc, self._err, signal.SIGTERM, "sse server", slice(-1000, None))


if __name__ == "__main__":
    server_main(json.loads(sys.argv[1]))
