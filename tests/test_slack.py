"""The bundled ``slack`` plugin as a Slack workspace and an operator see it (issue 6).

A loopback fake of Slack (``fake_slack.py``) checks every payload the way Slack does (credentials, channel,
Block Kit, size limits, one message a second per channel) and records what reached each channel. The simulator
feeds the real runner with scripted calls (both run with ``hookrunner.testing``, as a third-party plugin's tests
would); the ``keywords`` plugin (or a detector plugin written here) turns what
is said into triggers, and the ``slack`` plugin posts them. Each test asserts what someone would notice: the
messages in the channel and their threads, their text, how often requests arrived, what ended in the dead-letter
file, the exit code and the log lines (a real ``hookrunner`` process where the log is the point).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from hookrunner import Trigger, hookimpl
from hookrunner.testing import config_table, run_plugins, simulator, start_plugins

from helpers import afinish, finish, write_config
from hookrunner.testing.receiver import refusing_port
from fake_slack import ADVISED_TEXT_LIMIT, BLOCK_LIMIT, SECTION_LIMIT, FakeSlack, Scripted, SlackRequest, running_fake_slack

TOKEN_ENV = "HR_TEST_SLACK_TOKEN"
TOKEN = "xoxb-1111-2222-tokencanary7"
BAD_TOKEN_ENV = "HR_TEST_SLACK_BAD_TOKEN"
BAD_TOKEN = "xoxb-9999-8888-wrongcanary3"
HOOK_ENV = "HR_TEST_SLACK_WEBHOOK"
HOOK_ID = "T0HOOK/B0HOOK/hooksecretcanary5"
GONE_HOOK_ENV = "HR_TEST_SLACK_GONE_WEBHOOK"
GONE_HOOK_ID = "T0HOOK/B0GONE/gonesecretcanary8"
OPS = "C0OPS"
SALES = "C0SALES"
ELLIPSES = ("…", "...")

UNREACHABLE = "http://127.0.0.1:9"  # for configs that `check` refuses before anything connects

#: Fast settings for tests not about pacing: the fake's own limit is scaled down with ``pace`` (FAST_LIMIT < pace).
FAST = {
    "pace": 0.2,
    "group_wait": 0.1,
    "timeout": 2.0,
    "retry_initial_delay": 0.05,
    "retry_max_delay": 0.2,
    "max_attempts": 3,
}
FAST_LIMIT = 0.15

CANCEL = {"name": "cancel-intent", "phrases": ["cancel my subscription"], "severity": "warning"}


# -- calls, configs and runs -------------------------------------------------------------------------------------


def user(at: float, text: str) -> dict[str, Any]:
    return {"at": at, "event_type": "user_transcription", "user_transcription_text": text}


def interim(at: float, text: str) -> dict[str, Any]:
    return {"at": at, "event_type": "user_interim_transcription", "interim_transcription_text": text}


def agent(at: float, text: str) -> dict[str, Any]:
    return {"at": at, "event_type": "tts_completed", "tts_text": text, "tts_latency": 120}


def call(call_id: str, events: list[dict[str, Any]], end: float) -> dict[str, Any]:
    """A scripted call: ``call_start`` at 0, ``events``, ``call_end`` at ``end``."""
    return {"id": call_id, "events": [{"at": 0, "event_type": "call_start"}, *events, {"at": end, "event_type": "call_end"}]}


def api_route(name: str = "ops", channel: str = OPS, token_env: str = TOKEN_ENV, **keys: Any) -> dict[str, Any]:
    return {"name": name, "token_env": token_env, "channel": channel, **keys}


def hook_route(name: str = "ops", webhook_env: str = HOOK_ENV, **keys: Any) -> dict[str, Any]:
    return {"name": name, "webhook_url_env": webhook_env, **keys}


def slack_table(slack: FakeSlack | None, routes: list[dict[str, Any]], dead_letter: Path | None = None, **keys: Any) -> dict[str, Any]:
    table: dict[str, Any] = {**FAST, "routes": routes, **keys}
    table["api_base_url"] = slack.api_base_url if slack is not None else UNREACHABLE
    if dead_letter is not None:
        table["dead_letter"] = str(dead_letter)
    return table


#: The installed plugins these tests turn on: keywords makes the triggers, slack posts them.
ENABLE = ["keywords", "slack"]


def slack_settings(table: dict[str, Any], rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``[plugins.keywords]`` with ``rules`` and ``[plugins.slack]``."""
    return {"keywords": {"rules": rules or []}, "slack": table}


def slack_config(
    base_url: str, table: dict[str, Any], rules: list[dict[str, Any]] | None = None, **runner: Any
) -> dict[str, Any]:
    """A config table for a ``hookrunner`` process: keywords and slack on, the other installed plugins off."""
    return config_table(base_url, enable=ENABLE, settings=slack_settings(table, rules), runner=runner)


