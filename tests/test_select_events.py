"""``app.select_events``: a plugin's event hook is called only for the event types it asked for, so a plugin with
nothing to do for most events (the bundled ones, unconfigured) costs them nothing; the others see every event, in
order, whatever mix of plain and async implementations a plan holds."""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from hookrunner import hookimpl
from hookrunner._simulator import running_simulator
from hookrunner.testing import run_plugins

from helpers import build_runner, make_config, script

EVENTS = [
    {"at": 0.0, "event_type": "tts_completed", "tts_text": "How can I help?"},
    {"at": 0.0, "event_type": "user_interim_transcription", "interim_transcription_text": "I want"},
    {"at": 0.0, "event_type": "user_transcription", "user_transcription_text": "I want to cancel"},
    {"at": 0.0, "event_type": "turn_latency", "total_turn_ms": 900},
    {"at": 0.0, "event_type": "brand_new_type", "anything": 1},
    {"at": 0.0, "event_type": "tts_completed", "tts_text": "Sorry to hear that"},
]
ALL_TYPES = ["sse_init", *(e["event_type"] for e in EVENTS), "sse_close"]


class Picky:
    """Asks for user events and made-up types on ``on_event``, and for no ``on_tts_completed`` at all."""

    def __init__(self) -> None:
        self.on_event_types: list[str] = []
        self.tts: list[str] = []

    @hookimpl
    def on_startup(self, app: Any) -> None:
        app.select_events("on_event", ["user_*", "brand_*"])
        app.select_events("on_tts_completed", ())

    @hookimpl
    def on_event(self, event: Any, call: Any) -> None:
        self.on_event_types.append(event.event_type)

    @hookimpl
    def on_tts_completed(self, event: Any, call: Any) -> None:
        self.tts.append(event.text)


class SlowFirst:
    """An async implementation ahead of plain ones in the same plan: the rest of the plan still runs, after it."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    @hookimpl(tryfirst=True)
    async def on_event(self, event: Any, call: Any) -> None:
        await trio.sleep(0.001)
        self.log.append(("slow", event.event_type))


class Plain:
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    @hookimpl
    def on_event(self, event: Any, call: Any) -> None:
        self.log.append(("plain", event.event_type))


async def test_a_plugin_gets_only_the_types_it_selected_and_the_others_every_event_in_order() -> None:
    picky, log = Picky(), []
    result = await run_plugins({"picky": picky, "slow": SlowFirst(log), "plain": Plain(log)}, script([{"id": "CALL-P", "events": EVENTS}]))
    assert result.exit_code == 0 and not result.failures
    assert picky.on_event_types == ["user_interim_transcription", "user_transcription", "brand_new_type"]
    assert picky.tts == []
    assert [event.event_type for event in result.events["CALL-P"]] == ALL_TYPES
    assert log == [(who, kind) for kind in ALL_TYPES for who in ("slow", "plain")]


class ChangesItsMind:
    """Selects nothing once it has seen two events: the runner's plans follow a selection made mid-run."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.app: Any = None

    @hookimpl
    def on_startup(self, app: Any) -> None:
        self.app = app

    @hookimpl
    def on_event(self, event: Any, call: Any) -> None:
        self.seen.append(event.event_type)
        if len(self.seen) == 2:
            self.app.select_events("on_event", ())


async def test_a_new_selection_takes_effect_from_the_next_event() -> None:
    plugin = ChangesItsMind()
    result = await run_plugins({"changes": plugin}, script([{"id": "CALL-C", "events": EVENTS}]))
    assert result.exit_code == 0 and not result.failures
    assert plugin.seen == ALL_TYPES[:2]
    assert len(result.events["CALL-C"]) == len(ALL_TYPES)


class Confused:
    def __init__(self) -> None:
        self.errors: list[str] = []

    @hookimpl
    def on_startup(self, app: Any) -> None:
        for hook, types in (("on_trigger", ()), ("on_event", "user_transcription")):
            try:
                app.select_events(hook, types)
            except (ValueError, TypeError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")


async def test_a_hook_that_takes_no_events_and_a_lone_string_are_refused_with_a_reason() -> None:
    plugin = Confused()
    result = await run_plugins({"confused": plugin}, script([{"id": "CALL-X", "events": EVENTS[:1]}]))
    assert result.exit_code == 0
    assert plugin.errors[0].startswith("ValueError: 'on_trigger' is not an event hook (one of: ")
    assert plugin.errors[1] == "TypeError: event_types: a list of event types or globs, not one string"


async def test_bundled_plugins_are_called_only_for_what_their_settings_need(tmp_path) -> None:
    """keywords with a final-only rule skips interim text and agent speech; a webhook endpoint of finals gets only
    finals on on_event; slack with no route and the webhook's other events are not called at all."""
    plugins = {
        "disable": ["console"],
        "keywords": {"rules": [{"name": "cancel", "phrases": ["cancel"], "speaker": "user"}]},
        "webhook": {"dead_letter": str(tmp_path / "dead.jsonl"),
                    "endpoints": [{"name": "finals", "url": "http://127.0.0.1:9/hooks", "events": ["user_transcription"],
                                   "timeout": 0.5,
                                   "secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]},
    }  # fmt: skip
    async with running_simulator(script([{"id": "CALL-B", "events": EVENTS}])) as sim:
        config = make_config(sim.base_url, plugins=plugins, shutdown_grace=0.5)
        runner = build_runner(config, ["CALL-B"])
        calls: Counter[tuple[str, str]] = Counter()
        runner.dispatcher.observe = lambda plugin, hook, seconds: calls.update([(plugin, hook)])  # (as /metrics counts)
        assert await runner.run() == 0
    assert calls[("keywords", "on_user_transcription")] == 1
    assert ("keywords", "on_user_interim_transcription") not in calls
    assert ("keywords", "on_tts_completed") not in calls
    assert calls[("webhook", "on_event")] == 1
    assert not [key for key in calls if key[0] == "slack" and key[1].startswith("on_") and key[1] != "on_startup"
                and key[1] not in ("on_call_subscribed", "on_call_finished", "on_shutdown", "on_trigger")]  # fmt: skip
