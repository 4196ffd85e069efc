"""``runner.max_connecting``: a burst of new calls is set up a few at a time, so the calls already followed keep
their events flowing between the openings instead of waiting behind all of them.

The Atoms here is a real socket server on loopback that holds each subscription for a moment before answering
that the call is over (400), and counts how many it holds at once.
"""

from __future__ import annotations

import json

import pytest
import trio

from helpers import make_config, read_request_head, run_runner, serve_loopback

HOLD_S = 0.15
CALLS = [f"CALL-1758124225863-{index:06x}" for index in range(6)]


class SlowAtoms:
    """Answers every request, after ``HOLD_S``, with the 400 of a completed call; notes the most held at once."""

    def __init__(self) -> None:
        self.held = 0
        self.most_held = 0
        self.answered: list[str] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        request = await read_request_head(stream)
        if request is None:
            return
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        await trio.sleep(HOLD_S)
        self.held -= 1
        self.answered.append(request.split(b" ", 2)[1].decode())
        body = json.dumps({"status": False, "errors": ["Only active calls can be subscribed to"]}).encode()
        head = f"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        await stream.send_all(head.encode() + b"Connection: close\r\n\r\n" + body)
        await stream.aclose()


@pytest.mark.parametrize(("max_connecting", "most_held"), [(2, 2), (10, len(CALLS))])
async def test_no_more_calls_are_opened_at_once_than_max_connecting(max_connecting: int, most_held: int) -> None:
    atoms = SlowAtoms()
    async with trio.open_nursery() as nursery:
        port = await serve_loopback(nursery, atoms.handle)
        config = make_config(f"http://127.0.0.1:{port}", max_connecting=max_connecting)
        code, runner = await run_runner(config, CALLS)
        nursery.cancel_scope.cancel()
    assert code == 0, runner.stats.summary()
    assert sorted(path.rsplit("=", 1)[-1] for path in atoms.answered) == CALLS  # every call opened, once
    assert atoms.most_held == most_held
