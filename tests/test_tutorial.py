"""docs/writing-plugins.md, followed literally in a fresh virtualenv: every step of the tutorial works as written.

The tutorial's ``sh`` blocks are run in order by one bash script, and each block preceded by
``<!-- file: PATH -->`` is written to PATH at that point, as a reader would paste it. hookrunner is not on a
package index, and the tutorial says so: the reader sets ``HOOKRUNNER_SRC`` to a checkout or a wheel built from
one (that block is not run), and this test sets it to a wheel of this checkout built with the command the tutorial
gives; every other package comes from the index as it would for a reader.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path


from helpers import REPO

TUTORIAL = REPO / "docs" / "writing-plugins.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
MARKER = re.compile(r"<!--\s*(.*?)\s*-->\s*\Z")


def tutorial_steps(text: str) -> list[tuple[str, str]]:
    """("run", commands) and ("file", path) + content, in the order of the page."""
    steps: list[tuple[str, str]] = []
    for match in FENCE.finditer(text):
        language, body = match.group(1), match.group(2)
        before = text[: match.start()].rstrip()
        marker = MARKER.search(before.rsplit("\n", 1)[-1])
        if marker and marker.group(1).startswith("file:"):
            path = marker.group(1)[len("file:") :].strip()
            steps.append(("file", f"{path}\n{body}"))
        elif language == "sh" and not (marker and marker.group(1).startswith("not run")):
            steps.append(("run", body))
    return steps


def as_bash(steps: list[tuple[str, str]]) -> str:
    lines = ["set -euo pipefail"]
    for index, (kind, content) in enumerate(steps):
        lines.append(f"echo '### step {index}' >&2; echo '### step {index}'")
        if kind == "run":
            # the reader runs `hookrunner run` in a terminal, where the console plugin prints the transcript:
            # `script` gives it one
            lines += [
                f"script -qefc {shlex.quote(line)} /dev/null" if line.startswith("hookrunner run ") else line
                for line in content.splitlines()
            ]
        else:
            path, body = content.split("\n", 1)
            lines.append(f"mkdir -p \"$(dirname {shlex.quote(path)})\"")
            lines.append(f"cat > {shlex.quote(path)} <<'TUTORIAL_EOF'\n{body}TUTORIAL_EOF")
    return "\n".join(lines) + "\n"


def test_the_tutorial_has_the_steps_the_acceptance_names() -> None:
    steps = tutorial_steps(TUTORIAL.read_text(encoding="utf-8"))
    commands = "\n".join(content for kind, content in steps if kind == "run")
    for needed in ("python3 -m venv", 'pip install "$HOOKRUNNER_SRC"', "hookrunner new-plugin sentiment",
                   "pip install -e", "pytest -q", "hookrunner plugins", "hookrunner simulate",
                   "hookrunner run config.toml"):  # fmt: skip
        assert needed in commands, needed
    # hookrunner is on no index: a bare `pip install hookrunner` would fail for every reader
    assert not re.search(r"^pip install hookrunner\b", commands, re.M), commands
    files = [content.split("\n", 1)[0] for kind, content in steps if kind == "file"]
    assert files == ["hookrunner_sentiment/__init__.py", "tests/test_plugin.py", "config.toml"]
    assert "twine upload" not in commands  # shown, but not run: it needs an account


def test_following_the_tutorial_literally_in_a_fresh_venv_works(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("hookrunner-*.whl")
    work = tmp_path / "reader"
    work.mkdir()
    script = work.parent / "tutorial.sh"
    script.write_text(as_bash(tutorial_steps(TUTORIAL.read_text(encoding="utf-8"))), encoding="utf-8")
    this_venv = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON", "PIP_"))}
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != this_venv)
    env.update(HOOKRUNNER_SRC=str(wheel), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", NO_COLOR="1")
    done = subprocess.run(
        ["bash", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, f"stdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}"
    steps = dict(re.findall(r"### step (\d+)\n(.*?)(?=### step |\Z)", out, re.S))
    errs = dict(re.findall(r"### step (\d+)\n(.*?)(?=### step |\Z)", err, re.S))
    # the hookrunner that ran is this checkout's, installed in the reader's venv
    assert (work / ".venv" / "bin" / "hookrunner").exists()
    # the scaffold's own tests pass, then the tutorial's four
    passes = re.findall(r"(\d+) passed", out)
    assert passes == ["2", "4"], out
    # `hookrunner plugins` lists the new plugin with its version and hooks, active
    listing = next(line for line in out.splitlines() if line.startswith("sentiment "))
    assert re.match(r"sentiment\s+0\.1\.0\s+yes\s+", listing), listing
    for hook in ("settings_schema", "on_startup", "on_user_transcription", "on_call_finished"):
        assert hook in listing
    # `plugins --settings sentiment` prints the tutorial's settings with their defaults
    assert "[plugins.sentiment]" in out and "alert_at = -2" in out
    # `hookrunner run` against the simulator called the plugin for both calls (the tutorial's own scores)
    # (on the terminal, the run's log lines and its transcript are one stream)
    assert "sentiment: CALL-1767225600101-5d2e7a ended with mood +2" in out
    assert "sentiment: CALL-1767225600303-e49f16 ended with mood +2" in out
    assert "Perfect, thanks." in out  # the console transcript of the run
    assert list((work / "hookrunner-sentiment" / "dist").glob("hookrunner_sentiment-0.1.0-*.whl"))
    assert steps and errs
