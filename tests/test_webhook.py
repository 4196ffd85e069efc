"""The bundled ``webhook`` plugin as a receiver sees it: a real HTTP server on 127.0.0.1 (``receiver.py``) that
records every request, the simulator feeding the runner (both run with ``hookrunner.testing``, as a third-party
plugin's tests would; real ``hookrunner`` processes where the process is the point), and the dead-letter file.

Each test asserts what the owner of an endpoint or the person running hookrunner notices: which messages arrived,
in which order, with which headers and signatures (checked by an implementation of the Standard Webhooks
specification written here, by the ``standardwebhooks`` package and by the plugin's own ``verify``), how failures
were retried, what ended in the dead-letter file, the exit code, and the log lines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import signal
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import trio

import hookrunner
from hookrunner import Trigger, hookimpl
from hookrunner._delivery.dead_letters import DeadLetterFile
from hookrunner._delivery.outbox import Outbox, OutboxMessage, Outcome
from hookrunner.testing import RunResult, config_table, run_plugins, simulator
from hookrunner_plugins.webhook import WebhookVerificationError, verify

from helpers import afinish, finish, write_config
from hookrunner.testing.receiver import ReceivedRequest, Receiver, Reply, refusing_port, running_receiver

UNREACHABLE = "http://127.0.0.1:9"  # for configs that `check` refuses before anything connects

#: Delays small enough for tests; each test overrides what it is about.
FAST = {"timeout": 0.3, "retry_initial_delay": 0.05, "retry_max_delay": 0.2, "max_attempts": 3}


# -- secrets and signatures --------------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def secret_env(monkeypatch: pytest.MonkeyPatch, variable: str) -> str:
    """A fresh secret put in the environment variable an endpoint's ``secret_env`` names (in-process runs)."""
    secret = new_secret()
    monkeypatch.setenv(variable, secret)
    return secret


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The spec, written out independently of the plugin and of ``standardwebhooks``:
    base64(HMAC-SHA256(base64decode(secret after whsec_), "{id}.{timestamp}.{body}"))."""
    key = base64.b64decode(secret[len("whsec_") :])
    return base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()


def signatures(headers: dict[str, str]) -> list[str]:
    """The base64 parts of the ``v1,`` entries of ``webhook-signature``; fails on any other shape."""
    entries = headers["webhook-signature"].split(" ")
    assert all(entry.startswith("v1,") for entry in entries), entries
    return [entry[len("v1,") :] for entry in entries]


def independently_verified(body: bytes, headers: dict[str, str], secret: str) -> bool:
    wanted = expected_signature(secret, headers["webhook-id"], headers["webhook-timestamp"], body)
    return any(hmac.compare_digest(wanted, given) for given in signatures(headers))


def assert_signed(request: ReceivedRequest, secret: str) -> Any:
    """The request verifies three independent ways; returns the parsed body."""
    assert independently_verified(request.body, request.headers, secret), request.headers
    parsed = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    assert verify(request.body, request.headers, secret) == parsed
    return parsed


def assert_standard_headers(request: ReceivedRequest) -> None:
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"hookrunner/{hookrunner.__version__}"
    assert headers["webhook-id"]
    assert re.fullmatch(r"\d+", headers["webhook-timestamp"]), headers["webhook-timestamp"]
    assert abs(int(headers["webhook-timestamp"]) - request.wall) <= 5


def assert_utc_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


# -- scripts, configs and what came out --------------------------------------------------------------------------


def conversation(call_id: str, turns: int, spacing: float = 0.01) -> list[dict[str, Any]]:
    """A call with lifecycle events, agent turns, interims and finals (finals carry fields Atoms may add)."""
    events: list[dict[str, Any]] = [{"at": 0, "event_type": "call_start", "telephony_id": f"TEL-{call_id}"}]
    at = 0.0
    for turn in range(turns):
        at += spacing
        events.append({"at": at, "event_type": "tts_completed", "tts_text": f"{call_id} agent {turn}", "tts_latency": 90 + turn})
        at += spacing
        events.append({"at": at, "event_type": "user_interim_transcription", "interim_transcription_text": "i wa"})
        at += spacing
        events.append(
            {
                "at": at,
                "event_type": "user_transcription",
                "user_transcription_text": f"{call_id} caller {turn}",
                "stt": {"vendor": "test", "confidence": 0.5 + turn / 100},  # unknown to hookrunner: passed on
            }
        )
    events.append({"at": at + spacing, "event_type": "call_end", "metadata": {"duration": turns}})
    return events


def finals(n: int, spacing: float = 0.0, text: str = "turn") -> list[dict[str, Any]]:
    return [{"at": i * spacing, "event_type": "user_transcription", "user_transcription_text": f"{text} {i}"} for i in range(n)]


def endpoint(name: str, url: str, secret_variable: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret_env": secret_variable, **FAST, **keys}


def webhook_settings(endpoints: list[dict[str, Any]], dead_letter: Path | None = None) -> dict[str, Any]:
    """The ``[plugins.webhook]`` table (no ``dead_letter`` key: the plugin's default file)."""
    table: dict[str, Any] = {"endpoints": endpoints}
    if dead_letter is not None:
        table["dead_letter"] = str(dead_letter)
    return {"webhook": table}


def webhook_config(
    base_url: str, endpoints: list[dict[str, Any]], dead_letter: Path | None, **runner: Any
) -> dict[str, Any]:
    """A config table for a ``hookrunner`` process: the webhook plugin on, the other installed plugins off."""
    return config_table(base_url, enable=["webhook"], settings=webhook_settings(endpoints, dead_letter), runner=runner)


def read_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def run_with_webhook(
    tmp_path: Path, calls: list[dict[str, Any]], endpoints: list[dict[str, Any]], *plugins: Any, **runner: Any
) -> tuple[int, RunResult, list[dict[str, Any]]]:
    """Run the runner in-process on a simulator of ``calls`` with the webhook plugin and ``plugins``;
    (exit code, what the run did, dead letters)."""
    dead_letter = tmp_path / "dead-letters.jsonl"
    result = await run_plugins(
        list(plugins), calls, enable=["webhook"], settings=webhook_settings(endpoints, dead_letter), runner=runner,
        base_dir=tmp_path,
    )  # fmt: skip
    return result.exit_code, result, read_letters(dead_letter)


def position(body: dict[str, Any]) -> tuple[str, int]:
    """(call id, index in the script) of a message about a scripted event (simulator ids: CALL_INDEX_MS)."""
    call_id, index, _ = body["data"]["event_id"].rsplit("_", 2)
    assert call_id == body["call_id"]
    return call_id, int(index)


def scripted(calls: list[dict[str, Any]], patterns: list[str]) -> list[tuple[str, int]]:
    return [
        (call["id"], index)
        for call in calls
        for index, event in enumerate(call["events"])
        if any(fnmatchcase(event["event_type"], pattern) for pattern in patterns)
    ]


def assert_nothing_lost(
    calls: list[dict[str, Any]],
    patterns: list[str],
    requests: list[ReceivedRequest],
    letters: list[dict[str, Any]],
    name: str,
) -> None:
    """Every scripted event the endpoint wants was either answered 2xx or dead-lettered, exactly once."""
    delivered = [position(request.json()) for request in requests if request.succeeded]
    dead = [position(letter["body"]) for letter in letters if letter["endpoint"] == name]
    assert sorted(delivered + dead) == sorted(scripted(calls, patterns)), (delivered, dead)


def assert_letter(letter: dict[str, Any], *, name: str, attempts: int, reason: str) -> None:
    """The fields a person (and `hookrunner redeliver`) needs on a dead-letter line."""
    assert letter["plugin"] == "webhook"
    assert letter["endpoint"] == name
    assert letter["id"]
    assert letter["key"] == letter["body"]["call_id"]
    assert reason in letter["reason"], letter
    assert letter["attempts"] == attempts, letter
    assert {"status", "error", "first_attempt", "last_attempt"} <= set(letter), letter
    if attempts:
        first, last = assert_utc_iso(letter["first_attempt"]), assert_utc_iso(letter["last_attempt"])
        assert first <= last


def ids_of(requests: list[ReceivedRequest]) -> list[str]:
    return [request.headers["webhook-id"] for request in requests]


# -- what a receiver gets ------------------------------------------------------------------------------------------


async def test_two_endpoints_receive_exactly_their_event_types_of_three_calls_in_order_and_verifiably_signed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {"/transcripts": secret_env(monkeypatch, "HR_TEST_WH_A"), "/lifecycle": secret_env(monkeypatch, "HR_TEST_WH_B")}
    patterns = {"/transcripts": ["user_transcription", "trigger.*"], "/lifecycle": ["call_*", "tts_completed"]}
    calls = [{"id": f"CALL-W{n}", "events": conversation(f"CALL-W{n}", turns=4)} for n in range(3)]
    async with running_receiver() as receiver:
        endpoints = [
            endpoint("transcripts", receiver.url("/transcripts"), "HR_TEST_WH_A", events=patterns["/transcripts"]),
            endpoint("lifecycle", receiver.url("/lifecycle"), "HR_TEST_WH_B", events=patterns["/lifecycle"]),
        ]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    assert letters == []
    assert {request.path for request in receiver.requests} == {"/transcripts", "/lifecycle"}
    for path, secret in secrets.items():
        requests = receiver.at(path)
        assert all(request.method == "POST" and request.succeeded for request in requests)
        assert len(set(ids_of(requests))) == len(requests), "a message was sent twice"
        for call in calls:
            mine = [request for request in requests if request.json()["call_id"] == call["id"]]
            wanted = [index for cid, index in scripted([call], patterns[path])]
            assert [position(request.json())[1] for request in mine] == wanted, (path, call["id"])
            for request, index in zip(mine, wanted):
                assert_standard_headers(request)
                body = assert_signed(request, secret)
                assert set(body) == {"type", "timestamp", "call_id", "data"}
                fields = {key: value for key, value in call["events"][index].items() if key != "at"}
                data = body["data"]
                # the event exactly as the simulator sent it: the script's fields (unknown ones included) plus
                # the id, timestamp and call id the simulator adds
                assert data == {**fields, "event_id": data["event_id"], "timestamp": data["timestamp"], "call_id": call["id"]}
                assert body["type"] == fields["event_type"] and body["call_id"] == call["id"]
                assert assert_utc_iso(body["timestamp"]) == datetime.fromisoformat(data["timestamp"])
    # a body changed on the way does not verify
    request = receiver.at("/transcripts")[0]
    tampered = request.body.replace(b"caller", b"callee")
    assert tampered != request.body
    with pytest.raises(WebhookVerificationError):
        verify(tampered, request.headers, secrets["/transcripts"])
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secrets["/transcripts"]).verify(tampered, request.headers)
    assert not independently_verified(tampered, request.headers, secrets["/transcripts"])
    with pytest.raises(WebhookVerificationError):  # and the other endpoint's secret does not verify it either
        verify(request.body, request.headers, secrets["/lifecycle"])


