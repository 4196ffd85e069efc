"""The ``console`` plugin: a readable live transcript of every call on standard output.

By default it prints only when standard output is a terminal: a service's stdout (systemd's journal, a container
log) gets no caller text mixed into its log lines unless ``output = "always"`` asks for it (``hookrunner demo``
does). On a terminal, a caller's interim transcription is shown as it grows, rewritten in place on one line, and
replaced by the final text; elsewhere only finished turns are printed.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from hookrunner import App, CallContext, Setting, Trigger, TtsCompleted, UserInterimTranscription, UserTranscription, check_table, hookimpl

_MODES = ("auto", "always", "never")


def _mode(value: str) -> str | None:
    return None if value in _MODES else f'expected "auto", "always" or "never", got "{value}"'


SETTINGS = {
    "output": Setting(
        "str", "auto", check=_mode,
        doc="print the transcript: auto = only when standard output is a terminal (not under systemd or a pipe)",
    ),  # fmt: skip
    "interims": Setting(
        "str",
        "auto",
        check=_mode,
        doc="show interim transcriptions as they update: auto = only when the output is a terminal",
    ),
    "latency": Setting("bool", False, doc="append the agent's tts latency to its lines"),
    "short_ids": Setting("bool", True, doc="shorten call ids to their last part"),
}


class ConsolePlugin:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._settings: dict[str, Any] = {}
        self._live_interim = False  # a rewritable interim line is on screen
        self._printing = True

    @property
    def out(self) -> TextIO:
        return self._stream or sys.stdout

    @hookimpl
    def settings_schema(self) -> dict[str, Setting]:
        return SETTINGS

    @hookimpl
    def on_startup(self, app: App) -> None:
        self._settings, _ = check_table(app.settings, SETTINGS)
        self._live_interim = False
        output = self._settings["output"]
        self._printing = output == "always" or (output == "auto" and self.out.isatty())

    def _label(self, call_id: str) -> str:
        if self._settings.get("short_ids", True) and call_id.count("-") >= 2:
            return call_id.rsplit("-", 1)[-1]
        return call_id

    def _show_interims(self) -> bool:
        mode = self._settings.get("interims", "auto")
        return self._printing and (mode == "always" or (mode == "auto" and self.out.isatty()))

    def _line(self, text: str) -> None:
        if not self._printing:
            return
        prefix = "\r\x1b[2K" if self._live_interim else ""
        self._live_interim = False
        self.out.write(f"{prefix}{text}\n")
        self.out.flush()

    @hookimpl
    def on_call_subscribed(self, call: CallContext) -> None:
        self._line(f"[{self._label(call.id)}] -- subscribed to {call.id}")

    @hookimpl
    def on_user_interim_transcription(self, event: UserInterimTranscription, call: CallContext) -> None:
        if not self._show_interims():
            return
        if self.out.isatty():
            self.out.write(f"\r\x1b[2K[{self._label(call.id)}] caller … {event.text}")
            self._live_interim = True
            self.out.flush()
        else:
            self._line(f"[{self._label(call.id)}] caller … {event.text}")

    @hookimpl
    def on_user_transcription(self, event: UserTranscription, call: CallContext) -> None:
        self._line(f"[{self._label(call.id)}] caller: {event.text}")

    @hookimpl
    def on_tts_completed(self, event: TtsCompleted, call: CallContext) -> None:
        latency = ""
        if self._settings.get("latency") and event.latency_ms is not None:
            latency = f"  ({event.latency_ms} ms)"
        self._line(f"[{self._label(call.id)}] agent:  {event.text}{latency}")

    @hookimpl
    def on_trigger(self, trigger: Trigger) -> None:
        matched = getattr(trigger, "matched", None)
        detail = f": {matched}" if matched else ""
        what = "not said" if trigger.event_type == "absent" else "fired"
        self._line(f"[{self._label(trigger.call_id)}] !! {trigger.rule} {what} ({trigger.severity}){detail}")

    @hookimpl
    def on_call_finished(self, call: CallContext, reason: str) -> None:
        turns = len(call.turns)
        self._line(f"[{self._label(call.id)}] -- call {reason} ({turns} turns, {call.events_dispatched} events)")
