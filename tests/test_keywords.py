"""The bundled ``keywords`` plugin as its users see it: rules in the config, live calls from the simulator, and the
triggers that reach every plugin's ``on_trigger`` (here a recorder; in the end-to-end test the webhook plugin and a
loopback receiver).

The matcher is also exercised directly (``PhraseMatcher``), where a table of texts says more than a call would:
normalisation, word boundaries, numbers, fuzzy thresholds and patterns. Everything else runs the real runner
against the real simulator on 127.0.0.1 with ``hookrunner.testing``, as a third-party plugin's tests would, on the
project's example streams in ``tests/streams`` (replayed faster with ``speed``) or on small scripted calls whose
timing a test controls.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trio

from hookrunner import hookimpl
from hookrunner.testing import config_table, run_plugins, simulator, start_plugins
from hookrunner_plugins.keywords import KeywordTrigger
from hookrunner_plugins.keywords.matcher import PhraseMatcher, RuleMatchSpec
from hookrunner_plugins.webhook import verify

from helpers import hookrunner_process
from hookrunner.testing.receiver import running_receiver

STREAMS = Path(__file__).resolve().parent / "streams"  # the project's own example streams (JSONL)
SUPPORT = STREAMS / "support-cancel-intent.jsonl"
SUPPORT_CALL = "CALL-1764000000000-a1b2c3"
BANK = STREAMS / "bank-fraud-escalation.jsonl"
BANK_CALL = "CALL-1764000000123-d4e5f6"
FAST = 20  # example stream replay speed: the 33 s support call takes 1.65 s

UNREACHABLE = "http://127.0.0.1:9"  # for configs that `check` refuses before anything connects


# -- what the plugins see --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    trigger: KeywordTrigger
    at: float  # trio.current_time() when on_trigger ran


class TriggerRecorder:
    """A notifier plugin that records every trigger, and when each call was subscribed and finished (trio time)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.subscribed: dict[str, float] = {}
        self.finished: dict[str, float] = {}

    @hookimpl
    def on_call_subscribed(self, call: Any) -> None:
        self.subscribed[call.id] = trio.current_time()

    @hookimpl
    def on_call_finished(self, call: Any, reason: str) -> None:
        self.finished[call.id] = trio.current_time()

    @hookimpl
    def on_trigger(self, trigger: Any) -> None:
        self.seen.append(Seen(trigger, trio.current_time()))

    @property
    def triggers(self) -> list[KeywordTrigger]:
        return [seen.trigger for seen in self.seen]

    def of(self, rule: str, call_id: str | None = None) -> list[KeywordTrigger]:
        return [t for t in self.triggers if t.rule == rule and (call_id is None or t.call_id == call_id)]

    def timed(self, rule: str, call_id: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.trigger.rule == rule and seen.trigger.call_id == call_id]


