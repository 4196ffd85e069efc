"""The journal's other half: what was received but not dispatched (events buffered behind a slow plugin, accepted
Atoms webhooks) survives a kill -9 and is dispatched on restart; a graceful stop leaves undelivered messages in
the journal for the next run instead of the dead-letter file.

Real ``hookrunner run`` processes, the simulator and receivers on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import trio

from hookrunner._state.journal import Journal
from hookrunner._simulator import running_simulator
from hookrunner.testing import config_table
from hookrunner.testing.receiver import Reply, running_receiver

from helpers import (
    afinish,
    hookrunner_process,
    kill_9_after_lines,
    script,
    wait_until_call_over,
    write_config,
)
from journal_helpers import SECRET, SECRET_ENV, finals, journal_config

#: Records each event as its hook starts (the moment it reached the plugin), then awaits SLOW seconds over it
#: (a slow request, say), while the stream goes on filling the call's buffer.
SLOW_PLUGIN = """
import os
import trio
from hookrunner import hookimpl

@hookimpl
async def on_event(event, call):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(f"{{event.event_type}} {{event.event_id}}\\n")
    await trio.sleep(float(os.environ.get("SLOW", "0")))

@hookimpl
def on_call_finished(call, reason):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(f"finished {{reason}}\\n")
"""


async def test_events_buffered_behind_a_slow_plugin_at_a_kill_9_reach_it_after_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "seen.txt"
    (tmp_path / "slow.py").write_text(SLOW_PLUGIN.format(out=str(out)), encoding="utf-8")
    events = finals(30) + [{"at": 0.3, "event_type": "call_end"}]
    async with running_simulator(script([{"id": "CALL-SLOW", "events": events}])) as sim:
        table = config_table(sim.base_url, settings={"load": ["slow.py"]})
        table["state"] = {"path": "state.db", "commit_interval": 0.02}
        table["backfill"] = {"enabled": False}  # only the journal can bring back what the first run held
        config = write_config(tmp_path, table)
        first = hookrunner_process("run", str(config), "--call", "CALL-SLOW", env={"SLOW": "0.2"})
        before = await kill_9_after_lines(first, out, 5)  # the stream is over (31 events buffered) long before
        assert len(before) < 20, before  # most of the call was still in the buffer at the kill
        await wait_until_call_over(sim, "CALL-SLOW")  # the call has ended: its stream answers 400 from now on
        # The same config, no --call: the journal holds the call, so the run has work without one.
        code, _, err = await afinish(hookrunner_process("run", str(config)))
    assert code == 0, err
    seen = out.read_text().splitlines()
    dispatched = [line for line in seen if not line.startswith("finished")]
    expected = {f"{line}" for line in dispatched}
    assert len(expected) == 33, err  # sse_init, 30 turns, call_end, sse_close: every event the stream sent
    repeats = len(dispatched) - len(expected)
    # Only the event whose hook was running at the kill, and those dispatched within the last commit interval
    # before it, can reach the plugin twice: the kill comes as the fifth hook starts, the fourth just finished.
    assert repeats <= 2, (repeats, before)
    assert dispatched[: len(before)] == before
    assert seen[-1] == "finished completed"  # the restart found the call over and finished it
    assert "events a previous run received are dispatched first" in err
    assert Journal(tmp_path / "state.db", 0.05).followed_calls() == []  # done with: forgotten


async def test_a_graceful_stop_leaves_undelivered_messages_in_the_journal_and_the_next_run_sends_them(
    tmp_path: Path,
) -> None:
    env = {SECRET_ENV: SECRET}
    async with running_simulator(script([{"id": "CALL-STOP", "events": finals(5)}])) as sim, running_receiver() as hook:
        hook.script("/hook", [], then=Reply(503))
        config = journal_config(sim.base_url, hook.url("/hook"), tmp_path, path="state.db", shutdown_grace=1.0)
        first = hookrunner_process("run", str(config), "--call", "CALL-STOP", env=env)
        await hook.wait_for(2, path="/hook", timeout=10)
        first.send_signal(signal.SIGTERM)  # the receiver still answers 503 when the shutdown grace runs out
        code, _, err = await afinish(first)
        assert code == 0, err
        assert "5 messages not delivered before shutdown stay in the journal" in err
        assert not (tmp_path / "dead.jsonl").exists() or (tmp_path / "dead.jsonl").read_text() == ""

        hook.script("/hook", [], then=Reply(200))
        code, _, err = await afinish(hookrunner_process("run", str(config), env=env))
    assert code == 0, err
    delivered = [request for request in hook.at("/hook") if request.succeeded]
    assert [r.json()["data"]["user_transcription_text"] for r in delivered] == [f"turn {i}" for i in range(5)]


SLOW_DELIVERIES_PLUGIN = """
import os
import trio
from hookrunner import hookimpl

