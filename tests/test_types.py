"""The package and the bundled plugins type-check (``py.typed`` ships, so plugin authors rely on the hints)."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_the_package_and_the_bundled_plugins_type_check() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert checked.returncode == 0, checked.stdout[-6000:] + checked.stderr[-2000:]