def read_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def run_with_slack(
    tmp_path: Path,
    slack: FakeSlack,
    calls: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    rules: list[dict[str, Any]] | None = None,
    *plugins: Any,
    settings: dict[str, Any] | None = None,
    **runner: Any,
) -> tuple[int, list[dict[str, Any]]]:
    """Run the runner in-process on a simulator of ``calls``, keywords ``rules`` and the slack ``routes`` (pointed
    at ``slack``); returns the exit code and the dead letters."""
    dead_letter = tmp_path / "dead-letters.jsonl"
    table = slack_table(slack, routes, dead_letter, **(settings or {}))
    result = await run_plugins(
        list(plugins), calls, enable=ENABLE, settings=slack_settings(table, rules), runner=runner, base_dir=tmp_path
    )
    return result.exit_code, read_letters(dead_letter)


def fake(**keys: Any) -> Any:
    """A fake Slack knowing the tests' token, channels and webhook, its rate limit scaled for FAST settings."""
    keys.setdefault("tokens", {TOKEN})
    keys.setdefault("channels", {OPS, SALES})
    keys.setdefault("webhooks", {HOOK_ID})
    keys.setdefault("min_interval", FAST_LIMIT)
    return running_fake_slack(**keys)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeSlack], None]:
    """Put the tests' token in the environment (now) and the webhook URLs (once the fake has its port)."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(BAD_TOKEN_ENV, BAD_TOKEN)

    def with_urls(slack: FakeSlack) -> None:
        monkeypatch.setenv(HOOK_ENV, slack.webhook_url(HOOK_ID))
        monkeypatch.setenv(GONE_HOOK_ENV, slack.webhook_url(GONE_HOOK_ID))

    return with_urls


def assert_within_limits(post: SlackRequest) -> None:
    """What Slack's own checks let through (the fake accepted it), restated: Block Kit plus a fallback text."""
    assert post.ok, (post.status, post.error)
    assert isinstance(post.text, str) and post.text.strip(), "no plain-text fallback"
    assert len(post.text) <= ADVISED_TEXT_LIMIT  # within Slack's advice, not only under its hard cut
    assert post.content_type == "application/json; charset=utf-8"  # else Slack warns missing_charset
    assert post.blocks and len(post.blocks) <= BLOCK_LIMIT
    assert post.section_texts, post.blocks
    assert all(len(text) <= SECTION_LIMIT for text in post.section_texts)


def only_section(post: SlackRequest) -> str:
    assert_within_limits(post)
    assert len(post.section_texts) == 1, post.blocks
    return post.section_texts[0]


# -- one trigger, one message ----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["web-api", "incoming-webhook"])
async def test_a_keyword_trigger_becomes_one_slack_message_with_the_default_template(
    tmp_path: Path, secrets: Callable[[FakeSlack], None], via: str
) -> None:
    said = "Hi, I want to cancel my subscription today please"
    calls = [call("CALL-SLACK-ONE", [agent(0.05, "How can I help?"), user(0.1, said)], end=0.3)]
    route = api_route("ops") if via == "web-api" else hook_route("ops")
    async with fake() as slack:
        secrets(slack)
        code, letters = await run_with_slack(tmp_path, slack, calls, [route], [CANCEL])
    assert code == 0 and letters == []
    assert len(slack.requests) == 1, [(r.path, r.status, r.error) for r in slack.requests]
    [post] = slack.posts()
    if via == "web-api":
        assert (post.kind, post.token, post.channel, post.thread_ts) == ("api", TOKEN, OPS, None)
    else:
        assert (post.kind, post.webhook) == ("webhook", HOOK_ID)
    section = only_section(post)
    for shown in (section, post.text):
        assert "cancel-intent" in shown, shown  # the rule
        assert "warning" in shown, shown  # its severity
        assert "CALL-SLACK-ONE" in shown, shown  # the call
        assert re.search(r"\b(caller|user)\b", shown, re.IGNORECASE), shown  # who said it
        assert "Hi, I want to *cancel my subscription* today please" in shown, shown  # the sentence, match in bold
    assert "How can I help" not in post.everything  # the agent's turn fired nothing


async def test_a_custom_template_renders_its_placeholders(tmp_path: Path, secrets: Callable[[FakeSlack], None]) -> None:
    said = "Okay so I want to Cancel My Subscription now"
    template = "R={rule} S={severity} C={call_id} W={speaker} T={text} M={match} P={matched} Y={type} L={labels}"
    rule = {**CANCEL, "labels": {"team": "retention"}}
    calls = [call("CALL-SLACK-TPL", [user(0.05, said)], end=0.2)]
    async with fake() as slack:
        secrets(slack)
        code, letters = await run_with_slack(tmp_path, slack, calls, [api_route(template=template)], [rule])
    assert code == 0 and letters == []
    [post] = slack.posts(OPS)
    expected = (
        r"R=cancel-intent S=warning C=CALL-SLACK-TPL W=(caller|user) T=Okay so I want to Cancel My Subscription now "
        r"M=Cancel My Subscription P=cancel my subscription Y=trigger\.keyword L=team=retention"
    )
    assert re.fullmatch(expected, only_section(post)), post.section_texts
    assert re.fullmatch(expected, post.text or ""), post.text


