"""Deliveries to webhook receivers and Slack stay bounded whatever the other side does (issue 12).

A receiver that trickles its answer cannot hold a delivery past the endpoint's timeout; an endless answer is read
only up to a cap; a trigger whose text holds a lone surrogate (text a plugin cut inside an emoji) is delivered and
dead-lettered as U+FFFD instead of failing every write after it; an endpoint stopped by 410 or ``invalid_auth``
says so once rather than once per message; ``verify`` answers every malformed delivery with the one exception a
receiver catches; an endpoint that cannot start does not take the others with it; and Slack's Retry-After holds a
channel no longer than the poster's ``max_retry_after``.

Everything runs over real loopback sockets: the runner follows the simulator, the webhook plugin posts to the
tests' receiver (``hookrunner.testing.receiver``) or to a streaming server written here, the Slack plugin posts
to the fake Slack (``fake_slack.py``) or to that streaming server.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hookrunner import Trigger, hookimpl
from hookrunner._core.asgi import cancel_on_disconnect, read_body
from hookrunner.testing import RunResult, run_plugins
from hookrunner.testing.receiver import LoopbackServer, running_receiver, serving
from hookrunner_plugins import webhook as webhook_plugin
from hookrunner_plugins.slack import delivery as slack_delivery
from hookrunner_plugins.slack.delivery import Pacer, Poster
from hookrunner.delivery import Pacing
from hookrunner_plugins.slack.formatting import DEFAULT_TEMPLATE, message_payload
from hookrunner_plugins.slack.settings import RouteSettings
from hookrunner_plugins.webhook import WebhookVerificationError, verify
from hookrunner_plugins.webhook.signing import Signer

from fake_slack import Scripted, running_fake_slack

#: A lone high surrogate: the first half of an emoji whose second half was cut off.
LONE = "\ud83d"
REPLACEMENT = "\ufffd"
#: Where a final's text gets the lone surrogate: the simulator's JSON cannot carry one (events are cleaned at
#: decode), so the detector plugin below builds it, as a plugin cutting text would.
CUT = "<cut>"

#: Webhook endpoint keys small enough for tests; each test overrides what it is about.
FAST = {"timeout": 0.5, "retry_initial_delay": 0.05, "retry_max_delay": 0.2, "max_attempts": 3}
SLACK_FAST = {"pace": 0.2, "group_wait": 0.1, "timeout": 2.0, "retry_initial_delay": 0.05, "retry_max_delay": 0.2, "max_attempts": 3}
TOKEN_ENV = "HR_TEST_SLACK_TOKEN"
TOKEN = "xoxb-1111-2222-tokencanary7"
BAD_TOKEN_ENV = "HR_TEST_SLACK_BAD_TOKEN"
BAD_TOKEN = "xoxb-9999-8888-wrongcanary3"
OPS = "C0OPS"
MiB = 1024 * 1024


# -- secrets, calls, runs ----------------------------------------------------------------------------------------


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def secret_env(monkeypatch: pytest.MonkeyPatch, variable: str = "HR_TEST_WH") -> str:
    secret = new_secret()
    monkeypatch.setenv(variable, secret)
    return secret


def finals(n: int, spacing: float = 0.0, text: str = "turn") -> list[dict[str, Any]]:
    return [{"at": i * spacing, "event_type": "user_transcription", "user_transcription_text": f"{text} {i}"} for i in range(n)]


def said(call_id: str, texts: list[str], spacing: float = 0.05) -> list[dict[str, Any]]:
    """One call whose caller says ``texts``, ``spacing`` seconds apart."""
    events = [{"at": i * spacing, "event_type": "user_transcription", "user_transcription_text": t} for i, t in enumerate(texts)]
    return [{"id": call_id, "events": events}]


def endpoint(name: str, url: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret_env": "HR_TEST_WH", "events": ["user_transcription"], **FAST, **keys}


def read_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def run_webhook(
    tmp_path: Path, calls: list[dict[str, Any]], endpoints: list[dict[str, Any]], *plugins: Any, **runner: Any
) -> tuple[RunResult, list[dict[str, Any]]]:
    """The runner in-process on a simulator of ``calls`` with the webhook plugin; (what it did, dead letters)."""
    dead_letter = tmp_path / "dead-letters.jsonl"
    settings = {"webhook": {"endpoints": endpoints, "dead_letter": str(dead_letter)}}
    result = await run_plugins(list(plugins), calls, enable=["webhook"], settings=settings, runner=runner, base_dir=tmp_path)
    return result, read_letters(dead_letter)


def api_route(name: str = "ops", token_env: str = TOKEN_ENV, **keys: Any) -> dict[str, Any]:
    return {"name": name, "token_env": token_env, "channel": OPS, **keys}


async def run_slack(
    tmp_path: Path, api_base_url: str, routes: list[dict[str, Any]], calls: list[dict[str, Any]], *plugins: Any,
    **runner: Any,
) -> tuple[RunResult, list[dict[str, Any]]]:
    """The runner in-process with the Slack plugin posting to ``api_base_url``; (what it did, dead letters)."""
    dead_letter = tmp_path / "dead-letters.jsonl"
    table = {**SLACK_FAST, "api_base_url": api_base_url, "dead_letter": str(dead_letter), "routes": routes}
    result = await run_plugins(list(plugins), calls, enable=["slack"], settings={"slack": table}, runner=runner, base_dir=tmp_path)
    return result, read_letters(dead_letter)


@pytest.fixture
def slack_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(BAD_TOKEN_ENV, BAD_TOKEN)


def fake_slack(**keys: Any) -> Any:
    keys.setdefault("tokens", {TOKEN})
    keys.setdefault("channels", {OPS})
    keys.setdefault("min_interval", 0.15)  # below SLACK_FAST's pace
    return running_fake_slack(**keys)


class CutTextDetector:
    """A detector plugin: a trigger for every final, its text the final's with ``<cut>`` turned into a lone
    surrogate (a plugin cutting text inside an emoji)."""

    def __init__(self) -> None:
        self.app: Any = None
        self.emitted: list[Trigger] = []

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.app = app

    @hookimpl
    def on_user_transcription(self, event: Any, call: Any) -> None:
        trigger = Trigger(
            type="said",
            call_id=call.id,
            rule="every-final",
            event_id=event.event_id,
            event_type=event.event_type,
            timestamp=event.timestamp,
            severity="warning",
            data={"text": event.text.replace(CUT, LONE), "speaker": "user"},
        )
        self.emitted.append(trigger)
        self.app.emit_trigger(trigger)


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


# -- a server that answers slowly or without end -------------------------------------------------------------------


@dataclass
class Exchange:
    """One request the streaming server answered, as it saw it."""

    path: str
    started: float  # trio.current_time() when the request body was read
    sent: int = 0  # body bytes handed to the connection
    ended: float | None = None  # when the client went away or the body was complete
    client_left: bool = False  # the client closed the connection before the body was complete


class Streamer(LoopbackServer):
    """Answers every request ``status`` with headers at once, then ``prefix`` and a body of ``chunk``-byte pieces,
    ``interval`` seconds apart (0: as fast as the client reads them), until ``limit`` bytes or the client leaves.

    The limit only keeps a client that reads everything (the old code) from filling this machine's memory."""

    def __init__(
        self, *, chunk: int, interval: float, limit: int, prefix: bytes = b"", content_type: str = "application/json"
    ) -> None:
        self.chunk, self.interval, self.limit, self.prefix = chunk, interval, limit, prefix
        self.content_type = content_type
        self.exchanges: list[Exchange] = []

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if await read_body(receive) is None:
            return
        exchange = Exchange(scope["path"], trio.current_time())
        self.exchanges.append(exchange)
        piece = b"x" * self.chunk
        with trio.CancelScope() as answering:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_disconnect, receive, answering)
                headers = [(b"content-type", self.content_type.encode())]  # no length: chunked, without end
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                if self.prefix:
                    await send({"type": "http.response.body", "body": self.prefix, "more_body": True})
                    exchange.sent += len(self.prefix)
                while exchange.sent < self.limit:
                    await trio.sleep(self.interval)  # also the checkpoint that lets the disconnect be noticed
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    exchange.sent += len(piece)
                await send({"type": "http.response.body", "body": b'"}', "more_body": False})
                nursery.cancel_scope.cancel()
        exchange.client_left = answering.cancelled_caught
        exchange.ended = trio.current_time()


