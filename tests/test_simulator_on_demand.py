"""Calls started on demand (``POST /simulator/calls``) and by ``--loop``: a dev loop against a running service needs a
new call each time, with no restart of the simulator or the runner."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from helpers import Recorder, build_runner, call_events, hookrunner_process, script
from hookrunner._simulator import on_demand, running_simulator
from service_helpers import SECRET, service_config

from hookrunner.testing import TEST_API_KEY

KEY = {"Authorization": f"Bearer {TEST_API_KEY}"}
pytestmark = pytest.mark.usefixtures("service_secrets")  # conftest.py: the service config's secrets


def template(call_id: str, start: float | None = 600.0, n: int = 3, spacing: float = 0.3) -> dict[str, Any]:
    """A call that starts on its own only long after any test ends: just a template for copies."""
    events = [{"at": 0.0, "event_type": "call_start", "telephony_id": f"TEL-{call_id}", "agent_id": "agent-t"}]
    events += [{**event, "at": event["at"] + spacing} for event in call_events(n, spacing)]  # none due at the start
    return {"id": call_id, "events": events, **({"start": start} if start is not None else {})}


async def read(sim: Any, call_id: str) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", sim.events_url(call_id), headers=KEY) as response:
                assert response.status_code == 200
                text = "".join([chunk async for chunk in response.aiter_text()])
    return [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: ")]


async def test_a_post_starts_a_fresh_copy_of_a_script_call_now_listed_streamed_and_then_completed() -> None:
    async with running_simulator(script([template("CALL-T1"), template("CALL-T2")])) as sim, httpx.AsyncClient() as client:
        first = await client.post(sim.on_demand_url, headers=KEY)
        new_id = first.json()["data"]["callId"]
        got: list[list[dict[str, Any]]] = []
        async with trio.open_nursery() as nursery:  # subscribed at once: a live join after 0.3 s would skip events

            async def subscribe() -> None:
                got.append(await read(sim, new_id))

            nursery.start_soon(subscribe)
            second = await client.post(sim.on_demand_url, headers=KEY, json={})
            chosen = await client.post(sim.on_demand_url, headers=KEY, json={"like": "CALL-T1", "id": "CALL-MINE"})
            listed = (await client.get(sim.listing_url, params={"statusFilter": "in_progress"}, headers=KEY)).json()
        [streamed] = got
        again = await client.get(sim.events_url(new_id), headers=KEY)
        completed = (await client.get(sim.listing_url, params={"statusFilter": "completed"}, headers=KEY)).json()
    assert first.status_code == 201 and re.fullmatch(r"CALL-\d{13}-[0-9a-f]{6}", new_id)
    assert first.json()["data"]["eventsUrl"] == f"{sim.base_url}/events?callId={new_id}"
    assert [answer.json()["data"]["like"] for answer in (first, second, chosen)] == ["CALL-T1", "CALL-T2", "CALL-T1"]
    assert chosen.json()["data"]["callId"] == "CALL-MINE"
    assert {log["callId"] for log in listed["data"]["logs"]} == {new_id, second.json()["data"]["callId"], "CALL-MINE"}
    types = [event["event_type"] for event in streamed]
    assert types == ["sse_init", "call_start", "tts_completed", "user_transcription", "tts_completed", "sse_close"]
    assert {event["call_id"] for event in streamed} == {new_id}  # the copy's own id everywhere
    assert all(event["event_id"].startswith(f"{new_id}_") for event in streamed[1:])
    assert again.status_code == 400  # served once, as Atoms serves a call
    assert new_id in {log["callId"] for log in completed["data"]["logs"]}
    assert sim.started_on_demand == [(new_id, "CALL-T1"), (second.json()["data"]["callId"], "CALL-T2"), ("CALL-MINE", "CALL-T1")]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 400, "body: not JSON"),
        (b"[1]", 400, "expected a JSON object"),
        (b'{"like": "CALL-NOPE"}', 400, "like: no such call in the script: 'CALL-NOPE' (calls: CALL-T1)"),
        (b'{"like": 7}', 400, "like: expected a string"),
        (b'{"colour": "red"}', 400, "unknown keys ['colour']"),
        (b'{"id": "CALL-T1"}', 409, "id: CALL-T1 exists already"),
        (b'{"id": "no spaces allowed"}', 400, "id: expected a call id"),
        (b'{"like": "' + b"x" * on_demand.MAX_BODY + b'"}', 413, f"at most {on_demand.MAX_BODY} bytes"),
    ],
)
async def test_a_bad_request_gets_one_error_naming_what_is_wrong_and_starts_nothing(body: bytes, status: int, words: str) -> None:
    async with running_simulator(script([template("CALL-T1")])) as sim, httpx.AsyncClient() as client:
        answer = await client.post(sim.on_demand_url, headers=KEY, content=body)
        anonymous = await client.post(sim.on_demand_url)
    assert answer.status_code == status
    [error] = answer.json()["errors"]
    assert words in error and answer.json()["status"] is False
    assert anonymous.status_code == 401
    assert sim.started_on_demand == [] and set(sim.subscriptions) == {"CALL-T1"}


async def test_a_running_service_follows_each_call_started_on_demand_from_its_push_and_sees_its_call_start() -> None:
    """The dev loop: a service (server and Atoms webhook) and the simulator stay up; each POST is a new call that
    the pre-conversation push makes the runner follow, call_start included although it joins a moment late."""
    seen = Recorder()
    placeholder = "http://127.0.0.1:9/atoms/webhook"  # replaced once the runner's server listens
    async with running_simulator(
        script([template("CALL-T1")]), push_url=placeholder, push_secret=SECRET, push_signature="sha256=hex"
    ) as sim, trio.open_nursery() as nursery, httpx.AsyncClient() as client:
        runner = build_runner(service_config(sim.base_url), [], seen)
        nursery.start_soon(runner.run)
        with trio.fail_after(5):
            while runner.server_url is None:
                await trio.sleep(0.01)
        sim.pusher.url = f"{runner.server_url}/atoms/webhook"
        ids = []
        for _ in range(2):
            ids.append((await client.post(sim.on_demand_url, headers=KEY)).json()["data"]["callId"])
            with trio.fail_after(5):
                while ids[-1] not in seen.finished:
                    await trio.sleep(0.02)
        runner.stop()
    assert seen.finished == {call_id: "ended" for call_id in ids}
    for call_id in ids:
        assert [event.event_type for event in seen.events[call_id]][:2] == ["sse_init", "call_start"]
    assert runner.stats.calls_discovered == {"push": 2}


async def test_loop_starts_a_copy_of_each_call_after_it_ends() -> None:
    async with running_simulator(script([template("CALL-L", start=0.0, n=2, spacing=0.05)]), loop=0.1) as sim:
        with trio.fail_after(5):
            while len(sim.started_on_demand) < 2:
                await trio.sleep(0.02)
        (first, like), (second, _) = sim.started_on_demand[:2]
        first_start, second_start = sim.call_start(first), sim.call_start(second)
        original_end = sim.call_end("CALL-L")
    assert like == "CALL-L" and first != second
    assert first_start is not None and second_start is not None and original_end is not None
    assert first_start == pytest.approx(original_end + 0.1, abs=0.05)  # the pause after the end, then the copy
    assert second_start > first_start


async def test_hookrunner_simulate_loop_serves_copies_and_prints_how_to_start_a_call(tmp_path: Path) -> None:
    path = tmp_path / "calls.toml"
    path.write_text('[[calls]]\nid = "CALL-P"\nstart = 0.0\n[[calls.events]]\nat = 0.1\nevent_type = "call_end"\n')
    process = hookrunner_process("simulate", str(path), "--port", "0", "--loop", "0.2")
    try:
        assert process.stdout is not None
        with trio.fail_after(10):
            listening = await trio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True)
        base = re.search(r"listening on (http://\S+)", listening)
        assert base and "each call starts again 0.2 s after it ends" in listening
        assert listening.rstrip().endswith(f"; another call: POST {base[1]}/simulator/calls")
        async with httpx.AsyncClient(headers={"Authorization": "Bearer sim-key"}) as client:  # the CLI's default key
            with trio.fail_after(5):
                while True:  # the loop's copies appear in the listing with ids of their own
                    logs = (await client.get(f"{base[1]}/conversation")).json()["data"]["logs"]
                    if len({log["callId"] for log in logs} - {"CALL-P"}) >= 2:
                        break
                    await trio.sleep(0.05)
            posted = await client.post(f"{base[1]}/simulator/calls", json={"like": "CALL-P"})
        assert posted.status_code == 201
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0 and err == ""