def test_check_catches_an_unknown_placeholder_in_one_line_naming_the_route(cli, tmp_path: Path) -> None:
    routes = [api_route("good"), api_route("typo", template="{rule} said {nope}")]
    config = write_config(tmp_path, check_config(routes))
    code, out, err = finish(cli("check", str(config), env={TOKEN_ENV: TOKEN}))
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {config}: plugins.slack.routes[1].template: "), lines[0]
    assert "typo" in lines[0] and "{nope}" in lines[0], lines[0]


def test_a_retry_max_delay_below_the_initial_delay_is_refused_as_the_webhook_plugin_refuses_it() -> None:
    from hookrunner_plugins.slack.settings import parse_settings

    _, problems = parse_settings({"retry_initial_delay": 5.0, "retry_max_delay": 1.0})
    assert problems == ["retry_max_delay: expected at least retry_initial_delay"]
    assert parse_settings({"retry_initial_delay": 1.0, "retry_max_delay": 1.0})[1] == []


async def test_mention_goes_with_critical_only_and_severity_and_labels_filters_choose_the_route(
    tmp_path: Path, secrets: Callable[[FakeSlack], None]
) -> None:
    rules = [
        {"name": "fraud", "phrases": ["fraud"], "severity": "critical", "labels": {"team": "risk"}},
        CANCEL,
    ]
    calls = [call("CALL-SLACK-SEV", [user(0.05, "I want to cancel my subscription"), user(0.4, "this is fraud")], end=0.8)]
    routes = [
        api_route("everything", channel=OPS, mention="<!here>"),
        api_route("risk-critical", channel=SALES, severity=["critical"], labels={"team": "risk"}),
    ]
    async with fake() as slack:
        secrets(slack)
        code, letters = await run_with_slack(tmp_path, slack, calls, routes, rules)
    assert code == 0 and letters == []
    everything = " ".join(post.everything for post in slack.posts(OPS))
    assert "cancel-intent" in everything and "fraud" in everything
    critical = [text for post in slack.posts(OPS) for text in post.section_texts if "fraud" in text]
    warning = [text for post in slack.posts(OPS) for text in post.section_texts if "cancel-intent" in text]
    assert len(critical) == 1 and critical[0].startswith("<!here>"), critical
    assert len(warning) == 1 and "<!here>" not in warning[0], warning
    risk = slack.posts(SALES)
    assert len(risk) == 1 and "fraud" in risk[0].everything and "cancel-intent" not in risk[0].everything


# -- what callers say is data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["web-api", "incoming-webhook"])
async def test_a_callers_mentions_and_links_arrive_escaped(
    tmp_path: Path, secrets: Callable[[FakeSlack], None], via: str
) -> None:
    said = "Hey <!channel> cancel my subscription or click <https://evil|click> & <@U123>"
    calls = [call("CALL-SLACK-ESC", [user(0.05, said)], end=0.2)]
    route = api_route("ops") if via == "web-api" else hook_route("ops")
    async with fake() as slack:
        secrets(slack)
        code, letters = await run_with_slack(tmp_path, slack, calls, [route], [CANCEL])
    assert code == 0 and letters == []
    [post] = slack.posts()
    assert_within_limits(post)
    for shown in [post.text or "", *post.section_texts]:
        assert "&lt;!channel&gt;" in shown, shown
        assert "&lt;https://evil|click&gt;" in shown, shown
        assert "&lt;@U123&gt;" in shown, shown
        assert " &amp; " in shown, shown
    raw = post.body.decode()
    for injected in ("<!channel>", "<https://evil", "<@U123>", "<!"):
        assert injected not in raw, f"{injected!r} reached Slack unescaped"


async def test_a_ten_thousand_character_turn_is_truncated_with_an_ellipsis_within_slacks_limits(
    tmp_path: Path, secrets: Callable[[FakeSlack], None]
) -> None:
    # escaping makes it longer still: each "<&>" becomes 13 characters, over Slack's 40,000 for `text` too
    said = "please cancel my subscription " + "<&>" * 3324
    assert len(said) >= 10_000
    calls = [call("CALL-SLACK-LONG", [user(0.05, said)], end=0.2)]
    async with fake() as slack:
        secrets(slack)
        code, letters = await run_with_slack(tmp_path, slack, calls, [api_route()], [CANCEL])
    assert code == 0 and letters == []
    assert len(slack.requests) == 1 and slack.requests[0].ok, (slack.requests[0].status, slack.requests[0].error)
    [post] = slack.posts(OPS)
    section = only_section(post)
    assert section.endswith(ELLIPSES), section[-20:]
    assert "*cancel my subscription*" in section
    assert post.text is not None and post.text.endswith(ELLIPSES), post.text[-20:]
    assert "<&>" not in post.body.decode()


# -- pacing, grouping, 429 ---------------------------------------------------------------------------------------


