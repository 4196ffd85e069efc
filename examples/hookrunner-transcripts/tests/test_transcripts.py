"""The example plugin, tested with hookrunner's helpers as a third party would."""

import json
from pathlib import Path

from hookrunner.testing import run_plugins, sim_call
from hookrunner_transcripts import TranscriptsPlugin


async def test_each_finished_call_gets_its_transcript_file(tmp_path: Path) -> None:
    calls = [
        sim_call("CALL-1", agent=["Hello, how can I help?"], user=["My internet is down."]),
        sim_call("CALL-2", agent=["Hi!"], user=["Wrong number, sorry."]),
    ]
    result = await run_plugins(
        {"transcripts": TranscriptsPlugin}, calls, settings={"transcripts": {"directory": "out"}}, base_dir=tmp_path
    )
    assert result.exit_code == 0 and result.hook_errors == {}
    assert (tmp_path / "out" / "CALL-1.txt").read_text() == "agent: Hello, how can I help?\nuser: My internet is down.\n"
    lines = [json.loads(line) for line in (tmp_path / "out" / "calls.jsonl").read_text().splitlines()]
    assert sorted((line["call_id"], line["reason"], line["turns"]) for line in lines) == [
        ("CALL-1", "ended", 2),
        ("CALL-2", "ended", 2),
    ]


async def test_without_a_directory_it_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = await run_plugins({"transcripts": TranscriptsPlugin}, [sim_call("CALL-3", user=["hi"])], base_dir=tmp_path)
    assert result.exit_code == 0 and list(tmp_path.iterdir()) == []
