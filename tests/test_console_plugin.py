"""The bundled console plugin: a readable transcript, interims rewritten in place only on a terminal."""

from __future__ import annotations

import io

from hookrunner.testing import run_plugins
from hookrunner_plugins.console import ConsolePlugin


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


EVENTS = [
    {"at": 0, "event_type": "tts_completed", "tts_text": "How can I help?", "tts_latency": 120},
    {"at": 0, "event_type": "user_interim_transcription", "interim_transcription_text": "i want"},
    {"at": 0, "event_type": "user_interim_transcription", "interim_transcription_text": "i want to pay"},
    {"at": 0, "event_type": "user_transcription", "user_transcription_text": "I want to pay my bill."},
]


async def run_console(stream, settings=None) -> str:
    """One call through the real runner, printed by a console plugin writing to ``stream``, registered under the
    name users configure it by (``[plugins.console]``)."""
    calls = [{"id": "CALL-1764000000000-abc123", "events": EVENTS}]
    settings = {"output": "always", **(settings or {})}
    result = await run_plugins({"console": ConsolePlugin(stream)}, calls, settings={"console": settings})
    assert result.exit_code == 0 and result.hook_errors == {}
    return stream.getvalue()


async def test_transcript_on_a_pipe_shows_finished_turns_and_lifecycle_only() -> None:
    out = await run_console(io.StringIO())
    assert out.splitlines() == [
        "[abc123] -- subscribed to CALL-1764000000000-abc123",
        "[abc123] agent:  How can I help?",
        "[abc123] caller: I want to pay my bill.",
        "[abc123] -- call ended (2 turns, 6 events)",
    ]


async def test_by_default_it_prints_on_a_terminal_only_so_a_services_stdout_stays_free_of_caller_text() -> None:
    assert await run_console(io.StringIO(), {"output": "auto"}) == ""
    assert "[abc123] caller: I want to pay my bill." in await run_console(Terminal(), {"output": "auto"})
    assert await run_console(Terminal(), {"output": "never"}) == ""


async def test_on_a_terminal_interims_are_rewritten_in_place_then_replaced_by_the_final() -> None:
    out = await run_console(Terminal(), {"latency": True})
    assert "\r\x1b[2K[abc123] caller … i want\r\x1b[2K[abc123] caller … i want to pay\r\x1b[2K[abc123] caller: I want to pay my bill.\n" in out
    assert "[abc123] agent:  How can I help?  (120 ms)\n" in out


def test_console_settings_are_validated_through_its_declared_schema() -> None:
    from hookrunner._core.config import config_from_dict
    from hookrunner._core.errors import ConfigError
    from hookrunner._run.plugins import load_plugins, validate_plugin_settings

    table = {"atoms": {"api_key": "k"}, "plugins": {"console": {"interims": "sometimes", "colour": True}}}
    config = config_from_dict(table, source="c.toml")
    try:
        validate_plugin_settings(config, load_plugins(config))
    except ConfigError as exc:
        lines = str(exc).splitlines()
    else:
        raise AssertionError("the bad console table was accepted")
    assert lines == [
        'c.toml: plugins.console.interims: expected "auto", "always" or "never", got "sometimes"',
        'c.toml: plugins.console.colour: unknown key',
    ]
