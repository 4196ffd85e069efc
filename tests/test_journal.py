"""The journal (``[state] path``): undelivered outbox messages survive a kill -9 and are sent on restart.

The acceptance test kills a real ``hookrunner run`` process while its webhook endpoint answers 503 and starts it
again with the endpoint healthy; the simulator and the receiver run in the test, on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import tomllib
import time
from pathlib import Path
from typing import Any

import tomli_w
import trio

from hookrunner import hookimpl
from hookrunner._state.journal import PURGE_INTERVAL, Journal, JournalReader
from hookrunner._delivery.outbox import OutboxMessage
from hookrunner._simulator import running_simulator
from hookrunner.testing import config_table
from hookrunner.testing.receiver import Reply, running_receiver

from helpers import afinish, hookrunner_process, kill_9_after_lines, script, server_url_of, write_config
from journal_helpers import SECRET, SECRET_ENV, finals, journal_config


async def test_messages_pending_at_a_kill_9_are_all_delivered_after_a_restart_with_their_ids_and_order(
    tmp_path: Path,
) -> None:
    env = {SECRET_ENV: SECRET}
    async with running_simulator(script([{"id": "CALL-KILL", "events": finals(30)}])) as sim, running_receiver() as hook:
        hook.script("/hook", [], then=Reply(503))
        config = journal_config(sim.base_url, hook.url("/hook"), tmp_path, path="state.db")
        first = hookrunner_process("run", str(config), "--call", "CALL-KILL", env=env)
        try:
            await hook.wait_for(3, path="/hook", timeout=10)  # the first message retried: all 30 were submitted
            await trio.sleep(0.3)  # past state.commit_interval
        finally:
            os.kill(first.pid, signal.SIGKILL)
            await afinish(first)
        assert first.returncode == -signal.SIGKILL
        before = {request.headers["webhook-id"] for request in hook.at("/hook")}
        assert len(before) == 1  # one call: its messages go one after another, the first held by the 503s

        hook.script("/hook", [], then=Reply(200))
        second = hookrunner_process("run", str(config), "--call", "CALL-KILL", env=env)
        code, out, err = await afinish(second)
    assert code == 0, err
    delivered = [request for request in hook.at("/hook") if request.succeeded]
    texts = [request.json()["data"]["user_transcription_text"] for request in delivered]
    assert texts == [f"turn {i}" for i in range(30)], texts  # every one, once, in the call's order
    ids = [request.headers["webhook-id"] for request in delivered]
    assert ids[0] in before and len(set(ids)) == 30  # the id the receiver saw before the kill, kept
    assert not (tmp_path / "dead.jsonl").exists() or (tmp_path / "dead.jsonl").read_text() == ""
    assert "30 messages a previous run did not deliver are sent first" in err


async def test_with_state_path_empty_nothing_is_written_and_check_says_so(tmp_path: Path, cli) -> None:
    from helpers import finish

    async with running_simulator(script([{"id": "CALL-MEM", "events": finals(2)}])) as sim, running_receiver() as hook:
        config = journal_config(sim.base_url, hook.url("/hook"), tmp_path, path="")
        code, out, err = await afinish(hookrunner_process("run", str(config), "--call", "CALL-MEM", env={SECRET_ENV: SECRET}))
        assert code == 0, err
        assert len([request for request in hook.at("/hook") if request.succeeded]) == 2
    assert list(tmp_path.glob("*.db*")) == []
    code, out, _ = finish(cli("check", str(config), env={SECRET_ENV: SECRET}))
    assert code == 0 and 'state: in memory only (state.path = "")' in out
    config = journal_config("http://127.0.0.1:9", "http://127.0.0.1:9/hook", tmp_path, path="state.db")
    code, out, _ = finish(cli("check", str(config), env={SECRET_ENV: SECRET}))
    assert code == 0 and f"state: journal {tmp_path / 'state.db'}" in out
    assert "backfill: on: an ended call's skipped events come from its stored conversation" in out
    table = tomllib.loads(config.read_text())
    table["backfill"] = {"enabled": False}
    config.write_text(tomli_w.dumps(table))
    code, out, _ = finish(cli("check", str(config), env={SECRET_ENV: SECRET}))
    assert code == 0 and "backfill: off (backfill.enabled = false)" in out


def test_what_is_delivered_within_one_commit_interval_never_reaches_the_file_and_the_rest_survives(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", 0.05)
    crm = journal.for_outbox("webhook", "crm")
    quick, slow = OutboxMessage(id="m-quick", key="C", body={"n": 1}), OutboxMessage(id="m-slow", key="C", body={"n": "ñ \ud83d"})
    quick.journal_handle, slow.journal_handle = crm.add(quick), crm.add(slow)
    crm.finished(quick.journal_handle)
    slow.attempts = 3
    crm.attempted(slow)
    journal.close()
    reopened = Journal(tmp_path / "j.db", 0.05)
    (left,) = reopened.for_outbox("webhook", "crm").pending()
    assert (left.id, left.key, left.body, left.attempts) == ("m-slow", "C", {"n": "ñ \ufffd"}, 3)
    assert reopened.for_outbox("webhook", "other").pending() == []
    reopened.close()
    assert json.loads(json.dumps(left.body)) == left.body


def test_events_told_dispatched_by_the_batch_leave_exactly_the_rest_for_the_next_run(tmp_path: Path) -> None:
    """A call's lines are kept a read at a time and told dispatched a count at a time, across reads: what the
    next run gets back is every line after the last one dispatched, and the keys of those dispatched."""
    journal = Journal(tmp_path / "j.db", 0.05)
    call = journal.for_call("CALL-B")
    journal.call_followed("CALL-B", "list")
    call.received_read(["l1", "l2", "l3"], ["k1", "k2", "k3"], 100.0)
    call.received("l4", 101.0, None)  # (an event without an id: no key)
    call.received_read(["l5", "l6"], ["k5", "k6"], 102.0)
    call.dispatched(2)
    call.dispatched(2)  # the last of the first read and the keyless one
    assert call.undispatched == 2
    journal.close()
    reopened = Journal(tmp_path / "j.db", 0.05)
    left = reopened.undispatched_events("CALL-B")
    assert [(row.data, row.received) for row in left] == [("l5", 102.0), ("l6", 102.0)]
    assert reopened.dispatched_keys("CALL-B") == ["k1", "k2", "k3"]
    again = reopened.for_call("CALL-B")
    for row in left:
        again.restored(row.seq, None)
    again.dispatched(1)
    reopened.close()
    final = Journal(tmp_path / "j.db", 0.05)
    assert [row.data for row in final.undispatched_events("CALL-B")] == ["l6"]
    final.close()


def _rows_in(path: Path, table: str) -> int:
    with JournalReader.open_read_only(path) as reader:
        return reader._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_dispatch_logged_between_folds_is_read_back_after_a_kill(tmp_path: Path) -> None:
    """Commits between two folds log what was dispatched as one row each; a run killed before the next fold
    leaves them, and the next run folds them: every key back, none of a call that ended, and of a call that
    ended and was followed again only what came after."""
    path = tmp_path / "j.db"
    killed = Journal(path, 0.05)
    a, b, c = (killed.for_call(call_id) for call_id in ("CALL-A", "CALL-B", "CALL-C"))
    for call_id in ("CALL-A", "CALL-B", "CALL-C"):
        killed.call_followed(call_id, "list")
    a.received_read(["a1", "a2"], ["ka1", "ka2"], 100.0)
    b.received_read(["b1"], ["kb1"], 100.0)
    c.received_read(["c1"], ["kc1"], 100.0)
    a.dispatched(2)
    b.dispatched(1)
    c.dispatched(1)
    killed._commit_now(purge=False)
    assert (_rows_in(path, "call_progress"), _rows_in(path, "call_keys")) == (1, 0)  # one row, not one per call
    b.over()
    c.over()
    killed._commit_now(purge=False)
    killed.call_followed("CALL-C", "list")  # (found again: a new follow of it)
    c = killed.for_call("CALL-C")
    c.received_read(["c2"], ["kc2"], 101.0)
    c.dispatched(1)
    a.received_read(["a3"], ["ka3"], 102.0)  # received, never dispatched
    killed._commit_now(purge=False)
    assert _rows_in(path, "call_progress") == 3
    # (no close: what a kill -9 leaves)

    after = Journal(path, 0.05)
    assert (_rows_in(path, "call_progress"), _rows_in(path, "call_keys")) == (0, 2)  # folded on opening
    assert after.followed_calls() == ["CALL-A", "CALL-C"]
    assert after.dispatched_keys("CALL-A") == ["ka1", "ka2"]
    assert [row.data for row in after.undispatched_events("CALL-A")] == ["a3"]
    assert after.dispatched_keys("CALL-B") == []
    assert after.dispatched_keys("CALL-C") == ["kc2"]
    assert after.undispatched_events("CALL-C") == []
    after.close()


def test_a_call_followed_again_within_the_run_gets_its_keys_from_the_log_and_the_folds(
    tmp_path: Path, monkeypatch
) -> None:
    """Keys dispatched are read back whether they are folded, logged, or not committed yet, each once; the log is
    folded when it holds ``FOLD_KEYS`` keys, without waiting for the purge."""
    import hookrunner._state.call_progress as call_progress

    monkeypatch.setattr(call_progress, "FOLD_KEYS", 4)
    path = tmp_path / "j.db"
    journal = Journal(path, 0.05)
    journal.call_followed("CALL-A", "list")
    call = journal.for_call("CALL-A")
    call.received_read(["a1", "a2", "a3"], ["k1", "k2", None], 100.0)
    call.dispatched(3)
    journal._commit_now(purge=False)
    call.received_read(["a4", "a5"], ["k4", "k5"], 101.0)
    call.dispatched(1)
    assert journal.dispatched_keys("CALL-A") == ["k1", "k2", "k4"]  # logged, and gathered for the next commit
    assert [row.data for row in journal.undispatched_events("CALL-A")] == []  # (a5: in memory, not written yet)
    journal._commit_now(purge=False)  # the log holds 4 keys: this commit folds it
    assert (_rows_in(path, "call_progress"), _rows_in(path, "call_keys")) == (0, 1)
    assert [row.data for row in journal.undispatched_events("CALL-A")] == ["a5"]
    call.dispatched(1)
    assert journal.dispatched_keys("CALL-A") == ["k1", "k2", "k4", "k5"]
    journal.close()
    again = Journal(path, 0.05)
    assert again.dispatched_keys("CALL-A") == ["k1", "k2", "k4", "k5"]
    assert again.undispatched_events("CALL-A") == []
    again.close()


def test_an_unreadable_progress_row_is_skipped_with_a_warning_and_the_rest_folded(tmp_path: Path, caplog) -> None:
    """A damaged row costs its events a second dispatch, never the run: the journal opens, says so in one line,
    and folds the rows it can read."""
    import sqlite3

    path = tmp_path / "j.db"
    killed = Journal(path, 0.05)
    killed.call_followed("CALL-A", "list")
    call = killed.for_call("CALL-A")
    call.received_read(["a1"], ["k1"], 100.0)
    call.dispatched(1)
    killed._commit_now(purge=False)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO call_progress (body) VALUES (?)", (b"\xc1 not msgpack",))
    with caplog.at_level("WARNING", logger="hookrunner.journal"):
        after = Journal(path, 0.05)
    assert [record.getMessage() for record in caplog.records] == [
        f"journal {path}: 1 rows of dispatch progress cannot be read; their events may be dispatched again"
    ]
    assert after.dispatched_keys("CALL-A") == ["k1"]
    assert _rows_in(path, "call_progress") == 0
    after.close()


def test_a_fold_whose_commit_failed_is_folded_again_by_the_next() -> None:
    from hookrunner._state.call_progress import Progress, ProgressLog, merge

    log = ProgressLog()
    first = Progress({"A": 2}, {"A": ["k1", "k2"]}, [])
    second = Progress({"A": 3, "B": 4}, {"A": ["k3"], "B": ["k4"]}, ["B"])
    assert log.take(first, fold=False) is None
    assert log.take(second, fold=True) == [first, second]
    assert log.take(Progress({}, {}, ["A"]), fold=True) is None  # one fold at a time: logged
    log.folded(committed=False)
    third = Progress({"A": 9}, {"A": ["k9"]}, [])
    folding = log.take(third, fold=True)
    assert folding is not None and len(folding) == 4
    assert log.of_call("A", Progress({}, {}, [])) == (True, 9, ["k9"])
    log.folded(committed=True)
    assert log.of_call("A", Progress({}, {}, [])) == (False, None, [])
    merged = merge(folding)
    assert (merged.through, merged.keys, merged.over) == ({"B": 4, "A": 9}, {"B": ["k4"], "A": ["k9"]}, ["B", "A"])


async def test_a_signed_push_replayed_after_a_restart_is_acknowledged_and_ignored(tmp_path: Path, monkeypatch) -> None:
    import hashlib
    import hmac

    import httpx

    from helpers import build_runner, make_config

    secret, token = "atoms-webhook-secret", "service-token"
    monkeypatch.setenv("HR_TEST_JOURNAL_WEBHOOK", secret)
    monkeypatch.setenv("HR_TEST_JOURNAL_TOKEN", token)
    body = json.dumps(
        {"id": "dlv-once", "event": "agent-1.post-conversation", "metadata": {"callId": "CALL-P", "eventType": "post-conversation"}}
    ).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    class Deliveries:
        def __init__(self) -> None:
            self.ids: list[str] = []

        @hookimpl
        def on_platform_webhook(self, delivery: Any) -> None:
            self.ids.append(delivery.id)

    async def push_once_to_a_new_runner() -> tuple[dict[str, Any], list[str]]:
        config = make_config("http://127.0.0.1:9")
        config["server"] = {"enabled": True, "port": 0, "token_env": "HR_TEST_JOURNAL_TOKEN"}
        config["discovery"] = {"webhook_secret_env": "HR_TEST_JOURNAL_WEBHOOK"}
        config["state"] = {"path": str(tmp_path / "state.db"), "commit_interval": 0.01}
        seen = Deliveries()
        runner = build_runner(config, [], seen)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            async with httpx.AsyncClient(base_url=await server_url_of(runner)) as client:
                answer = await client.post("/atoms/webhook", content=body, headers={"X-Signature": signature})
            await trio.sleep(0.1)
            runner.stop()
        return answer.json(), seen.ids

    first, first_ids = await push_once_to_a_new_runner()
    again, again_ids = await push_once_to_a_new_runner()  # a new process would read the same file
    assert first == {"status": True} and first_ids == ["dlv-once"]
    assert again == {"status": True, "duplicate": True} and again_ids == []


RECORDING_PLUGIN = """
from hookrunner import hookimpl

