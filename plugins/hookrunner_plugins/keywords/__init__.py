"""The ``keywords`` plugin: act while the call is still going when something is (or is not) said.

A detector: it matches ``[[plugins.keywords.rules]]`` against live transcripts and emits a ``KeywordTrigger``
(``trigger.keyword``) through ``app.emit_trigger``; notifier plugins (webhook, Slack, a third party's) act on it.
Matching is synchronous and cheap (one compiled matcher for every rule), so a trigger leaves within milliseconds
of the event's arrival. Absence rules ("the agent never read the disclosure within 60 s") fire from a timer at
their deadline, or at the end of a call that ended before it.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import trio

from hookrunner import App, CallContext, Event, Trigger, TtsCompleted, UserInterimTranscription, UserTranscription, hookimpl

from .matcher import Match, PhraseMatcher, RuleMatchSpec
from .settings import SETTINGS, Rule, parse_rules

__all__ = ["plugin", "KeywordTrigger", "KeywordsPlugin"]

log = logging.getLogger("hookrunner.plugins.keywords")
#: Finish reasons after which the call itself is over (not: shutdown, gave_up, auth_failed, not_found).
CALL_OVER = frozenset({"ended", "completed"})


class KeywordTrigger(Trigger, frozen=True, kw_only=True):
    """A rule fired. ``matched`` is the phrase (as written in the rule) or the pattern; ``span`` is where it was
    found in ``text`` (the whole turn as transcribed), or None for an absence rule (``event_type == "absent"``)."""

    speaker: str
    matched: str | None = None
    span: tuple[int, int] | None = None
    text: str | None = None
    score: float | None = None


@dataclass
class _CallState:
    """Per call, keyed by rule name, so that a reload (SIGHUP) keeps what live calls already did."""

    started: float  # monotonic, for absence deadlines
    fired: dict[str, int] = field(default_factory=dict)  # rule -> times fired in this call
    last_fired: dict[str, float] = field(default_factory=dict)  # rule -> monotonic time of the last firing
    fired_this_turn: set[str] = field(default_factory=set)  # interim firings: the final must not repeat them
    said: set[str] = field(default_factory=set)  # absence rules whose phrase was said in time


class KeywordsPlugin:
    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._by_name: dict[str, Rule] = {}
        self._listening: dict[tuple[str, bool], frozenset[int]] = {}
        self._matcher: PhraseMatcher | None = None
        self._app: App | None = None
        self._calls: dict[str, _CallState] = {}
        self._deadlines: list[tuple[float, str, str]] = []  # heap of (monotonic deadline, call id, rule name)
        self._deadline_added = trio.Event()
        self._watching = False

    @hookimpl
    def settings_schema(self) -> dict[str, Any]:
        return SETTINGS

    @hookimpl
    def validate_settings(self, settings: dict[str, Any]) -> list[str]:
        return parse_rules(settings)[1]

    @hookimpl
    def describe_settings(self, settings: dict[str, Any]) -> list[str]:
        rules = parse_rules(settings, warn=False)[0]
        if not rules:
            return ["no rules ([[plugins.keywords.rules]]): nothing is matched"]
        return [rule.description for rule in rules]

    @hookimpl
    def on_startup(self, app: App) -> None:
        self._app = app
        self._calls = {}
        self._deadlines = []
        self._deadline_added = trio.Event()
        self._watching = False
        self._use_rules(app)

    @hookimpl
    def on_reload(self, app: App) -> None:
        """New rules (already validated by the runner); live calls keep their counts for rules that stay."""
        before = set(self._by_name)
        self._use_rules(app)
        added = [rule for rule in self._rules if rule.absent_within is not None and rule.name not in before]
        for call_id, state in self._calls.items():
            for rule in added:
                self._schedule(call_id, state, rule)

    def _use_rules(self, app: App) -> None:
        rules, problems = parse_rules(app.settings, warn=False)
        if problems:
            raise ValueError("; ".join(problems))
        matcher = PhraseMatcher(
            RuleMatchSpec(rule.index, rule.phrases, rule.patterns, rule.fuzzy, rule.threshold, rule.numbers)
            for rule in rules
        )
        # Which rules listen to which text, worked out once: per event only the few fired this turn are removed.
        self._listening = {
            (speaker, interim): frozenset(
                rule.index
                for rule in rules
                if rule.hears(speaker) and (not interim or (rule.interim and rule.absent_within is None))
            )
            for speaker in ("user", "agent")
            for interim in (False, True)
        }
        self._rules, self._by_name, self._matcher = rules, {rule.name: rule for rule in rules}, matcher
        # Hooks no rule needs are not called (no rules: none is): a final user turn also ends the interim turn.
        listens = self._listening
        hears_user = bool(listens[("user", False)] or listens[("user", True)])
        app.select_events("on_user_interim_transcription", None if listens[("user", True)] else ())
        app.select_events("on_user_transcription", None if hears_user else ())
        app.select_events("on_tts_completed", None if listens[("agent", False)] else ())
        if not self._watching and any(rule.absent_within is not None for rule in rules):
            self._watching = True
            app.start_soon(self._watch_deadlines)
        if rules:
            rules_text = f"{len(rules)} rule{'' if len(rules) == 1 else 's'}"
            phrases_text = f"{matcher.phrase_count} phrase{'' if matcher.phrase_count == 1 else 's'}"
            log.info("keywords: %s, %s", rules_text, phrases_text)

    # --- the calls' lives -----------------------------------------------------------------------------------

    @hookimpl
    def on_call_subscribed(self, call: CallContext) -> None:
        state = _CallState(started=time.monotonic())
        self._calls[call.id] = state
        for rule in self._rules:
            if rule.absent_within is not None:
                self._schedule(call.id, state, rule)

    def _schedule(self, call_id: str, state: _CallState, rule: Rule) -> None:
        assert rule.absent_within is not None
        heapq.heappush(self._deadlines, (state.started + rule.absent_within, call_id, rule.name))
        self._deadline_added.set()

    @hookimpl
    def on_call_finished(self, call: CallContext, reason: str) -> None:
        state = self._calls.pop(call.id, None)
        if state is None:
            return
        if reason not in CALL_OVER:
            return  # the runner stopped following a call that may go on: "not said" would be a false alarm
        for rule in self._rules:
            if rule.absent_within is not None and rule.name not in state.said and rule.name not in state.fired:
                self._fire_absent(call.id, state, rule, f"the call {reason} before {rule.absent_within:g} s")

    # --- text ---------------------------------------------------------------------------------------------

    @hookimpl
    def on_user_interim_transcription(self, event: UserInterimTranscription, call: CallContext) -> None:
        state = self._calls.get(call.id)
        if state is not None:
            self._scan(event, call.id, state, "user", event.text, interim=True)

    @hookimpl
    def on_user_transcription(self, event: UserTranscription, call: CallContext) -> None:
        state = self._calls.get(call.id)
        if state is not None:
            self._scan(event, call.id, state, "user", event.text, interim=False)
            state.fired_this_turn.clear()  # the next interim belongs to a new turn

    @hookimpl
    def on_tts_completed(self, event: TtsCompleted, call: CallContext) -> None:
        state = self._calls.get(call.id)
        if state is not None:
            self._scan(event, call.id, state, "agent", event.text, interim=False)

    def _scan(self, event: Event, call_id: str, state: _CallState, speaker: str, text: str, *, interim: bool) -> None:
        if not text or self._matcher is None:
            return
        listening = self._listening[(speaker, interim)]
        if state.fired_this_turn:
            listening = listening - {self._by_name[name].index for name in state.fired_this_turn if name in self._by_name}
        if not listening:
            return
        for match in self._matcher.find(text, listening):
            rule = self._rules[match.rule]
            if rule.absent_within is not None:
                if time.monotonic() <= state.started + rule.absent_within:
                    state.said.add(rule.name)
                continue
            if self._allowed(rule, state):
                if interim:
                    state.fired_this_turn.add(rule.name)
                self._fire(rule, state, call_id, event, speaker, text, match)

    def _allowed(self, rule: Rule, state: _CallState) -> bool:
        if rule.max_per_call and state.fired.get(rule.name, 0) >= rule.max_per_call:
            return False
        last = state.last_fired.get(rule.name)
        return not (rule.cooldown and last is not None and time.monotonic() - last < rule.cooldown)

    def _fire(
        self, rule: Rule, state: _CallState, call_id: str, event: Event, speaker: str, text: str, match: Match
    ) -> None:
        state.fired[rule.name] = state.fired.get(rule.name, 0) + 1
        state.last_fired[rule.name] = time.monotonic()
        self._emit(
            KeywordTrigger(
                type="keyword",
                call_id=call_id,
                rule=rule.name,
                event_id=event.event_id,
                event_type=event.event_type,
                timestamp=event.timestamp,
                severity=rule.severity,
                labels=rule.labels,
                speaker=speaker,
                matched=match.matched,
                span=(match.start, match.end),
                text=text,
                score=match.score,
            )
        )

    def _fire_absent(self, call_id: str, state: _CallState, rule: Rule, why: str) -> None:
        state.fired[rule.name] = state.fired.get(rule.name, 0) + 1
        log.info("keywords: rule %s fired on call %s: not said (%s)", rule.name, call_id, why)
        self._emit(
            KeywordTrigger(
                type="keyword",
                call_id=call_id,
                rule=rule.name,
                event_type="absent",
                timestamp=datetime.now(timezone.utc),
                severity=rule.severity,
                labels=rule.labels,
                speaker=rule.speaker,
                matched=", ".join(rule.phrases + tuple(pattern.pattern for pattern in rule.patterns)),
            )
        )

    def _emit(self, trigger: KeywordTrigger) -> None:
        assert self._app is not None
        self._app.emit_trigger(trigger)

    async def _watch_deadlines(self) -> None:
        """Fire absence rules whose deadline passed on a call still going."""
        while True:
            while not self._deadlines:
                self._deadline_added = trio.Event()
                await self._deadline_added.wait()
            deadline, call_id, name = self._deadlines[0]
            self._deadline_added = trio.Event()
            with trio.move_on_after(max(0.0, deadline - time.monotonic())):
                await self._deadline_added.wait()  # an earlier deadline may arrive meanwhile
                continue
            heapq.heappop(self._deadlines)
            state = self._calls.get(call_id)
            rule = self._by_name.get(name)  # a reload may have removed it
            if state is not None and rule is not None and name not in state.said and name not in state.fired:
                self._fire_absent(call_id, state, rule, f"{rule.absent_within:g} s passed")
