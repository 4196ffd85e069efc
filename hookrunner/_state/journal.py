"""The journal (``[state] path``): what the runner must not forget when it is killed, in one SQLite file.

It holds:

- every outbox message from ``submit`` until it is delivered or dead-lettered, with its attempt count and the
  time of its next attempt, so ``hookrunner run`` after a kill -9, the OOM killer or a reboot sends each one
  again with its original id (receivers deduplicate on it), in its key's order, going on with its retry
  schedule; delivered ones stay for ``[state] keep`` (at most ``[state] max_kept``) so ``hookrunner replay`` can
  send them again;
- the calls being followed, the ids of their events already dispatched (a restart follows them again without
  dispatching those twice: logged a commit at a time and folded now and then, ``call_progress.py``), and their
  events received but not yet dispatched (a restart dispatches them first);
- triggers emitted and not yet dispatched to ``on_trigger`` (the event that caused one is dispatched already);
- accepted Atoms webhooks not yet handed to plugins, and the delivery ids of accepted ones for a day, so a signed
  push replayed after a restart is still recognised.

Writes never wait on the disk inside a hook: they are gathered for ``[state] commit_interval`` and written in
one transaction from a worker thread (group commit: one transaction per interval, not one per message; in WAL
mode only checkpoints fsync). An event received and dispatched within one interval is never written as received
at all. The bound this gives: a kill forgets at most what was gathered in the last ``commit_interval``: its
events come back from a stream that replays or from backfill, and are dispatched again (the one whose hook was
running included), their messages with the same ids (the webhook plugin derives them from the event), so
receivers drop the repeats. A push is answered only once written (``written``), so Atoms' webhooks are never in
that window. SQLite runs in WAL mode with ``synchronous=NORMAL``, which survives the process being killed at any
instruction (a power cut may lose the last commits).
"""

from __future__ import annotations

import glob
import importlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
import trio

from hookrunner._core.errors import ConfigError
from hookrunner._core.text import json_bytes
from hookrunner._core.triggers import Trigger
from hookrunner._state.call_progress import Progress, ProgressLog, decode_progress, encode_progress, merge
from hookrunner._state.sql_rows import write_rows

if TYPE_CHECKING:
    from hookrunner._core.platform_delivery import PlatformDelivery

__all__ = [
    "Journal", "JournalReader", "work_left", "worker_journal", "journal_files", "OutboxJournal", "CallJournal", "JournaledMessage", "KeptMessage",
    "ReceivedEvent",
]  # fmt: skip