class BurstDetector:
    """A detector plugin: on each call's first final it emits ``per_call`` triggers at once."""

    def __init__(self, per_call: int) -> None:
        self.per_call = per_call
        self.app: Any = None
        self.emitted: list[Trigger] = []
        self._done: set[str] = set()

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.app = app

    @hookimpl
    def on_user_transcription(self, event: Any, call: Any) -> None:
        if call.id in self._done:
            return
        self._done.add(call.id)
        for n in range(self.per_call):
            tag = f"{call.id}-burst{n:02d}"
            trigger = Trigger(
                type="burst",
                call_id=call.id,
                rule=tag,
                event_id=event.event_id,
                event_type=event.event_type,
                timestamp=event.timestamp,
                severity="warning",
                data={"text": f"burst number {tag}", "speaker": "user"},
            )
            self.emitted.append(trigger)
            self.app.emit_trigger(trigger)


@pytest.mark.parametrize("source", ["twenty-keyword-matches-in-one-call", "a-detector-emitting-twenty-at-once"])
async def test_twenty_triggers_in_one_second_reach_one_channel_about_once_a_second_and_none_is_lost(
    tmp_path: Path, secrets: Callable[[FakeSlack], None], source: str
) -> None:
    if source.startswith("twenty-keyword"):
        turns = [user(0.05 * (n + 1), f"please cancel my subscription ref{n:02d}") for n in range(20)]
        calls = [call("CALL-SLACK-BURST", turns, end=1.2)]
        tags = [f"ref{n:02d}" for n in range(20)]
        plugins: tuple[Any, ...] = ()
        rules = [CANCEL]
    else:
        detector = BurstDetector(per_call=5)
        calls = [call(f"CALL-SLACK-B{c}", [user(0.05, "hello")], end=0.3) for c in range(4)]
        tags = [f"CALL-SLACK-B{c}-burst{n:02d}" for c in range(4) for n in range(5)]
        plugins = (detector,)
        rules = []
    # Slack's real pace: the fake refuses a second request to the channel within 0.9 s
    async with fake(min_interval=0.9) as slack:
        secrets(slack)
        code, letters = await run_with_slack(
            tmp_path, slack, calls, [api_route()], rules, *plugins,
            settings={"pace": 1.0, "group_wait": 0.5}, shutdown_grace=8.0,
        )  # fmt: skip
    assert code == 0 and letters == []
    if plugins:
        assert len(detector.emitted) == 20
    requests = slack.to(OPS)
    arrivals = [request.at for request in requests]
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert slack.rate_limited == 0, f"the fake refused {slack.rate_limited} requests; gaps {gaps}"
    assert all(gap >= 0.9 for gap in gaps), gaps
    posts = slack.posts(OPS)
    assert len(posts) == len(requests)
    assert len(posts) <= 5, f"{len(posts)} messages for 20 triggers: not grouped"
    assert arrivals[-1] - arrivals[0] <= 5.0, "fell behind"
    for post in posts:
        assert_within_limits(post)
    for tag in tags:
        holding = [post for post in posts if re.search(rf"\b{tag}\b", post.everything)]
        assert len(holding) == 1, f"trigger {tag} is in {len(holding)} messages"
        assert any(re.search(rf"\b{tag}\b", text) for text in holding[0].section_texts), f"{tag} not in the blocks"
        assert re.search(rf"\b{tag}\b", holding[0].text or ""), f"{tag} not in the fallback text"


@pytest.mark.parametrize("routes", ["one-route", "two-routes-sharing-the-channel"])
async def test_a_429_with_retry_after_holds_the_channel_that_long_then_the_message_is_delivered(
    tmp_path: Path, secrets: Callable[[FakeSlack], None], routes: str
) -> None:
    retry_after = 2.0
    calls = [call("CALL-SLACK-429", [user(0.05, "I want to cancel my subscription")], end=0.2)]
    chosen = [api_route("ops")] + ([api_route("ops-too")] if routes != "one-route" else [])
    async with fake() as slack:
        secrets(slack)
        slack.script([Scripted(429, retry_after=retry_after, error="ratelimited")])
        code, letters = await run_with_slack(tmp_path, slack, calls, chosen, [CANCEL], shutdown_grace=6.0)
    assert code == 0
    requests = slack.to(OPS)
    limited = requests[0]
    assert limited.status == 429 and limited.scripted
    timeline = [(round(r.at - limited.at, 3), r.status) for r in requests]
    too_soon = [(after, status) for after, status in timeline[1:] if after < retry_after - 0.05]
    assert too_soon == [], f"requests (s after the 429, status) {too_soon} within its Retry-After {retry_after:g} s"
    assert slack.rate_limited == 0
    assert letters == [], f"dead-lettered: {[letter['reason'] for letter in letters]}; requests {timeline}"
    assert len(slack.posts(OPS)) == len(chosen)
    assert all("*cancel my subscription*" in post.everything for post in slack.posts(OPS))


# -- live transcript in a thread ---------------------------------------------------------------------------------