# -- 1. a trickling answer ------------------------------------------------------------------------------------------


async def test_a_receiver_trickling_its_answer_is_cut_at_the_endpoint_timeout_and_dead_lettered_after_max_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx's timeout is per read: one byte every 0.3 s never trips a 0.5 s timeout, so before, the first attempt
    lasted until shutdown cut it. Now each attempt ends at the 0.5 s deadline and the second one ends the message."""
    secret_env(monkeypatch)
    trickler = Streamer(chunk=1, interval=0.3, limit=1000)  # 300 s of answer
    calls = [{"id": "CALL-TRICKLE", "events": finals(1)}]
    async with serving(trickler):
        with trio.fail_after(6):
            result, letters = await run_webhook(
                tmp_path, calls, [endpoint("slowpoke", trickler.base_url + "/hook", max_attempts=2)], shutdown_grace=4.0
            )
        await trio.sleep(0.2)  # let the server notice the last client leave
    assert result.exit_code == 0
    spans = [(round(x.ended - x.started, 2) if x.ended else None, x.sent, x.client_left) for x in trickler.exchanges]
    assert len(trickler.exchanges) == 2, f"attempts the receiver saw (seconds, bytes, client left): {spans}"
    for exchange in trickler.exchanges:
        assert exchange.client_left and exchange.ended is not None, spans
        assert exchange.ended - exchange.started <= 0.9, f"an attempt outlived the 0.5 s timeout: {spans}"
        assert exchange.sent <= 3, spans  # a byte per 0.3 s for 0.5 s
    [letter] = letters
    assert letter["attempts"] == 2, letter
    assert letter["reason"].startswith("retries exhausted") and "0.5 s" in letter["reason"], letter["reason"]
    started, retried, dead = (datetime.fromisoformat(letter[key]) for key in ("first_attempt", "last_attempt", "dead_lettered_at"))
    assert 0.4 <= (retried - started).total_seconds() <= 1.0, letter
    assert (dead - started).total_seconds() <= 2.0, letter


# -- 2. an endless answer -------------------------------------------------------------------------------------------


async def test_an_endless_200_answer_counts_as_delivered_after_reading_only_a_bounded_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the whole answer was read into memory (here it stops at 128 MiB; a real one need not stop). Now
    64 KiB of it is read; what was sent beyond that sat in socket buffers when the client closed."""
    caplog.set_level(logging.INFO)
    secret_env(monkeypatch)
    endless = Streamer(chunk=64 * 1024, interval=0, limit=128 * MiB)
    calls = [{"id": "CALL-ENDLESS", "events": finals(1)}]
    async with serving(endless):
        with trio.fail_after(10):
            result, letters = await run_webhook(tmp_path, calls, [endpoint("flood", endless.base_url + "/hook")])
        await trio.sleep(0.2)
    assert result.exit_code == 0
    assert letters == [], [letter["reason"] for letter in letters]
    [exchange] = endless.exchanges  # delivered at the first attempt
    assert exchange.client_left, f"the client read the whole {exchange.sent} bytes"
    assert exchange.sent <= 16 * MiB, f"{exchange.sent / MiB:.1f} MiB sent before the client went away"
    assert any(re.search(r"flood: 1 delivered, 0 retried, 0 dead-lettered", line) for line in messages(caplog, logging.INFO))


