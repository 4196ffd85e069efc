"""The listing poller alone, against a loopback server scripted answer by answer (hookrunner.testing's receiver):
the shapes and failures of a real listing that the simulator does not play."""

from __future__ import annotations

import gzip
import json
import math
from typing import Any

import httpx
import pytest
import trio

from hookrunner._core.backoff import parse_retry_after
from hookrunner._core.config import config_from_dict
from hookrunner._stream.listing import ListingFailed, ListingPoller
from hookrunner._core.errors import AuthError
from hookrunner._core.stats import Stats
from hookrunner.testing import Reply, running_receiver


def page(ids: list[str], status: str = "in_progress", **pagination: Any) -> Reply:
    body = {"status": True, "data": {"logs": [{"callId": i, "status": status} for i in ids], "pagination": pagination}}
    return Reply(200, {"content-type": "application/json"}, body=json.dumps(body).encode())


def poller(base_url: str, client: httpx.AsyncClient, followed: list[str], **discovery: Any) -> ListingPoller:
    config = config_from_dict({"atoms": {"api_key": "k"}, "discovery": {"poll": True, **discovery}})
    return ListingPoller(
        config.discovery,
        client=client,
        base_url=base_url,
        api_key="k",
        follow=lambda call_id, source: followed.append(call_id),
        stats=Stats(),
    )


async def test_ids_of_pages_read_before_a_failing_page_are_followed() -> None:
    followed: list[str] = []
    async with running_receiver() as receiver, httpx.AsyncClient() as client:
        receiver.script("/conversation", [page(["A", "B"], hasMore=True), Reply(429, {"retry-after": "3"})])
        with pytest.raises(ListingFailed) as failed:
            await poller(receiver.base_url, client, followed, page_size=2).list_calls()
    assert followed == ["A", "B"]
    assert failed.value.retry_after == 3.0 and "page 2: 429" in failed.value.why
    first, second = receiver.at("/conversation")
    assert "page=1" in first.query and "page=2" in second.query and "limit=2" in first.query


async def test_every_page_is_read_when_the_server_caps_the_limit_and_only_gives_a_total() -> None:
    followed: list[str] = []
    async with running_receiver() as receiver, httpx.AsyncClient() as client:
        receiver.script(
            "/conversation",
            [page(["A", "B"], total=5, limit=2), page(["C", "D"], total=5, limit=2), page(["E"], total=5, limit=2)],
            then=page([]),
        )
        found = await poller(receiver.base_url, client, followed, page_size=500).list_calls()
    assert found == followed == ["A", "B", "C", "D", "E"]
    assert len(receiver.at("/conversation")) == 3


async def test_statuses_match_whatever_their_case_and_other_statuses_are_skipped() -> None:
    followed: list[str] = []
    async with running_receiver() as receiver, httpx.AsyncClient() as client:
        body = {"data": {"logs": [
            {"callId": "UPPER", "status": "IN_PROGRESS"},
            {"callId": "DONE", "status": "completed"},
            {"callId": "NO-STATUS"},
            {"status": "in_progress", "id": "log-entry-id-is-not-a-call-id"},
        ]}}  # fmt: skip
        receiver.script("/conversation", [Reply(200, body=json.dumps(body).encode())])
        await poller(receiver.base_url, client, followed).list_calls()
    assert followed == ["UPPER", "NO-STATUS"]


@pytest.mark.parametrize(
    "reply, why",
    [
        (Reply(200, {"content-encoding": "gzip"}, body=b"not gzip at all"), "DecodingError"),
        (Reply(200, body=b"<html>maintenance</html>"), "not a listing"),
        (Reply(200, body=b'{"status": true, "data": {"logs": {"callId": "X"}}}'), "not a listing"),
        (Reply(502, body=b'{"status": false, "errors": ["upstream down"]}'), "502 upstream down"),
        (Reply(429, body=b'{"status": false, "error": "slow down", "retry_after": 7}'), "429 slow down"),
    ],
    ids=["bad-gzip", "html", "logs-not-a-list", "502", "429-body"],
)
async def test_a_listing_we_cannot_use_is_a_listing_failure_not_a_crash(reply: Reply, why: str) -> None:
    async with running_receiver() as receiver, httpx.AsyncClient() as client:
        receiver.script("/conversation", [reply])
        with pytest.raises(ListingFailed) as failed:
            await poller(receiver.base_url, client, []).list_calls()
    assert why in failed.value.why
    if reply.status == 429:
        assert failed.value.retry_after == 7


async def test_a_refused_key_is_an_auth_error() -> None:
    async with running_receiver() as receiver, httpx.AsyncClient() as client:
        receiver.script("/conversation", [Reply(401, body=b'{"status": false, "errors": ["bad key"]}')])
        with pytest.raises(AuthError):
            await poller(receiver.base_url, client, []).list_calls()


async def test_the_poller_keeps_its_interval_and_outlives_a_crashing_listing() -> None:
    """Answers: an undecodable body, then good listings: the runner-level loop retries after the interval (never
    sooner) and lists once per interval after that."""
    followed: list[str] = []
    async with running_receiver() as receiver, httpx.AsyncClient() as client:
        receiver.script("/conversation", [Reply(200, {"content-encoding": "gzip"}, body=gzip.compress(b"{")[:5])], then=page(["A"]))
        listing = poller(receiver.base_url, client, followed, interval=0.5, retry_delay=0.5, max_retry_delay=0.5)
        with trio.move_on_after(2.6):
            await listing.run()
    times = [request.arrived for request in receiver.at("/conversation")]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert 5 <= len(times) <= 6, times
    assert all(gap >= 0.5 - 0.02 for gap in gaps), gaps
    assert listing._stats.listing_failures == 1 and listing._stats.listings == len(times) - 1
    assert set(followed) == {"A"}


def test_retry_after_is_bounded_and_never_infinite() -> None:
    assert parse_retry_after("inf") is None and parse_retry_after("nan") is None
    assert parse_retry_after("12") == 12.0
    listing = ListingPoller.__new__(ListingPoller)
    listing.config = config_from_dict({"atoms": {"api_key": "k"}, "discovery": {"interval": 1}}).discovery
    assert listing._retry_delay(1, ListingFailed("429", retry_after=86_400)) == 300.0  # discovery.max_retry_after
    listing.config = config_from_dict(
        {"atoms": {"api_key": "k"}, "discovery": {"interval": 1, "max_retry_after": 2.5}}
    ).discovery
    assert listing._retry_delay(1, ListingFailed("429", retry_after=86_400)) == 2.5
    assert listing._retry_delay(1, ListingFailed("429", retry_after=2)) >= 2
    assert 1.0 <= listing._retry_delay(1, ListingFailed("500")) < math.inf


async def test_the_pages_of_one_listing_are_spaced_by_page_interval() -> None:
    async with running_receiver() as receiver, httpx.AsyncClient() as client:
        receiver.script("/conversation", [page(["A"], hasMore=True), page(["B"], hasMore=True), page(["C"], hasMore=False)])
        found = await poller(receiver.base_url, client, [], page_size=1, page_interval=0.2).list_calls()
    times = [request.arrived for request in receiver.at("/conversation")]
    assert found == ["A", "B", "C"]
    assert all(later - earlier >= 0.2 - 0.01 for earlier, later in zip(times, times[1:])), times
