"""``hookrunner replay``: messages a run delivered, kept in the journal for ``[state] keep``, sent again.

Each test runs a real ``hookrunner run`` with the webhook plugin against the simulator and a loopback receiver,
then a real ``hookrunner replay`` against the same receiver, and checks what the receiver got.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import standardwebhooks
import tomli_w
import tomllib
import trio

from hookrunner._simulator import running_simulator
from hookrunner.testing import config_table
from hookrunner.testing.receiver import Receiver, ReceivedRequest, Reply, running_receiver

from helpers import afinish, assert_one_error_line, hookrunner_process, script, write_config
from journal_helpers import SECRET, SECRET_ENV, finals

ENV = {SECRET_ENV: SECRET}
CALLS = ("CALL-A", "CALL-B")
TURNS = 4  # per call; each endpoint gets one message per turn


def replay_config(base_url: str, receiver: Receiver, tmp_path: Path, **state: Any) -> Path:
    """Two webhook endpoints, crm (``/crm``) and audit (``/audit``), both given every caller final."""
    endpoints = [
        {"name": name, "url": receiver.url(f"/{name}"), "secret_env": SECRET_ENV, "events": ["user_transcription"],
         "timeout": 1.0, "retry_initial_delay": 0.1, "retry_max_delay": 0.2}
        for name in ("crm", "audit")
    ]  # fmt: skip
    table = config_table(
        base_url, enable=["webhook"], settings={"webhook": {"endpoints": endpoints, "dead_letter": "dead.jsonl"}}
    )
    table["state"] = {"path": "state.db", **state}
    return write_config(tmp_path, table)


@asynccontextmanager
async def after_a_run(tmp_path: Path, **state: Any) -> AsyncIterator[tuple[Path, Receiver, list[ReceivedRequest]]]:
    """A ``hookrunner run`` of two calls delivered to both endpoints and ended; (config, the receiver still
    serving, what it received during the run)."""
    calls = [{"id": call_id, "events": finals(TURNS)} for call_id in CALLS]
    async with running_simulator(script(calls)) as sim, running_receiver() as receiver:
        config = replay_config(sim.base_url, receiver, tmp_path, **state)
        code, _, err = await afinish(hookrunner_process("run", str(config), *[f"--call={c}" for c in CALLS], env=ENV))
        assert code == 0, err
        during = list(receiver.requests)
        assert len(during) == 2 * len(CALLS) * TURNS and all(request.succeeded for request in during)
        yield config, receiver, during


async def replay(config: Path, *args: str) -> tuple[int, str, str]:
    return await afinish(hookrunner_process("replay", str(config), *args, env=ENV, cwd=config.parent))


def ids_by_endpoint_and_call(requests: list[ReceivedRequest]) -> dict[tuple[str, str], list[str]]:
    """The ``webhook-id`` of each request, in arrival order, per (path, call)."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for request in requests:
        found[(request.path, request.json()["call_id"])].append(request.headers["webhook-id"])
    return dict(found)


async def test_replay_sends_every_kept_message_again_with_its_original_id_in_each_calls_order_signed(
    tmp_path: Path,
) -> None:
    async with after_a_run(tmp_path) as (config, receiver, during):
        code, out, err = await replay(config, "--since", "10m")
        again = receiver.requests[len(during) :]
    assert code == 0, err
    assert ids_by_endpoint_and_call(again) == ids_by_endpoint_and_call(during)
    first = {request.headers["webhook-id"]: request for request in during}
    for request in again:
        assert standardwebhooks.Webhook(SECRET).verify(request.body, request.headers) == request.json()
        assert request.json() == first[request.headers["webhook-id"]].json()  # the body as first delivered
    assert out.splitlines()[-1] == f"{tmp_path / 'state.db'}: 16 sent, 0 failed"
    assert sum(line.endswith(": sent") for line in out.splitlines()) == 16
    assert "Traceback" not in err and SECRET not in out + err and "turn 0" not in out + err  # no secret, no body


async def test_dry_run_lists_each_message_and_sends_nothing(tmp_path: Path) -> None:
    async with after_a_run(tmp_path) as (config, receiver, during):
        code, out, err = await replay(config, "--since", "600", "--dry-run")
        assert len(receiver.requests) == len(during)
    assert code == 0, err
    *listed, summary = out.splitlines()
    assert summary == f"{tmp_path / 'state.db'}: 16 would be sent"
    shown = {(line.split()[1], line.split()[3], line.split()[5].rstrip(":")) for line in listed}
    assert shown == {
        (request.path.lstrip("/"), request.json()["call_id"], request.headers["webhook-id"]) for request in during
    }
    assert all(line.endswith(": would be sent") and line.split()[0].endswith("Z") for line in listed), out


async def test_endpoint_and_call_select_what_is_sent_and_an_unknown_endpoint_is_one_error_line(tmp_path: Path) -> None:
    async with after_a_run(tmp_path) as (config, receiver, during):
        code, out, err = await replay(config, "--since", "1h", "--endpoint", "audit", "--call", "CALL-B")
        again = receiver.requests[len(during) :]
        assert code == 0, err
        wanted = ("/audit", "CALL-B")
        assert ids_by_endpoint_and_call(again) == {wanted: ids_by_endpoint_and_call(during)[wanted]}
        assert out.splitlines()[-1].endswith(f": {TURNS} sent, 0 failed")

        code, out, err = await replay(config, "--since", "1h", "--call", "CALL-NONE")
        assert code == 0 and out.startswith("nothing delivered since ") and "of call CALL-NONE" in out, out + err

        code, out, err = await replay(config, "--since", "1h", "--endpoint", "billing")
        assert code == 2
        assert_one_error_line(out, err, "error: --endpoint: no messages kept for 'billing'", "(kept: audit, crm)")
        assert len(receiver.requests) == len(during) + TURNS


