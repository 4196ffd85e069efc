"""How far each followed call's dispatch got, kept by the journal as a log of small deltas folded now and then.

Every commit of the journal tells what was dispatched since the one before: the latest dispatched sequence number
and the dedupe keys per call, and the calls that ended. Written as rows per call, that is a few index updates per
event (most events are dispatched within the interval they arrive in, so a commit touches nearly every live
call); written as one blob per commit, it is one row. The deltas are folded into per-call rows (``call_keys``,
``calls.dispatched_through``) every so often and when the journal is opened again, so the log stays short and a
restart reads one place.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

__all__ = ["Progress", "ProgressLog", "merge", "encode_progress", "decode_progress"]

#: Dedupe keys logged since the last fold after which the next commit folds (about 2 MB of keys in the log).
FOLD_KEYS = 50_000


class Progress(msgspec.Struct, array_like=True, gc=False):
    """One commit's delta: ``over`` (calls that ended: what came before of them is dropped), then ``through`` (call
    -> sequence number of its latest dispatched event) and ``keys`` (call -> dedupe keys of the events dispatched,
    None for an event that has none), in that order."""

    through: dict[str, int]
    keys: dict[str, list[str | None]]
    over: list[str]

    def __bool__(self) -> bool:
        return bool(self.through or self.keys or self.over)


encode_progress = msgspec.msgpack.Encoder().encode
decode_progress = msgspec.msgpack.Decoder(Progress).decode


def merge(deltas: Iterable[Progress]) -> Progress:
    """The deltas applied in order, as one (its ``over``: every call that ended in them)."""
    through: dict[str, int] = {}
    keys: dict[str, list[str | None]] = {}
    over: list[str] = []
    for delta in deltas:
        for call_id in delta.over:
            through.pop(call_id, None)
            keys.pop(call_id, None)
        over += delta.over
        through.update(delta.through)
        for call_id, more in delta.keys.items():
            known = keys.get(call_id)
            if known is None:
                keys[call_id] = list(more)
            else:
                known += more
    return Progress(through, keys, over)


class ProgressLog:
    """The deltas the journal has taken since its last fold, kept in memory beside the log's rows: a call followed
    again within the run reads them here (the rows are only read when the journal is opened again), and a fold
    writes them from here. A delta joins the log when taken, before its commit: a commit that fails leaves it to
    the next fold."""

    def __init__(self) -> None:
        self._unfolded: list[Progress] = []
        self._folding: list[Progress] = []  # taken by a fold whose commit has not returned yet
        self._keys_logged = 0

    def take(self, delta: Progress, fold: bool) -> list[Progress] | None:
        """Log ``delta``; when ``fold`` or the log has grown past ``FOLD_KEYS``, every delta of the log (``delta``
        last) for the commit to fold, else None."""
        if delta:
            self._unfolded.append(delta)
            self._keys_logged += sum(map(len, delta.keys.values()))
        if not (fold or self._keys_logged >= FOLD_KEYS) or not self._unfolded or self._folding:
            return None  # (one fold at a time: a fold asked for while one is written waits for the next commit)
        self._folding, self._unfolded, self._keys_logged = self._unfolded, [], 0
        return self._folding

    def folded(self, committed: bool) -> None:
        """The fold's commit returned: its deltas are in the per-call rows, or (when it failed) back in the log."""
        if not committed:
            self._unfolded[:0] = self._folding
            self._keys_logged += sum(len(keys) for delta in self._folding for keys in delta.keys.values())
        self._folding = []

    def of_call(self, call_id: str, pending: Progress) -> tuple[bool, int | None, list[str | None]]:
        """What the log (and ``pending``, the delta not taken yet) knows of ``call_id``: whether it ended in it (so
        what the rows hold of it is gone or going), its latest dispatched seq, and the keys dispatched since."""
        ended, through = False, None
        keys: list[str | None] = []
        for delta in (*self._folding, *self._unfolded, pending):
            if call_id in delta.over:
                ended, through, keys = True, None, []
            through = delta.through.get(call_id, through)
            keys += delta.keys.get(call_id, ())
        return ended, through, keys