async def test_transcript_thread_posts_the_opening_then_each_final_turn_as_a_reply_in_order(
    tmp_path: Path, secrets: Callable[[FakeSlack], None]
) -> None:
    turns = {
        "CALL-SLACK-TH1": [
            agent(0.1, "Hello, this is Acme, how can I help"),
            interim(0.3, "i wa"),
            user(0.4, "I would like to check my bill"),
            agent(0.7, "Sure, one moment <!here>"),
            user(1.0, "thanks a lot"),
        ],
        "CALL-SLACK-TH2": [agent(0.2, "Good morning"), user(0.5, "hi there")],
    }
    calls = [call(call_id, events, end=1.6) for call_id, events in turns.items()]
    route = api_route("live", transcript="thread", events=["trigger.*"])
    finished: dict[str, float] = {}

    class Finish:
        @hookimpl
        def on_call_finished(self, call: Any, reason: str) -> None:
            finished[call.id] = trio.current_time()

    async with fake() as slack:
        secrets(slack)
        code, letters = await run_with_slack(tmp_path, slack, calls, [route], [], Finish(), shutdown_grace=6.0)
    assert code == 0 and letters == []
    assert slack.rate_limited == 0
    posts = slack.posts(OPS)
    assert len(slack.to(OPS)) == len(posts), [(r.status, r.error) for r in slack.to(OPS)]
    for post in posts:
        assert_within_limits(post)
    for call_id, events in turns.items():
        openings = [post for post in posts if post.thread_ts is None and call_id in post.everything]
        assert len(openings) == 1, [post.everything for post in posts if post.thread_ts is None]
        opening = openings[0]
        replies = [post for post in posts if post.thread_ts == opening.ts]
        assert all(reply.at > opening.at for reply in replies)
        said = [
            event.get("tts_text") or event.get("user_transcription_text")
            for event in events
            if event["event_type"] in ("tts_completed", "user_transcription")
        ]
        expected = [text.replace("<", "&lt;").replace(">", "&gt;") for text in said]
        shown = [next((text for text in expected if text in reply.everything), None) for reply in replies]
        assert [text for text in shown if text is not None] == expected, [reply.everything for reply in replies]
        assert "i wa" not in " ".join(reply.everything for reply in replies), "an interim was posted"
        # as they happen: the first turn is in the thread before the call is over
        first = next(reply for reply in replies if expected[0] in reply.everything)
        assert first.at < finished[call_id], "the transcript was posted only after the call ended"
    assert "<!here>" not in " ".join(post.body.decode() for post in posts)


# -- errors, stopped routes, dead letters --------------------------------------------------------------------------


class TriggerRecorder:
    def __init__(self) -> None:
        self.triggers: list[Trigger] = []

    @hookimpl
    def on_trigger(self, trigger: Any) -> None:
        self.triggers.append(trigger)


@pytest.mark.parametrize("error", ["invalid_auth", "channel_not_found"])
async def test_a_refused_route_stops_with_one_error_line_and_other_routes_and_plugins_go_on(
    tmp_path: Path, secrets: Callable[[FakeSlack], None], caplog: pytest.LogCaptureFixture, error: str
) -> None:
    caplog.set_level(logging.INFO)
    turns = [user(0.05 + 0.5 * n, f"cancel my subscription number{n}") for n in range(3)]
    calls = [call("CALL-SLACK-AUTH", turns, end=1.3)]
    bad = api_route("bad", token_env=BAD_TOKEN_ENV) if error == "invalid_auth" else api_route("bad", channel="C0NOWHERE")
    routes = [bad, api_route("good", channel=SALES)]
    recorder = TriggerRecorder()
    async with fake() as slack:
        secrets(slack)
        code, letters = await run_with_slack(tmp_path, slack, calls, routes, [CANCEL], recorder, shutdown_grace=4.0)
    assert code == 0
    assert len(recorder.triggers) == 3  # another plugin went on
    good = slack.posts(SALES)
    assert all(f"number{n}" in " ".join(post.everything for post in good) for n in range(3)), "the good route stopped"
    refused = [request for request in slack.requests if request.error == error]
    assert len(refused) == 1, f"{len(refused)} requests answered {error}: the route went on asking"
    mine = [letter for letter in letters if letter["endpoint"] == "bad"]
    assert sorted(re.search(r"number\d", letter["body"]["text"])[0] for letter in mine) == [f"number{n}" for n in range(3)]
    assert all(letter["plugin"] == "slack" for letter in letters)
    assert [letter for letter in letters if letter["endpoint"] != "bad"] == []
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "bad" in errors[0] and error in errors[0], errors[0]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert TOKEN not in logged and BAD_TOKEN not in logged


async def test_5xx_from_slack_is_retried_and_delivered_once(tmp_path: Path, secrets: Callable[[FakeSlack], None]) -> None:
    calls = [call("CALL-SLACK-5XX", [user(0.05, "I want to cancel my subscription")], end=0.2)]
    async with fake() as slack:
        secrets(slack)
        slack.script([503, 500])
        code, letters = await run_with_slack(tmp_path, slack, calls, [api_route()], [CANCEL], shutdown_grace=4.0)
    assert code == 0
    statuses = [request.status for request in slack.to(OPS)]
    assert letters == [], f"dead-lettered: {[letter['reason'] for letter in letters]}; Slack answered {statuses}"
    assert statuses == [503, 500, 200]
    assert len({request.body for request in slack.to(OPS)}) == 1, "the retry sent another message"
    assert len(slack.posts(OPS)) == 1


