"""Service mode, polled calls: the runner lists active calls and follows each new one, once.

Against the simulator on 127.0.0.1: calls start at scripted offsets, the listing pages and changes status as
calls start and end, and listing faults play outages and rate limits.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from hookrunner import hookimpl
from hookrunner._simulator import running_simulator

from helpers import API_KEY, build_runner, call_events, make_config, script


def discovery_config(base_url: str, **discovery: Any) -> dict[str, Any]:
    config = make_config(base_url)
    config["discovery"] = {"poll": True, "interval": 1.0, "retry_delay": 0.5, "max_retry_delay": 2.0, **discovery}
    return config


class Followed:
    """When each call was subscribed and how each finished, on trio's clock."""

    def __init__(self) -> None:
        self.subscribed: dict[str, list[float]] = {}
        self.finished: dict[str, str] = {}
        self.events: dict[str, list[str]] = {}

    @hookimpl
    def on_call_subscribed(self, call) -> None:
        self.subscribed.setdefault(call.id, []).append(trio.current_time())

    @hookimpl
    def on_event(self, event, call) -> None:
        self.events.setdefault(call.id, []).append(event)

    @hookimpl
    def on_call_finished(self, call, reason) -> None:
        self.finished[call.id] = reason


async def run_until(runner, done, timeout: float) -> int:
    """Run ``runner`` until ``done()`` holds (checked every 50 ms), then stop it; its exit code."""
    code = -1
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            nonlocal code
            code = await runner.run()

        nursery.start_soon(run)
        with trio.fail_after(timeout):
            while not done():
                await trio.sleep(0.05)
        runner.stop()
    return code


async def test_calls_starting_over_10_s_are_each_followed_once_within_interval_plus_1_s() -> None:
    starts = [0.3, 1.7, 3.2, 4.4, 6.1, 7.5, 8.8, 10.0]
    calls = [
        {"id": f"CALL-STAGGER-{i}", "start": start, "agent_id": f"agent-{i % 2}", "events": call_events(8, 0.3)}
        for i, start in enumerate(starts)
    ]
    # and one call that is over before the runner starts: never followed
    calls.append({"id": "CALL-DONE", "status": "completed", "events": call_events(2)})
    followed = Followed()
    # Atoms marks a call completed a while after its stream ended: later listings still show it in progress
    async with running_simulator(script(calls, listing_lag=3.0)) as sim:
        config = discovery_config(sim.base_url, page_size=3)
        runner = build_runner(config, [], followed)

        def over_and_listed_a_while_after() -> bool:
            if not all(followed.finished.get(c["id"]) for c in calls[:-1]):
                return False
            last_end = max(sim.call_end(c["id"]) for c in calls[:-1])
            return trio.current_time() - sim.started_at > last_end + 3.5  # past the listing lag

        code = await run_until(runner, over_and_listed_a_while_after, timeout=25)
        interval = 1.0
        for call in calls[:-1]:
            started = sim.call_start(call["id"])
            [subscribed] = sim.subscriptions[call["id"]]  # exactly once, never again after it finished
            assert started is not None and 0 <= subscribed - started <= interval + 1.0, (call["id"], started, subscribed)
        assert sim.subscriptions["CALL-DONE"] == []
        # listings after a call's end still showed it in progress (the lag): those offers were refused
        ok_listings = [request.at for request in sim.listing_log if request.status == 200]
        for call in calls[:-1]:
            end = sim.call_end(call["id"])
            assert any(end + 0.1 < at < end + 2.9 for at in ok_listings), call["id"]
    assert code == 0
    assert followed.finished == {c["id"]: "ended" for c in calls[:-1]}
    assert all(len(times) == 1 for times in followed.subscribed.values())
    assert runner.stats.calls_discovered == {"listing": len(starts)}
    # up to 8 calls listed, 3 a page: listings read more than one page
    assert runner.stats.listing_requests > runner.stats.listings >= 10
    assert runner.stats.listing_failures == 0


async def test_agent_and_campaign_filters_are_sent_and_only_those_calls_followed() -> None:
    calls = [
        {"id": "CALL-A1", "start": 0.1, "agent_id": "agent-a", "campaign_id": "camp-1", "events": call_events(4, 0.2)},
        {"id": "CALL-A2", "start": 0.1, "agent_id": "agent-a", "campaign_id": "camp-2", "events": call_events(4, 0.2)},
        {"id": "CALL-B1", "start": 0.1, "agent_id": "agent-b", "campaign_id": "camp-1", "events": call_events(4, 0.2)},
    ]
    followed = Followed()
    async with running_simulator(script(calls)) as sim:
        config = discovery_config(sim.base_url, agent_ids=["agent-a"], campaign_ids=["camp-1"], interval=0.5)
        runner = build_runner(config, [], followed)
        await run_until(runner, lambda: "CALL-A1" in followed.finished and sim.listing_requests >= 4, timeout=10)
    assert set(followed.subscribed) == {"CALL-A1"}


