"""Service mode, pushed calls: the runner's server (POST /atoms/webhook, POST /calls, /healthz, /metrics).

Everything is real: the simulator and the runner's server listen on 127.0.0.1, requests go through httpx, and the
SIGTERM test runs the installed ``hookrunner`` command.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hookrunner import hookimpl
from hookrunner._run.callbook import CallBook, Offer
from hookrunner._service.atoms_webhook import SeenDeliveries, signature_valid
from hookrunner._core.platform_delivery import parse_delivery
from hookrunner._simulator import running_simulator

from helpers import API_KEY, afinish, build_runner, call_events, hookrunner_process, make_config, script, write_config
from service_helpers import SECRET, TOKEN, long_call, running_service, service_config


# --- signatures, deliveries and the call book, alone ------------------------------------------------------------


def sign(body: bytes, secret: str = SECRET) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


@pytest.mark.parametrize(
    "spell",
    [
        lambda d: d.hex(),
        lambda d: d.hex().upper(),
        lambda d: "sha256=" + d.hex(),
        lambda d: base64.b64encode(d).decode(),
        lambda d: "sha256=" + base64.b64encode(d).decode(),
        lambda d: base64.urlsafe_b64encode(d).decode().rstrip("="),
    ],
    ids=["hex", "HEX", "sha256=hex", "base64", "sha256=base64", "base64url-unpadded"],
)
def test_every_accepted_signature_encoding_verifies_and_a_changed_body_does_not(spell) -> None:
    body = b'{"id":"1","event":"a.pre-conversation"}'
    header = spell(sign(body))
    assert signature_valid(body, header, SECRET)
    assert not signature_valid(body + b" ", header, SECRET)
    assert not signature_valid(body, header, SECRET + "x")


@pytest.mark.parametrize("header", [None, "", "sha256=", "not a signature", "00" * 31, "zz" * 32])
def test_missing_or_malformed_signatures_are_refused(header) -> None:
    assert not signature_valid(b"{}", header, SECRET)


def test_a_delivery_is_read_from_its_envelope() -> None:
    body = {
        "id": "dlv-1",
        "event": "agent-9.pre-conversation",
        "url": "https://example.com",
        "description": "x",
        "metadata": {"callId": "CALL-9", "agentId": "agent-9", "eventType": "pre-conversation"},
    }
    delivery = parse_delivery(json.dumps(body).encode())
    assert (delivery.id, delivery.kind, delivery.call_id, delivery.agent_id) == (
        "dlv-1", "pre-conversation", "CALL-9", "agent-9",
    )  # fmt: skip
    assert delivery.body == body


def test_seen_deliveries_remember_a_bounded_window() -> None:
    seen = SeenDeliveries(limit=2)
    assert seen.first_time("a") and not seen.first_time("a")
    assert seen.first_time("b") and seen.first_time("c")
    assert seen.first_time("a")  # forgotten after two newer ids


def test_the_call_book_follows_each_id_once_caps_and_hands_slots_over_in_order() -> None:
    book = CallBook(max_calls=2, remember=3)
    assert [book.offer(i) for i in ("A", "B", "A", "C", "D", "C")] == [
        Offer.NEW, Offer.NEW, Offer.FOLLOWING, Offer.QUEUED, Offer.QUEUED, Offer.WAITING,
    ]  # fmt: skip
    assert book.finish("A") == "C" and book.active == {"B", "C"}
    assert book.offer("A") is Offer.FINISHED  # a finished call is never followed again
    assert book.finish("B") == "D"
    assert book.finish("C") is None and book.finish("D") is None
    assert book.offer("A") is Offer.NEW  # only the last `remember` finished ids are kept


def test_a_call_not_found_or_given_up_may_be_offered_again_after_retry_after_and_a_stop_promotes_nobody() -> None:
    book = CallBook(max_calls=1, retry_after=30)
    assert book.offer("LOST", now=0) is Offer.NEW and book.offer("NEXT", now=0) is Offer.QUEUED
    assert book.finish("LOST", final=False, now=10, promote=False) is None  # stopping: NEXT is not made active
    assert book.active == set() and book.waiting == 1
    assert book.offer("LOST", now=39) is Offer.FINISHED
    assert book.offer("LOST", now=40) is Offer.NEW  # it may have been live after all: a listing brings it back
    assert book.drop_waiting() == ["NEXT"] and book.waiting == 0


# --- the server inside a running runner ---------------------------------------------------------------------------


class Subscriptions:
    """Records when each call was subscribed and which platform deliveries reached plugins."""

    def __init__(self) -> None:
        self.subscribed: dict[str, list[float]] = {}
        self.deliveries: list[Any] = []
        self.finished: dict[str, str] = {}

    @hookimpl
    def on_call_subscribed(self, call) -> None:
        self.subscribed.setdefault(call.id, []).append(trio.current_time())

    @hookimpl
    def on_call_finished(self, call, reason) -> None:
        self.finished[call.id] = reason

    @hookimpl
    async def on_platform_webhook(self, delivery) -> None:
        self.deliveries.append(delivery)


pytestmark = pytest.mark.usefixtures("service_secrets")  # conftest.py: HR_TEST_TOKEN, HR_TEST_WEBHOOK_SECRET


def pre_conversation(call_id: str, delivery_id: str, agent: str = "agent-1") -> bytes:
    return json.dumps(
        {
            "id": delivery_id,
            "event": f"{agent}.pre-conversation",
            "url": "http://127.0.0.1/atoms/webhook",
            "description": "call about to start",
            "metadata": {
                "callId": call_id,
                "agentId": agent,
                "eventType": "pre-conversation",
                "conversationType": "inbound",
                "fromPhone": "+15550100",
                "toPhone": "+15550199",
            },
        }
    ).encode()


async def test_a_signed_pre_conversation_push_subscribes_within_200_ms() -> None:
    seen = Subscriptions()
    async with running_service([long_call("CALL-PUSH")], seen) as (runner, client, _):
        body = pre_conversation("CALL-PUSH", "dlv-1")
        sent = trio.current_time()
        answer = await client.post("/atoms/webhook", content=body, headers={"X-Signature": sign(body).hex()})
        assert answer.status_code == 200 and answer.json() == {"status": True, "call_id": "CALL-PUSH", "result": "new"}
        with trio.fail_after(2):
            while "CALL-PUSH" not in seen.subscribed:
                await trio.sleep(0.005)
        assert seen.subscribed["CALL-PUSH"][0] - sent < 0.2
        with trio.fail_after(5):
            while "CALL-PUSH" not in seen.finished:
                await trio.sleep(0.02)
    assert seen.finished == {"CALL-PUSH": "ended"}
    assert [d.kind for d in seen.deliveries] == ["pre-conversation"]
    assert runner.stats.calls_discovered == {"push": 1}


async def test_a_wrong_or_missing_signature_gets_401_and_subscribes_nothing() -> None:
    seen = Subscriptions()
    async with running_service([long_call("CALL-SIG")], seen) as (runner, client, _):
        body = pre_conversation("CALL-SIG", "dlv-2")
        wrong = await client.post("/atoms/webhook", content=body, headers={"X-Signature": sign(body, "other").hex()})
        missing = await client.post("/atoms/webhook", content=body)
        tampered = await client.post(
            "/atoms/webhook", content=body.replace(b"inbound", b"outbound"), headers={"X-Signature": sign(body).hex()}
        )
        await trio.sleep(0.3)
        assert [r.status_code for r in (wrong, missing, tampered)] == [401, 401, 401]
        assert wrong.json() == {"status": False, "errors": ["missing or wrong X-Signature"]}
        assert seen.subscribed == {} and seen.deliveries == [] and runner.calls.active == set()
        # the delivery id was not consumed by the refused attempts: the genuine delivery still works
        good = await client.post("/atoms/webhook", content=body, headers={"X-Signature": "sha256=" + sign(body).hex()})
        assert good.status_code == 200 and good.json()["result"] == "new"
    assert runner.stats.platform_webhooks["bad_signature"] == 3


async def test_a_replayed_delivery_id_is_acknowledged_and_ignored() -> None:
    seen = Subscriptions()
    async with running_service([long_call("CALL-R1"), long_call("CALL-R2")], seen) as (runner, client, _):
        body = pre_conversation("CALL-R1", "dlv-same")
        headers = {"X-Signature": base64.b64encode(sign(body)).decode()}
        first = await client.post("/atoms/webhook", content=body, headers=headers)
        again = await client.post("/atoms/webhook", content=body, headers=headers)
        # the same id with another call: still a repeat of the delivery, so nothing is followed
        other = pre_conversation("CALL-R2", "dlv-same")
        third = await client.post("/atoms/webhook", content=other, headers={"X-Signature": sign(other).hex()})
        await trio.sleep(0.3)
        assert first.json()["result"] == "new"
        assert again.status_code == third.status_code == 200
        assert again.json() == third.json() == {"status": True, "duplicate": True}
        assert set(seen.subscribed) == {"CALL-R1"} and len(seen.deliveries) == 1
    assert runner.stats.platform_webhooks["duplicate"] == 2


async def test_post_conversation_deliveries_reach_on_platform_webhook_without_subscribing() -> None:
    seen = Subscriptions()
    async with running_service([long_call("CALL-PC")], seen) as (runner, client, _):
        body = json.dumps(
            {"id": "dlv-pc", "event": "agent-1.post-conversation", "metadata": {"callId": "CALL-PC"}, "transcript": []}
        ).encode()
        answer = await client.post("/atoms/webhook", content=body, headers={"X-Signature": sign(body).hex()})
        assert answer.status_code == 200 and answer.json() == {"status": True}
        with trio.fail_after(2):
            while not seen.deliveries:
                await trio.sleep(0.01)
        assert seen.subscribed == {}
    [delivery] = seen.deliveries
    assert (delivery.kind, delivery.call_id, delivery.body["transcript"]) == ("post-conversation", "CALL-PC", [])


async def test_post_calls_needs_the_bearer_token_and_follows_each_call_once() -> None:
    seen = Subscriptions()
    async with running_service([long_call("CALL-API")], seen) as (runner, client, _):
        body = {"call_id": "CALL-API"}
        no_token = await client.post("/calls", json=body)
        wrong = await client.post("/calls", json=body, headers={"Authorization": "Bearer nope"})
        assert (no_token.status_code, wrong.status_code) == (401, 401)
        assert seen.subscribed == {} and runner.calls.active == set()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        first = await client.post("/calls", json=body, headers=auth)
        second = await client.post("/calls", json=body, headers=auth)
        bad = await client.post("/calls", content=b'{"callId": 1}', headers=auth)
        assert (first.status_code, first.json()["result"]) == (202, "new")
        assert (second.status_code, second.json()["result"]) == (202, "following")
        assert bad.status_code == 400 and "call_id" in bad.json()["errors"][0]
        with trio.fail_after(5):
            while "CALL-API" not in seen.finished:
                await trio.sleep(0.02)
        finished = await client.post("/calls", json=body, headers=auth)
        assert finished.json()["result"] == "finished"  # a call that is over is not followed again
    assert len(seen.subscribed["CALL-API"]) == 1


async def test_without_a_configured_token_post_calls_is_refused() -> None:
    async with running_service([long_call("CALL-X")], token_env=None) as (runner, client, _):
        answer = await client.post("/calls", json={"call_id": "CALL-X"}, headers={"Authorization": "Bearer anything"})
        assert answer.status_code == 403 and "server.token_env" in answer.json()["errors"][0]
        assert runner.calls.active == set()


async def test_calls_beyond_max_calls_wait_and_are_followed_when_a_slot_frees(caplog) -> None:
    seen = Subscriptions()
    calls = [long_call(f"CALL-CAP-{i}", n=4, spacing=0.1) for i in range(3)]
    async with running_simulator(script(calls)) as sim, trio.open_nursery() as nursery:
        config = service_config(sim.base_url)
        config["runner"]["max_calls"] = 1
        runner = build_runner(config, [], seen)
        nursery.start_soon(runner.run)
        with trio.fail_after(5):
            while runner.server_url is None:
                await trio.sleep(0.01)
        async with httpx.AsyncClient(base_url=runner.server_url) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            results = [
                (await client.post("/calls", json={"call_id": c["id"]}, headers=auth)).json()["result"] for c in calls
            ]
            again = (await client.post("/calls", json={"call_id": "CALL-CAP-2"}, headers=auth)).json()["result"]
            assert results == ["new", "queued", "queued"] and again == "waiting"
            with trio.fail_after(10):
                while len(seen.finished) < 3:
                    await trio.sleep(0.02)
            metrics = (await client.get("/metrics")).text
        runner.stop()
    starts = [seen.subscribed[c["id"]][0] for c in calls]
    assert starts == sorted(starts)  # in arrival order, one at a time
    assert seen.finished == {c["id"]: "ended" for c in calls}
    waiting_lines = [r for r in caplog.records if "runner.max_calls" in r.getMessage()]
    assert sorted(r.getMessage().split(":")[0] for r in waiting_lines) == ["CALL-CAP-1", "CALL-CAP-2"]  # once each
    assert "hookrunner_calls_over_capacity_total 2.0" in metrics


async def test_metrics_parse_with_prometheus_client_and_match_what_was_sent() -> None:
    seen = Subscriptions()
    calls = [long_call("CALL-M1", n=6, spacing=0.02), long_call("CALL-M2", n=4, spacing=0.02)]
    async with running_service(calls, seen) as (runner, client, _):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        await client.post("/calls", json={"call_id": "CALL-M1"}, headers=auth)
        body = pre_conversation("CALL-M2", "dlv-m")
        await client.post("/atoms/webhook", content=body, headers={"X-Signature": sign(body).hex()})
        await client.post("/atoms/webhook", content=body, headers={"X-Signature": "bad"})
        with trio.fail_after(5):
            while len(seen.finished) < 2:
                await trio.sleep(0.02)
        answer = await client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }
    # each call: a generated sse_init, its scripted events, a generated sse_close
    assert samples[("hookrunner_events_total", (("type", "tts_completed"),))] == 3 + 2
    assert samples[("hookrunner_events_total", (("type", "user_transcription"),))] == 3 + 2
    assert samples[("hookrunner_events_total", (("type", "sse_init"),))] == 2
    assert samples[("hookrunner_calls_finished_total", (("reason", "ended"),))] == 2
    assert samples[("hookrunner_calls_discovered_total", (("source", "api"),))] == 1
    assert samples[("hookrunner_calls_discovered_total", (("source", "push"),))] == 1
    assert samples[("hookrunner_platform_webhooks_total", (("outcome", "bad_signature"),))] == 1
    assert samples[("hookrunner_platform_webhooks_total", (("outcome", "pre-conversation"),))] == 1
    assert samples[("hookrunner_calls_active", ())] == 0
    assert samples[("hookrunner_reconnects_total", ())] == 0
    hook = (("hook", "on_call_subscribed"), ("plugin", "test-plugin-0"))
    assert samples[("hookrunner_hook_duration_seconds_count", hook)] == 2
    assert not [key for key in samples if key[0] == "hookrunner_hook_errors_total"]  # no plugin raised


async def test_healthz_is_200_while_serving_and_503_while_draining_after_sigterm(tmp_path: Path) -> None:
    slow_plugin = tmp_path / "slow_shutdown.py"
    slow_plugin.write_text(
        "import trio\nfrom hookrunner import hookimpl\n\n@hookimpl\nasync def on_shutdown(app):\n    await trio.sleep(2)\n"
    )
    async with running_simulator(script([long_call("CALL-H", n=200, spacing=0.05)])) as sim:
        table = service_config(sim.base_url, port=0)
        table["plugins"]["load"] = [str(slow_plugin)]
        table["runner"]["shutdown_grace"] = 6.0
        config = write_config(tmp_path, table)
        process = hookrunner_process("run", str(config), env={"HR_TEST_TOKEN": TOKEN, "HR_TEST_WEBHOOK_SECRET": SECRET})
        try:
            url = await _server_url(process)
            async with httpx.AsyncClient(base_url=url, timeout=2) as client:
                serving = await client.get("/healthz")
                await client.post("/calls", json={"call_id": "CALL-H"}, headers={"Authorization": f"Bearer {TOKEN}"})
                await trio.sleep(0.3)
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(2):
                    while (draining := await client.get("/healthz")).status_code == 200:
                        await trio.sleep(0.02)
                late_call = await client.post(
                    "/calls", json={"call_id": "CALL-LATE"}, headers={"Authorization": f"Bearer {TOKEN}"}
                )
                body = pre_conversation("CALL-LATE", "dlv-late")
                late_push = await client.post("/atoms/webhook", content=body, headers={"X-Signature": sign(body).hex()})
            code, _, err = await afinish(process, timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
    assert serving.status_code == 200 and serving.json()["status"] == "serving"
    assert draining.status_code == 503 and draining.json()["status"] == "draining"
    # while draining, new calls are refused (503), not silently accepted
    assert (late_call.status_code, late_push.status_code) == (503, 503)
    assert "CALL-LATE" not in err.replace("CALL-LATE: pushed while the runner is stopping", "")
    assert code == 0, err
    assert "CALL-H: stopped by shutdown" in err


async def _server_url(process) -> str:
    """The URL the process logged when its server started listening (port 0 picks a free one)."""
    lines: list[str] = []

    def read() -> str:
        for line in process.stderr:
            lines.append(line)
            if "server: listening on " in line:
                return line.split("server: listening on ", 1)[1].split(" ", 1)[0]
        raise AssertionError("the server never listened:\n" + "".join(lines))

    with trio.fail_after(10):
        return await trio.to_thread.run_sync(read)


async def test_a_port_in_use_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_simulator(script([long_call("CALL-P")])) as sim:
            config = write_config(tmp_path, service_config(sim.base_url, port=port))
            process = hookrunner_process("run", str(config), env={"HR_TEST_TOKEN": TOKEN, "HR_TEST_WEBHOOK_SECRET": SECRET})
            code, _, err = await afinish(process, timeout=15)
    assert code == 2
    errors = [line for line in err.splitlines() if "ERROR" in line or line.startswith("error")]
    assert any(f"server: cannot listen on 127.0.0.1:{port}" in line for line in errors), err
    assert "Traceback" not in err


async def test_a_missing_secret_variable_stops_run_before_anything_starts(tmp_path: Path) -> None:
    async with running_simulator(script([long_call("CALL-S")])) as sim:
        config = write_config(tmp_path, service_config(sim.base_url))
        process = hookrunner_process("run", str(config), env={"HR_TEST_TOKEN": TOKEN, "HR_TEST_WEBHOOK_SECRET": ""})
        code, _, err = await afinish(process, timeout=15)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {config}: discovery.webhook_secret_env: environment variable HR_TEST_WEBHOOK_SECRET is not set"
    ]


async def test_metrics_show_each_outboxs_delivered_retried_and_dead_lettered_counts(tmp_path: Path, monkeypatch) -> None:
    from hookrunner.testing import Reply, running_receiver

    monkeypatch.setenv("HR_TEST_HOOK_SECRET", "whsec_" + base64.b64encode(b"k" * 32).decode())
    fast = {"retry_initial_delay": 0.01, "retry_max_delay": 0.02, "max_attempts": 2, "events": ["user_transcription"]}
    seen = Subscriptions()
    async with running_receiver() as receiver, running_simulator(script([long_call("CALL-O", n=6, spacing=0.05)])) as sim:
        receiver.script("/ok", [Reply(500)], then=Reply(200))  # the first message is retried once
        receiver.script("/down", [], then=Reply(503))  # every message dead-lettered after 2 attempts
        config = service_config(sim.base_url)
        config["plugins"]["disable"] = [name for name in config["plugins"]["disable"] if name != "webhook"]
        config["plugins"]["webhook"] = {
            "dead_letter": str(tmp_path / "letters.jsonl"),
            "endpoints": [
                {"name": "crm", "url": receiver.url("/ok"), "secret_env": "HR_TEST_HOOK_SECRET", **fast},
                {"name": "archive", "url": receiver.url("/down"), "secret_env": "HR_TEST_HOOK_SECRET", **fast},
            ],
        }
        runner = build_runner(config, [], seen, base_dir=tmp_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            with trio.fail_after(5):
                while runner.server_url is None:
                    await trio.sleep(0.01)
            async with httpx.AsyncClient(base_url=runner.server_url) as client:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                await client.post("/calls", json={"call_id": "CALL-O"}, headers=auth)
                with trio.fail_after(10):
                    while len(receiver.at("/ok")) < 4 or len(receiver.at("/down")) < 6:
                        await trio.sleep(0.02)
                    await trio.sleep(0.2)
                text = (await client.get("/metrics")).text
            runner.stop()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    crm = (("endpoint", "crm"), ("plugin", "webhook"))
    archive = (("endpoint", "archive"), ("plugin", "webhook"))
    assert samples[("hookrunner_outbox_delivered_total", crm)] == 3  # the call's 3 caller turns
    assert samples[("hookrunner_outbox_retried_total", crm)] == 1
    assert samples[("hookrunner_outbox_dead_lettered_total", crm)] == 0
    assert samples[("hookrunner_outbox_delivered_total", archive)] == 0
    assert samples[("hookrunner_outbox_dead_lettered_total", archive)] == 3


def test_check_describes_the_service_and_warns_about_a_public_plain_http_server(cli, tmp_path: Path) -> None:
    from helpers import finish

    table = {
        "atoms": {"api_key": API_KEY},
        "discovery": {"poll": True, "interval": 2, "agent_ids": ["agent-7"], "webhook_secret_env": "HR_TEST_WEBHOOK_SECRET"},
        "server": {"enabled": True, "host": "0.0.0.0", "port": 9000, "token_env": "HR_TEST_TOKEN"},
    }
    code, out, err = finish(cli("check", str(write_config(tmp_path, table)), env={"HR_TEST_TOKEN": "t", "HR_TEST_WEBHOOK_SECRET": "x"}))
    assert code == 0, err
    assert "  calls: none listed: found by the runner (below) (at most 500 at once: runner.max_calls)" in out
    assert "  discovery: listing in_progress, active calls every 2 s (0.5 requests/s" in out and "agents agent-7" in out
    assert "  server: http://0.0.0.0:9000 (GET /healthz, GET /metrics, POST /atoms/webhook, POST /calls)" in out
    assert [line for line in out.splitlines() if "warning" in line] == [
        "  warning: server.host: 0.0.0.0 is reachable from other machines over plain HTTP; put a TLS-terminating "
        "proxy in front and set server.behind_tls_proxy = true (README: Run it as a service)"
    ]  # (an unset HR_TEST_TOKEN is an error, as for run: tests/test_check.py)
    table["server"]["behind_tls_proxy"] = True
    code, out, err = finish(cli("check", str(write_config(tmp_path, table)), env={"HR_TEST_TOKEN": "t", "HR_TEST_WEBHOOK_SECRET": "x"}))
    assert code == 0 and "warning" not in out


async def test_the_simulators_signed_pushes_make_the_runner_follow_each_call_as_it_starts() -> None:
    starts = {"CALL-PUSHED-1": 0.5, "CALL-PUSHED-2": 1.0, "CALL-PUSHED-3": 1.6}
    calls = [{"id": call_id, "start": at, "events": call_events(6, 0.1)} for call_id, at in starts.items()]
    seen = Subscriptions()
    # the runner's server port is known only once it listens: the simulator starts with a placeholder push URL,
    # which is replaced before the first call starts (deliveries read the URL when they are sent)
    placeholder = "http://127.0.0.1:9/atoms/webhook"
    async with running_simulator(
        script(calls), push_url=placeholder, push_secret=SECRET, push_signature="sha256=hex"
    ) as sim, trio.open_nursery() as nursery:
        runner = build_runner(service_config(sim.base_url), [], seen)
        nursery.start_soon(runner.run)
        with trio.fail_after(5):
            while runner.server_url is None:
                await trio.sleep(0.01)
        assert trio.current_time() - sim.started_at < 0.5  # before the first call starts (and is pushed)
        sim.pusher.url = f"{runner.server_url}/atoms/webhook"
        with trio.fail_after(10):
            while len(seen.finished) < len(calls):
                await trio.sleep(0.02)
        runner.stop()
    for call_id, at in starts.items():
        [subscribed] = sim.subscriptions[call_id]
        assert 0 <= subscribed - at < 0.2, (call_id, at, subscribed)
    assert seen.finished == {call_id: "ended" for call_id in starts}
    pre = [push for push in sim.pushes if push.event.endswith(".pre-conversation")]
    assert sorted(push.call_id for push in pre) == sorted(starts) and {push.status for push in pre} == {200}
    assert runner.stats.calls_discovered == {"push": 3}


async def test_a_call_pushed_before_its_stream_exists_is_followed_once_it_starts() -> None:
    """Atoms sends pre-conversation before the call starts; the stream answers 404 until then."""
    seen = Subscriptions()
    calls = [{"id": "CALL-EARLY", "start": 1.0, "events": call_events(4, 0.1)}]
    async with running_service(calls, seen) as (runner, client, sim):
        answer = await client.post("/calls", json={"call_id": "CALL-EARLY"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.json()["result"] == "new" and trio.current_time() - sim.started_at < 1.0
        with trio.fail_after(5):
            while "CALL-EARLY" not in seen.finished:
                await trio.sleep(0.02)
        [subscribed] = sim.subscriptions["CALL-EARLY"]
    assert seen.finished == {"CALL-EARLY": "ended"}
    assert 1.0 <= subscribed < 1.0 + 0.5  # reconnect backoff in the tests' config is at most 0.2 s
    assert runner.stats.reconnects == 0  # waiting for a call to start is not a failing connection


async def test_a_call_not_found_in_service_mode_is_logged_counted_and_the_exit_code_stays_0() -> None:
    seen = Subscriptions()
    async with running_simulator(script([long_call("CALL-REAL")])) as sim:
        config = service_config(sim.base_url)
        config["discovery"]["not_found_grace"] = 0.3
        runner = build_runner(config, [], seen)
        async with trio.open_nursery() as nursery:
            result: list[int] = []

            async def run() -> None:
                result.append(await runner.run())

            nursery.start_soon(run)
            with trio.fail_after(5):
                while runner.server_url is None:
                    await trio.sleep(0.01)
            async with httpx.AsyncClient(base_url=runner.server_url) as client:
                await client.post("/calls", json={"call_id": "CALL-NOPE"}, headers={"Authorization": f"Bearer {TOKEN}"})
                with trio.fail_after(5):
                    while "CALL-NOPE" not in seen.finished:
                        await trio.sleep(0.02)
                # not found is not final: the same id may be followed again later (it may yet start)
                assert runner.calls.offer("CALL-NOPE", trio.current_time() + 31) is Offer.NEW
            runner.stop()
    assert seen.finished == {"CALL-NOPE": "not_found"}
    assert result == [0]
    assert runner.stats.calls_finished["not_found"] == 1


async def test_an_oversized_body_is_refused_with_413_before_it_is_read() -> None:
    async with running_service([long_call("CALL-BIG")]) as (runner, client, _):
        big = b"x" * (2 * 1024 * 1024)
        answer = await client.post("/atoms/webhook", content=big, headers={"X-Signature": sign(big).hex()})
        assert answer.status_code == 413
        assert runner.stats.platform_webhooks == {}


# --- every intake checks call ids (issue 12) --------------------------------------------------------------------

HUGE_ID = "CALL-" + "9" * 70_000


async def test_a_huge_or_malformed_call_id_is_a_400_at_the_server_and_the_service_goes_on(caplog, tmp_path: Path) -> None:
    seen = Subscriptions()
    spool = tmp_path / "spool.jsonl"
    async with running_service([long_call("CALL-OK")], seen, spool=spool) as (runner, client, _):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for bad_id in (HUGE_ID, "CALL-1\nforged log line", "CALL 1", "CALL/../x"):
            answer = await client.post("/calls", json={"call_id": bad_id}, headers=auth)
            assert answer.status_code == 400, answer.text
            (error,) = answer.json()["errors"]
            assert error.startswith("call_id: expected a call id") and "\n" not in error and len(error) < 300
        body = pre_conversation(HUGE_ID, "dlv-huge")
        pushed = await client.post("/atoms/webhook", content=body, headers={"X-Signature": sign(body).hex()})
        assert pushed.status_code == 400 and pushed.json()["errors"][0].startswith("metadata.callId: expected a call id")
        good = await client.post("/calls", json={"call_id": "CALL-OK"}, headers=auth)
        assert good.status_code == 202
        with trio.fail_after(5):
            while "CALL-OK" not in seen.finished:
                await trio.sleep(0.02)
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert seen.finished == {"CALL-OK": "ended"}
    assert runner.stats.call_ids_refused == {"api": 4, "push": 1}
    assert 'hookrunner_call_ids_refused_total{source="api"} 4.0' in metrics
    assert [d.id for d in seen.deliveries] == []  # a refused push is not handed to plugins ...
    (kept,) = [json.loads(line) for line in spool.read_text(encoding="utf-8").splitlines()]
    assert kept["delivery_id"] == "dlv-huge" and kept["platform_webhook"]["metadata"]["callId"] == HUGE_ID  # ... but kept
    refused_lines = [r for r in caplog.records if "refused a call id" in r.getMessage()]
    assert len(refused_lines) == 5  # 4 from api, 1 push: each intake logs its 1st-4th, then the 8th, 16th...
    assert all(len(r.getMessage()) < 400 and "\n" not in r.getMessage() for r in refused_lines)


async def test_a_listing_entry_with_a_huge_id_is_skipped_and_the_other_calls_are_followed() -> None:
    from hookrunner.testing import Reply, running_receiver

    logs = [{"callId": HUGE_ID, "status": "in_progress"}, {"callId": "CALL-L", "status": "in_progress"}]
    listing = json.dumps({"status": True, "data": {"logs": logs}}).encode()
    seen = Subscriptions()
    async with running_receiver() as atoms:  # plays Atoms: the listing above, and 404 for every stream
        atoms.script("/conversation", [], then=Reply(200, {"content-type": "application/json"}, body=listing))
        atoms.script("/events", [], then=Reply(404, {"content-type": "application/json"}, body=b'{"status":false}'))
        config = make_config(atoms.base_url)
        config["discovery"] = {"poll": True, "interval": 0.5}
        runner = build_runner(config, [], seen)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            with trio.fail_after(5):
                while "CALL-L" not in seen.finished or len(atoms.at("/conversation")) < 2:
                    await trio.sleep(0.02)
            runner.stop()
    assert seen.finished == {"CALL-L": "not_found"}  # followed (and over), while the huge id never was
    assert [request.query for request in atoms.at("/events")] == ["callId=CALL-L"]
    assert runner.stats.call_ids_refused["listing"] >= 2  # every listing shows it again: counted each time
    assert runner.stats.listing_failures == 0
