"""`hookrunner new-plugin` writes a plugin package whose own tests pass as generated."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import hookrunner
from helpers import finish


def test_the_scaffold_writes_a_package_whose_tests_pass_and_refuses_to_overwrite(cli, tmp_path: Path) -> None:
    code, out, err = finish(cli("new-plugin", "sentiment", str(tmp_path)))
    assert code == 0, err
    root = tmp_path / "hookrunner-sentiment"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "hookrunner_sentiment/__init__.py", "pyproject.toml", "tests/test_plugin.py",
    ]  # fmt: skip
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    # the entry point names the plugin's class: hookrunner makes one instance of it per run
    assert project["entry-points"]["hookrunner"] == {"sentiment": "hookrunner_sentiment:SentimentPlugin"}
    # hookrunner is not on an index: the dependency is one that this hookrunner, installed from a checkout, meets,
    # and the README says how to install it rather than linking to a package page that does not exist
    [dependency] = (Requirement(spec) for spec in project["dependencies"])
    assert dependency.name == "hookrunner" and dependency.specifier.contains(hookrunner.__version__)
    readme = (root / "README.md").read_text()
    assert "pypi.org" not in readme and "pip wheel --no-deps -w dist ." in readme and "SentimentPlugin" in readme
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
    before = (root / "pyproject.toml").read_text()
    code, out, err = finish(cli("new-plugin", "sentiment", str(tmp_path)))
    assert code == 2 and "already exists" in err and (root / "pyproject.toml").read_text() == before


def test_a_name_that_cannot_be_a_package_is_refused_in_one_line(cli, tmp_path: Path) -> None:
    code, out, err = finish(cli("new-plugin", "9 lives!", str(tmp_path)))
    assert code == 2 and err.count("\n") == 1 and "not a usable name" in err


def test_a_name_an_installed_plugin_has_is_refused_in_one_line_and_nothing_is_written(cli, tmp_path: Path) -> None:
    code, out, err = finish(cli("new-plugin", "console", str(tmp_path)))
    assert code == 2, out + err
    assert err.splitlines() == [
        "error: new-plugin: console: a plugin named console is installed already (the hookrunner distribution); "
        "choose another name"
    ]
    assert list(tmp_path.iterdir()) == []