log = logging.getLogger("hookrunner.journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    handle INTEGER PRIMARY KEY,  -- (a rowid, in submission order: inserts append, never land in the middle)
    plugin TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt TEXT,
    submitted REAL,
    delivered REAL,
    next_attempt REAL
);
CREATE INDEX IF NOT EXISTS outbox_by_endpoint ON outbox (plugin, endpoint, seq);
CREATE INDEX IF NOT EXISTS outbox_kept ON outbox (delivered) WHERE delivered IS NOT NULL;
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY, source TEXT NOT NULL, since REAL NOT NULL, dispatched_through INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS call_lines (
    call_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, meta BLOB NOT NULL, lines TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS call_lines_by_call ON call_lines (call_id, first_seq);
CREATE TABLE IF NOT EXISTS call_keys (call_id TEXT NOT NULL, keys BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS call_keys_by_call ON call_keys (call_id);
CREATE TABLE IF NOT EXISTS call_progress (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS platform (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS triggers (seq INTEGER PRIMARY KEY, class TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, seen REAL NOT NULL);
DROP TABLE IF EXISTS received;
DROP TABLE IF EXISTS call_events;
DROP TABLE IF EXISTS dispatched;
"""
#: How long an accepted platform webhook's delivery id is remembered (a replay within it is acknowledged, ignored).
DELIVERY_WINDOW = 24 * 3600.0
#: A followed call older than this is not followed again by a restart (no call lasts a day): it is forgotten.
CALL_WINDOW = 24 * 3600.0
#: Seconds between two purges of delivered messages past ``[state] keep`` (and of old delivery ids and calls).
PURGE_INTERVAL = 60.0
#: Columns an older journal file lacks, added when it is opened.
_ADDED_COLUMNS = {
    "outbox": {"submitted": "REAL", "delivered": "REAL", "next_attempt": "REAL"},
    "calls": {"dispatched_through": "INTEGER NOT NULL DEFAULT 0"},
}
_encode = msgspec.json.Encoder().encode
_decode_meta = msgspec.json.Decoder(list[tuple[int, float, bool]]).decode
#: Between two lines of a batch: a character no JSON text can hold raw (control characters inside strings are
#: escaped, and outside them only spaces, tabs and line breaks are allowed), so joining is cheap and unambiguous.
_LINE_SEPARATOR = "\x1e"
_decode_keys = msgspec.json.Decoder(list[str | None]).decode


class _Message(Protocol):
    """What the journal reads of an outbox message (``hookrunner.delivery.OutboxMessage``): the journal sits below
    delivery, so it names the fields it keeps rather than the class."""

    id: str
    key: str
    body: Any
    attempts: int
    journal_handle: int | None
    first_attempt: datetime | None
    not_before: float | None


@dataclass(frozen=True)
class JournaledMessage:
    """A message found in the journal at start: not delivered nor dead-lettered by the run that submitted it."""

    handle: int
    id: str
    key: str
    body: Any
    attempts: int
    first_attempt: datetime | None
    next_attempt: float | None  # epoch seconds: when its retry schedule said to try again


@dataclass(frozen=True)
class KeptMessage:
    """A delivered message kept for ``[state] keep``: what ``hookrunner replay`` sends again."""

    plugin: str
    endpoint: str
    id: str
    key: str
    body: Any
    submitted: float | None  # epoch seconds
    delivered: float


class ReceivedEvent(NamedTuple):
    """An event a previous run received and did not dispatch (its line as read from the stream)."""

    seq: int
    data: str
    received: float  # epoch seconds
    backfilled: bool


def _read_trigger(path: str, body: bytes) -> Trigger | None:
    """A trigger journaled by class ``path`` (``module:Name``: a plugin's subclass of ``Trigger``); a class no
    longer to be found, or changed since, reads as a plain ``Trigger`` (its own fields dropped)."""
    module, _, name = path.partition(":")
    kinds: list[type[Trigger]] = [Trigger]
    try:
        found = getattr(importlib.import_module(module), name)
        if isinstance(found, type) and issubclass(found, Trigger):
            kinds.insert(0, found)
    except Exception:  # a plugin gone or renamed since the trigger was written: what every trigger has is read
        pass
    for kind in kinds:
        try:
            return msgspec.json.decode(body, type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    return None


def worker_journal(path: Path, index: int) -> Path:
    """The journal of worker ``index`` of a run with ``runner.workers``: the first keeps ``state.path``, so one
    process and one worker share a file; the others write ``NAME.worker-K.SUFFIX`` beside it."""
    return path if index == 0 else path.with_name(f"{path.stem}.worker-{index}{path.suffix}")


def journal_files(path: Path) -> list[Path]:
    """Every journal a run of ``state.path`` left, one per worker that ever ran, that exists (``replay`` reads all)."""
    found = [path] if path.exists() else []
    others = path.parent.glob(f"{glob.escape(path.stem)}.worker-*{glob.escape(path.suffix)}")
    indexed = []
    for other in others:
        index = other.name[len(path.stem) + len(".worker-") : len(other.name) - len(path.suffix)]
        if index.isdigit() and worker_journal(path, int(index)) == other:
            indexed.append((int(index), other))
    return found + [other for _, other in sorted(indexed)]


def work_left(path: Path) -> int:
    """How many calls, event batches, messages and platform webhooks a previous run left in the journal at
    ``path`` for the next run to resume (0 when there is no such file). Read only: a run that finds nothing opens
    nothing."""
    if not path.is_file():
        return 0
    try:
        with JournalReader.open_read_only(path) as reader:
            return reader.work_left()
    except sqlite3.Error:
        return 0  # an older or damaged file: the run opens it and says what is wrong


class JournalReader:
    """The journal's queries, over a connection of their own: in WAL mode a reader never waits for the writer's
    commit, so they may run on the trio thread. ``open_read_only`` is for a reader beside a running
    ``hookrunner run`` (replay, ``run`` deciding whether there is work left): it never writes the file; use it in a
    ``with`` block, which closes it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open_read_only(cls, path: Path) -> JournalReader:
        """Raises ``sqlite3.Error`` when the file cannot be read."""
        return cls(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def work_left(self) -> int:
        """How many calls, event batches, messages and platform webhooks a previous run left to resume."""
        return sum(
            self._db.execute(query).fetchone()[0]
            for query in (
                "SELECT COUNT(*) FROM calls",
                "SELECT COUNT(*) FROM call_lines",
                "SELECT COUNT(*) FROM outbox WHERE delivered IS NULL",
                "SELECT COUNT(*) FROM platform",
                "SELECT COUNT(*) FROM triggers",
            )
        )

    def followed_calls(self) -> list[str]:
        """The calls a previous run was following when it stopped (within ``CALL_WINDOW``), oldest first."""
        rows = self._db.execute(
            "SELECT call_id FROM calls WHERE since >= ? ORDER BY since", (time.time() - CALL_WINDOW,)
        ).fetchall()
        return [row[0] for row in rows]

    def dispatched_keys(self, call_id: str) -> list[str]:
        """The dedupe keys of the events of ``call_id`` already dispatched (by a previous run too)."""
        rows = self._db.execute("SELECT keys FROM call_keys WHERE call_id = ?", (call_id,)).fetchall()
        return [key for (keys,) in rows for key in _decode_keys(keys) if key is not None]

    def _dispatched_through(self, call_id: str) -> int:
        """The seq of the latest dispatched event of ``call_id`` (0: none)."""
        row = self._db.execute("SELECT dispatched_through FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        return row[0] if row is not None else 0

    def undispatched_events(self, call_id: str) -> list[ReceivedEvent]:
        """Events of ``call_id`` a previous run received and did not dispatch, in stream order."""
        through = self._dispatched_through(call_id)
        batches = self._db.execute(
            "SELECT meta, lines FROM call_lines WHERE call_id = ? AND last_seq > ? ORDER BY first_seq", (call_id, through)
        ).fetchall()
        return [
            ReceivedEvent(seq, data, received, backfilled)
            for meta, lines in batches
            for (seq, received, backfilled), data in zip(_decode_meta(meta), lines.split(_LINE_SEPARATOR))
            if seq > through
        ]

    def undispatched_triggers(self) -> list[tuple[int, str, Trigger | None]]:
        """Triggers a previous run's plugins emitted and ``on_trigger`` did not get: (seq, class path, the
        trigger, None if it cannot be read again), in order."""
        rows = self._db.execute("SELECT seq, class, body FROM triggers ORDER BY seq").fetchall()
        return [(seq, path, _read_trigger(path, body)) for seq, path, body in rows]

    def undispatched_platform_webhooks(self) -> list[tuple[int, bytes]]:
        """Platform webhooks a previous run accepted and did not hand to plugins: (seq, body), in order."""
        return self._db.execute("SELECT seq, body FROM platform ORDER BY seq").fetchall()

    def accepted_deliveries(self, limit: int) -> list[str]:
        """The ids of platform webhooks accepted within ``DELIVERY_WINDOW``, oldest first, at most ``limit``."""
        rows = self._db.execute(
            "SELECT id FROM (SELECT id, seen FROM deliveries WHERE seen >= ? ORDER BY seen DESC LIMIT ?) ORDER BY seen",
            (time.time() - DELIVERY_WINDOW, limit),
        ).fetchall()
        return [row[0] for row in rows]

    def pending(self, plugin: str, endpoint: str) -> list[JournaledMessage]:
        """What a previous run left for this outbox, oldest first."""
        rows = self._db.execute(
            "SELECT handle, id, key, body, attempts, first_attempt, next_attempt FROM outbox "
            "WHERE plugin = ? AND endpoint = ? AND delivered IS NULL ORDER BY seq",
            (plugin, endpoint),
        ).fetchall()
        return [
            JournaledMessage(
                handle=handle,
                id=message_id,
                key=key,
                body=msgspec.json.decode(body),
                attempts=attempts,
                first_attempt=None if first is None else datetime.fromisoformat(first),
                next_attempt=next_attempt,
            )
            for handle, message_id, key, body, attempts, first, next_attempt in rows
        ]

    def kept_messages(
        self, since: float, *, endpoint: str | None = None, call_id: str | None = None
    ) -> list[KeptMessage]:
        """Delivered messages submitted at ``since`` (epoch seconds) or later and still kept, oldest first;
        only ``endpoint``'s, only those of ``call_id`` (their ordering key) when given."""
        query = (
            "SELECT plugin, endpoint, id, key, body, submitted, delivered FROM outbox "
            "WHERE delivered IS NOT NULL AND COALESCE(submitted, delivered) >= ?"
        )
        arguments: list[Any] = [since]
        if endpoint is not None:
            query += " AND endpoint = ?"
            arguments.append(endpoint)
        if call_id is not None:
            query += " AND key = ?"
            arguments.append(call_id)
        rows = self._db.execute(query + " ORDER BY seq", arguments).fetchall()
        return [
            KeptMessage(plugin, name, message_id, key, msgspec.json.decode(body), submitted, delivered)
            for plugin, name, message_id, key, body, submitted, delivered in rows
        ]

    def kept_endpoints(self) -> list[str]:
        """The endpoint names that have delivered messages kept."""
        rows = self._db.execute("SELECT DISTINCT endpoint FROM outbox WHERE delivered IS NOT NULL ORDER BY 1")
        return [row[0] for row in rows.fetchall()]


class Journal(JournalReader):
    """One journal file; ``run`` (in the runner's nursery) writes what was gathered, ``close`` writes the rest.

    A call's events are written in batches, one row per call per commit (the lines received in that interval and
    still undispatched when it ends), and what was dispatched as one number per call, the sequence number of its
    latest dispatched event (a call's buffer is first in, first out, so that number says which lines are done),
    with the dedupe keys of those events. What was dispatched is logged as one row per commit for every call
    (``call_progress``, see ``call_progress.py``) and folded into per-call rows every ``PURGE_INTERVAL``, when
    ``FOLD_KEYS`` keys are logged, at close and at the next open. A flood thus costs a few rows per commit, and a
    paced run of many calls one, not rows per call."""

    def __init__(
        self,
        path: Path,
        commit_interval: float,
        *,
        keep: float = 0.0,
        max_kept: int = 1_000_000,
        source: str = "state.path",
    ) -> None:
        self.path = path
        self.commit_interval = commit_interval
        self.keep = keep  # seconds a delivered message stays (0: forgotten once delivered)
        self.max_kept = max_kept
        self._lock = threading.Lock()  # the worker thread's commit and close's last one never overlap
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # (before WAL, so a new file gets it: a call's batch of lines fits one page, not a chain of four)
            self._writer.execute("PRAGMA page_size=16384")
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=NORMAL")
            self._add_missing_columns()
            self._writer.executescript(_SCHEMA)
            _fold_logged_progress(self._writer, path)
            super().__init__(sqlite3.connect(path, check_same_thread=False))
            self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
            self._received_seq = max(
                self._db.execute(query).fetchone()[0] or 0
                for query in (
                    "SELECT MAX(last_seq) FROM call_lines",
                    "SELECT MAX(dispatched_through) FROM calls",
                    "SELECT MAX(seq) FROM platform",
                    "SELECT MAX(seq) FROM triggers",
                )
            )
            #: call -> seq of the last line written to ``call_lines`` and not known dispatched: whose written lines
            #: a commit deletes (the rest have none, and deleting nothing still costs an index lookup each)
            self._lines_written: dict[str, int] = dict(
                self._db.execute("SELECT call_id, MAX(last_seq) FROM call_lines GROUP BY call_id").fetchall()
            )
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"{source}: cannot open the journal {path} ({exc})") from None
        # What is gathered for the next commit:
        self._adds: dict[int, list[Any]] = {}  # outbox handle -> row, in submission order (see _write)
        self._done: list[int] = []
        self._kept: list[tuple[float, int]] = []  # (delivered at, handle) of rows already written
        self._attempts: dict[int, tuple[int, str | None, float | None]] = {}
        self._deliveries: list[tuple[str, float]] = []
        self._calls: list[tuple[str, str, float]] = []
        self._calls_over: list[str] = []
        #: call -> the lines received, in order, a read at a time: (seq of the first, the lines, when, backfilled)
        self._events: dict[str, list[tuple[int, list[str], float, bool]]] = {}
        self._through: dict[str, int] = {}  # call -> seq of its latest dispatched event
        self._keys: dict[str, list[str | None]] = {}  # call -> dedupe keys of the events dispatched
        self._progress = ProgressLog()  # the deltas of dispatch committed (or being committed) since the last fold
        self._platform = _Handoffs("platform", ("body",))
        self._triggers = _Handoffs("triggers", ("class", "body"))
        self._wanted = trio.Event()
        self._commits_started = self._commits_done = 0
        self._committed = trio.Event()
        self.closed = False

    def dispatched_keys(self, call_id: str) -> list[str]:
        ended, _, logged = self._progress.of_call(call_id, self._pending())
        keys = [] if ended else super().dispatched_keys(call_id)
        keys += [key for key in logged if key is not None]
        return keys

    def _dispatched_through(self, call_id: str) -> int:
        ended, logged, _ = self._progress.of_call(call_id, self._pending())
        folded = 0 if ended else super()._dispatched_through(call_id)
        return max(folded, logged or 0)

    def _add_missing_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self._writer.execute(f"PRAGMA table_info({table})")}
            if not have:
                continue  # a new file: the schema creates the table whole
            for column, kind in columns.items():
                if column not in have:
                    self._writer.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    # --- what the outboxes say -------------------------------------------------------------------------------

    def for_outbox(self, plugin: str, endpoint: str) -> OutboxJournal:
        return OutboxJournal(self, plugin, endpoint)

    def _add(self, plugin: str, endpoint: str, message: _Message) -> int:
        self._seq += 1
        handle = self._seq
        # handle, plugin, endpoint, seq, id, key, body, submitted, delivered, attempts, first_attempt, next_attempt
        self._adds[handle] = [
            handle, plugin, endpoint, handle, message.id, message.key, json_bytes(message.body), time.time(), None,
            message.attempts, None, None,
        ]  # fmt: skip
        self._wake()
        return handle

    def _finished(self, handle: int, delivered: bool) -> None:
        self._attempts.pop(handle, None)
        if delivered and self.keep > 0:  # kept for replay: written even if it never was
            now = time.time()
            row = self._adds.get(handle)
            if row is not None:
                row[8] = now
            else:
                self._kept.append((now, handle))
            self._wake()
        elif self._adds.pop(handle, None) is None:  # (submitted and finished within one interval: never written)
            self._done.append(handle)
            self._wake()

    def _attempted(self, handle: int, attempts: int, first_attempt: datetime | None, not_before: float | None) -> None:
        first = None if first_attempt is None else first_attempt.isoformat()
        row = self._adds.get(handle)
        if row is not None:  # not written yet: one insert carries it
            row[9:12] = attempts, first, not_before
        else:
            self._attempts[handle] = (attempts, first, not_before)
        self._wake()

    def _wake(self) -> None:
        self._wanted.set()

    # --- what the runner says ---------------------------------------------------------------------------------

    def delivery_accepted(self, delivery_id: str) -> None:
        """Remember an accepted platform webhook's id (for ``DELIVERY_WINDOW``)."""
        self._deliveries.append((delivery_id, time.time()))
        self._wake()

    def call_followed(self, call_id: str, source: str) -> None:
        """A call is being followed: a restart follows it again unless it is over by then."""
        self._calls.append((call_id, source, time.time()))
        self._wake()

    def for_call(self, call_id: str) -> CallJournal:
        return CallJournal(self, call_id)

    def _events_received(self, call_id: str, lines: list[str], received_at: float, backfilled: bool = False) -> int:
        """Lines of one call passed on together (one read of its stream); the first one's seq (the others follow
        it). Kept as the read's list: no work per line until a commit finds some still undispatched."""
        first = self._received_seq + 1
        self._received_seq += len(lines)
        events = self._events.get(call_id)
        if events is None:
            events = self._events[call_id] = []
        events.append((first, lines, received_at, backfilled))
        self._wanted.set()
        return first

    def _events_dispatched(self, call_id: str, seq: int, keys: Sequence[str | None]) -> None:
        """The call's events through ``seq`` are dispatched; ``keys``: the dedupe keys of those just done (None for
        an event without one: written as it is, left out when read)."""
        self._through[call_id] = seq
        if keys:
            known = self._keys.get(call_id)
            if known is None:
                self._keys[call_id] = list(keys)
            else:
                known += keys
        self._wanted.set()

    def platform_received(self, delivery: PlatformDelivery) -> int:
        """An accepted platform webhook, until ``platform_dispatched``: a restart hands it to plugins then."""
        return self._hand_over(self._platform, json_bytes(delivery.body))

    def platform_dispatched(self, seq: int) -> None:
        self._platform.taken(seq)
        self._wake()

    def trigger_emitted(self, trigger: Trigger) -> int:
        """A trigger queued for ``on_trigger``, until ``trigger_dispatched``: a restart dispatches it then (the
        event that caused it is dispatched already, so nothing else would bring it back)."""
        kind = type(trigger)
        return self._hand_over(self._triggers, f"{kind.__module__}:{kind.__qualname__}", _encode(trigger))

    def trigger_dispatched(self, seq: int) -> None:
        self._triggers.taken(seq)
        self._wake()

    def _hand_over(self, handoffs: _Handoffs, *columns: Any) -> int:
        self._received_seq += 1
        handoffs.put(self._received_seq, columns)
        self._wake()
        return self._received_seq

    def call_over(self, call_id: str) -> None:
        """The call ended for good: forget it and its events (also what was gathered for it and not written)."""
        self._calls = [row for row in self._calls if row[0] != call_id]
        for gathered in (self._events, self._through, self._keys, self._lines_written):
            gathered.pop(call_id, None)
        self._calls_over.append(call_id)
        self._wake()

    async def written(self) -> None:
        """Return once everything gathered so far is committed (to acknowledge what must not be lost: a push
        Atoms will never send again). At once when the journal is closed."""
        target = self._commits_started + 1
        self._wake()
        while self._commits_done < target and not self.closed:
            await self._committed.wait()

    # --- writing -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit what was gathered, every ``commit_interval`` while there is something to write (and purge old
        rows every ``PURGE_INTERVAL`` even when there is not)."""
        next_purge = trio.current_time()  # (the first commit of a run purges)
        while True:
            with trio.move_on_at(next_purge):
                await self._wanted.wait()
            await trio.sleep(self.commit_interval)
            self._wanted = trio.Event()
            purge = trio.current_time() >= next_purge
            if purge:
                next_purge = trio.current_time() + PURGE_INTERVAL
            batch = self._take(purge)
            self._commits_started += 1
            committed = False
            try:
                committed = await trio.to_thread.run_sync(self._commit, batch)  # not abandoned on cancel: it finishes
            finally:
                if batch.fold is not None:
                    self._progress.folded(committed)
                self._commits_done += 1
                self._committed.set()
                self._committed = trio.Event()

    def _take(self, purge: bool) -> _Batch:
        through = self._through
        events = []
        for call_id, reads in self._events.items():
            done = through.get(call_id, 0)
            meta: list[tuple[int, float, bool]] = []
            lines: list[str] = []
            for first, read, received, backfilled in reads:
                skip = done - first + 1  # (lines dispatched within the interval are never written)
                if skip < len(read):
                    start = max(skip, 0)
                    meta += [(seq, received, backfilled) for seq in range(first + start, first + len(read))]
                    lines += read[start:] if start else read
            if lines:
                events.append((call_id, meta[0][0], meta[-1][0], _encode(meta), _LINE_SEPARATOR.join(lines)))
        lines_written = self._lines_written
        for call_id, _, last, _, _ in events:
            lines_written[call_id] = last
        lines_done = []
        for call_id, seq in through.items():
            written = lines_written.get(call_id)
            if written is not None:
                lines_done.append((call_id, seq))
                if seq >= written:
                    del lines_written[call_id]
        delta = self._pending()
        fold = self._progress.take(delta, fold=purge)
        batch = _Batch(
            adds=list(self._adds.values()),
            done=self._done,
            kept=self._kept,
            attempts=self._attempts,
            deliveries=self._deliveries,
            calls=self._calls,
            calls_over=self._calls_over,
            events=events,
            progress=delta if fold is None and delta else None,
            fold=fold,
            lines_done=lines_done,
            handoffs=[self._platform.take(), self._triggers.take()],
            purge=purge,
        )
        self._adds, self._done, self._kept, self._attempts, self._deliveries = {}, [], [], {}, []
        self._calls, self._calls_over, self._events, self._through, self._keys = [], [], {}, {}, {}
        return batch

    def _pending(self) -> Progress:
        """What was dispatched since the last commit took it, as the delta the next one logs."""
        return Progress(self._through, self._keys, self._calls_over)

    def _commit(self, batch: _Batch) -> bool:
        """Whether ``batch`` is written (or had nothing to write)."""
        if batch.writes_nothing:
            return True
        with self._lock:
            if self.closed:
                return False
            try:
                self._writer.execute("BEGIN")
                self._write(batch)
                self._writer.execute("COMMIT")
                return True
            except sqlite3.Error as exc:  # the disk is full, the file went away: the run goes on, in memory
                log.error(
                    "journal %s: a commit failed (%s); %d messages and the events of %d calls are only in memory",
                    self.path,
                    exc,
                    len(batch.adds),
                    len(batch.events),
                )
                try:
                    self._writer.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                return False

    def _write(self, batch: _Batch) -> None:
        db = self._writer
        _forget_calls(db, [(call_id,) for call_id in batch.calls_over])  # first: a call followed again is new
        write_rows(
            db,
            "INSERT OR REPLACE INTO outbox (handle, plugin, endpoint, seq, id, key, body, submitted, delivered, "
            "attempts, first_attempt, next_attempt) VALUES {values}",
            batch.adds,
        )
        write_rows(
            db,
            "UPDATE outbox SET attempts = v.column2, first_attempt = v.column3, next_attempt = v.column4 "
            "FROM (VALUES {values}) AS v WHERE outbox.handle = v.column1",
            [(handle, *attempt) for handle, attempt in batch.attempts.items()],
        )
        write_rows(
            db,
            "UPDATE outbox SET delivered = v.column2 FROM (VALUES {values}) AS v WHERE outbox.handle = v.column1",
            [(handle, delivered) for delivered, handle in batch.kept],
        )
        write_rows(db, "DELETE FROM outbox WHERE handle IN (VALUES {values})", [(handle,) for handle in batch.done])
        write_rows(db, "INSERT OR REPLACE INTO deliveries (id, seen) VALUES {values}", batch.deliveries)
        write_rows(db, "INSERT OR IGNORE INTO calls (call_id, source, since) VALUES {values}", batch.calls)
        write_rows(db, "INSERT INTO call_lines (call_id, first_seq, last_seq, meta, lines) VALUES {values}", batch.events)
        if batch.progress is not None:
            db.execute("INSERT INTO call_progress (body) VALUES (?)", (encode_progress(batch.progress),))
        if batch.fold is not None:
            _fold(db, merge(batch.fold))
        write_rows(
            db,
            "DELETE FROM call_lines WHERE rowid IN (SELECT e.rowid FROM call_lines AS e JOIN (VALUES {values}) AS v "
            "ON e.call_id = v.column1 AND e.last_seq <= v.column2)",
            batch.lines_done,
        )
        for handoffs in batch.handoffs:
            handoffs.write(db)
        if batch.purge:
            self._purge()

    def _purge(self) -> None:
        """Delivered messages past ``keep``, and beyond the newest ``max_kept``; delivery ids past their window;
        calls (with their events) older than ``CALL_WINDOW``."""
        now = time.time()
        db = self._writer
        db.execute("DELETE FROM outbox WHERE delivered IS NOT NULL AND delivered < ?", (now - self.keep,))
        db.execute(
            "DELETE FROM outbox WHERE delivered IS NOT NULL AND delivered <= (SELECT delivered FROM outbox "
            "WHERE delivered IS NOT NULL ORDER BY delivered DESC LIMIT 1 OFFSET ?)",
            (self.max_kept,),
        )
        db.execute("DELETE FROM deliveries WHERE seen < ?", (now - DELIVERY_WINDOW,))
        _forget_calls(db, db.execute("SELECT call_id FROM calls WHERE since < ?", (now - CALL_WINDOW,)).fetchall())

    def _commit_now(self, purge: bool) -> None:
        """Take and commit what is gathered, on this thread (``run`` commits from a worker thread instead)."""
        batch = self._take(purge)
        committed = self._commit(batch)
        if batch.fold is not None:
            self._progress.folded(committed)

    def close(self) -> None:
        """Write what is still gathered and close the file (at the end of the run)."""
        self._commit_now(purge=True)
        with self._lock:
            self.closed = True
            self._committed.set()
            self._db.close()
            self._writer.close()


class _Handoffs:
    """Items queued for plugins in one table (a seq and its columns) from ``put`` until ``taken``: what a restart
    hands to plugins first. An item put and taken within one interval is never written."""

    class Taken(NamedTuple):
        table: str
        columns: tuple[str, ...]
        added: list[tuple[Any, ...]]
        removed: list[tuple[int]]

        def write(self, db: sqlite3.Connection) -> None:
            names = ", ".join(("seq", *self.columns))
            write_rows(db, f"INSERT OR REPLACE INTO {self.table} ({names}) VALUES {{values}}", self.added)
            write_rows(db, f"DELETE FROM {self.table} WHERE seq IN (VALUES {{values}})", self.removed)

        def __bool__(self) -> bool:
            return bool(self.added or self.removed)

    def __init__(self, table: str, columns: tuple[str, ...]) -> None:
        self.table, self.columns = table, columns
        self._added: dict[int, tuple[Any, ...]] = {}
        self._removed: list[tuple[int]] = []

    def put(self, seq: int, columns: tuple[Any, ...]) -> None:
        self._added[seq] = (seq, *columns)

    def taken(self, seq: int) -> None:
        if self._added.pop(seq, None) is None:
            self._removed.append((seq,))

    def take(self) -> _Handoffs.Taken:
        taken = _Handoffs.Taken(self.table, self.columns, list(self._added.values()), self._removed)
        self._added, self._removed = {}, []
        return taken


def _fold(db: sqlite3.Connection, progress: Progress) -> None:
    """Write the merged deltas of the progress log as per-call rows, and empty the log (a call that ended since,
    or was forgotten, gets no rows: its delta is dropped, or its ``calls`` row is gone)."""
    write_rows(
        db,
        "INSERT INTO call_keys (call_id, keys) SELECT v.column1, v.column2 FROM (VALUES {values}) AS v "
        "WHERE v.column1 IN (SELECT call_id FROM calls)",
        [(call_id, _encode(keys)) for call_id, keys in progress.keys.items() if keys],
    )
    write_rows(
        db,
        "UPDATE calls SET dispatched_through = v.column2 FROM (VALUES {values}) AS v WHERE calls.call_id = v.column1",
        list(progress.through.items()),
    )
    db.execute("DELETE FROM call_progress")


def _fold_logged_progress(db: sqlite3.Connection, path: Path) -> None:
    """Fold what a run killed between two folds left in the progress log (its ended calls' rows are gone already:
    each was forgotten by the commit that logged its end). A row that cannot be read (a damaged file) is skipped:
    the events it told dispatched are dispatched again, which receivers deduplicate; refusing to start would
    follow no call at all."""
    rows = db.execute("SELECT body FROM call_progress ORDER BY seq").fetchall()
    if not rows:
        return
    deltas, skipped = [], 0
    for (body,) in rows:
        try:
            deltas.append(decode_progress(body))
        except (msgspec.DecodeError, msgspec.ValidationError):
            skipped += 1
    if skipped:
        log.warning("journal %s: %d rows of dispatch progress cannot be read; their events may be dispatched again", path, skipped)
    db.execute("BEGIN")
    _fold(db, merge(deltas))
    db.execute("COMMIT")


def _forget_calls(db: sqlite3.Connection, calls: Sequence[tuple[str]]) -> None:
    """Every row of these calls: the call, its lines, its dispatched keys."""
    for table in ("calls", "call_lines", "call_keys"):
        write_rows(db, f"DELETE FROM {table} WHERE call_id IN (VALUES {{values}})", calls)


class _Batch(NamedTuple):
    """What one commit writes."""

    adds: list[list[Any]]
    done: list[int]
    kept: list[tuple[float, int]]
    attempts: dict[int, tuple[int, str | None, float | None]]
    deliveries: list[tuple[str, float]]
    calls: list[tuple[str, str, float]]
    calls_over: list[str]
    events: list[tuple[str, int, int, bytes, str]]  # (call, first seq, last seq, seqs and times, the lines)
    progress: Progress | None  # what was dispatched since the last commit, logged as one row
    fold: list[Progress] | None  # or the log's deltas since the last fold, this one's last, folded
    lines_done: list[tuple[str, int]]  # (call, seq) of calls whose lines written through seq are dispatched
    handoffs: list[_Handoffs.Taken]  # platform webhooks, triggers
    purge: bool

    @property
    def writes_nothing(self) -> bool:
        rows = (self.adds, self.done, self.kept, self.attempts, self.deliveries, self.calls, self.calls_over)
        progress = self.progress is not None or self.fold is not None or self.lines_done
        return not (self.purge or any(rows) or self.events or progress or any(self.handoffs))


class OutboxJournal:
    """One outbox's view of the journal (its plugin and endpoint name are the key of its rows)."""

    def __init__(self, journal: Journal, plugin: str, endpoint: str) -> None:
        self._journal = journal
        self.plugin = plugin
        self.endpoint = endpoint

    def add(self, message: _Message) -> int:
        """Journal a message just accepted; its handle."""
        return self._journal._add(self.plugin, self.endpoint, message)

    def finished(self, handle: int, *, delivered: bool = False) -> None:
        """The message was delivered (kept for ``[state] keep``) or dead-lettered (forgotten)."""
        self._journal._finished(handle, delivered)

    def attempted(self, message: _Message) -> None:
        if message.journal_handle is not None:
            self._journal._attempted(message.journal_handle, message.attempts, message.first_attempt, message.not_before)

    def pending(self) -> list[JournaledMessage]:
        return self._journal.pending(self.plugin, self.endpoint)


class CallJournal:
    """One followed call's view of the journal: its events from received to dispatched, in stream order.

    The call's buffer is first in, first out, so the events received and not yet dispatched are a queue:
    ``dispatched`` takes the oldest, and its sequence number says every earlier line is done too."""

    def __init__(self, journal: Journal, call_id: str) -> None:
        self._journal = journal
        self.call_id = call_id
        #: What is in the call's buffer, a read at a time: (seq of its first event, their dedupe keys); of the
        #: first read, ``_head_done`` events are dispatched already.
        self._in_buffer: deque[tuple[int, Sequence[str | None]]] = deque()
        self._head_done = 0
        self._undispatched = 0
        #: Set when something this run owed the call was cut short (a stop during its backfill): the call stays
        #: in the journal, and the next run finishes it.
        self.unfinished = False

    def received(self, data: str, received_at: float, key: str | None, backfilled: bool = False) -> None:
        """An event line passed on to the call's buffer (after dedupe); ``key`` is what dedupe knows it by."""
        self._queued(self._journal._events_received(self.call_id, [data], received_at, backfilled), [key])

    def received_read(self, lines: list[str], keys: list[str], received_at: float) -> None:
        """The event lines of one read of the stream, passed on together, and their dedupe keys."""
        self._queued(self._journal._events_received(self.call_id, lines, received_at), keys)

    def restored(self, seq: int, key: str | None) -> None:
        """An event a previous run left undispatched, put in the buffer again (its line is already written)."""
        self._queued(seq, [key])

    def _queued(self, first: int, keys: Sequence[str | None]) -> None:
        self._in_buffer.append((first, keys))
        self._undispatched += len(keys)

    def dispatched(self, count: int = 1) -> None:
        """The oldest ``count`` events in the buffer reached every plugin: a restart neither dispatches them again
        nor lets a stream that sends them again through. (Told per batch, and before every wait inside one: a
        commit runs only while the dispatch task waits, so it sees the same as if told per event.)"""
        if count <= 0:
            return
        self._undispatched -= count
        buffer, head = self._in_buffer, self._head_done
        first, keys = buffer[0]
        if not head and len(keys) == count:  # (the usual case: a whole read, dispatched at once)
            buffer.popleft()
            self._journal._events_dispatched(self.call_id, first + count - 1, keys)
            return
        done: list[str | None] = []
        while True:
            first, keys = buffer[0]
            end = min(len(keys), head + count)
            done += keys[head:end]
            count -= end - head
            if end == len(keys):
                buffer.popleft()
                head = 0
            else:
                head = end
            if not count:
                break
        self._head_done = head
        self._journal._events_dispatched(self.call_id, first + end - 1, done)

    @property
    def undispatched(self) -> int:
        """Events received and not dispatched (they stay in the journal for the next run)."""
        return self._undispatched

    def over(self) -> None:
        """The call ended for good: the journal forgets it."""
        self._journal.call_over(self.call_id)