async def test_an_endless_slack_answer_is_read_only_up_to_its_cap_and_the_message_is_dead_lettered_as_rejected(
    tmp_path: Path, slack_tokens: None
) -> None:
    endless = Streamer(chunk=64 * 1024, interval=0, limit=128 * MiB, prefix=b'{"ok": true, "pad": "')
    calls = said("CALL-SLACK-ENDLESS", ["hello there"])
    async with serving(endless):
        with trio.fail_after(10):
            result, letters = await run_slack(tmp_path, endless.base_url + "/api", [api_route()], calls, CutTextDetector())
        await trio.sleep(0.2)
    assert result.exit_code == 0
    [exchange] = endless.exchanges  # rejected, not retried
    assert exchange.path == "/api/chat.postMessage"
    assert exchange.client_left, f"the client read the whole {exchange.sent} bytes"
    assert exchange.sent <= 16 * MiB, f"{exchange.sent / MiB:.1f} MiB sent before the client went away"
    [letter] = letters
    cap = slack_delivery.MAX_ANSWER
    assert cap <= MiB
    assert letter["reason"] == f"rejected: Slack answered 200 with an answer over {cap} bytes", letter["reason"]
    assert letter["attempts"] == 1 and "hello there" in letter["body"]["text"]


# -- 3. a lone surrogate ----------------------------------------------------------------------------------------------


