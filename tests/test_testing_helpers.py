"""The helpers plugin authors test with (hookrunner.testing), used the way a third party would."""

from __future__ import annotations

from hookrunner import UserTranscription, hookimpl
from hookrunner.testing import make_event, make_trigger, run_plugins, sim_call


class Shouter:
    """A plugin under test: counts the caller's words, fails on one word on purpose."""

    def __init__(self) -> None:
        self.words = 0

    @hookimpl
    def on_user_transcription(self, event, call):
        if "boom" in event.text:
            raise ValueError("boom")
        self.words += len(event.text.split())


def test_make_event_builds_the_typed_event_a_hook_receives() -> None:
    event = make_event("user_transcription", user_transcription_text="hello there", source="stt")
    assert isinstance(event, UserTranscription) and event.text == "hello there" and event.raw["source"] == "stt"
    plugin = Shouter()
    plugin.on_user_transcription(event, call=None)
    assert plugin.words == 2
    trigger = make_trigger(type="keyword", rule="cancel", severity="warning")
    assert trigger.full_type == "trigger.keyword"


async def test_run_plugins_runs_the_real_runner_and_reports_what_happened() -> None:
    plugin = Shouter()
    calls = [
        sim_call("CALL-A", agent=["Hi, how can I help?"], user=["I want to cancel my subscription"]),
        sim_call("CALL-B", agent=["Hello"], user=["boom"], drop_after=1),
    ]
    result = await run_plugins(
        [plugin],
        calls,
        enable=["keywords"],
        settings={"keywords": {"rules": [{"name": "cancel", "phrases": ["cancel my subscription"]}]}},
    )
    assert result.exit_code == 0
    assert result.finished == {"CALL-A": "ended", "CALL-B": "ended"}
    assert [e.event_type for e in result.events["CALL-A"]] == [
        "sse_init", "call_start", "tts_completed", "user_transcription", "call_end", "sse_close",
    ]  # fmt: skip
    assert plugin.words == 6
    assert [(t.rule, t.call_id) for t in result.triggers] == [("cancel", "CALL-A")]
    assert result.hook_errors == {"Shouter": 1}  # the plugin's bug, isolated and counted


async def test_the_pytest_fixture_is_the_same_helper(hookrunner_run) -> None:
    result = await hookrunner_run([], [sim_call("CALL-F", user=["hi"])])
    assert result.exit_code == 0 and len(result.events["CALL-F"]) == 5