class CancelWordDetector:
    """A detector plugin: a trigger for every final that says ``word``."""

    def __init__(self, word: str = "cancel") -> None:
        self.word = word
        self.app: Any = None
        self.emitted: list[Trigger] = []

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.app = app

    @hookimpl
    def on_user_transcription(self, event: Any, call: Any) -> None:
        if self.word in event.text:
            trigger = Trigger(
                type="keyword",
                call_id=call.id,
                rule="cancel-words",
                event_id=event.event_id,
                event_type=event.event_type,
                timestamp=event.timestamp,
                severity="warning",
                labels={"team": "retention"},
                data={"keyword": self.word, "text": event.text},
            )
            self.emitted.append(trigger)
            self.app.emit_trigger(trigger)


async def test_triggers_reach_an_endpoint_filtering_on_trigger_as_trigger_dot_type_with_their_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = secret_env(monkeypatch, "HR_TEST_WH")
    texts = ["hello there", "i want to cancel", "what does it cost", "cancel it now please"]
    calls = [
        {"id": "CALL-TRIG", "events": [{"at": i * 0.01, "event_type": "user_transcription", "user_transcription_text": t} for i, t in enumerate(texts)]}
    ]
    detector = CancelWordDetector()
    async with running_receiver() as receiver:
        endpoints = [endpoint("alerts", receiver.url("/alerts"), "HR_TEST_WH", events=["trigger"])]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints, detector)
    assert code == 0 and letters == []
    requests = receiver.at("/alerts")
    assert len(requests) == 2 == len(detector.emitted)
    for request, trigger, index in zip(requests, detector.emitted, (1, 3)):
        assert_standard_headers(request)
        body = assert_signed(request, secret)
        assert set(body) == {"type", "timestamp", "call_id", "data"}
        assert body["type"] == "trigger.keyword"
        assert body["call_id"] == "CALL-TRIG"
        assert_utc_iso(body["timestamp"])
        data = body["data"]
        assert data["type"] == "keyword" and data["rule"] == "cancel-words" and data["call_id"] == "CALL-TRIG"
        assert data["event_id"].startswith(f"CALL-TRIG_{index}_") and data["event_type"] == "user_transcription"
        assert data["severity"] == "warning" and data["labels"] == {"team": "retention"}
        assert data["data"] == {"keyword": "cancel", "text": texts[index]}
        assert data["source"] == "CancelWordDetector"  # the runner names the detector that emitted it
        assert assert_utc_iso(body["timestamp"]) == trigger.timestamp
    assert len(set(ids_of(requests))) == 2