@hookimpl
async def on_platform_webhook(delivery):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(delivery.id + "\\n")
    await trio.sleep(float(os.environ.get("SLOW", "0")))
"""


async def test_accepted_atoms_webhooks_not_yet_dispatched_at_a_kill_9_are_dispatched_by_the_next_run(
    tmp_path: Path,
) -> None:
    secret, token = "atoms-webhook-secret", "service-token"
    env = {"HR_TEST_RESUME_WEBHOOK": secret, "HR_TEST_RESUME_TOKEN": token}
    out = tmp_path / "deliveries.txt"
    (tmp_path / "slow_deliveries.py").write_text(SLOW_DELIVERIES_PLUGIN.format(out=str(out)), encoding="utf-8")
    table = config_table("http://127.0.0.1:9", settings={"load": ["slow_deliveries.py"]})
    table["server"] = {"enabled": True, "port": 0, "token_env": "HR_TEST_RESUME_TOKEN"}
    table["discovery"] = {"webhook_secret_env": "HR_TEST_RESUME_WEBHOOK"}
    table["state"] = {"path": "state.db"}  # the default commit interval: the 200 waits for the commit
    config = write_config(tmp_path, table)

    def signed(n: int) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(
            {"id": f"dlv-{n}", "event": "agent-1.post-conversation", "metadata": {"callId": f"CALL-{n}", "eventType": "post-conversation"}}
        ).encode()
        return body, {"X-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}

    async def start(slow: str) -> tuple[Any, str]:
        process = hookrunner_process("run", str(config), "--log-level", "info", env={**env, "SLOW": slow})
        lines = []
        with trio.fail_after(10):
            while True:  # the server says where it listens
                lines.append(await trio.to_thread.run_sync(process.stderr.readline))
                if "listening on http://" in lines[-1]:
                    return process, lines[-1].split("listening on ", 1)[1].split()[0]
                assert lines[-1], f"the run ended before its server listened: {''.join(lines)}"

    first, url = await start(slow="30")
    async with httpx.AsyncClient(base_url=url) as client:
        for n in range(4):
            body, headers = signed(n)
            assert (await client.post("/atoms/webhook", content=body, headers=headers)).status_code == 200
    os.kill(first.pid, signal.SIGKILL)  # at once after the last 200: each was written down before it was sent
    await afinish(first)
    assert out.read_text().splitlines() == ["dlv-0"]  # the first was being handled; three were waiting

    second, url = await start(slow="0")
    try:
        with trio.fail_after(10):
            while len(out.read_text().splitlines()) < 5:
                await trio.sleep(0.02)
        async with httpx.AsyncClient(base_url=url) as client:
            body, headers = signed(2)
            again = await client.post("/atoms/webhook", content=body, headers=headers)
    finally:
        second.send_signal(signal.SIGTERM)
        await afinish(second)
    # every one, in arrival order; the one whose hook was running at the kill once more
    assert out.read_text().splitlines() == ["dlv-0", "dlv-0", "dlv-1", "dlv-2", "dlv-3"]
    assert again.json() == {"status": True, "duplicate": True}  # the replay protection survived the kill


async def test_a_restart_goes_on_with_a_message_s_retry_schedule_rather_than_sending_it_at_once(tmp_path: Path) -> None:
    env = {SECRET_ENV: SECRET}
    async with running_simulator(script([{"id": "CALL-LATER", "events": finals(1)}])) as sim, running_receiver() as hook:
        hook.script("/hook", [], then=Reply(503, headers={"Retry-After": "3"}))  # "come back in 3 s"
        config = journal_config(sim.base_url, hook.url("/hook"), tmp_path, path="state.db")
        first = hookrunner_process("run", str(config), "--call", "CALL-LATER", env=env)
        try:
            await hook.wait_for(1, path="/hook", timeout=10)
            await trio.sleep(0.3)  # past state.commit_interval: the schedule is written down
        finally:
            os.kill(first.pid, signal.SIGKILL)
            await afinish(first)
        asked = hook.at("/hook")[0].wall
        hook.script("/hook", [], then=Reply(200))
        code, _, err = await afinish(hookrunner_process("run", str(config), env=env))
    assert code == 0, err
    first_attempt, again = hook.at("/hook")[0], hook.at("/hook")[1]
    assert again.headers["webhook-id"] == first_attempt.headers["webhook-id"] and again.succeeded
    assert again.wall - asked >= 2.5  # not before the time the receiver asked for, across the restart


#: Emits a trigger (a subclass of Trigger, as a detector plugin would) on every turn, and takes SLOW seconds in
#: on_trigger, so a kill finds triggers emitted and not yet handed to on_trigger.
TRIGGERS_PLUGIN = """
import os
import trio
from hookrunner import Trigger, hookimpl