@hookimpl
def on_user_transcription(event, call):
    with open({out!r}, "a", encoding="utf-8") as handle:
        handle.write(event.event_id + "\\n")

@hookimpl
def on_sse_init(event, call):
    with open({out!r} + ".init", "a", encoding="utf-8") as handle:
        handle.write("sse_init\\n")
"""


async def test_a_call_still_live_after_a_kill_9_is_followed_again_without_dispatching_its_events_twice(
    tmp_path: Path,
) -> None:
    out = tmp_path / "seen.txt"
    (tmp_path / "recording.py").write_text(RECORDING_PLUGIN.format(out=str(out)), encoding="utf-8")
    events = [{"at": i * 0.1, "event_type": "user_transcription", "user_transcription_text": f"turn {i}"} for i in range(40)]
    async with running_simulator(script([{"id": "CALL-LIVE", "events": events}])) as sim:
        table = config_table(sim.base_url, settings={"load": ["recording.py"]})
        table["state"] = {"path": "state.db", "commit_interval": 0.02}
        config = write_config(tmp_path, table)
        before = await kill_9_after_lines(hookrunner_process("run", str(config), "--call", "CALL-LIVE"), out, 10)
        # the same command again; the simulator replays the call from its start to a new subscriber
        code, _, err = await afinish(hookrunner_process("run", str(config), "--call", "CALL-LIVE"))
    assert code == 0, err
    seen = out.read_text().splitlines()
    assert len(set(seen)) == 40  # every event of the call, across both runs
    repeats = len(seen) - len(set(seen))
    # only what was dispatched within the last commit interval before the kill can be dispatched again
    assert repeats <= 1, (repeats, len(before))
    assert seen[: len(before)] == before
    # an event without an id (sse_init) is known by its key too: the new connection's is not a second one
    assert Path(f"{out}.init").read_text().splitlines() == ["sse_init"]


def test_delivered_messages_are_kept_for_state_keep_and_at_most_state_max_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", 0.05, keep=3600, max_kept=2)
    crm = journal.for_outbox("webhook", "crm")
    for n in range(4):
        message = OutboxMessage(id=f"m{n}", key="C", body={"n": n})
        message.journal_handle = crm.add(message)
        crm.finished(message.journal_handle, delivered=True)
    lost = OutboxMessage(id="m-dead", key="C", body={})
    lost.journal_handle = crm.add(lost)
    crm.finished(lost.journal_handle)  # dead-lettered: the dead-letter file has it, the journal forgets it
    journal.close()  # (the first commit of a run purges)
    reader = Journal(tmp_path / "j.db", 0.05, keep=3600, max_kept=2)
    assert [kept.id for kept in reader.kept_messages(0)] == ["m2", "m3"]  # the newest two
    assert reader.for_outbox("webhook", "crm").pending() == []
    reader.close()
    expiring = Journal(tmp_path / "j.db", 0.05, keep=0.01)
    time.sleep(0.05)
    expiring.close()  # past keep: purged
    assert JournalReader.open_read_only(tmp_path / "j.db").kept_messages(0) == []


async def test_the_journal_purges_on_its_own_while_nothing_is_written(tmp_path: Path, autojump_clock) -> None:
    journal = Journal(tmp_path / "j.db", 0.05, keep=0.01)
    crm = journal.for_outbox("webhook", "crm")
    message = OutboxMessage(id="m", key="C", body={})
    message.journal_handle = crm.add(message)
    crm.finished(message.journal_handle, delivered=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        await journal.written()
        assert [kept.id for kept in journal.kept_messages(0)] == ["m"]
        await trio.to_thread.run_sync(time.sleep, 0.05)  # past keep, in wall time
        await trio.sleep(PURGE_INTERVAL + 1)  # nothing else happens: the journal wakes to purge all the same
        await journal.written()
        assert journal.kept_messages(0) == []
        nursery.cancel_scope.cancel()
    journal.close()