# -- retries, dead letters, nothing lost ---------------------------------------------------------------------------


async def test_500_twice_then_200_is_delivered_on_the_third_attempt_with_the_same_webhook_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-FLAKY", "events": finals(3)}]
    async with running_receiver() as receiver:
        receiver.script("/flaky", [500, 500], then=200)
        endpoints = [endpoint("flaky", receiver.url("/flaky"), "HR_TEST_WH", events=["user_transcription"], max_attempts=4)]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    assert letters == []
    requests = receiver.at("/flaky")
    assert [request.status for request in requests] == [500, 500, 200, 200, 200]
    first_three = requests[:3]
    assert len(set(ids_of(first_three))) == 1, "webhook-id changed between attempts"
    assert len({request.body for request in first_three}) == 1
    for request in requests:
        assert_signed(request, secret)  # every attempt is signed afresh
    assert [position(request.json())[1] for request in requests] == [0, 0, 0, 1, 2]
    assert_nothing_lost(calls, ["user_transcription"], requests, letters, "flaky")


async def test_429_with_retry_after_is_retried_no_sooner_than_the_receiver_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-LIMITED", "events": finals(2)}]
    async with running_receiver() as receiver:
        receiver.script("/limited", [Reply(429, {"Retry-After": "0.5"})], then=200)
        endpoints = [endpoint("limited", receiver.url("/limited"), "HR_TEST_WH", events=["user_transcription"])]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0 and letters == []
    requests = receiver.at("/limited")
    assert [request.status for request in requests] == [429, 200, 200]
    assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]
    assert requests[1].arrived - requests[0].arrived >= 0.5
    assert_nothing_lost(calls, ["user_transcription"], requests, letters, "limited")


async def test_a_receiver_slower_than_timeout_is_retried_then_dead_lettered_after_max_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": f"CALL-SLOW-{n}", "events": finals(1)} for n in range(2)]
    async with running_receiver() as receiver:
        receiver.script("/slow", then=Reply(200, delay=1.0))
        endpoints = [
            endpoint("slow", receiver.url("/slow"), "HR_TEST_WH", events=["user_transcription"], max_in_flight=2)
        ]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints, hook_timeout=5)
    assert code == 0
    requests = receiver.at("/slow")
    assert len(requests) == 6 and all(request.disconnected for request in requests)  # 3 attempts x 2 messages
    assert len(letters) == 2
    for letter in letters:
        assert_letter(letter, name="slow", attempts=3, reason="retries exhausted")
        assert letter["status"] is None and "0.3 s" in letter["error"]
        attempts = [request for request in requests if request.headers["webhook-id"] == letter["id"]]
        assert len(attempts) == 3
        assert json.loads(attempts[0].body) == letter["body"]
    assert_nothing_lost(calls, ["user_transcription"], requests, letters, "slow")


async def test_400_is_not_retried_and_each_message_is_dead_lettered_with_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-BAD", "events": finals(3)}]
    async with running_receiver() as receiver:
        receiver.script("/bad", then=400)
        endpoints = [endpoint("bad", receiver.url("/bad"), "HR_TEST_WH", events=["user_transcription"])]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    requests = receiver.at("/bad")
    assert len(requests) == 3 and len(set(ids_of(requests))) == 3  # exactly one request per message
    assert [letter["id"] for letter in letters] == ids_of(requests)
    for letter, request in zip(letters, requests):
        assert_letter(letter, name="bad", attempts=1, reason="rejected")
        assert letter["status"] == 400
        assert letter["body"] == request.json()
        assert letter["first_attempt"] == letter["last_attempt"]
    assert_nothing_lost(calls, ["user_transcription"], requests, letters, "bad")
    assert not any("retrying" in record.getMessage() for record in caplog.records)


async def test_connection_refused_is_retried_up_to_max_attempts_then_dead_lettered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-DOWN", "events": finals(2)}]
    with refusing_port() as down:
        endpoints = [endpoint("down", down.url("/down"), "HR_TEST_WH", events=["user_transcription"], max_attempts=4)]
        code, result, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    assert result.stats.calls_finished == {"ended": 1}
    assert [position(letter["body"]) for letter in letters] == [("CALL-DOWN", 0), ("CALL-DOWN", 1)]
    for letter in letters:
        assert_letter(letter, name="down", attempts=4, reason="retries exhausted")
        assert letter["status"] is None and "connect" in letter["error"].lower()
        assert letter["first_attempt"] < letter["last_attempt"]
    assert_nothing_lost(calls, ["user_transcription"], [], letters, "down")


async def test_410_gone_stops_the_endpoint_with_one_error_line_and_later_messages_go_straight_to_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-GONE", "events": finals(4, spacing=0.1)}]  # the later finals come after the 410
    caplog.set_level(logging.INFO)
    async with running_receiver() as receiver:
        receiver.script("/gone", then=410)
        endpoints = [endpoint("gone", receiver.url("/gone"), "HR_TEST_WH", events=["user_transcription"])]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    requests = receiver.at("/gone")
    assert len(requests) == 1
    letters.sort(key=lambda letter: position(letter["body"]))  # the file need not be in event order
    assert [position(letter["body"])[1] for letter in letters] == [0, 1, 2, 3]
    assert_letter(letters[0], name="gone", attempts=1, reason="gone")
    assert letters[0]["status"] == 410 and letters[0]["id"] == requests[0].headers["webhook-id"]
    for letter in letters[1:]:
        assert_letter(letter, name="gone", attempts=0, reason="")  # never attempted
    assert_nothing_lost(calls, ["user_transcription"], requests, letters, "gone")
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "gone" in errors[0] and "410" in errors[0]