class TurnTrigger(Trigger, frozen=True, kw_only=True):
    words: int = 0

APP = []

@hookimpl
def on_startup(app):
    APP.append(app)

@hookimpl
def on_user_transcription(event, call):
    APP[0].emit_trigger(TurnTrigger(type="turn", call_id=call.id, rule="every-turn", event_id=event.event_id, words=len(event.text.split())))

@hookimpl
async def on_trigger(trigger):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(f"{{type(trigger).__name__}} {{trigger.event_id}} {{trigger.words}}\\n")
    await trio.sleep(float(os.environ.get("SLOW", "0")))
"""


async def test_triggers_emitted_and_not_yet_dispatched_at_a_kill_9_reach_on_trigger_after_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "triggers.txt"
    (tmp_path / "turns.py").write_text(TRIGGERS_PLUGIN.format(out=str(out)), encoding="utf-8")
    async with running_simulator(script([{"id": "CALL-TRIG", "events": finals(10)}])) as sim:
        table = config_table(sim.base_url, settings={"load": ["turns.py"]})
        table["state"] = {"path": "state.db", "commit_interval": 0.02}
        table["backfill"] = {"enabled": False}
        config = write_config(tmp_path, table)
        first = hookrunner_process("run", str(config), "--call", "CALL-TRIG", env={"SLOW": "0.3"})
        before = await kill_9_after_lines(first, out, 2)
        await wait_until_call_over(sim, "CALL-TRIG")
        code, _, err = await afinish(hookrunner_process("run", str(config)))
    assert code == 0, err
    seen = [line.split() for line in out.read_text().splitlines()]
    assert len({event_id for _, event_id, _ in seen}) == 10  # a trigger for every turn, across both runs
    assert len(seen) - 10 <= 2, (seen, before)  # the one running at the kill, and one within the commit interval
    assert {kind for kind, _, _ in seen} == {"TurnTrigger"} and {words for _, _, words in seen} == {"2"}  # as emitted
    assert "triggers a previous run did not dispatch are dispatched first" in err
