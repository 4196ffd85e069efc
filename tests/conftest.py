"""The tests' fixtures; the helpers test modules import are in ``helpers.py`` (and, for the journal's and service
mode's tests, ``journal_helpers.py`` and ``service_helpers.py``)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import Recorder, hookrunner_process
from service_helpers import SECRET, TOKEN


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def service_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables ``service_helpers.service_config`` names, set to its ``TOKEN`` and ``SECRET``; service-mode
    modules use it for every test (``pytestmark = pytest.mark.usefixtures("service_secrets")``)."""
    monkeypatch.setenv("HR_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("HR_TEST_WEBHOOK_SECRET", SECRET)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Every process a test starts is killed at teardown, whatever the test's outcome."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def cli(processes: list[subprocess.Popen], tmp_path: Path) -> Callable[..., subprocess.Popen]:
    """Start ``hookrunner ARGS`` in tmp_path; the process is cleaned up after the test."""

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        process = hookrunner_process(*args, env=env, cwd=tmp_path)
        processes.append(process)
        return process

    return start