async def test_a_trigger_text_with_a_lone_surrogate_reaches_the_receiver_as_u_fffd_signed_and_the_next_one_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, encoding the body raised UnicodeEncodeError on every attempt, then the dead-letter write did too and
    the endpoint's outbox died: neither message arrived."""
    secret = secret_env(monkeypatch)
    calls = said("CALL-CUT", [f"broken {CUT} emoji", "plain words"])
    detector = CutTextDetector()
    async with running_receiver() as receiver:
        with trio.fail_after(8):
            result, letters = await run_webhook(
                tmp_path, calls, [endpoint("triggers", receiver.url("/hook"), events=["trigger.*"])], detector
            )
    assert result.exit_code == 0
    assert [trigger.data["text"] for trigger in detector.emitted] == [f"broken {LONE} emoji", "plain words"]
    assert letters == [], [letter["reason"] for letter in letters]
    requests = receiver.at("/hook")
    assert [request.succeeded for request in requests] == [True, True], [request.status for request in requests]
    bodies = [verify(request.body, request.headers, secret) for request in requests]
    assert [body["data"]["data"]["text"] for body in bodies] == [f"broken {REPLACEMENT} emoji", "plain words"]
    assert REPLACEMENT.encode() in requests[0].body


async def test_with_410_a_lone_surrogate_message_and_the_next_are_both_dead_lettered_as_readable_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_env(monkeypatch)
    calls = said("CALL-CUT-GONE", [f"broken {CUT} emoji", "plain words"], spacing=0.2)
    async with running_receiver() as receiver:
        receiver.script("/hook", then=410)
        with trio.fail_after(8):
            result, letters = await run_webhook(
                tmp_path, calls, [endpoint("gone", receiver.url("/hook"), events=["trigger.*"])], CutTextDetector()
            )
    assert result.exit_code == 0
    assert len(receiver.at("/hook")) == 1  # the first got its 410; the second was never sent
    texts = sorted(letter["body"]["data"]["data"]["text"] for letter in letters)  # read_letters: json.loads each line
    assert texts == [f"broken {REPLACEMENT} emoji", "plain words"], letters
    assert all("gone" in letter["reason"] for letter in letters)
    raw = (tmp_path / "dead-letters.jsonl").read_bytes()
    raw.decode("utf-8")  # strict UTF-8: readable by any tool
    assert len(raw.splitlines()) == 2


