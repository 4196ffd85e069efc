"""The transcripts plugin: every finished call's transcript, written to a file when the call is over.

Writing happens in a thread (``trio.to_thread``) from an async hook, so a slow disk never holds up the stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from hookrunner import App, CallContext, Setting, hookimpl

HOOKRUNNER_API_VERSION = 1
__version__ = "0.1.0"

SETTINGS = {
    "directory": Setting("str", "", doc="where transcripts go, relative to the config file; empty: do nothing"),
}


class TranscriptsPlugin:
    """The entry point names this class: hookrunner makes one instance per run, so the directory it keeps is that
    run's (two runs in one process, with two configs, write to their own directories)."""

    def __init__(self) -> None:
        self.directory: Path | None = None

    @hookimpl
    def settings_schema(self) -> dict[str, Setting]:
        return SETTINGS

    @hookimpl
    def on_startup(self, app: App) -> None:
        directory = app.settings["directory"]
        self.directory = (app.config_dir / directory) if directory else None

    @hookimpl
    async def on_call_finished(self, call: CallContext, reason: str) -> None:
        if self.directory is not None:
            await trio.to_thread.run_sync(_write, self.directory, call.id, reason, call.transcript, len(call.turns))


def _write(directory: Path, call_id: str, reason: str, transcript: str, turns: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in call_id)
    (directory / f"{safe}.txt").write_text(transcript + "\n" if transcript else "", encoding="utf-8")
    with (directory / "calls.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"call_id": call_id, "reason": reason, "turns": turns}) + "\n")
