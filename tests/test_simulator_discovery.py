"""The simulator's side of finding calls: scripted starts, the conversation listing and its faults, and signed
pre-/post-conversation webhooks, driven over loopback as a polling or webhook-driven runner would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from helpers import assert_one_line_script_error, hookrunner_process
from hookrunner._simulator import Script, Simulator, load_script, parse_script, run_simulator_cli, running_simulator
from hookrunner.testing.receiver import ReceivedRequest, Reply, refusing_port, running_receiver

KEY = {"Authorization": "Bearer sim-key"}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SECRET = "whsec-test-3f9a"


def make_script(*calls: dict[str, Any], **settings: Any) -> Script:
    return parse_script({"keepalive": 0, **settings, "calls": list(calls)}, source="test.toml")


def call(call_id: str, *ats: float, **keys: Any) -> dict[str, Any]:
    """A call with one event per ``at``: event_type ``step``, a field ``n`` numbering them."""
    return {"id": call_id, "events": [{"at": at, "event_type": "step", "n": n} for n, at in enumerate(ats)], **keys}


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in text.split("\n") if line.startswith("data: ")]


def since_serving(sim: Simulator) -> float:
    assert sim.started_at is not None
    return trio.current_time() - sim.started_at


async def at_offset(sim: Simulator, seconds: float) -> None:
    """Sleep until ``seconds`` after the simulator started serving."""
    assert sim.started_at is not None
    await trio.sleep_until(sim.started_at + seconds)


async def subscribe(sim: Simulator, call_id: str) -> tuple[int, list[dict[str, Any]], float]:
    """One whole subscription: status, events, and when (seconds after serving start) the first chunk came."""
    first = None
    chunks = []
    with trio.fail_after(5):
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", sim.events_url(call_id), headers=KEY) as response:
                async for chunk in response.aiter_text():
                    first = since_serving(sim) if first is None else first
                    chunks.append(chunk)
    return response.status_code, events("".join(chunks)), first or 0.0


async def listing(sim: Simulator, client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    return await client.get(sim.listing_url, params=params, headers=KEY)


async def statuses(sim: Simulator, client: httpx.AsyncClient, **params: Any) -> dict[str, str]:
    response = await listing(sim, client, limit=500, **params)
    assert response.status_code == 200, response.text
    return {log["callId"]: log["status"] for log in response.json()["data"]["logs"]}


def expected_signature(body: bytes, encoding: str = "hex", secret: str = SECRET) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "hex": digest.hex(),
        "base64": base64.b64encode(digest).decode(),
        "sha256=hex": "sha256=" + digest.hex(),
    }[encoding]


# -- scripted starts --------------------------------------------------------------------------------------------


async def test_a_call_with_start_is_not_found_before_it_streams_from_it_and_is_completed_after_its_end() -> None:
    # starts at 0.3 s, events at 0.5, 0.6, 0.7 s (it ends with the last): the 0.2 s before the first event are the
    # subscriber's slack on a loaded machine, where a late subscriber would rightly miss an event already due
    script = make_script(call("CALL-S", 2.0, 3.0, 4.0, start=3.0), speed=10)
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        early = await client.get(sim.events_url("CALL-S"), headers=KEY)
        assert sim.call_start("CALL-S") == pytest.approx(0.3)
        assert sim.call_end("CALL-S") == pytest.approx(0.7)
        await at_offset(sim, 0.3)
        status, sent, first = await subscribe(sim, "CALL-S")
        finished = since_serving(sim)
        late = await client.get(sim.events_url("CALL-S"), headers=KEY)
    assert (early.status_code, early.json()) == (404, {"status": False, "errors": ["Call not found"]})
    assert status == 200
    assert [e["event_type"] for e in sent] == ["sse_init", "step", "step", "step", "sse_close"]
    assert 0.3 <= first < 0.5 and 0.7 <= finished < 1.0  # on the call's own clock, divided by speed
    assert (late.status_code, late.json()) == (400, {"status": False, "errors": ["Only active calls can be subscribed to"]})
    assert sim.statuses == [("CALL-S", 404), ("CALL-S", 200), ("CALL-S", 400)]
    (subscribed,) = sim.subscriptions["CALL-S"]  # only the 200 counts as a subscription
    assert 0.3 <= subscribed < 0.5


async def test_a_late_subscriber_gets_sse_init_and_only_events_not_yet_due_unless_late_join_is_replay() -> None:
    script = make_script(
        call("CALL-LIVE", 0.0, 0.1, 0.5, start=0),
        call("CALL-REPLAY", 0.0, 0.1, 0.5, start=0, late_join="replay"),
    )
    got: dict[str, tuple[int, list[dict[str, Any]], float]] = {}

    async def read(call_id: str) -> None:
        got[call_id] = await subscribe(sim, call_id)

    async with running_simulator(script) as sim:
        await at_offset(sim, 0.25)  # two events are past, one is to come
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "CALL-LIVE")
            nursery.start_soon(read, "CALL-REPLAY")
    live, replay = got["CALL-LIVE"][1], got["CALL-REPLAY"][1]
    assert [e.get("n") for e in live] == [None, 2, None]  # sse_init, the one event still to come, sse_close
    assert live[1]["event_id"].startswith("CALL-LIVE_2_")  # numbered by its place in the script, as ever
    assert [e.get("n") for e in replay] == [None, 0, 1, 2, None]
    assert live[-1]["event_type"] == replay[-1]["event_type"] == "sse_close"


async def test_a_late_live_subscriber_still_gets_the_calls_call_start_with_its_own_time() -> None:
    """A runner learns of a call from its pre-conversation webhook or the listing, a moment after it began: the
    call_start must still reach it (its on_call_start hook), but nothing else already said."""
    start = {"at": 0.0, "event_type": "call_start", "telephony_id": "TEL-1", "agent_id": "agent-s"}
    script = make_script({
        "id": "CALL-S", "start": 0.0,
        "events": [start, {"at": 0.05, "event_type": "step", "n": 1}, {"at": 0.5, "event_type": "step", "n": 2}],
    })  # fmt: skip
    async with running_simulator(script) as sim:
        await at_offset(sim, 0.25)
        status, got, _ = await subscribe(sim, "CALL-S")
        started_wall = sim.app.calls.serving_wall
    assert status == 200
    assert [(e["event_type"], e.get("n")) for e in got] == [
        ("sse_init", None), ("call_start", None), ("step", 2), ("sse_close", None),
    ]  # fmt: skip
    said_at = datetime.fromisoformat(got[1]["timestamp"].replace("Z", "+00:00")).timestamp()
    assert said_at == pytest.approx(started_wall, abs=0.002)  # when the call started, not when it was sent
    assert got[1]["telephony_id"] == "TEL-1"


async def test_calls_without_start_keep_their_clock_at_the_first_subscription_and_subscriptions_are_recorded() -> None:
    script = make_script(call("CALL-L", 0.0, 0.1, fail_first=1), call("CALL-IDLE", 0.0))
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        failed = await client.get(sim.events_url("CALL-L"), headers=KEY)
        assert sim.call_start("CALL-L") is None and sim.call_end("CALL-L") is None
        await at_offset(sim, 0.2)
        first = await subscribe(sim, "CALL-L")
        again = await client.get(sim.events_url("CALL-L"), headers=KEY)  # over: 0.1 s after its first subscription
    assert failed.status_code == 503 and first[0] == 200 and again.status_code == 400
    (subscribed,) = sim.subscriptions["CALL-L"]
    assert sim.call_start("CALL-L") == pytest.approx(subscribed) and 0.2 <= subscribed < 0.3
    assert sim.call_end("CALL-L") == pytest.approx(subscribed + 0.1)
    assert sim.subscriptions["CALL-IDLE"] == [] and sim.call_start("CALL-IDLE") is None


# -- the conversation listing -----------------------------------------------------------------------------------


async def test_the_listing_shows_calls_in_progress_once_started_and_completed_after_their_end() -> None:
    script = make_script(
        call("CALL-LAZY", 0.0, 0.1),  # no start: in progress from serving start until its subscribed run ends
        call("CALL-SOON", 0.0, 1.0, start=0.3),  # in progress from 0.3 s to 1.3 s: wide of the reads below
        call("CALL-LATER", 0.0, start=60),
        call("CALL-OLD", 0.0, status="completed"),
    )
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        at_first = await statuses(sim, client)
        await at_offset(sim, 0.35)
        started = await statuses(sim, client)
        assert (await subscribe(sim, "CALL-LAZY"))[0] == 200
        lazy_done = await statuses(sim, client)
        await at_offset(sim, 1.35)
        all_done = await statuses(sim, client)
        in_progress = await statuses(sim, client, statusFilter="in_progress,active")
        completed = await statuses(sim, client, statusFilter="completed")
        unknown = await statuses(sim, client, statusFilter="ringing")
        full = (await listing(sim, client, statusFilter="completed")).json()
        wall_start = sim.app.calls.serving_wall
    assert at_first == {"CALL-LAZY": "in_progress", "CALL-OLD": "completed"}
    assert started == {"CALL-LAZY": "in_progress", "CALL-SOON": "in_progress", "CALL-OLD": "completed"}
    assert lazy_done == {"CALL-LAZY": "completed", "CALL-SOON": "in_progress", "CALL-OLD": "completed"}
    assert all_done == {"CALL-LAZY": "completed", "CALL-SOON": "completed", "CALL-OLD": "completed"}
    assert in_progress == {} and unknown == {} and set(completed) == {"CALL-LAZY", "CALL-SOON", "CALL-OLD"}
    assert full["status"] is True
    soon = next(log for log in full["data"]["logs"] if log["callId"] == "CALL-SOON")
    assert set(soon) == {
        "_id", "callId", "status", "duration", "from", "to", "type", "agentId", "recordingUrl", "createdAt"
    }  # fmt: skip: the SDK's ListCallsResponseDataLogsItem names (test_simulator_vendor_models validates them)
    assert (soon["duration"], soon["recordingUrl"]) == (1.0, "https://recordings.simulator.invalid/CALL-SOON.wav")
    assert ISO_Z.match(soon["createdAt"])
    moment = datetime.fromisoformat(soon["createdAt"].replace("Z", "+00:00")).timestamp()
    assert moment == pytest.approx(wall_start + 0.3, abs=0.002)  # when it started, not when it was listed


async def test_the_listing_pages_through_calls_in_start_order() -> None:
    starts = [0.06, 0.0, 0.03, 0.0, 0.05, 0.01, 0.02]
    script = make_script(*(call(f"CALL-{n}", 0.0, 5.0, start=start) for n, start in enumerate(starts)))
    expected = [f"CALL-{n}" for n in sorted(range(7), key=lambda n: starts[n])]  # ties in script order
    assert expected[:2] == ["CALL-1", "CALL-3"]
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        await at_offset(sim, 0.1)
        pages = [(await listing(sim, client, statusFilter="in_progress", limit=3, page=page)).json() for page in (1, 2, 3, 4)]
        default = (await listing(sim, client)).json()["data"]["pagination"]
    assert [[log["callId"] for log in page["data"]["logs"]] for page in pages] == [
        expected[0:3], expected[3:6], expected[6:], []
    ]  # fmt: skip
    assert [page["data"]["pagination"] for page in pages] == [
        {"total": 7, "page": page, "limit": 3, "totalPages": 3, "hasMore": page < 3} for page in (1, 2, 3, 4)
    ]
    assert default == {"total": 7, "page": 1, "limit": 10, "totalPages": 1, "hasMore": False}


async def test_the_listing_filters_by_agent_and_campaign_ids() -> None:
    script = make_script(
        call("CALL-A", 0.0, agent_id="agent-a", campaign_id="camp-1", conversation_type="outbound",
             from_phone="+15550100", to_phone="+15550199"),
        call("CALL-B", 0.0, agent_id="agent-b", campaign_id="camp-1"),
        call("CALL-C", 0.0, agent_id="agent-b"),
        {"id": "CALL-D", "events": [{"at": 0, "event_type": "call_start", "agent_id": "agent-d", "direction": "web"}]},
        call("CALL-E", 0.0),
    )  # fmt: skip

    async with running_simulator(script) as sim, httpx.AsyncClient() as client:

        async def ids(**params: Any) -> list[str]:
            return list(await statuses(sim, client, **params))

        by_agent = await ids(agentIds="agent-b")
        by_agents = await ids(agentIds="agent-a, agent-d")
        by_campaign = await ids(campaignIds="camp-1")
        both = await ids(agentIds="agent-b", campaignIds="camp-1")
        empty_filter = await ids(agentIds="")
        defaults = await ids(agentIds="sim-agent")
        logs = (await listing(sim, client, agentIds="agent-a,agent-d")).json()["data"]["logs"]
    assert by_agent == ["CALL-B", "CALL-C"]
    assert by_agents == ["CALL-A", "CALL-D"]
    assert by_campaign == ["CALL-A", "CALL-B"]
    assert both == ["CALL-B"]
    assert empty_filter == ["CALL-A", "CALL-B", "CALL-C", "CALL-D", "CALL-E"]
    assert defaults == ["CALL-E"]  # no agent_id and no call_start event saying one
    a, d = ({key: value for key, value in log.items() if key not in ("createdAt", "_id")} for log in logs)
    assert a == {
        "callId": "CALL-A", "status": "in_progress", "duration": None, "agentId": "agent-a",
        "type": "telephony_outbound", "from": "+15550100", "to": "+15550199", "recordingUrl": None,
    }  # fmt: skip
    assert (d["agentId"], d["type"]) == ("agent-d", "webcall")  # from call_start
    assert d["from"].startswith("+1415555") and d["to"] == "+18005550100"  # made up, E.164


async def test_the_listing_rejects_a_bad_limit_or_page_caps_the_limit_and_needs_the_key() -> None:
    async with running_simulator(make_script(call("CALL-1", 0.0))) as sim, httpx.AsyncClient() as client:
        bad = [await listing(sim, client, **params) for params in ({"limit": 0}, {"limit": "ten"}, {"page": 0}, {"page": "-1"})]
        capped = await listing(sim, client, limit=1000)
        anonymous = await client.get(sim.listing_url)
        wrong_key = await client.get(sim.listing_url, headers={"Authorization": "Bearer nope"})
        posted = await client.post(sim.listing_url, headers=KEY)
        requests, errors = sim.listing_requests, sim.listing_errors
    for answer in bad:
        assert answer.status_code == 400 and answer.json()["status"] is False
    assert bad[1].json() == {"status": False, "errors": ["limit must be a whole number of at least 1, got 'ten'"]}
    assert bad[2].json()["errors"][0].startswith("page must be a whole number of at least 1")
    assert capped.status_code == 200 and capped.json()["data"]["pagination"]["limit"] == 500
    for answer in (anonymous, wrong_key):
        assert (answer.status_code, answer.json()) == (401, {"status": False, "errors": ["Unauthorized: invalid API key"]})
    assert posted.status_code == 404
    assert (requests, errors) == (7, 6)  # the POST is not a listing request
    assert [request.status for request in sim.listing_log] == [400, 400, 400, 400, 200, 401, 401]


async def test_listing_faults_answer_errors_in_their_windows_divided_by_speed() -> None:
    script = make_script(
        call("CALL-1", 0.0),
        speed=5,  # windows: [0, 0.4) 503, [0.4, 0.8) 429, [1.0, 1.2) 502
        listing_faults=[
            {"from": 0, "until": 2, "status": 503},
            {"from": 2, "until": 4, "status": 429, "retry_after": 2},
            {"from": 5, "until": 6, "status": 502, "retry_after": 0.5},
        ],
    )
    moments = (0.2, 0.6, 0.9, 1.1, 1.4)  # the middle of each window: a slow first connect still lands in it
    async with running_simulator(script) as sim, httpx.AsyncClient() as client:
        answers = []
        for moment in moments:
            await at_offset(sim, moment)
            answers.append(await listing(sim, client, statusFilter="in_progress"))
    unavailable, limited, fine, bad_gateway, fine_again = answers
    assert (unavailable.status_code, unavailable.json()) == (503, {"status": False, "errors": ["Service Unavailable (simulated)"]})
    assert "retry-after" not in unavailable.headers
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert limited.json() == {"status": False, "error": "Too many requests (simulated)", "code": 429, "retry_after": 2}
    assert bad_gateway.status_code == 502 and bad_gateway.headers["retry-after"] == "0.5"
    assert fine.status_code == fine_again.status_code == 200
    assert fine.json()["data"]["logs"][0]["callId"] == "CALL-1"
    assert (sim.listing_requests, sim.listing_errors) == (5, 3)
    log = sim.listing_log
    assert [request.status for request in log] == [503, 429, 200, 502, 200]
    windows = ((0.0, 0.4), (0.4, 0.8), (0.8, 1.0), (1.0, 1.2), (1.2, 2.0))
    for request, (start, end) in zip(log, windows, strict=True):
        assert start <= request.at < end  # the simulator's own clock put it in the window its status belongs to


async def test_a_stall_fault_holds_the_listing_until_its_window_ends() -> None:
    script = make_script(
        call("CALL-1", 0.0),
        listing_faults=[{"from": 0, "until": 0.4, "stall": True}, {"from": 0.5, "until": 0.8, "stall": True, "status": 504}],
    )
    async with running_simulator(script) as sim:
        async with httpx.AsyncClient(timeout=0.15) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await listing(sim, impatient)
        async with httpx.AsyncClient(timeout=None) as patient:
            held = await listing(sim, patient)
            answered = since_serving(sim)
            await at_offset(sim, 0.55)
            held_error = await listing(sim, patient)
            error_answered = since_serving(sim)
            after = await listing(sim, patient)
    assert held.status_code == 200 and held.json()["data"]["pagination"]["total"] == 1  # then answered normally
    assert 0.4 <= answered < 0.52
    assert held_error.status_code == 504 and 0.8 <= error_answered < 0.95
    assert after.status_code == 200
    assert [(request.status, request.stalled) for request in sim.listing_log] == [
        (200, True), (200, True), (504, True), (200, False)
    ]  # fmt: skip
    assert (sim.listing_requests, sim.listing_errors) == (4, 3)  # a stall counts as an error: pollers time out


# -- signed webhooks --------------------------------------------------------------------------------------------


async def test_a_started_call_pushes_a_signed_pre_conversation_then_a_post_conversation_with_its_transcript() -> None:
    events_ = [
        {"at": 0.0, "event_type": "tts_completed", "tts_text": "Hi, how can I help?"},
        {"at": 0.05, "event_type": "user_interim_transcription", "interim_transcription_text": "my"},
        {"at": 0.1, "event_type": "user_transcription", "user_transcription_text": "My order is late."},
        {"at": 0.2, "event_type": "tts_completed", "tts_text": "Let me check."},
    ]
    call_table = {
        "id": "CALL-P", "start": 0.2, "events": events_, "agent_id": "agent-x", "campaign_id": "camp-9",
        "conversation_type": "outbound", "from_phone": "+15550100", "to_phone": "+15550199",
    }  # fmt: skip
    async with running_receiver() as receiver:
        script = make_script(call_table, push_url=receiver.url("/atoms"), push_secret=SECRET)
        async with running_simulator(script) as sim:
            pre, post = await receiver.wait_for(2, path="/atoms")
            results = await sim.wait_for_pushes(2)
            started, ended = sim.started_at, sim.started_at + 0.4
    assert pre.arrived - started >= 0.2 and post.arrived >= ended
    for request in (pre, post):
        assert request.method == "POST" and request.headers["content-type"] == "application/json"
        assert request.headers["x-signature"] == expected_signature(request.body)
    metadata = {
        "callId": "CALL-P", "agentId": "agent-x", "eventType": "pre-conversation",
        "conversationType": "telephonyOutbound", "fromPhone": "+15550100", "toPhone": "+15550199",
    }  # fmt: skip: the SDK's WebhookEventPreConversationMetadata (test_simulator_vendor_models validates it)
    body = pre.json()
    assert set(body) == {"id", "event", "url", "description", "metadata"}
    assert (body["event"], body["url"], body["metadata"]) == ("agent-x.pre-conversation", receiver.url("/atoms"), metadata)
    assert isinstance(body["description"], str) and body["description"]
    after = post.json()
    assert after["event"] == "agent-x.post-conversation"
    turns = after["metadata"].pop("transcript")
    assert [(turn["role"], turn["content"]) for turn in turns] == [
        ("agent", "Hi, how can I help?"), ("user", "My order is late."), ("agent", "Let me check."),
    ]  # fmt: skip
    stamps = [datetime.fromisoformat(turn["timestamp"].replace("Z", "+00:00")).timestamp() for turn in turns]
    call_wall = sim.app.calls.serving_wall + 0.2
    assert stamps == pytest.approx([call_wall, call_wall + 0.1, call_wall + 0.2], abs=0.002)  # when each was said
    call_data = after["metadata"].pop("callData")
    assert {key: call_data[key] for key in ("fromNumber", "toNumber", "callDuration", "callStatus", "callDirection")} == {
        "fromNumber": "+15550100", "toNumber": "+15550199", "callDuration": 0.2, "callStatus": "completed",
        "callDirection": "telephony_outbound",
    }  # fmt: skip
    assert after["metadata"] == {
        "callId": "CALL-P", "agentId": "agent-x", "eventType": "post-conversation",
        "conversationType": "telephonyOutbound", "recordingUrl": "https://recordings.simulator.invalid/CALL-P.wav",
        "variables": {"agent_name": "agent-x", "current_date": after["metadata"]["variables"]["current_date"],
                      "default_language": "en"},
    }  # fmt: skip
    assert body["id"] != after["id"]
    assert results == [
        (body["id"], "agent-x.pre-conversation", "CALL-P", 200, None, "first"),
        (after["id"], "agent-x.post-conversation", "CALL-P", 200, None, "first"),
    ]


@pytest.mark.parametrize("encoding", ["hex", "base64", "sha256=hex"])
async def test_the_signature_encoding_is_chosen_by_push_signature(encoding: str) -> None:
    async with running_receiver() as receiver:
        script = make_script(call("CALL-1", 0.0), push_url=receiver.url(), push_secret=SECRET, push_signature=encoding)
        async with running_simulator(script) as sim:
            (request,) = await receiver.wait_for(1)
            (result,) = await sim.wait_for_pushes(1)
        async with running_simulator(make_script(call("CALL-2", 0.0)), push_url=receiver.url(),
                                     push_secret="other", push_signature=encoding):  # fmt: skip
            second = (await receiver.wait_for(2))[1]
    assert request.headers["x-signature"] == expected_signature(request.body, encoding)
    assert second.headers["x-signature"] == expected_signature(second.body, encoding, secret="other")
    assert result.status == 200


async def test_a_call_without_start_pushes_pre_conversation_at_serving_start_and_post_only_after_its_run() -> None:
    async with running_receiver() as receiver:
        script = make_script(call("CALL-LAZY", 0.0, 0.1), call("CALL-OLD", 0.0, status="completed"))
        async with running_simulator(script, push_url=receiver.url(), push_secret=SECRET) as sim:
            (pre,) = await receiver.wait_for(1)
            await trio.sleep(0.3)
            before_subscribing = len(receiver.requests)
            await subscribe(sim, "CALL-LAZY")
            post = (await receiver.wait_for(2))[1]
            await trio.sleep(0.1)
    assert pre.arrived - sim.started_at < 0.2
    assert pre.json()["metadata"]["callId"] == "CALL-LAZY" and pre.json()["event"] == "sim-agent.pre-conversation"
    assert before_subscribing == 1  # no post-conversation for a call nobody started
    assert post.json()["event"] == "sim-agent.post-conversation" and post.json()["metadata"]["transcript"] == []
    assert post.arrived - sim.started_at >= sim.call_end("CALL-LAZY")
    assert len(receiver.requests) == 2  # nothing for the call that was completed before the simulator started


async def test_push_again_replays_the_same_bytes_and_a_wrong_signature_can_be_sent_on_purpose() -> None:
    def verify(request: ReceivedRequest) -> Reply:
        good = hmac.compare_digest(request.headers.get("x-signature", ""), expected_signature(request.body))
        return Reply(204 if good else 401)

    async with running_receiver() as receiver:
        receiver.respond("/hook", verify)
        script = make_script(call("CALL-1", 0.0, 60.0, start=0), push_url=receiver.url(), push_secret=SECRET)
        async with running_simulator(script) as sim:
            (first,) = await receiver.wait_for(1)
            (result,) = await sim.wait_for_pushes(1)
            delivery_id = first.json()["id"]
            assert sim.deliveries[delivery_id].body == first.body
            replayed = await sim.push_again(delivery_id)
            forged = await sim.push_again(delivery_id, wrong_signature=True)
            _, again, bad = await receiver.wait_for(3)
            with pytest.raises(KeyError):
                await sim.push_again("dlv_unknown")
    assert result.status == 204
    assert again.body == first.body and again.headers["x-signature"] == first.headers["x-signature"]
    assert bad.body == first.body and bad.headers["x-signature"] != first.headers["x-signature"]
    assert re.fullmatch(r"[0-9a-f]{64}", bad.headers["x-signature"])  # the same encoding, another key
    assert (replayed.delivery_id, replayed.status, replayed.how) == (delivery_id, 204, "again")
    assert (forged.delivery_id, forged.status, forged.how) == (delivery_id, 401, "wrong-signature")
    assert [push.how for push in sim.pushes] == ["first", "again", "wrong-signature"]


async def test_failed_slow_and_refused_deliveries_are_recorded_once_and_never_retried() -> None:
    script = make_script(call("CALL-1", 0.0, 0.05, start=0))
    async with running_receiver() as receiver:
        receiver.script("/hook", [Reply(500), Reply(200, delay=1.0)])
        async with running_simulator(script, push_url=receiver.url(), push_secret=SECRET, push_timeout=0.2) as sim:
            failed, slow = await sim.wait_for_pushes(2)
            await trio.sleep(0.3)
            received = len(receiver.requests)
    assert (failed.status, failed.error) == (500, None)
    assert (slow.status, slow.error) == (None, "no answer within 0.2 s")
    assert received == 2  # one request per delivery: no retries
    with refusing_port() as refused:
        async with running_simulator(make_script(call("CALL-1", 0.0)), push_url=refused.url()) as sim:
            (result,) = await sim.wait_for_pushes(1)
    assert result.status is None and result.error.startswith("ConnectError")


async def test_without_a_secret_deliveries_carry_no_signature() -> None:
    async with running_receiver() as receiver:
        async with running_simulator(make_script(call("CALL-1", 0.0)), push_url=receiver.url()) as sim:
            (request,) = await receiver.wait_for(1)
            (result,) = await sim.wait_for_pushes(1)
    assert "x-signature" not in request.headers and result.status == 200


def test_simulator_arguments_for_pushes_are_checked() -> None:
    script = make_script(call("CALL-1", 0.0))
    with pytest.raises(ValueError, match="signature encoding must be one of hex, base64, sha256=hex, got 'md5'"):
        Simulator(script, push_url="http://127.0.0.1:9/", push_signature="md5")
    with pytest.raises(ValueError, match="push URL must start with http:// or https://"):
        Simulator(script, push_url="127.0.0.1:9")
    with pytest.raises(ValueError, match="push_timeout must be above 0"):
        Simulator(script, push_timeout=0)


# -- the command line -------------------------------------------------------------------------------------------


async def test_simulate_pushes_signed_webhooks_with_the_secret_from_the_named_variable(tmp_path: Path) -> None:
    async with running_receiver() as receiver:
        env = {"SIM_PUSH_SECRET": SECRET}
        process = hookrunner_process(
            "simulate", "--port", "0", "--push-url", receiver.url(), "--push-secret-env", "SIM_PUSH_SECRET",
            "--push-signature", "base64", env=env, cwd=tmp_path,
        )  # fmt: skip
        try:
            line = await trio.to_thread.run_sync(process.stdout.readline)
            requests = await receiver.wait_for(3, timeout=10)
        finally:
            process.send_signal(signal.SIGINT)
            code = await trio.to_thread.run_sync(process.wait, 10)
            err = process.stderr.read()
    assert re.fullmatch(rf"simulator listening on http://127\.0\.0\.1:\d+ \(3 calls: .+\), webhooks to {re.escape(receiver.url())}; another call: POST \S+\n", line)
    assert code == 0 and err == ""
    assert sorted(request.json()["event"] for request in requests) == [
        "agent-copperleaf-rx.pre-conversation", "agent-lumen-care.pre-conversation",
        "agent-tidewater-billing.pre-conversation",
    ]  # fmt: skip
    for request in requests:
        assert request.headers["x-signature"] == expected_signature(request.body, "base64")
    assert SECRET not in " ".join(process.args)


def test_simulate_refuses_an_unset_push_secret_variable(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.pop("SIM_NO_SUCH_SECRET", None)
    assert run_simulator_cli(0, None, "k", 1.0, push_url="http://127.0.0.1:9/", push_secret_env="SIM_NO_SUCH_SECRET") == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "simulator: --push-secret-env: SIM_NO_SUCH_SECRET is not set or empty\n"


# -- script validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[calls]]\nid="A"\nstart=-1\n', "calls.toml: calls[0].start: expected a number of seconds >= 0, got -1"),
        ('[[calls]]\nid="A"\nstart="soon"\n', 'calls.toml: calls[0].start: expected a number of seconds, got "soon"'),
        ('[[calls]]\nid="A"\nstatus="completed"\nstart=1\n', "calls.toml: calls[0].start: cannot be combined with status"),
        ('[[calls]]\nid="A"\nlate_join="live"\n', "calls.toml: calls[0].late_join: only with start"),
        ('[[calls]]\nid="A"\nstart=0\nlate_join="later"\n', "calls.toml: calls[0].late_join: expected one of 'live', 'replay'"),
        ('[[calls]]\nid="A"\nstart=0\nstart_every=1\n', "calls.toml: calls[0].start_every: only with repeat and start"),
        ('[[calls]]\nid="A{n}"\nrepeat=2\nstart_every=1\n', "calls.toml: calls[0].start_every: only with repeat and start"),
        ('[[calls]]\nid="A"\nagent_id=""\n', 'calls.toml: calls[0].agent_id: expected a non-empty string, got ""'),
        ('[[calls]]\nid="A"\ncampaign_id=7\n', "calls.toml: calls[0].campaign_id: expected a non-empty string, got 7"),
        ('[[calls]]\nid="A"\nfrom_phone=5550100\n', "calls.toml: calls[0].from_phone: expected a string, got 5550100"),
        ('[[calls]]\nid="A"\nagent_idd="x"\n', "calls.toml: calls[0].agent_idd: unknown key (did you mean 'agent_id'?)"),
        ('listing_faults = 3\n', "calls.toml: listing_faults: expected an array of tables ([[listing_faults]]), got 3"),
        ('[[listing_faults]]\nstatus=503\n', "calls.toml: listing_faults[0].until: required"),
        ('[[listing_faults]]\nfrom=1\nuntil=0.5\nstatus=503\n', "calls.toml: listing_faults[0].until: expected a time after from (1), got 0.5"),
        ('[[listing_faults]]\nuntil=1\n', "calls.toml: listing_faults[0].status: required unless stall = true"),
        ('[[listing_faults]]\nuntil=1\nstatus=200\n', "calls.toml: listing_faults[0].status: expected an HTTP error status (400-599), got 200"),
        ('[[listing_faults]]\nuntil=1\nstall="yes"\n', 'calls.toml: listing_faults[0].stall: expected true or false, got "yes"'),
        ('[[listing_faults]]\nuntil=1\nstall=true\nretry_after=1\n', "calls.toml: listing_faults[0].retry_after: only with status"),
        ('[[listing_faults]]\nuntil=1\nstatus=429\nretry_after=-2\n', "calls.toml: listing_faults[0].retry_after: expected a number of seconds >= 0"),
        ('[[listing_faults]]\nuntill=1\n', "calls.toml: listing_faults[0].untill: unknown key (did you mean 'until'?)"),
        ('push_urll = "http://x"\n', "calls.toml: push_urll: unknown key (did you mean 'push_url'?)"),
        ('push_url = "ftp://x"\n', 'calls.toml: push_url: expected an http:// or https:// URL, got "ftp://x"'),
        ('push_secret = 5\n', "calls.toml: push_secret: expected a string, got 5"),
        ('push_signature = "hmac"\n', "calls.toml: push_signature: expected one of 'hex', 'base64', 'sha256=hex', got \"hmac\""),
    ],
)
def test_new_script_keys_are_checked_with_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    assert_one_line_script_error(tmp_path, text, message)


def test_repeated_calls_with_start_every_start_one_after_another(tmp_path: Path) -> None:
    path = tmp_path / "calls.toml"
    path.write_text(
        'push_url = "http://127.0.0.1:9/hook"\npush_secret = "s"\npush_signature = "sha256=hex"\n'
        '[[calls]]\nid = "CALL-{n}"\nrepeat = 3\nstart = 1.5\nstart_every = 0.5\nlate_join = "replay"\n'
        'conversation_type = "outbound"\n'
        '[[listing_faults]]\nfrom = 1\nuntil = 2\nstatus = 429\nretry_after = 3\n'
        '[[listing_faults]]\nuntil = 0.5\nstall = true\n'
    )
    script = load_script(path)
    assert [(c.id, c.start, c.late_join, c.conversation_type) for c in script.calls] == [
        ("CALL-0", 1.5, "replay", "outbound"), ("CALL-1", 2.0, "replay", "outbound"),
        ("CALL-2", 2.5, "replay", "outbound"),
    ]  # fmt: skip
    assert [(f.start, f.until, f.status, f.retry_after, f.stall) for f in script.listing_faults] == [
        (1.0, 2.0, 429, 3.0, False), (0.0, 0.5, None, None, True)
    ]  # fmt: skip
    assert (script.push_url, script.push_secret, script.push_signature) == ("http://127.0.0.1:9/hook", "s", "sha256=hex")