async def test_slack_receives_a_lone_surrogate_trigger_text_as_u_fffd_and_the_next_trigger_too(
    tmp_path: Path, slack_tokens: None
) -> None:
    """Before, httpx's ``json=`` raised UnicodeEncodeError for the payload on every attempt, then the dead-letter
    write did too and the route's outbox died."""
    calls = said("CALL-SLACK-CUT", [f"broken {CUT} emoji", "plain words"], spacing=0.5)  # two messages, not grouped
    async with fake_slack() as slack:
        with trio.fail_after(8):
            result, letters = await run_slack(tmp_path, slack.api_base_url, [api_route()], calls, CutTextDetector())
    assert result.exit_code == 0
    assert letters == [], [letter["reason"] for letter in letters]
    posts = slack.posts(OPS)
    shown = "\n".join(post.everything for post in posts)
    assert f"broken {REPLACEMENT} emoji" in shown, [post.text for post in slack.requests]
    assert "plain words" in shown
    assert LONE not in shown
    assert all(b"\\ud83d" not in post.body.lower() for post in posts)


# -- 4. a stopped endpoint says so once ------------------------------------------------------------------------------


def assert_said_once(caplog: pytest.LogCaptureFixture, name: str, stopped_why: str, after_stop: int) -> None:
    """One error line: the endpoint stopped; of the warnings about its dead letters, one for the message that
    stopped it at most and one summary of the ``after_stop`` later ones."""
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{name}: endpoint stopped") and stopped_why in errors[0], errors[0]
    about_letters = [line for line in messages(caplog, logging.WARNING) if line.startswith(f"{name}:") and "dead-letter" in line]
    assert len(about_letters) <= 2, f"{len(about_letters)} warnings about dead letters: {about_letters}"
    summaries = [line for line in about_letters if "after the endpoint stopped" in line]
    assert len(summaries) == 1, about_letters
    assert f"{after_stop} messages" in summaries[0], summaries[0]