async def test_a_retried_message_holds_back_its_calls_later_messages_but_not_another_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": call_id, "events": finals(6, spacing=0.05)} for call_id in ("CALL-A", "CALL-B")]
    failed: list[ReceivedRequest] = []

    def fail_call_a_once(request: ReceivedRequest) -> Reply | None:
        if request.json()["call_id"] == "CALL-A" and not failed:
            failed.append(request)
            return Reply(500, {"Retry-After": "0.5"})
        return None

    async with running_receiver() as receiver:
        receiver.respond("/ordered", fail_call_a_once)
        endpoints = [
            endpoint("ordered", receiver.url("/ordered"), "HR_TEST_WH", events=["user_transcription"], max_in_flight=2)
        ]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0 and letters == []
    requests = receiver.at("/ordered")
    a = [request for request in requests if request.json()["call_id"] == "CALL-A"]
    b = [request for request in requests if request.json()["call_id"] == "CALL-B"]
    assert [position(request.json())[1] for request in a] == [0, 0, 1, 2, 3, 4, 5]
    assert [request.status for request in a] == [500] + [200] * 6
    retry = a[1]
    assert retry.headers["webhook-id"] == a[0].headers["webhook-id"]
    assert retry.arrived - a[0].arrived >= 0.5
    assert all(later.arrived >= retry.answered for later in a[2:]), "a later message of CALL-A overtook the retry"
    assert [position(request.json())[1] for request in b] == [0, 1, 2, 3, 4, 5]
    assert all(request.succeeded for request in b)
    assert all(request.arrived < retry.arrived for request in b), "CALL-B waited for CALL-A's retry"


def max_overlap(requests: list[ReceivedRequest]) -> int:
    """The most requests the receiver was answering at the same moment."""
    moments = sorted([(r.arrived, 1) for r in requests] + [(r.answered or r.arrived, -1) for r in requests], key=lambda m: (m[0], m[1]))
    active = most = 0
    for _, change in moments:
        active += change
        most = max(most, active)
    return most


async def test_at_most_max_in_flight_requests_run_at_once_across_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": f"CALL-F{n}", "events": finals(1)} for n in range(6)]
    async with running_receiver() as receiver:
        receiver.script("/busy", then=Reply(200, delay=0.3))
        endpoints = [
            endpoint("busy", receiver.url("/busy"), "HR_TEST_WH", events=["user_transcription"], max_in_flight=2, timeout=2)
        ]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0 and letters == []
    requests = receiver.at("/busy")
    assert len(requests) == 6 and all(request.succeeded for request in requests)
    assert max_overlap(requests) == 2


async def test_max_retry_time_ends_the_retries_before_max_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-RT", "events": finals(1)}]
    async with running_receiver() as receiver:
        receiver.script("/down", then=503)
        endpoints = [
            endpoint(
                "brief", receiver.url("/down"), "HR_TEST_WH", events=["user_transcription"],
                max_attempts=100, max_retry_time=0.5, retry_initial_delay=0.05, retry_max_delay=0.1,
            )
        ]  # fmt: skip
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    requests = receiver.at("/down")
    [letter] = letters
    assert_letter(letter, name="brief", attempts=len(requests), reason="retries exhausted")
    assert 2 <= len(requests) < 100
    assert letter["status"] == 503
    assert requests[-1].arrived - requests[0].arrived <= 0.5 + 0.1  # the last attempt began within the time


async def test_default_events_are_finals_agent_turns_and_triggers_and_calls_limits_the_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": call_id, "events": conversation(call_id, turns=3)} for call_id in ("CALL-D1", "CALL-D2")]
    detector = CancelWordDetector(word="caller 1")
    async with running_receiver() as receiver:
        endpoints = [{"name": "defaults", "url": receiver.url("/defaults"), "secret_env": "HR_TEST_WH", "calls": ["CALL-D1"]}]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints, detector)
    assert code == 0 and letters == []
    bodies = [request.json() for request in receiver.at("/defaults")]
    assert {body["call_id"] for body in bodies} == {"CALL-D1"}
    events = [position(body)[1] for body in bodies if not body["type"].startswith("trigger.")]
    assert events == [index for _, index in scripted(calls[:1], ["user_transcription", "tts_completed"])]
    assert [body["type"] for body in bodies if body["type"].startswith("trigger.")] == ["trigger.keyword"]
    assert len(detector.emitted) == 2  # one per call; CALL-D2's is not for this endpoint


async def test_after_410_no_further_request_reaches_the_endpoint_not_even_a_pending_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": call_id, "events": finals(2)} for call_id in ("CALL-GONE-A", "CALL-GONE-B")]

    def answer(request: ReceivedRequest) -> Reply:
        if request.json()["call_id"] == "CALL-GONE-A":
            return Reply(410, delay=0.2)  # answered while B's first message waits to be retried
        return Reply(500, {"Retry-After": "0.5"})

    async with running_receiver() as receiver:
        receiver.respond("/gone", answer)
        endpoints = [
            endpoint("gone", receiver.url("/gone"), "HR_TEST_WH", events=["user_transcription"], max_in_flight=2)
        ]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    requests = receiver.at("/gone")
    gone = [request for request in requests if request.status == 410]
    assert len(gone) == 1
    after = [request for request in requests if request.arrived > gone[0].answered]
    assert after == [], f"{len(after)} request(s) sent after the endpoint answered 410 Gone: {[r.json()['call_id'] for r in after]}"
    assert_nothing_lost(calls, ["user_transcription"], requests, letters, "gone")