async def test_an_endpoint_gone_from_the_config_is_reported_and_counted_failed(tmp_path: Path) -> None:
    async with after_a_run(tmp_path) as (config, receiver, during):
        table = tomllib.loads(config.read_text())
        table["plugins"]["webhook"]["endpoints"] = table["plugins"]["webhook"]["endpoints"][:1]  # crm only
        config.write_text(tomli_w.dumps(table))
        code, out, err = await replay(config, "--since", "1d", "--dry-run")
        assert code == 0 and out.splitlines()[-1].endswith(": 8 would be sent, 8 could not be"), out + err
        code, out, err = await replay(config, "--since", "1d")
        again = receiver.requests[len(during) :]
    assert code == 1
    assert {request.path for request in again} == {"/crm"} and len(again) == len(CALLS) * TURNS
    assert out.splitlines()[-1].endswith(": 8 sent, 8 failed")
    missing = [line for line in err.splitlines() if "not sent (no endpoint audit of plugin webhook in" in line]
    assert len(missing) == 8, err


async def test_a_message_not_delivered_holds_back_the_rest_of_its_call(tmp_path: Path) -> None:
    async with after_a_run(tmp_path) as (config, receiver, during):
        receiver.script("/crm", [Reply(503)], then=Reply(200))
        code, out, err = await replay(config, "--since", "1d", "--endpoint", "crm", "--call", "CALL-A")
        again = receiver.requests[len(during) :]
    assert code == 1
    assert len(again) == 1 and again[0].status == 503  # the later ones were not sent out of order
    assert out.splitlines()[-1].endswith(": 0 sent, 4 failed")
    assert sum("not sent (an earlier message of its call" in line for line in err.splitlines()) == TURNS - 1, err


async def test_replay_reads_the_journal_of_a_run_still_going_and_changes_nothing_in_it(tmp_path: Path) -> None:
    events = [{**event, "at": i * 0.1} for i, event in enumerate(finals(20))]
    async with running_simulator(script([{"id": "CALL-LIVE", "events": events}])) as sim, running_receiver() as hook:
        config = replay_config(sim.base_url, hook, tmp_path)
        run = hookrunner_process("run", str(config), "--call", "CALL-LIVE", env=ENV)
        try:
            await hook.wait_for(2 * 5, timeout=10)
            await trio.sleep(0.2)  # past state.commit_interval: the first ones are written as delivered
            code, out, err = await replay(config, "--since", "1m", "--dry-run")  # beside the run, which goes on
            assert code == 0, err
            assert 2 * 5 <= int(out.splitlines()[-1].split(": ")[1].split()[0]) < 2 * 20, out
        finally:
            code, _, err = await afinish(run)
        assert code == 0, err
        assert len(hook.requests) == 2 * 20 and all(request.succeeded for request in hook.requests)

        journal = tmp_path / "state.db"
        before = journal.read_bytes(), journal.stat().st_mtime_ns
        code, out, err = await replay(config, "--since", "1m")
        assert code == 0 and out.splitlines()[-1].endswith(": 40 sent, 0 failed"), out + err
    assert (journal.read_bytes(), journal.stat().st_mtime_ns) == before
    # (a reader leaves SQLite's empty write-ahead log and its index beside the file; the next run uses them)
    assert {path.name for path in tmp_path.iterdir()} <= {"config.toml", "state.db", "state.db-wal", "state.db-shm"}


async def test_with_keep_0_nothing_is_kept_to_replay(tmp_path: Path) -> None:
    async with after_a_run(tmp_path, keep=0) as (config, receiver, during):
        code, out, err = await replay(config, "--since", "1d")
        assert len(receiver.requests) == len(during)
    assert code == 0, err
    assert out.startswith("nothing delivered since ") and f"is kept in {tmp_path / 'state.db'}" in out, out
    assert "(state.keep: 0 s)" in out


async def test_a_bad_since_a_missing_journal_and_state_path_empty_are_one_error_line(tmp_path: Path) -> None:
    async with running_receiver() as receiver:
        config = replay_config("http://127.0.0.1:9", receiver, tmp_path)
        for bad in ("ten", "-5m", "0", "30x", "2999-01-01T00:00:00Z"):
            code, out, err = await replay(config, f"--since={bad}")
            assert code == 2, (bad, err)
            assert_one_error_line(out, err, "error: --since: ")

        code, out, err = await replay(config, "--since", "2024-01-01T00:00:00Z")  # a valid time, no journal yet
        assert code == 2
        assert_one_error_line(out, err, f"state.path: {tmp_path / 'state.db'}: no such journal")

        config = replay_config("http://127.0.0.1:9", receiver, tmp_path, path="")
        code, out, err = await replay(config, "--since", "10m")
        assert code == 2
        assert_one_error_line(out, err, "state.path: replay needs the journal")
        assert receiver.requests == []