async def test_after_410_thirty_more_messages_give_one_error_line_one_summary_warning_and_every_dead_letter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, every group of refused messages (one each 0.1 s) logged its own warning: about 15 here."""
    caplog.set_level(logging.INFO)
    secret_env(monkeypatch)
    calls = [{"id": "CALL-GONE-30", "events": finals(31, spacing=0.05)}]
    async with running_receiver() as receiver:
        receiver.script("/hook", then=410)
        with trio.fail_after(8):
            result, letters = await run_webhook(tmp_path, calls, [endpoint("crm", receiver.url("/hook"))])
    assert result.exit_code == 0
    assert len(receiver.at("/hook")) == 1
    texts = sorted(letter["body"]["data"]["user_transcription_text"] for letter in letters)
    assert texts == sorted(f"turn {i}" for i in range(31))
    assert_said_once(caplog, "crm", "410", after_stop=30)


async def test_after_slack_invalid_auth_thirty_more_triggers_give_one_error_line_one_summary_and_every_dead_letter(
    tmp_path: Path, slack_tokens: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    texts = [f"number{n:02d}" for n in range(31)]
    async with fake_slack() as slack:
        with trio.fail_after(8):
            result, letters = await run_slack(
                tmp_path, slack.api_base_url, [api_route("bad", token_env=BAD_TOKEN_ENV)],
                said("CALL-SLACK-AUTH-30", texts), CutTextDetector(),
            )  # fmt: skip
    assert result.exit_code == 0
    assert [request.error for request in slack.requests] == ["invalid_auth"]
    assert sorted(re.search(r"number\d\d", letter["body"]["text"])[0] for letter in letters) == texts
    sent = [letter for letter in letters if letter["attempts"]]  # the batch Slack refused; the rest never went
    assert sent and all(letter["reason"] == "endpoint gone: Slack refused: invalid_auth" for letter in letters)
    assert_said_once(caplog, "bad", "invalid_auth", after_stop=len(letters) - len(sent))


# -- 5. verify ---------------------------------------------------------------------------------------------------------


SECRET = new_secret()
BODY = b'{"type": "trigger.said", "data": {"text": "hi"}}'


def signed(body: bytes = BODY, message_id: str = "msg_test") -> dict[str, str]:
    """Valid headers for ``body`` (UTF-8) sent now."""
    return Signer([SECRET]).headers(message_id, body)


def without(name: str) -> dict[str, str]:
    return {key: value for key, value in signed().items() if key != name}


def replaced(name: str, value: str) -> dict[str, str]:
    return {**signed(), name: value}


def _surrogate_headers() -> dict[str, str]:
    headers = signed()
    headers["webhook-id"] = f"msg_{LONE}"
    return headers


MALFORMED = {
    # each: (payload, headers); the comment says what the old verify() raised instead
    "timestamp-not-a-number": (BODY, replaced("webhook-timestamp", "soon")),  # already WebhookVerificationError
    "timestamp-huge": (BODY, replaced("webhook-timestamp", "9" * 400)),  # already WebhookVerificationError
    "timestamp-nan": (BODY, replaced("webhook-timestamp", "nan")),  # already WebhookVerificationError
    "timestamp-too-old": (BODY, replaced("webhook-timestamp", "1000000000")),  # already WebhookVerificationError
    "no-webhook-id": (BODY, without("webhook-id")),  # already WebhookVerificationError
    "no-timestamp": (BODY, without("webhook-timestamp")),  # already WebhookVerificationError
    "no-signature": (BODY, without("webhook-signature")),  # already WebhookVerificationError
    "no-headers": (BODY, {}),  # already WebhookVerificationError
    "signature-bad-base64-padding": (BODY, replaced("webhook-signature", "v1,abc")),  # binascii.Error
    "signature-not-ascii": (BODY, replaced("webhook-signature", "v1,é")),  # ValueError
    "signature-without-comma": (BODY, replaced("webhook-signature", "v1")),  # ValueError (unpacking)
    "signature-with-two-commas": (BODY, replaced("webhook-signature", "v1,a,b")),  # ValueError (unpacking)
    # no valid signature exists for these two (the signed text is UTF-8): they fail before the comparison
    "body-not-utf8": (b'{"text": "\xff\xfe"}', signed()),  # UnicodeDecodeError
    "body-str-with-lone-surrogate": ('{"text": "' + LONE + '"}', signed()),  # UnicodeEncodeError
    "id-with-lone-surrogate": (BODY, _surrogate_headers()),  # UnicodeEncodeError
    "body-not-json-validly-signed": (b"not json at all", signed(b"not json at all")),  # json.JSONDecodeError
    "body-empty-validly-signed": (b"", signed(b"")),  # json.JSONDecodeError
}


@pytest.mark.parametrize("payload, headers", list(MALFORMED.values()), ids=list(MALFORMED))
def test_verify_raises_webhook_verification_error_for_every_malformed_delivery(payload: Any, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError):
        verify(payload, headers, SECRET)


def test_verify_returns_the_body_of_a_correct_delivery_whatever_the_header_case() -> None:
    headers = signed()
    assert verify(BODY, headers, SECRET) == json.loads(BODY)
    assert verify(BODY.decode(), {key.title(): value for key, value in headers.items()}, SECRET) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        verify(BODY, headers, new_secret())  # another endpoint's secret


def test_verify_raises_webhook_verification_error_for_a_validly_signed_body_nested_too_deep_to_parse() -> None:
    """json's RecursionError is a RuntimeError: it used to reach the receiver as a 500."""
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(WebhookVerificationError):
        verify(body, signed(body), SECRET)


# -- 6. one endpoint failing to start ----------------------------------------------------------------------------------


