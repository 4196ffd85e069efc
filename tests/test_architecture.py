"""The layering of docs/architecture.md holds: ``lint-imports`` checks the contracts in pyproject.toml (layers, the
simulator apart, no internal import of the public faces, no import circle between sibling modules)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from helpers import REPO


def test_the_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports is not None, "import-linter is in the test extra"
    checked = subprocess.run([lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout[-6000:] + checked.stderr[-2000:]
    assert "0 broken" in checked.stdout


def test_every_sub_package_is_in_a_layer_and_named_in_the_architecture_doc() -> None:
    """A new sub-package must join the layers (or it escapes the contract) and the doc (or a reader cannot find it)."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = {name.strip() for layer in contracts[0]["layers"] for name in layer.split("|")}
    packages = {f"hookrunner.{path.name}" for path in (REPO / "hookrunner").iterdir() if (path / "__init__.py").is_file()}
    assert packages - {"hookrunner._simulator"} == layered
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert [name for name in sorted(packages) if f"`{name.split('.', 1)[1]}/`" not in doc] == []