async def test_at_the_end_of_a_run_pending_retries_may_use_shutdown_grace_to_be_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 4: a message is dead-lettered when it is "still queued when shutdown_grace runs out"; at the natural
    end of a run the outbox should get shutdown_grace to drain, not runner.hook_timeout (a per-hook limit)."""
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-END", "events": finals(1)}]
    async with running_receiver() as receiver:
        receiver.script("/late", [Reply(503, {"Retry-After": "1"})], then=200)
        endpoints = [endpoint("late", receiver.url("/late"), "HR_TEST_WH", events=["user_transcription"])]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints, hook_timeout=0.5, shutdown_grace=3)
    assert code == 0
    assert [request.status for request in receiver.at("/late")] == [503, 200], letters
    assert letters == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- signatures during a secret rotation, batching, bounds -----------------------------------------------------------


async def test_secret_env_list_signs_with_every_secret_during_a_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new = secret_env(monkeypatch, "HR_TEST_WH_NEW")
    old = secret_env(monkeypatch, "HR_TEST_WH_OLD")
    calls = [{"id": "CALL-ROT", "events": finals(2)}]
    async with running_receiver() as receiver:
        endpoints = [
            endpoint("rotating", receiver.url("/rot"), ["HR_TEST_WH_NEW", "HR_TEST_WH_OLD"], events=["user_transcription"])
        ]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0 and letters == []
    requests = receiver.at("/rot")
    assert len(requests) == 2
    for request in requests:
        headers = request.headers
        given = signatures(headers)
        assert len(given) == 2, headers["webhook-signature"]
        for signature, secret, other in ((given[0], new, old), (given[1], old, new)):
            assert signature == expected_signature(secret, headers["webhook-id"], headers["webhook-timestamp"], request.body)
            assert signature != expected_signature(other, headers["webhook-id"], headers["webhook-timestamp"], request.body)
        assert_signed(request, new)
        assert_signed(request, old)
        with pytest.raises(WebhookVerificationError):
            verify(request.body, headers, new_secret())


async def test_batching_sends_json_arrays_with_every_event_once_in_call_order_signed_over_the_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": f"CALL-BATCH-{n}", "events": finals(10, spacing=0.01)} for n in range(3)]
    async with running_receiver() as receiver:
        endpoints = [
            endpoint(
                "batched", receiver.url("/batch"), "HR_TEST_WH", events=["user_transcription"],
                batch_max_events=5, batch_max_wait=0.2,
            )
        ]  # fmt: skip
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0 and letters == []
    requests = receiver.at("/batch")
    assert all(request.succeeded for request in requests)
    items = []
    item_ids: list[str] = []
    for request in requests:
        assert_standard_headers(request)
        body = assert_signed(request, secret)
        assert isinstance(body, list) and 1 <= len(body) <= 5, body
        for item in body:
            # batched items carry their own message id, stable across retries and batches, for deduplication
            assert set(item) == {"id", "type", "timestamp", "call_id", "data"} and item["type"] == "user_transcription"
            assert item["id"].startswith("msg_")
            items.append(position(item))
            item_ids.append(item["id"])
    assert len(set(item_ids)) == len(item_ids)
    assert max(len(request.json()) for request in requests) > 1, "nothing was batched"
    assert len(requests) < 30
    assert sorted(items) == sorted(scripted(calls, ["user_transcription"])), "an event is missing or repeated"
    for call in calls:
        assert [index for call_id, index in items if call_id == call["id"]] == list(range(10)), call["id"]
    assert len(set(ids_of(requests))) == len(requests)


async def test_a_batch_still_waiting_for_more_events_at_shutdown_is_delivered_or_dead_lettered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": "CALL-WAIT", "events": finals(2)}]
    async with running_receiver() as receiver:
        endpoints = [
            endpoint(
                "patient", receiver.url("/batch"), "HR_TEST_WH", events=["user_transcription"],
                batch_max_events=10, batch_max_wait=5,
            )
        ]  # fmt: skip
        started = trio.current_time()
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints, hook_timeout=0.5, shutdown_grace=1)
        elapsed = trio.current_time() - started
    assert code == 0
    assert elapsed < 3
    delivered = [item for request in receiver.at("/batch") if request.succeeded for item in request.json()]
    assert len(delivered) + len(letters) == 2, f"{len(delivered)} delivered, {len(letters)} dead-lettered, of 2"
    assert sorted([position(item) for item in delivered] + [position(letter["body"]) for letter in letters]) == [
        ("CALL-WAIT", 0),
        ("CALL-WAIT", 1),
    ]


class CallClock:
    """Notes when each call finished, to show the stream was not slowed."""

    def __init__(self) -> None:
        self.finished: dict[str, tuple[str, float]] = {}

    @hookimpl
    def on_call_finished(self, call: Any, reason: str) -> None:
        self.finished[call.id] = (reason, trio.current_time())


async def test_a_full_queue_dead_letters_further_messages_with_a_warning_and_the_stream_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    calls = [{"id": f"CALL-Q{n}", "events": finals(5, spacing=0.02)} for n in range(2)]
    clock = CallClock()
    async with running_receiver() as receiver:
        receiver.script("/stalled", then=Reply(200, delay=2.0))
        endpoints = [
            endpoint(
                "stalled", receiver.url("/stalled"), "HR_TEST_WH", events=["user_transcription"],
                max_queue=3, max_in_flight=1, timeout=5,
            )
        ]  # fmt: skip
        started = trio.current_time()
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints, clock, hook_timeout=1.0)
        elapsed = trio.current_time() - started
    assert code == 0
    assert {call_id: reason for call_id, (reason, _) in clock.finished.items()} == {"CALL-Q0": "ended", "CALL-Q1": "ended"}
    assert all(at - started < 1.0 for _, at in clock.finished.values()), "the stalled receiver slowed the calls"
    assert elapsed < 3.0
    full = [letter for letter in letters if "queue full" in letter["reason"]]
    assert len(full) >= 10 - 1 - 3, letters  # one in flight, three queued, the rest refused at once
    for letter in full:
        assert_letter(letter, name="stalled", attempts=0, reason="queue full")
    # one warning when the queue fills (not one per message: an overload must not flood the log)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "full" in r.getMessage()]
    assert len([w for w in warnings if "outbox full" in w]) == 1, warnings
    # what was queued or in flight at shutdown went to the file too: all ten are accounted for
    assert_nothing_lost(calls, ["user_transcription"], receiver.at("/stalled"), letters, "stalled")


# -- the outbox the plugin stands on (shared with other notifier plugins) ------------------------------------------


async def test_outbox_close_delivers_a_message_taken_just_as_another_delivery_finished(tmp_path: Path) -> None:
    """``close()`` without a timeout waits until everything is delivered. The window probed here: message "b" is
    taken from the queue while "a" (another key) finishes; the outbox must not look idle in between."""
    outcomes = []
    for attempt in range(30):
        delivered: list[str] = []
        release = trio.Event()

        async def deliver(batch: list[OutboxMessage]) -> Outcome:
            if batch[0].key == "first":
                await release.wait()
            else:
                await trio.sleep(0.001)
            delivered.extend(message.id for message in batch)
            return Outcome.delivered(200)

        path = tmp_path / f"dead-{attempt}.jsonl"
        outbox = Outbox("race", deliver, DeadLetterFile(path), plugin="test", max_in_flight=4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            outbox.submit(OutboxMessage(id="a", key="first", body={}))
            await trio.sleep(0.01)
            assert outbox.pending == 1 and not delivered  # "a" is in flight, waiting for release
            outbox.submit(OutboxMessage(id="b", key="second", body={}))
            release.set()
            await outbox.close()
            nursery.cancel_scope.cancel()
        dead = [letter["id"] for letter in read_letters(path)]
        outcomes.append((sorted(delivered), dead))
    lost = sum(1 for got, dead in outcomes if "b" not in got + dead)
    dead_lettered = sum(1 for _, dead in outcomes if dead)
    assert (lost, dead_lettered) == (0, 0), f"of 30 closes: {lost} lost message b, {dead_lettered} dead-lettered it"


# -- logs -----------------------------------------------------------------------------------------------------------


async def test_shutdown_logs_one_summary_line_per_endpoint_with_counts_and_latency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret_env(monkeypatch, "HR_TEST_WH")
    caplog.set_level(logging.INFO)
    calls = [{"id": "CALL-SUM", "events": finals(4)}]
    async with running_receiver() as receiver:
        receiver.script("/steady", [500], then=200)
        receiver.script("/refusing", then=422)
        endpoints = [
            endpoint("steady", receiver.url("/steady"), "HR_TEST_WH", events=["user_transcription"]),
            endpoint("refusing", receiver.url("/refusing"), "HR_TEST_WH", events=["user_transcription"]),
        ]
        code, _, letters = await run_with_webhook(tmp_path, calls, endpoints)
    assert code == 0
    assert len(letters) == 4
    lines = [record.getMessage() for record in caplog.records]
    steady = [line for line in lines if re.match(r"webhook steady: \d+ delivered", line)]
    refusing = [line for line in lines if re.match(r"webhook refusing: \d+ delivered", line)]
    assert len(steady) == 1 and len(refusing) == 1, lines
    match = re.fullmatch(
        r"webhook steady: 4 delivered, 1 retried, 0 dead-lettered, latency p50 (\d+) ms p99 (\d+) ms", steady[0]
    )
    assert match, steady[0]
    p50, p99 = int(match[1]), int(match[2])
    assert p50 <= p99
    first = receiver.at("/steady")[:2]  # the failed attempt and its retry
    assert p99 >= (first[1].answered - first[0].arrived) * 1000 - 1
    assert refusing[0].startswith("webhook refusing: 0 delivered, 0 retried, 4 dead-lettered"), refusing[0]


# -- real processes: SIGTERM, check, log hygiene, redeliver -----------------------------------------------------------




async def test_sigterm_with_deliveries_pending_exits_0_within_shutdown_grace_and_dead_letters_the_rest(
    cli, tmp_path: Path
) -> None:
    grace = 1.5
    secret = new_secret()
    dead_letter = tmp_path / "letters" / "dead.jsonl"
    calls = [{"id": f"CALL-TERM-{n}", "events": finals(60, spacing=0.1)} for n in range(2)]  # 6 s calls
    async with running_receiver() as receiver, simulator(calls) as sim:
        receiver.script("/hook", then=Reply(200, delay=10.0))
        table = webhook_config(
            sim.base_url,
            [endpoint("slow", receiver.url("/hook"), "HR_TEST_WH", events=["user_transcription"], timeout=15)],
            dead_letter,
            calls=[call["id"] for call in calls],
            shutdown_grace=grace,
        )
        process = cli("run", str(write_config(tmp_path, table)), env={"HR_TEST_WH": secret})
        await receiver.wait_for(2, "/hook", timeout=10)  # both calls have a message in flight
        await trio.sleep(0.5)  # and more queued behind them
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        stopped = trio.current_time()
        code, out, err = await afinish(process, timeout=grace + 5)
        elapsed = trio.current_time() - stopped
    assert code == 0, err
    assert elapsed < grace + 1, f"exited {elapsed:.2f} s after SIGTERM"
    assert "Traceback" not in out + err
    letters = read_letters(dead_letter)
    assert not any(request.succeeded for request in receiver.requests)
    seen = {request.headers["webhook-id"] for request in receiver.requests}
    assert seen <= {letter["id"] for letter in letters}, "a message the receiver never acknowledged is lost"
    for call in calls:
        mine = [position(letter["body"]) for letter in letters if letter["key"] == call["id"]]
        # every message handed to the webhook was dead-lettered: a prefix of the call's finals, each once
        assert [index for _, index in mine] == list(range(len(mine))), mine
        assert len(mine) >= 3
    for letter in letters:
        assert_letter(letter, name="slow", attempts=letter["attempts"], reason="shutdown")
    summary = [line for line in err.splitlines() if "webhook slow:" in line and "dead-lettered" in line]
    assert len(summary) == 1 and f"{len(letters)} dead-lettered" in summary[0], err


async def test_the_dead_letter_file_is_next_to_the_config_by_default(cli, tmp_path: Path) -> None:
    secret = new_secret()
    directory = tmp_path / "conf"
    directory.mkdir()
    calls = [{"id": "CALL-DEF", "events": finals(2)}]
    with refusing_port() as down:
        async with simulator(calls) as sim:
            endpoints = [endpoint("down", down.url(), "HR_TEST_WH", events=["user_transcription"], max_attempts=1)]
            table = webhook_config(sim.base_url, endpoints, None, calls=["CALL-DEF"])  # no dead_letter key
            config = write_config(directory, table)
            code, out, err = await afinish(cli("run", str(config), env={"HR_TEST_WH": secret}))  # cwd: tmp_path
    assert code == 0, err
    letters = read_letters(directory / "hookrunner-dead-letters.jsonl")
    assert [position(letter["body"]) for letter in letters] == [("CALL-DEF", 0), ("CALL-DEF", 1)]
    assert all(letter["config"] == str(config.resolve()) for letter in letters)
    assert not (tmp_path / "hookrunner-dead-letters.jsonl").exists()


def check_table_with(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return webhook_config(UNREACHABLE, endpoints, None)


def test_check_names_each_bad_endpoint_key_in_one_line(cli, tmp_path: Path) -> None:
    secret = new_secret()
    unset = "HR_TEST_WH_NOT_SET"
    assert unset not in os.environ
    good = {"url": "https://hooks.example.com/in", "secret_env": "HR_TEST_WH"}
    endpoints = [
        {"name": "no-url", "secret_env": "HR_TEST_WH"},
        {"name": "crm", **good},
        {"name": "crm", **good},
        {"name": "typo", **good, "timout": 5},
        {"name": "unset", "url": "https://hooks.example.com/in", "secret_env": unset},
        {"name": "plain-env", "url": "https://hooks.example.com/in", "secret_env": "HR_TEST_WH_PLAIN"},
        {"name": "plain-inline", "url": "https://hooks.example.com/in", "secret": "plain-text-canary-91"},
        {"name": "reserved", **good, "headers": {"Webhook-Signature": "v1,forged", "X-Team": "ops"}},
    ]
    config = write_config(tmp_path, check_table_with(endpoints))
    env = {"HR_TEST_WH": secret, "HR_TEST_WH_PLAIN": "plain-env-canary-42"}
    code, out, err = finish(cli("check", str(config), env=env))
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.splitlines()
    expected = {
        "endpoints[0].url": "missing required key",
        "endpoints[2].name": "unique",
        "endpoints[3].timout": 'unknown key (did you mean "timeout"?)',
        "endpoints[4].secret_env": unset,
        "endpoints[5].secret_env": "whsec_",
        "endpoints[6].secret": "whsec_",
        "endpoints[7].headers.Webhook-Signature": "",
    }
    assert len(lines) == len(expected), err
    for key, words in expected.items():
        prefix = f"error: {config}: plugins.webhook.{key}: "
        found = [line for line in lines if line.startswith(prefix)]
        assert len(found) == 1, (key, err)
        assert words in found[0], found[0]
    assert "plain-env-canary-42" not in out + err and "plain-text-canary-91" not in out + err
    assert secret not in out + err


def test_check_warns_about_plain_http_to_another_host_but_exits_0(cli, tmp_path: Path) -> None:
    endpoints = [
        {"name": "remote", "url": "http://hooks.example.com/in", "secret_env": "HR_TEST_WH"},
        {"name": "local", "url": "http://127.0.0.1:8080/in", "secret_env": "HR_TEST_WH"},
    ]
    config = write_config(tmp_path, check_table_with(endpoints))
    code, out, err = finish(cli("check", str(config), env={"HR_TEST_WH": new_secret()}))
    assert code == 0, err
    assert f"{config}: OK" in out
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, err
    assert "plugins.webhook.endpoints[0].url" in warnings[0] and "hooks.example.com" in warnings[0]
    assert "plain http" in warnings[0]


async def test_debug_logs_never_show_the_secret_the_urls_query_or_auth_headers(cli, tmp_path: Path) -> None:
    secret = new_secret()
    token, bearer = "SECRET123", "Bearer XYZ-canary-77"
    calls = [{"id": "CALL-LOGS", "events": finals(4, spacing=0.02)}]
    with refusing_port() as down:
        async with running_receiver() as receiver, simulator(calls) as sim:
            receiver.script("/private", [500, 503, 400], then=200)  # retries, then a rejected message
            auth = {"Authorization": bearer}
            endpoints = [
                endpoint("private", receiver.url("/private", f"token={token}"), "HR_TEST_WH", headers=auth,
                         events=["user_transcription"]),
                endpoint("down", down.url("/down", f"token={token}"), "HR_TEST_WH", headers=auth,
                         events=["user_transcription"], max_attempts=2),
            ]  # fmt: skip
            table = webhook_config(sim.base_url, endpoints, tmp_path / "dead.jsonl", calls=["CALL-LOGS"])
            config = write_config(tmp_path, table)
            code, out, err = await afinish(
                cli("--log-level", "debug", "run", str(config), env={"HR_TEST_WH": secret})
            )
    assert code == 0, err
    requests = receiver.at("/private")
    # the receiver did get the query and the header: the logs had something to leak
    assert requests and all(r.query == f"token={token}" and r.headers["authorization"] == bearer for r in requests)
    assert "retrying" in err and "dead-letter" in err, err
    assert "private" in err and "down" in err
    output = out + err
    for leak in (secret, secret[len("whsec_") :], token, "token=", bearer, "XYZ-canary-77"):
        assert leak not in output, f"{leak!r} appears in the output"


# -- redeliver ------------------------------------------------------------------------------------------------------


async def dead_letters_of_a_run(
    cli, tmp_path: Path, secret: str, down_url: str, failing: Receiver
) -> tuple[Path, Path, list[dict[str, Any]]]:
    """A `hookrunner run` whose endpoints "down" (connection refused) and "failing" (503) dead-letter every
    final; (config, dead-letter file, its letters)."""
    dead_letter = tmp_path / "dead.jsonl"
    calls = [{"id": f"CALL-RE-{n}", "events": finals(3, spacing=0.01)} for n in range(2)]
    failing.script("/failing", then=503)
    endpoints = [
        endpoint("down", down_url, "HR_TEST_WH", events=["user_transcription"], max_attempts=2),
        endpoint("failing", failing.url("/failing"), "HR_TEST_WH", events=["user_transcription"], max_attempts=2),
    ]
    async with simulator(calls) as sim:
        table = webhook_config(sim.base_url, endpoints, dead_letter, calls=[c["id"] for c in calls])
        config = write_config(tmp_path, table)
        code, out, err = await afinish(cli("run", str(config), env={"HR_TEST_WH": secret}))
    assert code == 0, err
    letters = read_letters(dead_letter)
    assert sorted((letter["endpoint"], position(letter["body"])) for letter in letters) == sorted(
        (name, (call["id"], index)) for name in ("down", "failing") for call in calls for index in range(3)
    )
    return config, dead_letter, letters


def assert_redelivered(requests: list[ReceivedRequest], letters: list[dict[str, Any]], secret: str) -> None:
    """Each letter arrived once, with its original webhook-id and body, validly signed."""
    assert sorted(ids_of(requests)) == sorted(letter["id"] for letter in letters)
    by_id = {letter["id"]: letter for letter in letters}
    for request in requests:
        assert_standard_headers(request)
        assert assert_signed(request, secret) == by_id[request.headers["webhook-id"]]["body"]


async def test_redeliver_empties_the_file_into_the_recovered_receiver_with_original_ids_and_a_rerun_sends_nothing(
    cli, tmp_path: Path
) -> None:
    secret = new_secret()
    env = {"HR_TEST_WH": secret}
    with refusing_port() as down:
        async with running_receiver() as failing:
            config, dead_letter, letters = await dead_letters_of_a_run(cli, tmp_path, secret, down.url("/down"), failing)
            original_ids = {request.headers["webhook-id"] for request in failing.at("/failing")}
            before = len(failing.requests)
            failing.script("/failing", then=200)  # it recovered
            port = down.release()
            async with running_receiver(port=port) as recovered:  # the same URL now answers
                code, out, err = await afinish(cli("redeliver", str(dead_letter), env=env))
                assert code == 0, err
                assert "Traceback" not in out + err
                assert_redelivered(recovered.at("/down"), [l for l in letters if l["endpoint"] == "down"], secret)
                assert_redelivered(failing.requests[before:], [l for l in letters if l["endpoint"] == "failing"], secret)
                # the ids the receiver saw during the run are the ids it got again: it can deduplicate
                assert original_ids == {l["id"] for l in letters if l["endpoint"] == "failing"}
                assert read_letters(dead_letter) == []
                sent = len(recovered.requests) + len(failing.requests)

                code, out, err = await afinish(cli("redeliver", str(dead_letter), env=env))
                assert code == 0, err
                assert len(recovered.requests) + len(failing.requests) == sent, "a rerun sent something again"


async def test_redeliver_dry_run_sends_nothing_and_leaves_the_file(cli, tmp_path: Path) -> None:
    secret = new_secret()
    with refusing_port() as down:
        async with running_receiver() as failing:
            _, dead_letter, letters = await dead_letters_of_a_run(cli, tmp_path, secret, down.url("/down"), failing)
            failing.script("/failing", then=200)
            before_bytes, before_requests = dead_letter.read_bytes(), len(failing.requests)
            async with running_receiver(port=down.release()) as recovered:
                code, out, err = await afinish(cli("redeliver", str(dead_letter), "--dry-run", env={"HR_TEST_WH": secret}))
    assert code == 0, err
    assert recovered.requests == [] and len(failing.requests) == before_requests
    assert dead_letter.read_bytes() == before_bytes
    assert all(letter["id"] in out for letter in letters), out  # it says what it would send


async def test_redeliver_endpoint_option_sends_only_that_endpoints_letters(cli, tmp_path: Path) -> None:
    secret = new_secret()
    with refusing_port() as down:
        async with running_receiver() as failing:
            _, dead_letter, letters = await dead_letters_of_a_run(cli, tmp_path, secret, down.url("/down"), failing)
            failing.script("/failing", then=200)
            before = len(failing.requests)
            async with running_receiver(port=down.release()) as recovered:
                code, out, err = await afinish(
                    cli("redeliver", str(dead_letter), "--endpoint", "down", env={"HR_TEST_WH": secret})
                )
    assert code == 0, err
    assert len(failing.requests) == before, "a letter of another endpoint was sent"
    assert_redelivered(recovered.at("/down"), [l for l in letters if l["endpoint"] == "down"], secret)
    left = read_letters(dead_letter)
    assert [letter["id"] for letter in left] == [l["id"] for l in letters if l["endpoint"] == "failing"]


async def test_redeliver_exits_1_and_keeps_the_letters_still_refused(cli, tmp_path: Path) -> None:
    secret = new_secret()
    with refusing_port() as down:
        async with running_receiver() as failing:
            _, dead_letter, letters = await dead_letters_of_a_run(cli, tmp_path, secret, down.url("/down"), failing)
            # "failing" still answers 503; "down" is back
            async with running_receiver(port=down.release()) as recovered:
                code, out, err = await afinish(cli("redeliver", str(dead_letter), env={"HR_TEST_WH": secret}))
    assert code == 1, err
    assert "Traceback" not in out + err
    assert_redelivered(recovered.at("/down"), [l for l in letters if l["endpoint"] == "down"], secret)
    left = read_letters(dead_letter)
    assert sorted(letter["id"] for letter in left) == sorted(l["id"] for l in letters if l["endpoint"] == "failing")


def test_redeliver_of_a_missing_file_exits_2_with_one_line(cli, tmp_path: Path) -> None:
    code, out, err = finish(cli("redeliver", str(tmp_path / "nope.jsonl")))
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and "nope.jsonl" in lines[0], err


async def test_redeliver_without_the_secret_in_the_environment_exits_2_naming_the_variable(cli, tmp_path: Path) -> None:
    secret = new_secret()
    with refusing_port() as down:
        async with running_receiver() as failing:
            _, dead_letter, _ = await dead_letters_of_a_run(cli, tmp_path, secret, down.url("/down"), failing)
            before_bytes, before_requests = dead_letter.read_bytes(), len(failing.requests)
            failing.script("/failing", then=200)
            code, out, err = await afinish(cli("redeliver", str(dead_letter)))  # HR_TEST_WH not set
    assert code == 2
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err
    assert any("plugins.webhook.endpoints[0].secret_env" in line and "HR_TEST_WH" in line for line in lines), err
    assert dead_letter.read_bytes() == before_bytes and len(failing.requests) == before_requests


async def test_redeliver_keeps_another_plugins_letter_that_has_the_same_endpoint_name_and_id(cli, tmp_path: Path) -> None:
    """Two notifier plugins may each have an endpoint called "down" and derive the same message id from the same
    event; delivering the webhook's letter must not remove the other plugin's line."""
    secret = new_secret()
    with refusing_port() as down:
        async with running_receiver() as failing:
            _, dead_letter, letters = await dead_letters_of_a_run(cli, tmp_path, secret, down.url("/down"), failing)
            failing.script("/failing", then=200)
            twin = {**letters[0], "plugin": "othernotifier"}
            with dead_letter.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(twin) + "\n")
            async with running_receiver(port=down.release()) as recovered:
                code, out, err = await afinish(cli("redeliver", str(dead_letter), env={"HR_TEST_WH": secret}))
    assert code == 1, err  # the other plugin's letter has no deliverer here: kept, and said so
    assert_redelivered(recovered.at("/down"), [l for l in letters if l["endpoint"] == "down"], secret)
    assert read_letters(dead_letter) == [twin], "another plugin's dead letter was removed without being delivered"


def test_secrets_must_be_strict_base64_of_24_to_64_bytes() -> None:
    from hookrunner_plugins.webhook.signing import secret_problem

    assert secret_problem("whsec_" + base64.b64encode(os.urandom(32)).decode()) is None
    assert secret_problem("whsec_" + base64.b64encode(os.urandom(24)).decode().rstrip("=")) is None  # unpadded
    assert "base64" in secret_problem("whsec_plain-text-but-long-enough-abcdefgh-xyz!")
    assert "24 to 64 bytes" in secret_problem("whsec_" + base64.b64encode(os.urandom(16)).decode())
    assert "whsec_" in secret_problem(base64.b64encode(os.urandom(32)).decode())