async def test_slack_unreachable_at_first_is_retried_and_delivered_once_it_answers(
    tmp_path: Path, secrets: Callable[[FakeSlack], None]
) -> None:
    calls = [call("CALL-SLACK-NET", [user(0.05, "I want to cancel my subscription")], end=1.5)]
    dead_letter = tmp_path / "dead-letters.jsonl"
    with refusing_port() as down:
        slack = FakeSlack(tokens={TOKEN}, channels={OPS}, min_interval=FAST_LIMIT)
        slack.base_url = f"http://127.0.0.1:{down.port}"  # where it will answer once it is up
        secrets(slack)
        table = slack_table(slack, [api_route()], dead_letter, max_attempts=20)
        async with trio.open_nursery() as nursery:  # serves the fake Slack, once it is up
            async with start_plugins(
                [], calls, enable=ENABLE, settings=slack_settings(table, [CANCEL]), runner={"shutdown_grace": 4.0},
                base_dir=tmp_path,
            ) as run:  # fmt: skip
                await trio.sleep(0.6)  # the trigger's first attempts were refused
                assert slack.requests == [] and not run.over
                assert len(run.result.triggers) == 1  # the trigger was there before Slack was
                await nursery.start(partial(slack.serve, port=down.release()))
                with trio.fail_after(10):
                    result = await run.wait()
            nursery.cancel_scope.cancel()
    assert result.exit_code == 0
    assert read_letters(dead_letter) == [], [letter["reason"] for letter in read_letters(dead_letter)]
    [post] = slack.posts(OPS)
    assert "*cancel my subscription*" in post.everything


# -- real processes: check, logs, redeliver --------------------------------------------------------------------------




def check_config(routes: list[dict[str, Any]]) -> dict[str, Any]:
    return slack_config(UNREACHABLE, slack_table(None, routes))


NOT_SET = "HR_TEST_SLACK_NOT_SET"
NOT_A_URL_ENV = "HR_TEST_SLACK_NOT_A_URL"
NOT_A_URL = "hooks.slack.com-urlcanary4"


@pytest.mark.parametrize(
    "route, key, words",
    [
        (api_route("both", webhook_url_env=HOOK_ENV), ("webhook_url_env", "token_env"), "webhook_url_env"),
        ({"name": "no-channel", "token_env": TOKEN_ENV}, ("channel",), "channel"),
        (hook_route("hook-thread", transcript="thread"), ("transcript",), "thread"),
        (api_route("loud", severity=["warning", "urgent"]), ("severity",), "urgent"),
        (api_route("unset", token_env=NOT_SET), ("token_env",), NOT_SET),
        (hook_route("unset-hook", webhook_env=NOT_SET), ("webhook_url_env",), NOT_SET),
        (hook_route("not-a-url", webhook_env=NOT_A_URL_ENV), ("webhook_url_env",), NOT_A_URL_ENV),
    ],
    ids=["webhook-and-token", "token-without-channel", "thread-with-webhook", "unknown-severity", "token-env-not-set",
         "webhook-env-not-set", "webhook-env-not-a-url"],
)  # fmt: skip
def test_check_names_the_route_key_and_route_in_one_line(
    cli, tmp_path: Path, route: dict[str, Any], key: tuple[str, ...], words: str
) -> None:
    config = write_config(tmp_path, check_config([api_route("fine"), route]))
    env = {TOKEN_ENV: TOKEN, HOOK_ENV: "https://hooks.slack.com/services/" + HOOK_ID, NOT_A_URL_ENV: NOT_A_URL}
    code, out, err = finish(cli("check", str(config), env=env))
    assert code == 2, out + err
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefixes = tuple(f"error: {config}: plugins.slack.routes[1].{name}: " for name in key)
    assert lines[0].startswith(prefixes), f"expected one of {prefixes}, got {lines[0]}"
    assert f"route {route['name']}" in lines[0] or f"route \"{route['name']}\"" in lines[0], lines[0]
    assert words in lines[0], lines[0]
    assert TOKEN not in out + err and HOOK_ID not in out + err and NOT_A_URL not in out + err


