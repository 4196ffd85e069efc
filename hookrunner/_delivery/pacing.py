"""Turns at an outside service's rate limit, shared by every process of a run (``app.pacing``).

Slack allows about one message per second per channel, whichever process sends it. With ``runner.workers`` > 1
each worker runs its own copy of a plugin, so a pace kept in one process's memory would let N posts a second
reach a channel. So the turns live where every worker sees them: a small file per key in a directory the
supervisor makes for the run, holding when the next turn is free and until when a 429 holds the key, read and
written under ``fcntl.flock``. A turn is reserved (the file says "taken until slot + interval") before it is
waited for, so two workers never get the same slot. In one process the same logic keeps its numbers in memory.

The clock is ``time.monotonic()``: CLOCK_MONOTONIC, the same for every process of the machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import trio

__all__ = ["Pacing"]

_RECORD = struct.Struct("<dd")  # next free turn, held until (monotonic seconds)
_Record = tuple[float, float]


class Pacing:
    """Turns per key (a channel, an endpoint): ``await take_turn(key, interval)`` returns once this caller may
    send, at least ``interval`` seconds after the previous turn of ``key`` in any process of the run, and never
    while a ``hold`` (a 429's Retry-After) lasts. ``directory`` None keeps the turns in this process."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._memory: dict[str, _Record] = {}
        self._files: dict[str, int] = {}

    async def take_turn(self, key: str, interval: float) -> None:
        while True:
            slot = self._reserve(key, interval)
            await trio.sleep(max(0.0, slot - time.monotonic()))
            _, held_until = self._read_modify(key, lambda record: record)
            if held_until <= time.monotonic():
                return
            # a 429 arrived while this turn waited: the turn is lost, a later one is taken

    def hold(self, key: str, seconds: float) -> None:
        """No turn of ``key`` starts within ``seconds`` from now (a 429's Retry-After), in any process."""
        until = time.monotonic() + seconds
        self._read_modify(key, lambda record: (record[0], max(record[1], until)))

    def close(self) -> None:
        for descriptor in self._files.values():
            os.close(descriptor)
        self._files.clear()

    def _reserve(self, key: str, interval: float) -> float:
        reserved = 0.0

        def take(record: _Record) -> _Record:
            nonlocal reserved
            next_free, held_until = record
            reserved = max(time.monotonic(), next_free, held_until)
            return reserved + interval, held_until

        self._read_modify(key, take)
        return reserved

    def _read_modify(self, key: str, change: Callable[[_Record], _Record]) -> _Record:
        """Apply ``change`` to ``key``'s record atomically across processes; the new record."""
        if self._directory is None:
            record = change(self._memory.get(key, (0.0, 0.0)))
            self._memory[key] = record
            return record
        descriptor = self._file(key)
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # held for one read and one write: microseconds
        try:
            data = os.pread(descriptor, _RECORD.size, 0)
            old = _RECORD.unpack(data) if len(data) == _RECORD.size else (0.0, 0.0)
            record = change(old)
            if record != old:
                os.pwrite(descriptor, _RECORD.pack(*record), 0)
            return record
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)

    def _file(self, key: str) -> int:
        descriptor = self._files.get(key)
        if descriptor is None:
            assert self._directory is not None
            name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".turns"
            descriptor = self._files[key] = os.open(self._directory / name, os.O_RDWR | os.O_CREAT, 0o600)
        return descriptor