async def test_one_webhook_endpoint_failing_to_start_is_logged_once_and_the_next_still_receives_every_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, the first endpoint's failure aborted the plugin's on_startup: the endpoints after it never existed."""
    caplog.set_level(logging.INFO)
    secret = secret_env(monkeypatch)
    original = webhook_plugin.make_deliverer

    def make_deliverer(settings: Any, http: Any) -> Any:
        if settings.name == "broken":
            raise RuntimeError("deliberately broken for the test")
        return original(settings, http)

    monkeypatch.setattr(webhook_plugin, "make_deliverer", make_deliverer)
    calls = [{"id": "CALL-START", "events": finals(5, spacing=0.02)}]
    async with running_receiver() as receiver:
        endpoints = [endpoint("broken", receiver.url("/broken")), endpoint("good", receiver.url("/good"))]
        with trio.fail_after(8):
            result, letters = await run_webhook(tmp_path, calls, endpoints)
    assert result.exit_code == 0
    assert receiver.at("/broken") == []
    good = receiver.at("/good")
    assert [verify(r.body, r.headers, secret)["data"]["user_transcription_text"] for r in good] == [f"turn {i}" for i in range(5)]
    assert all(request.succeeded for request in good)
    assert letters == []
    errors = messages(caplog, logging.ERROR)
    assert len(errors) == 1, errors
    assert "broken" in errors[0] and "deliberately broken for the test" in errors[0], errors[0]
    assert "good" not in errors[0]


# -- 7. Slack's Retry-After is capped ----------------------------------------------------------------------------------


async def test_slack_429_retry_after_100000_holds_the_channel_only_the_posters_max_retry_after(monkeypatch) -> None:
    """``plugins.slack.max_retry_after`` (300 s by default) reaches the Poster, and the Poster holds the channel
    only that long whatever the 429 says."""
    from hookrunner_plugins.slack import SlackPlugin
    from hookrunner_plugins.slack.settings import parse_settings

    monkeypatch.setenv("HR_TEST_SLACK_TOKEN", TOKEN)
    routes = [{"name": "ops", "token_env": "HR_TEST_SLACK_TOKEN", "channel": OPS}]
    settings, problems = parse_settings({"max_retry_after": 0.3, "routes": routes})
    assert problems == []
    async with httpx.AsyncClient() as http:
        assert SlackPlugin()._posters(settings, http, Pacing())["ops"]._max_retry_after == 0.3  # the setting is wired
    assert parse_settings({"routes": routes})[0].max_retry_after == 300.0
    route = RouteSettings(
        name="ops", webhook_url=None, token=TOKEN, channel=OPS, events=("trigger.*",), severities=frozenset(),
        labels={}, transcript=False, template=DEFAULT_TEMPLATE, mention="", mention_severities=frozenset(),
    )  # fmt: skip
    async with fake_slack(min_interval=None) as slack, httpx.AsyncClient() as http:
        slack.script([Scripted(429, retry_after=100000, error="ratelimited")])
        poster = Poster(route, http, slack.api_base_url, 2.0, Pacer(0.0), max_retry_after=0.3)
        with trio.fail_after(3):  # uncapped, the second post would wait 100,000 s for its turn
            limited, _ = await poster.post(message_payload(["first"]))
            delivered, answer = await poster.post(message_payload(["second"]))
    assert (limited.kind, limited.status, limited.retry_after) == ("retry", 429, 0.3), limited
    assert delivered.kind == "delivered" and answer["ok"] is True, delivered
    first, second = slack.requests
    assert first.retry_after == 100000 and first.status == 429
    assert 0.25 <= second.at - first.at <= 1.5, second.at - first.at
    assert "second" in second.everything


def test_a_value_nested_too_deep_for_json_is_still_written_as_one_line() -> None:
    from hookrunner._core.text import json_line

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    line = json_line({"body": deep})  # (a plugin's bug: nothing read from outside nests this deep)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert "nested too deep" in json.loads(line)["unencodable"]