async def test_debug_logs_and_error_lines_never_show_tokens_or_webhook_urls(cli, tmp_path: Path) -> None:
    calls = [call("CALL-SLACK-LOGS", [user(0.05, "cancel my subscription please"), user(0.5, "cancel my subscription now")], end=0.8)]
    dead_letter = tmp_path / "dead.jsonl"
    async with fake() as slack, simulator(calls) as sim:
        slack.script([503])  # one retry: a warning line with the reason
        routes = [
            api_route("api-ok"),
            api_route("api-bad", token_env=BAD_TOKEN_ENV, channel=SALES),  # invalid_auth: an error line
            hook_route("hook-ok"),
            hook_route("hook-gone", webhook_env=GONE_HOOK_ENV),  # 404 no_service: an error line
        ]
        table = slack_config(
            sim.base_url, slack_table(slack, routes, dead_letter), [CANCEL], calls=["CALL-SLACK-LOGS"], shutdown_grace=4.0
        )
        env = {
            TOKEN_ENV: TOKEN,
            BAD_TOKEN_ENV: BAD_TOKEN,
            HOOK_ENV: slack.webhook_url(HOOK_ID),
            GONE_HOOK_ENV: slack.webhook_url(GONE_HOOK_ID),
        }
        config = write_config(tmp_path, table)
        code, out, err = await afinish(cli("--log-level", "debug", "run", str(config), env=env))
    assert code == 0, err
    # the fake did get the secrets, so the logs had something to leak
    assert {request.token for request in slack.requests if request.kind == "api"} == {TOKEN, BAD_TOKEN}
    assert {request.webhook for request in slack.requests if request.kind == "webhook"} == {HOOK_ID, GONE_HOOK_ID}
    assert "retrying" in err, err
    error_lines = [line for line in err.splitlines() if " ERROR " in line]
    assert any("api-bad" in line for line in error_lines) and any("hook-gone" in line for line in error_lines), err
    output = out + err + (dead_letter.read_text(encoding="utf-8") if dead_letter.exists() else "")
    for secret in (TOKEN, BAD_TOKEN, HOOK_ID, GONE_HOOK_ID, "hooksecretcanary5", "gonesecretcanary8", "/services/", "Bearer "):
        assert secret not in output, f"{secret!r} appears in the output or the dead-letter file"


async def test_what_slack_could_not_take_is_dead_lettered_and_redeliver_sends_it_once_slack_is_healthy(
    cli, tmp_path: Path
) -> None:
    calls = [
        call(
            "CALL-SLACK-DOWN",
            [agent(0.05, "Hello there"), user(0.2, "I want to cancel my subscription"), agent(0.4, "Sorry to hear")],
            end=0.6,
        )
    ]
    dead_letter = tmp_path / "dead.jsonl"
    async with fake() as slack, simulator(calls) as sim:
        env = {TOKEN_ENV: TOKEN, HOOK_ENV: slack.webhook_url(HOOK_ID)}
        slack.outage = 503
        routes = [api_route("alerts"), hook_route("hook"), api_route("live", channel=SALES, transcript="thread")]
        table = slack_config(
            sim.base_url, slack_table(slack, routes, dead_letter, max_attempts=2), [CANCEL],
            calls=["CALL-SLACK-DOWN"], shutdown_grace=3.0,
        )  # fmt: skip
        config = write_config(tmp_path, table)
        code, out, err = await afinish(cli("run", str(config), env=env))
        assert code == 0, err
        assert slack.requests and all(request.status == 503 for request in slack.requests)
        letters = read_letters(dead_letter)
        by_route = {name: [letter for letter in letters if letter["endpoint"].startswith(name)] for name in ("alerts", "hook", "live")}
        assert len(by_route["alerts"]) == 1 and len(by_route["hook"]) == 1, letters
        assert len(by_route["live"]) >= 4, letters  # the opening and the three turns (and maybe the end)
        assert all(letter["plugin"] == "slack" and letter["config"] == str(config.resolve()) for letter in letters)

        slack.outage = None  # Slack is healthy again
        before = len(slack.requests)
        code, out, err = await afinish(cli("redeliver", str(dead_letter), env=env))
        assert code == 0, out + err
        assert "Traceback" not in out + err
        sent = slack.requests[before:]
        assert all(request.ok for request in sent), [(r.status, r.error) for r in sent]
        assert len(sent) == len(letters)
        assert read_letters(dead_letter) == []
        [alert] = [request for request in sent if request.kind == "api" and request.channel == OPS]
        assert alert.text == by_route["alerts"][0]["body"]["text"] and "*cancel my subscription*" in alert.text
        [hooked] = [request for request in sent if request.kind == "webhook"]
        assert hooked.webhook == HOOK_ID and "*cancel my subscription*" in hooked.everything
        thread = [request for request in sent if request.channel == SALES and "cancel-intent" not in request.everything]
        assert thread[0].thread_ts is None and "CALL-SLACK-DOWN" in thread[0].everything
        assert all(reply.thread_ts == thread[0].ts for reply in thread[1:]), [r.thread_ts for r in thread]
        assert [t for t in ("Hello there", "cancel my subscription", "Sorry to hear") if any(t in r.everything for r in thread[1:])] == [
            "Hello there", "cancel my subscription", "Sorry to hear"
        ]

        code, out, err = await afinish(cli("redeliver", str(dead_letter), env=env))
        assert code == 0, out + err
        assert len(slack.requests) == before + len(sent), "a rerun sent something again"


async def test_on_a_shared_channel_an_alert_takes_the_next_turn_before_waiting_transcript_lines() -> None:
    from hookrunner_plugins.slack.delivery import Pacer

    pacer, order = Pacer(0.05), []

    async def post(name: str, urgent: bool) -> None:
        await pacer.wait_turn(urgent)
        order.append(name)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(post, f"line {n}", False)
            await trio.sleep(0.001)  # in this order
        nursery.start_soon(post, "alert", True)  # arrives last, while three lines still wait
    # line 0 goes at once, line 1 was already waiting out the interval; then the alert, not the lines behind it
    assert order == ["line 0", "line 1", "alert", "line 2", "line 3"]  # (first come first would put it last)

    pacer = Pacer(0.2)
    await pacer.wait_turn()  # the channel's next turn is 0.2 s away
    with trio.move_on_after(0.05):
        await pacer.wait_turn()  # taken, then given up while waiting out the interval
    with trio.fail_after(1):  # a cancelled turn never leaves the channel busy
        await pacer.wait_turn()