async def test_a_listing_outage_of_10_s_disturbs_no_followed_call_and_retry_after_is_honoured() -> None:
    long_call = {"id": "CALL-LONG", "start": 0.1, "events": call_events(60, 0.2)}  # 12 s of events
    during = {"id": "CALL-DURING", "start": 4.0, "events": call_events(50, 0.2)}  # starts mid-outage, runs to 14 s
    top = {
        "listing_faults": [
            {"from": 1.0, "until": 6.0, "status": 500},
            {"from": 6.0, "until": 11.0, "status": 429, "retry_after": 2},
        ]
    }
    followed = Followed()
    async with running_simulator(script([long_call, during], **top)) as sim:
        config = discovery_config(sim.base_url, interval=0.5, retry_delay=0.5, max_retry_delay=1.0)
        runner = build_runner(config, [], followed)
        await run_until(runner, lambda: len(followed.finished) == 2, timeout=25)
        log = list(sim.listing_log)
        during_subscribed = sim.subscriptions["CALL-DURING"]
    # the long call was followed before the outage and got every event, on one connection
    assert sim_connections_ok(followed, "CALL-LONG", 60)
    assert followed.finished == {"CALL-LONG": "ended", "CALL-DURING": "ended"}
    assert runner.stats.reconnects == 0
    # failures were counted, and after each 429 (Retry-After: 2) the next listing waited at least 2 s
    assert runner.stats.listing_failures >= 5
    statuses = [request.status for request in log]
    assert 500 in statuses and 429 in statuses
    for before, after in zip(log, log[1:]):
        if before.status == 429:
            assert after.at - before.at >= 2.0 - 0.05, (before, after)
    # the call that started during the outage was followed once the listing answered again
    [subscribed] = during_subscribed
    first_ok_after = min(request.at for request in log if request.status == 200 and request.at >= 11.0)
    assert 11.0 <= subscribed <= first_ok_after + 0.5


def sim_connections_ok(followed: Followed, call_id: str, scripted: int) -> bool:
    """From the moment it was followed, the call got every scripted event up to the last, none twice, then
    sse_close (a follower joining a live call misses what was said before it joined, as on the real API); then,
    backfilled from the stored conversation, exactly what it missed."""
    events = followed.events.get(call_id, [])
    live = [event for event in events if not event.backfilled]
    if live[0].event_type != "sse_init" or live[-1].event_type != "sse_close" or events[len(live) - 1] is not live[-1]:
        return False
    indices = [int(event.event_id.split("_")[1]) for event in live[1:-1]]
    backfilled = [int(event.event_id.split("_")[1]) for event in events[len(live) :]]
    return indices == list(range(indices[0], scripted)) and indices[0] <= 5 and backfilled == list(range(indices[0]))


async def test_a_refused_key_on_the_listing_stops_the_runner_with_exit_2(caplog) -> None:
    async with running_simulator(script([{"id": "CALL-K", "start": 0.1, "events": call_events(2)}])) as sim:
        config = discovery_config(sim.base_url)
        config["atoms"]["api_key"] = "wrong-key"
        runner = build_runner(config, [])
        with trio.fail_after(10):
            code = await runner.run()
    assert code == 2
    assert any("Atoms refused the API key (401" in r.getMessage() and "listing calls" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("interval", [0.1, 0.49])
def test_check_refuses_an_interval_below_the_floor(cli, tmp_path, interval) -> None:
    from helpers import finish, write_config

    config = write_config(tmp_path, {"atoms": {"api_key": API_KEY}, "discovery": {"poll": True, "interval": interval}})
    code, _, err = finish(cli("check", str(config)))
    assert code == 2
    assert err.strip() == (
        f"error: {config}: discovery.interval: expected at least 0.5 seconds (every listing is a request, and the free "
        f"plan allows about 10 requests/s for everything the key does), got {interval}"
    )


async def test_a_listing_that_hangs_past_discovery_timeout_is_a_failure_and_the_next_one_works() -> None:
    calls = [{"id": "CALL-T", "start": 0.1, "events": call_events(30, 0.1)}]
    top = {"listing_faults": [{"from": 0.0, "until": 1.5, "stall": True}]}
    followed = Followed()
    async with running_simulator(script(calls, **top)) as sim:
        config = discovery_config(sim.base_url, interval=0.5, timeout=0.5, retry_delay=0.5, max_retry_delay=0.5)
        runner = build_runner(config, [], followed)
        await run_until(runner, lambda: "CALL-T" in followed.finished, timeout=10)
        [subscribed] = sim.subscriptions["CALL-T"]
    assert runner.stats.listing_failures >= 1  # the stalled listing timed out instead of holding discovery
    assert 1.5 <= subscribed <= 1.5 + 1.5  # followed by the first listing after the stall window
    assert followed.finished == {"CALL-T": "ended"}
