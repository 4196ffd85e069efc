"""What the journal's tests share (``from journal_helpers import ...``): the webhook secret their runs sign with,
a call of caller finals, and a config whose one webhook endpoint keeps retrying.

``test_journal.py``, ``test_journal_resume.py`` and ``test_replay.py`` use them: here, no test module imports
another, so each keeps its own helpers to itself. A module apart from ``helpers.py`` because these belong to the
journal's tests only, and ``service_helpers.py`` has a ``SECRET`` of its own.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from hookrunner.testing import config_table

from helpers import write_config

#: The variable ``journal_config``'s endpoint reads its secret from, and the secret: a test passes both to the
#: ``hookrunner`` process it starts, and checks signatures with the secret.
SECRET_ENV = "HR_TEST_JOURNAL_SECRET"
SECRET = "whsec_" + base64.b64encode(b"journal-test-secret-32-bytes-ok!").decode()


def finals(n: int) -> list[dict[str, Any]]:
    """n caller finals ("turn 0" ...), all at once: one webhook message each with ``journal_config``."""
    return [{"at": 0, "event_type": "user_transcription", "user_transcription_text": f"turn {i}"} for i in range(n)]


def journal_config(base_url: str, hook_url: str, tmp_path: Path, *, shutdown_grace: float = 30.0, **state: Any) -> Path:
    """A config file with only the webhook plugin, one endpoint (caller finals, fast retries, 1,000 attempts: a
    message stays pending while the receiver refuses it) and ``[state]`` from ``state``."""
    endpoint = {
        "name": "crm", "url": hook_url, "secret_env": SECRET_ENV, "events": ["user_transcription"],
        "timeout": 1.0, "retry_initial_delay": 0.2, "retry_max_delay": 0.3, "max_attempts": 1000,
    }  # fmt: skip
    table = config_table(
        base_url,
        enable=["webhook"],
        settings={"webhook": {"endpoints": [endpoint], "dead_letter": str(tmp_path / "dead.jsonl")}},
        runner={"shutdown_grace": shutdown_grace},  # (30 s: the first run is still retrying when it is killed)
    )
    table["state"] = state
    return write_config(tmp_path, table)
