"""Many rows per SQLite statement: how the journal's commit thread writes, so that it seldom lets go of the GIL."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

__all__ = ["write_rows"]

#: The most parameters one statement binds (SQLite's limit is 32,766).
MAX_VARIABLES = 30_000


def write_rows(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run ``sql`` with ``rows`` as its ``{values}`` list, in as few statements as the parameter limit allows.

    Not ``executemany``: sqlite3 lets go of the GIL around every statement it steps, and a worker thread that does
    so once per row, thousands of times a commit, keeps taking the GIL back from the trio thread (each handoff a
    wait of its own there). One statement per thousands of rows hands it over a few times a commit."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ",".join("?" * width) + ")"
    per = max(1, MAX_VARIABLES // width)
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        db.execute(sql.format(values=",".join([one] * len(chunk))), [value for row in chunk for value in row])