def keywords_settings(rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``[plugins.keywords]`` table of ``rules``."""
    return {"keywords": {"rules": rules}}


async def run_keywords(
    source: Any, call_ids: list[str], rules: list[dict[str, Any]], *, speed: float | None = None
) -> TriggerRecorder:
    """Run the runner with the keywords plugin and ``rules`` on a simulator of ``source`` (a list of scripted
    calls or an example stream's path) to the end, following ``call_ids``."""
    recorder = TriggerRecorder()
    async with simulator(source, speed=speed) as sim:
        result = await run_plugins(
            [recorder], sim, enable=["keywords"], settings=keywords_settings(rules), calls=call_ids
        )
    assert result.exit_code == 0 and result.hook_errors == {}
    assert result.finished == {call_id: "ended" for call_id in call_ids}
    return recorder


def user(at: float, text: str) -> dict[str, Any]:
    return {"at": at, "event_type": "user_transcription", "user_transcription_text": text}


def interim(at: float, text: str) -> dict[str, Any]:
    return {"at": at, "event_type": "user_interim_transcription", "interim_transcription_text": text}


def agent(at: float, text: str) -> dict[str, Any]:
    return {"at": at, "event_type": "tts_completed", "tts_text": text, "tts_latency": 120}


def call(call_id: str, events: list[dict[str, Any]], end: float) -> dict[str, Any]:
    """A scripted call: ``call_start`` at 0, ``events``, ``call_end`` (and then sse_close) at ``end``."""
    return {
        "id": call_id,
        "events": [{"at": 0, "event_type": "call_start"}, *events, {"at": end, "event_type": "call_end"}],
    }


def index_of(trigger: KeywordTrigger) -> int:
    """The position in the scripted call of the event that fired (simulator ids: ``CALL_INDEX_MS``)."""
    assert trigger.event_id is not None
    call_id, index, _ = trigger.event_id.rsplit("_", 2)
    assert call_id == trigger.call_id
    return int(index)


def spanned(trigger: KeywordTrigger) -> str:
    assert trigger.span is not None and trigger.text is not None
    start, end = trigger.span
    return trigger.text[start:end]


# -- the matcher on its own ------------------------------------------------------------------------------------


def find(
    phrase: str | None,
    text: str,
    *,
    fuzzy: bool = False,
    threshold: float = 85.0,
    numbers: bool = False,
    patterns: tuple[str, ...] = (),
) -> list[str]:
    """The parts of ``text`` (as written) that one rule matches."""
    spec = RuleMatchSpec(
        index=0,
        phrases=(phrase,) if phrase else (),
        patterns=tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns),
        fuzzy=fuzzy,
        threshold=threshold,
        numbers=numbers,
    )
    return [text[match.start : match.end] for match in PhraseMatcher([spec]).find(text)]


@pytest.mark.parametrize(
    "phrase, text, found",
    [
        ("cancel my subscription", "I want to CANCEL MY SUBSCRIPTION", "CANCEL MY SUBSCRIPTION"),
        ("Cancel My Subscription", "i want to cancel my subscription", "cancel my subscription"),
        ("cancel my subscription", "Cancel, my... subscription!", "Cancel, my... subscription"),
        ("cancel my subscription", "please cancel   my\tsubscription now", "cancel   my\tsubscription"),
        ("cancel my subscription", "ＣＡＮＣＥＬ ｍｙ ｓｕｂｓｃｒｉｐｔｉｏｎ", "ＣＡＮＣＥＬ ｍｙ ｓｕｂｓｃｒｉｐｔｉｏｎ"),
        ("I'd like to speak", "Yes. I’d like to speak to someone", "I’d like to speak"),
        ("I’d like to speak", "yes i'd like to speak to someone", "i'd like to speak"),
        ("strasse", "I live on the Hauptstraße", None),  # a word inside another is not the word
        ("hauptstrasse", "I live on the Hauptstraße", "Hauptstraße"),  # casefold: ß is ss
        ("café", "the cafe\u0301 on the corner", "cafe\u0301"),  # NFKC: a combining accent is the same letter
    ],
    ids=["upper", "rule-upper", "punctuation", "spaces", "full-width", "curly-in-text", "curly-in-rule",
         "inside-a-word", "casefold", "combining"],
)  # fmt: skip
def test_word_phrases_match_whatever_the_case_punctuation_spacing_and_unicode_form(
    phrase: str, text: str, found: str | None
) -> None:
    assert find(phrase, text) == ([] if found is None else [found])


@pytest.mark.parametrize(
    "phrase, text",
    [
        ("cancel", "I asked about the cancellation fee"),
        ("cancel", "it was cancelled yesterday"),
        ("card", "my cardholder name"),
        ("fraud", "they defrauded me"),
        ("my card", "my cards"),
        ("speak to a manager", "speak to a managerial person"),
        ("cancel my subscription", "recancel my subscription"),
    ],
)
def test_a_word_phrase_never_matches_part_of_a_longer_word(phrase: str, text: str) -> None:
    assert find(phrase, text) == []


def test_several_phrases_and_rules_share_one_matcher_and_each_rule_reports_its_earliest_match() -> None:
    text = "Fraud! I said fraud, and I want to cancel my card and speak to a manager."
    specs = [
        RuleMatchSpec(0, ("fraud",), (), False, 85.0, False),
        RuleMatchSpec(1, ("speak to a manager", "cancel my card"), (), False, 85.0, False),
        RuleMatchSpec(2, ("cancel my subscription",), (), False, 85.0, False),
    ]
    matches = PhraseMatcher(specs).find(text)
    assert [(m.rule, m.matched, text[m.start : m.end]) for m in matches] == [
        (0, "fraud", "Fraud"),
        (1, "cancel my card", "cancel my card"),
    ]


@pytest.mark.parametrize(
    "phrase, text, found",
    [
        ("two lines", "I have 2 lines at home", "2 lines"),
        ("2 lines", "I have two lines at home", "two lines"),
        ("nine hundred dollars", "they charged 900 dollars", "900 dollars"),
        ("900 dollars", "they charged nine hundred dollars", "nine hundred dollars"),
        ("nine hundred dollars", "they charged me nine hundred dollars", "nine hundred dollars"),
    ],
)
def test_with_numbers_on_spelled_numbers_and_digits_match_each_other(phrase: str, text: str, found: str) -> None:
    assert find(phrase, text, numbers=True) == [found]


def test_with_numbers_off_spelled_numbers_and_digits_stay_different() -> None:
    assert find("two lines", "I have 2 lines at home") == []
    assert find("two lines", "I have two lines at home") == ["two lines"]


def test_with_numbers_on_a_dollar_amount_written_with_a_sign_matches_the_spelled_amount() -> None:
    """ "$900" is how many STT vendors write "nine hundred dollars"; the issue's example of numbers as digits."""
    assert find("nine hundred dollars", "they charged me $900 last night", numbers=True) == ["$900"]


@pytest.mark.parametrize(
    "phrase, variant",
    [
        ("cancel my subscription", "Honestly I want to cancel my subscriptions."),
        ("speak to a manager", "Can I speak to the manager please?"),
        ("speak to a manager", "I'd like to speak with a manger"),
        ("cancel my subscription", "I want to council my subscription"),
    ],
)
def test_asr_variants_match_fuzzy_at_threshold_80_but_not_word(phrase: str, variant: str) -> None:
    assert find(phrase, variant) == []
    found = find(phrase, variant, fuzzy=True, threshold=80)
    assert len(found) == 1
    assert found[0] in variant


def test_a_fuzzy_match_reports_a_score_of_at_least_the_threshold_and_the_span_of_the_variant() -> None:
    text = "Okay. Can I speak to the manager please?"
    spec = RuleMatchSpec(0, ("speak to a manager",), (), True, 80.0, False)
    [match] = PhraseMatcher([spec]).find(text)
    assert 80 <= match.score < 100
    assert text[match.start : match.end] == "speak to the manager"
    assert match.matched == "speak to a manager"


MONOTONIC_TEXTS = [
    "Honestly I want to cancel my subscriptions.",
    "I'd like to cancel my subscription",
    "Can I speak to the manager please?",
    "I'd like to speak with a manger",
    "I want to council my subscription",
    "cancel my sub",
    "no thanks, that's all",
    "Okay, tomorrow morning works.",
    "I think someone used my card, there's a charge I didn't make.",
]


@pytest.mark.parametrize("phrase", ["cancel my subscription", "speak to a manager", "fraud"])
def test_fuzzy_thresholds_are_monotonic_a_match_holds_at_every_lower_threshold(phrase: str) -> None:
    thresholds = list(range(0, 101, 5)) + [79.5, 80.5, 83.3, 99.9]
    thresholds.sort()
    for text in MONOTONIC_TEXTS:
        matched = [bool(find(phrase, text, fuzzy=True, threshold=threshold)) for threshold in thresholds]
        # True for every threshold up to some point, False for every one above it
        assert matched == sorted(matched, reverse=True), (text, list(zip(thresholds, matched)))
        assert matched[0], f"threshold 0 matches anything: {text!r}"


@pytest.mark.parametrize(
    "phrase, fragment",
    [
        ("cancel my subscription", "My."),
        ("cancel my subscription", "Cancel."),
        ("cancel my subscription", "subscription"),
        ("speak to a manager", "Speak"),
        ("speak to a manager", "speak to a"),
    ],
)
def test_a_turn_that_is_only_a_fragment_of_a_fuzzy_phrase_does_not_match_it(phrase: str, fragment: str) -> None:
    """A caller saying "My." has not said "cancel my subscription", whatever the threshold below 100."""
    assert find(phrase, fragment, fuzzy=True, threshold=80) == []


@pytest.mark.parametrize(
    "pattern, text, found",
    [
        (r"charge i didn'?t make", "There's a charge I didn't make.", "charge I didn't make"),
        (r"\bFRAUD\w*", "this looks fraudulent to me", "fraudulent"),
        (r"\$\d{3,}", "they took $900 from my account", "$900"),  # on the original text: the $ is still there
        (r"card,\s+there's", "someone used my card, there's a charge", "card, there's"),
    ],
    ids=["apostrophe", "upper-pattern", "dollar-sign", "punctuation"],
)
def test_patterns_match_the_original_text_case_insensitively_and_report_its_span(
    pattern: str, text: str, found: str
) -> None:
    assert find(None, text, patterns=(pattern,)) == [found]


# -- the example streams' calls --------------------------------------------------------------------------------


async def test_the_support_call_fires_cancel_my_subscription_exactly_once_with_its_turn_and_span() -> None:
    rules = [
        {
            "name": "cancel-intent",
            "phrases": ["cancel my subscription"],
            "severity": "warning",
            "labels": {"team": "retention", "queue": "save-desk"},
        }
    ]
    before = datetime.now(timezone.utc)
    recorder = await run_keywords(SUPPORT, [SUPPORT_CALL], rules, speed=FAST)
    after = datetime.now(timezone.utc)
    [trigger] = recorder.triggers
    assert isinstance(trigger, KeywordTrigger)
    turn = "Honestly if this keeps happening I want to cancel my subscription."
    start = turn.index("cancel my subscription")
    assert trigger.type == "keyword" and trigger.full_type == "trigger.keyword"
    assert trigger.rule == "cancel-intent"
    assert trigger.call_id == SUPPORT_CALL
    assert trigger.event_id == "a1b2c3-0018"
    assert trigger.event_type == "user_transcription"
    assert trigger.speaker == "user"
    assert trigger.text == turn
    assert trigger.span == (start, start + len("cancel my subscription"))
    assert trigger.matched == "cancel my subscription"
    assert trigger.severity == "warning"
    assert trigger.labels == {"team": "retention", "queue": "save-desk"}
    assert trigger.timestamp == datetime(2026, 11, 24, 10, 0, 20, 500000, tzinfo=timezone.utc)
    assert before <= trigger.detected_at <= after
    assert trigger.source == "keywords"
    with pytest.raises(AttributeError):
        trigger.rule = "changed"  # type: ignore[misc]  # a trigger is immutable


async def test_the_bank_call_fires_an_interim_rule_on_the_interim_and_not_again_on_the_final() -> None:
    rules = [
        {"name": "manager-early", "phrases": ["speak to a manager"], "interim": True, "severity": "critical"},
        {"name": "manager-final", "phrases": ["speak to a manager"]},
    ]
    recorder = await run_keywords(BANK, [BANK_CALL], rules, speed=FAST)
    [early] = recorder.of("manager-early")
    assert early.event_id == "d4e5f6-0014"
    assert early.event_type == "user_interim_transcription"
    assert early.text == "yes please. and i'd like to speak to a manager about"
    assert spanned(early) == "speak to a manager"
    assert early.severity == "critical"
    [final] = recorder.of("manager-final")
    assert final.event_id == "d4e5f6-0015"
    assert final.event_type == "user_transcription"
    assert final.text == "Yes please. And I'd like to speak to a manager about this."
    assert spanned(final) == "speak to a manager"
    assert len(recorder.triggers) == 2


async def test_a_pattern_rule_fires_on_the_fixture_turn_with_the_span_of_the_original_text() -> None:
    rules = [{"name": "card-misuse", "patterns": [r"SOMEONE USED MY (card|account)"]}]
    recorder = await run_keywords(BANK, [BANK_CALL], rules, speed=FAST)
    [trigger] = recorder.triggers
    assert trigger.event_id == "d4e5f6-0008"  # the final; interims are not listened to without interim = true
    assert trigger.matched == r"SOMEONE USED MY (card|account)"
    assert spanned(trigger) == "someone used my card"
    assert trigger.text == "I think someone used my card, there's a charge I didn't make."


# -- scripted calls -------------------------------------------------------------------------------------------------


async def test_word_rules_through_the_runner_match_case_punctuation_unicode_and_numbers_but_not_longer_words() -> None:
    rules = [
        {"name": "cancel", "phrases": ["cancel"]},
        {"name": "two-lines", "phrases": ["two lines"], "numbers": True},
        {"name": "dont-want", "phrases": ["don't want"]},
    ]
    events = [
        user(0.02, "What is the cancellation fee?"),
        user(0.04, "It was cancelled, right?"),
        user(0.06, "Then please ＣＡＮＣＥＬ, now!"),
        user(0.08, "I have 2 lines."),
        user(0.10, "I DON’T   WANT it."),
    ]
    recorder = await run_keywords([call("CALL-NORM", events, end=0.2)], ["CALL-NORM"], rules)
    got = sorted((t.rule, index_of(t), spanned(t)) for t in recorder.triggers)
    assert got == [("cancel", 3, "ＣＡＮＣＥＬ"), ("dont-want", 5, "DON’T   WANT"), ("two-lines", 4, "2 lines")]


async def test_speaker_agent_hears_only_tts_user_only_the_caller_and_any_both() -> None:
    rules = [
        {"name": "agent-fraud", "phrases": ["fraud"], "speaker": "agent"},
        {"name": "user-fraud", "phrases": ["fraud"], "speaker": "user"},
        {"name": "any-fraud", "phrases": ["fraud"], "speaker": "any"},
    ]
    events = [
        agent(0.02, "Our fraud team can help."),
        interim(0.04, "fraud"),
        user(0.06, "Yes, it is fraud."),
    ]
    recorder = await run_keywords([call("CALL-SPK", events, end=0.2)], ["CALL-SPK"], rules)
    [by_agent] = recorder.of("agent-fraud")
    assert (by_agent.event_type, by_agent.speaker, by_agent.text) == ("tts_completed", "agent", "Our fraud team can help.")
    [by_user] = recorder.of("user-fraud")
    assert (by_user.event_type, by_user.speaker, by_user.text) == ("user_transcription", "user", "Yes, it is fraud.")
    assert [(t.event_type, t.speaker) for t in recorder.of("any-fraud")] == [
        ("tts_completed", "agent"),
        ("user_transcription", "user"),
    ]


async def test_cooldown_and_max_per_call_hold_for_each_call_separately() -> None:
    rules = [
        {"name": "cooldown", "phrases": ["fraud"], "cooldown": 0.5},
        {"name": "at-most-two", "phrases": ["fraud"], "max_per_call": 2},
    ]
    # fraud at 0.0, 0.1, 0.2 (inside the cooldown), 0.8 (after it), 0.9 (inside the next one)
    events = [user(at, f"fraud number {n}") for n, at in enumerate([0.0, 0.1, 0.2, 0.8, 0.9])]
    calls = [call("CALL-C1", events, end=1.1), call("CALL-C2", events, end=1.1)]
    recorder = await run_keywords(calls, ["CALL-C1", "CALL-C2"], rules)
    for call_id in ("CALL-C1", "CALL-C2"):
        # script positions: call_start is 0, the first fraud is 1
        assert [index_of(t) for t in recorder.of("cooldown", call_id)] == [1, 4], call_id
        assert [index_of(t) for t in recorder.of("at-most-two", call_id)] == [1, 2], call_id
        fired = recorder.timed("cooldown", call_id)
        assert fired[1].at - fired[0].at >= 0.5


async def test_an_interim_rule_fires_once_per_turn_and_again_in_the_next_turn() -> None:
    rules = [{"name": "manager", "phrases": ["speak to a manager"], "interim": True}]
    events = [
        interim(0.02, "speak to a manager"),
        interim(0.04, "speak to a manager now"),
        user(0.06, "Speak to a manager now."),
        agent(0.08, "One moment."),
        interim(0.10, "i said speak to a manager"),
        user(0.12, "I said speak to a manager!"),
    ]
    recorder = await run_keywords([call("CALL-TURNS", events, end=0.2)], ["CALL-TURNS"], rules)
    assert [(index_of(t), t.event_type) for t in recorder.triggers] == [
        (1, "user_interim_transcription"),
        (5, "user_interim_transcription"),
    ]


async def test_a_fuzzy_interim_rule_waits_for_an_interim_that_says_the_whole_phrase() -> None:
    """Interims grow word by word; the first word of a phrase is not the phrase."""
    rules = [{"name": "manager", "phrases": ["speak to a manager"], "match": "fuzzy", "threshold": 80, "interim": True}]
    events = [
        interim(0.02, "speak"),
        interim(0.04, "speak to a"),
        interim(0.06, "speak to the manager"),
        user(0.08, "Speak to the manager."),
    ]
    recorder = await run_keywords([call("CALL-FZ", events, end=0.2)], ["CALL-FZ"], rules)
    assert [(index_of(t), spanned(t)) for t in recorder.triggers] == [(3, "speak to the manager")]


async def test_an_absence_rule_fires_at_its_deadline_on_a_live_call_unless_the_speaker_said_it_in_time() -> None:
    deadline = 0.3
    rules = [{"name": "disclosure", "phrases": ["this call is recorded"], "speaker": "agent",
              "absent_within": deadline, "severity": "critical", "labels": {"kind": "compliance"}}]  # fmt: skip
    calls = [
        call("CALL-NEVER", [agent(0.05, "Hello, how can I help?")], end=1.0),
        call("CALL-INTIME", [agent(0.1, "Hello, this call is recorded for quality.")], end=1.0),
        call("CALL-LATE", [agent(0.6, "By the way, this call is recorded.")], end=1.0),
        call("CALL-CALLER", [user(0.1, "I know this call is recorded.")], end=1.0),  # said, but by the wrong side
    ]
    ids = [c["id"] for c in calls]
    recorder = await run_keywords(calls, ids, rules)
    assert recorder.of("disclosure", "CALL-INTIME") == []
    for call_id in ("CALL-NEVER", "CALL-LATE", "CALL-CALLER"):
        [seen] = recorder.timed("disclosure", call_id)  # once, not again at the call's end
        trigger = seen.trigger
        assert trigger.event_type == "absent" and trigger.event_id is None, trigger
        assert trigger.type == "keyword" and trigger.full_type == "trigger.keyword"
        assert trigger.speaker == "agent"
        assert trigger.span is None
        assert trigger.severity == "critical" and trigger.labels == {"kind": "compliance"}
        after = seen.at - recorder.subscribed[call_id]
        assert deadline - 0.05 <= after <= deadline + 0.3, (call_id, after)
        assert seen.at < recorder.finished[call_id], "fired while the call was live"
    assert len(recorder.triggers) == 3


async def test_an_absence_rule_fires_at_the_end_of_a_call_that_ends_before_the_deadline() -> None:
    rules = [
        {"name": "disclosure", "phrases": ["this call is recorded"], "speaker": "agent", "absent_within": 5},
        {"name": "greeting", "phrases": ["hello"], "speaker": "agent", "absent_within": 5},
    ]
    calls = [call("CALL-SHORT", [agent(0.05, "Hello, bye.")], end=0.2)]
    with trio.fail_after(3):  # the runner does not wait for the 5 s deadline
        recorder = await run_keywords(calls, ["CALL-SHORT"], rules)
    [seen] = recorder.timed("disclosure", "CALL-SHORT")
    assert seen.trigger.event_type == "absent"
    assert seen.at - recorder.subscribed["CALL-SHORT"] < 1.0
    assert seen.at >= recorder.finished["CALL-SHORT"] - 0.05
    assert recorder.of("greeting") == []  # said in time: nothing at the end either
    assert len(recorder.triggers) == 1


async def test_stopping_the_runner_mid_call_is_not_a_missed_disclosure() -> None:
    """A stop (SIGTERM, lost key, given up) ends the runner's view of a call, not the call: no "not said" alarm."""
    rules = [{"name": "disclosure", "phrases": ["this call is recorded"], "speaker": "agent", "absent_within": 5}]
    calls = [call("CALL-LIVE", [agent(0.05, "Hello.")], end=10)]
    recorder = TriggerRecorder()
    async with start_plugins([recorder], calls, enable=["keywords"], settings=keywords_settings(rules)) as run:
        await trio.sleep(0.4)
        assert "CALL-LIVE" in recorder.subscribed and not run.over
        run.runner.stop()
        result = await run.wait()
    assert result.exit_code == 0
    assert result.finished == {"CALL-LIVE": "shutdown"}  # stopped mid-call, 9.6 s before the call's end
    assert recorder.of("disclosure") == []


def test_fuzzy_matching_keeps_to_whole_words_like_word_matching() -> None:
    rules = [RuleMatchSpec(0, ("cancel",), (), True, 85.0, False), RuleMatchSpec(1, ("fraud",), (), True, 85.0, False)]
    matcher = PhraseMatcher(rules)
    assert matcher.find("I want a cancellation") == []
    assert matcher.find("I was defrauded last week") == []
    text = "Cancel it, this is fraud!"
    assert [text[m.start : m.end] for m in matcher.find(text)] == ["Cancel", "fraud"]


# -- end to end: a webhook receiver ---------------------------------------------------------------------------------


async def test_a_keyword_reaches_a_webhook_receiver_signed_within_a_second_of_the_simulator_sending_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("HR_TEST_KW_SECRET", secret)
    turn = "Look, I want to speak to a manager right now."
    calls = [call("CALL-E2E", [agent(0.05, "Hello, how can I help?"), user(0.5, turn)], end=0.8)]
    rules = [{"name": "escalation", "phrases": ["speak to a manager"], "severity": "critical",
              "labels": {"route": "supervisors"}}]  # fmt: skip
    async with running_receiver() as receiver:
        endpoint = {"name": "ops", "url": receiver.url("/hook"), "secret_env": "HR_TEST_KW_SECRET",
                    "events": ["trigger.keyword"], "timeout": 1.0, "max_attempts": 2,
                    "retry_initial_delay": 0.05, "retry_max_delay": 0.1}  # fmt: skip
        settings = {
            "webhook": {"dead_letter": str(tmp_path / "dead.jsonl"), "endpoints": [endpoint]},
            **keywords_settings(rules),
        }
        result = await run_plugins([], calls, enable=["keywords", "webhook"], settings=settings, base_dir=tmp_path)
    assert result.exit_code == 0
    [request] = receiver.requests
    assert request.path == "/hook" and request.succeeded
    body = verify(request.body, request.headers, secret)
    assert body["type"] == "trigger.keyword"
    assert body["call_id"] == "CALL-E2E"
    data = body["data"]
    assert data["rule"] == "escalation"
    assert data["call_id"] == "CALL-E2E"
    assert data["event_type"] == "user_transcription"
    assert data["event_id"].startswith("CALL-E2E_2_")
    assert data["matched"] == "speak to a manager"
    assert data["text"] == turn
    start = turn.index("speak to a manager")
    assert data["span"] == [start, start + len("speak to a manager")]
    assert data["severity"] == "critical"
    assert data["labels"] == {"route": "supervisors"}
    assert data["speaker"] == "user"
    # the simulator stamps a live event with the moment it sends it
    sent = datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00")).timestamp()
    assert -0.05 <= request.wall - sent <= 1.0, request.wall - sent
    assert not (tmp_path / "dead.jsonl").exists() or (tmp_path / "dead.jsonl").read_text() == ""


# -- hookrunner check -----------------------------------------------------------------------------------------------


GOOD_RULE = {"name": "fine", "phrases": ["fraud"]}

BAD_RULES = {
    "bad-regex": ({"name": "broken", "patterns": ["charge (i didn't"]}, "patterns[0]", "not a valid regular expression"),
    "unknown-speaker": ({"name": "who", "phrases": ["fraud"], "speaker": "caller"}, "speaker", '"caller"'),
    "threshold-140": ({"name": "strict", "phrases": ["fraud"], "match": "fuzzy", "threshold": 140}, "threshold", "140"),
    "nothing-to-match": ({"name": "empty"}, "phrases", "phrase or pattern"),
    "duplicate-name": ({"name": "fine", "phrases": ["cancel"]}, "name", "unique"),
}


def write_keywords_config(directory: Path, rules: list[dict[str, Any]]) -> Path:
    table = config_table(UNREACHABLE, enable=["keywords"], settings=keywords_settings(rules), runner={"calls": ["CALL-X"]})
    path = directory / "config.toml"
    path.write_text(tomli_w.dumps(table), encoding="utf-8")
    return path


def check(config: Path) -> tuple[int, str, str]:
    process = hookrunner_process("check", str(config), cwd=config.parent)
    try:
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


@pytest.mark.parametrize("case", list(BAD_RULES))
def test_check_refuses_a_bad_rule_with_one_line_naming_its_key_and_the_rule(tmp_path: Path, case: str) -> None:
    rule, key, detail = BAD_RULES[case]
    config = write_keywords_config(tmp_path, [GOOD_RULE, rule])
    code, out, err = check(config)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert str(config) in lines[0]
    assert f"plugins.keywords.rules[1].{key}:" in lines[0]
    assert rule["name"] in lines[0]
    assert detail in lines[0]


def test_check_reports_every_bad_rule_of_one_config_one_line_each(tmp_path: Path) -> None:
    rules = [GOOD_RULE, *(rule for rule, _, _ in BAD_RULES.values())]
    config = write_keywords_config(tmp_path, rules)
    code, out, err = check(config)
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == len(BAD_RULES), err
    for index, (rule, key, _) in enumerate(BAD_RULES.values(), start=1):
        [line] = [line for line in lines if f"plugins.keywords.rules[{index}].{key}:" in line]
        assert rule["name"] in line


def test_check_accepts_valid_keyword_rules(tmp_path: Path) -> None:
    rules = [
        GOOD_RULE,
        {"name": "fuzzy", "phrases": ["speak to a manager"], "match": "fuzzy", "threshold": 80, "interim": True},
        {"name": "pattern", "patterns": [r"\$\d+"], "speaker": "any", "cooldown": 5, "max_per_call": 1},
        {"name": "absent", "phrases": ["this call is recorded"], "speaker": "agent", "absent_within": 30,
         "severity": "critical", "labels": {"kind": "compliance"}, "numbers": True},
    ]  # fmt: skip
    code, out, err = check(write_keywords_config(tmp_path, rules))
    assert code == 0, err


def test_a_number_read_out_digit_by_digit_matches_the_number_in_digits() -> None:
    matcher = PhraseMatcher([RuleMatchSpec(0, ("card ending in 4217",), (), False, 85.0, True)])
    text = "The card ending in four two one seven, please."
    [match] = matcher.find(text)
    assert text[match.start : match.end] == "card ending in four two one seven"


@pytest.mark.parametrize(
    "text",
    [
        "Hi, I'd like to CANCEL my plan -- now!",
        "students' rock'n'roll  test\tcase",
        "  leading and trailing  ",
        "it's $900, or 12.50 -- right?",
        "'quoted' `ticks` don't",
    ],
)
@pytest.mark.parametrize("numbers", [False, True])
def test_plain_ascii_text_normalises_the_same_on_the_fast_path_as_on_the_unicode_path(text: str, numbers: bool) -> None:
    from hookrunner_plugins.keywords import normalize as module

    fast = module.normalize(text, numbers=numbers)
    # Appending a non-ASCII space forces the general path; it is a separator, so the words must be the same.
    slow = module.normalize(text + "\u00a0", numbers=numbers)
    assert fast.text == slow.text
    assert [token[2:] for token in fast.tokens] == [token[2:] for token in slow.tokens]
