"""The test receiver's failure mode added for fault injection: a connection dropped mid-answer."""

from __future__ import annotations

import httpx
import pytest

from hookrunner.testing import Reply, running_receiver


async def test_a_drop_reply_sends_headers_then_closes_the_connection_and_the_sender_sees_a_connection_error() -> None:
    async with running_receiver() as receiver:
        receiver.script("/hook", [Reply(200, {"x-answer": "cut"}, drop=True)], then=Reply(204))
        async with httpx.AsyncClient(timeout=2) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(receiver.url("/hook"), content=b'{"n": 1}')
            after = await client.post(receiver.url("/hook"), content=b'{"n": 2}')
        first, second = receiver.at("/hook")
    assert first.body == b'{"n": 1}' and first.dropped and not first.succeeded
    assert after.status_code == 204 and second.status == 204 and not second.dropped