async def test_replies_dead_lettered_before_they_were_tried_keep_their_thread_and_redeliver_posts_them_there(
    cli, tmp_path: Path
) -> None:
    calls = [call("CALL-SLACK-THREAD", [agent(0.05, "Hello there"), user(0.15, "My card was charged twice")], end=0.3)]
    dead_letter = tmp_path / "dead.jsonl"
    async with fake() as slack, simulator(calls) as sim:
        env = {TOKEN_ENV: TOKEN}
        routes = [api_route("live", channel=SALES, transcript="thread", events=["trigger.*"])]

        def config_with(pace: float) -> Path:
            table = slack_table(slack, routes, dead_letter, pace=pace)
            return write_config(tmp_path, slack_config(sim.base_url, table, calls=["CALL-SLACK-THREAD"], shutdown_grace=0.5))

        # the opening goes out at once; the replies wait out a 5 s pace, and the run ends first
        code, out, err = await afinish(cli("run", str(config_with(pace=5.0)), env=env))
        assert code == 0, err
        [opening] = [request for request in slack.requests if request.channel == SALES]
        assert opening.ok and opening.thread_ts is None and opening.ts
        letters = read_letters(dead_letter)
        assert [letter["body"]["kind"] for letter in letters] == ["reply", "reply", "closing"], letters
        assert all(letter["reason"] == "not delivered before shutdown" for letter in letters)
        assert all(letter["body"]["thread_ts"] == opening.ts for letter in letters)  # never tried, still threaded

        before = len(slack.requests)
        config_with(pace=FAST["pace"])  # (the redelivery reads the same config: no need to wait out 5 s a post)
        code, out, err = await afinish(cli("redeliver", str(dead_letter), env=env))
        assert code == 0, out + err
    sent = [request for request in slack.requests[before:] if request.ok]
    assert len(sent) == 3 and all(request.thread_ts == opening.ts for request in sent), [r.thread_ts for r in sent]
    assert "Hello there" in sent[0].everything and "charged twice" in sent[1].everything


def test_a_reply_queued_before_its_opening_was_posted_learns_the_thread_when_it_is() -> None:
    from hookrunner_plugins.slack import Threads

    threads = Threads()
    early = threads.reply("CALL-1", {"kind": "reply", "text": "first words"})
    assert "thread_ts" not in early  # the opening is still queued
    threads.opened("CALL-1", "1700000000.000100")
    assert early["thread_ts"] == "1700000000.000100"  # the same body, still in the queue (or a dead letter)
    assert threads.reply("CALL-1", {"kind": "reply"})["thread_ts"] == "1700000000.000100"
    threads.closed("CALL-1")
    assert "thread_ts" not in threads.reply("CALL-1", {"kind": "reply"})


async def test_two_workers_posting_to_one_channel_keep_its_pace_between_them(
    cli, tmp_path: Path, secrets: Callable[[FakeSlack], None]
) -> None:
    from hookrunner._service.supervisor import worker_for

    # two calls for each of two workers, every one saying the phrase at the same moments: without turns shared
    # between the processes, both would post to the channel at once and the fake would refuse one (429)
    ids = [f"CALL-SLACK-W{n}" for n in range(40)]
    chosen = [i for i in ids if worker_for(i, 2) == 0][:2] + [i for i in ids if worker_for(i, 2) == 1][:2]
    said = [user(0.3 + 0.3 * turn, f"please cancel my subscription, turn {turn}") for turn in range(3)]
    calls = [call(call_id, said, end=1.4) for call_id in chosen]
    async with fake() as slack, simulator(calls) as sim:
        secrets(slack)
        table = slack_table(slack, [api_route()], tmp_path / "dead.jsonl", group_wait=0.05)
        config = slack_config(sim.base_url, table, [CANCEL], workers=2, shutdown_grace=10.0)
        config["server"] = {"enabled": True, "port": 0}
        process = cli("run", str(write_config(tmp_path, config)), *(arg for i in chosen for arg in ("--call", i)))
        with trio.fail_after(20):
            while sum(post.everything.count("turn ") for post in slack.posts(OPS)) < 12:
                await trio.sleep(0.05)
        process.send_signal(2)  # SIGINT, as a Ctrl-C
        code, out, err = await afinish(process)
    assert code == 0, err
    assert "2 workers ready" in err
    requests = slack.to(OPS)
    assert slack.rate_limited == 0, [round(request.at, 3) for request in requests]
    assert all(request.ok for request in requests)
    texts = "\n".join(post.everything for post in slack.posts(OPS))
    for call_id in chosen:  # each call's three alerts, from both workers
        assert texts.count(call_id) >= 3, call_id
    assert read_letters(tmp_path / "dead.jsonl") == []
