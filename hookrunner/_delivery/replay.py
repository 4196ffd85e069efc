"""``hookrunner replay``: send delivered messages again from the journal, as Svix's "recover" does.

Delivered outbox messages stay in the journal for ``[state] keep`` seconds. Replay reads them (only reads: a
``hookrunner run`` may be writing the same file) and hands each, with its original id so a receiver recognises
what it already has, to the deliverer its plugin builds from the config, as ``hookrunner redeliver`` does. They
go one at a time in journal order, so each call's messages arrive in the order they were first sent; when one is
not delivered, the later ones of its call to that endpoint are held back, and a ``gone`` endpoint gets nothing more.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from hookrunner._core.logs import command_line
from hookrunner._core.api import __version__
from hookrunner._core.config import load_config
from hookrunner._core.errors import ConfigError, UsageError
from hookrunner._state.journal import JournalReader, KeptMessage, journal_files
from hookrunner._delivery.outbox import Deliverer, Outcome, OutboxMessage
from hookrunner._delivery.redeliver import DeliverersFor
from hookrunner._core.text import shown

__all__ = ["replay", "since_time"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def since_time(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from ``now`` (``90s``, ``30m``, ``2h``, ``1d``, plain seconds) or an ISO-8601
    time (local time unless it gives an offset or ``Z``), as epoch seconds."""
    now = time.time() if now is None else now
    match = _DURATION.fullmatch(text.strip())
    if match:
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
        if not math.isfinite(seconds) or seconds <= 0:
            raise UsageError(f"--since: expected a duration greater than 0, got {shown(text)}")
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since: expected a duration (90s, 30m, 2h, 1d or seconds) or an ISO-8601 time "
            f"(2025-05-01T09:30:00Z), got {shown(text)}"
        ) from None
    since = moment.astimezone().timestamp()  # a time without an offset is the local time
    if since > now:
        raise UsageError(f"--since: {shown(text)} is in the future")
    return since


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _kept(
    path: Path, since: float, endpoint: str | None, call_id: str | None, source: str
) -> list[KeptMessage]:
    """The kept messages replay selects, from the journal of every worker that ran (``journal_files``), in the
    order they were submitted; an unknown ``endpoint`` is an error naming the kept ones."""
    files = journal_files(path)
    if not files:
        raise ConfigError(f"{source}: {path}: no such journal (no run of this config wrote one; is state.path right?)")
    names: set[str] = set()
    messages: list[KeptMessage] = []
    for file in files:
        try:
            with JournalReader.open_read_only(file) as journal:  # a running `hookrunner run` may be writing it
                names.update(journal.kept_endpoints())
                messages += journal.kept_messages(since, endpoint=endpoint, call_id=call_id)
        except sqlite3.Error as exc:
            raise ConfigError(f"{source}: cannot read the journal {file} ({exc})") from None
    if endpoint is not None and names and endpoint not in names:
        kept = ", ".join(sorted(names))
        raise UsageError(f"--endpoint: no messages kept for {shown(endpoint)} in {path} (kept: {kept})")
    if len(files) > 1:  # one call's messages are in one journal, in order: a stable sort keeps that order
        messages.sort(key=lambda message: message.submitted or message.delivered)
    return messages


async def replay(
    config_path: Path,
    *,
    since: float,
    endpoint: str | None,
    call_id: str | None,
    dry_run: bool,
    deliverers_for: DeliverersFor,
) -> int:
    """Send again the messages kept in the journal of ``config_path`` submitted at ``since`` or later (only
    ``endpoint``'s, only ``call_id``'s when given); 0 when every one was sent (or ``dry_run``), else 1."""
    config = load_config(config_path)
    state = config.state
    if state.path is None:
        raise ConfigError(
            f'{config.source}: state.path: replay needs the journal, and state.path = "" keeps nothing (set it, '
            "e.g. to hookrunner-state.db, for the runs to come)"
        )
    now = time.time()
    messages = [
        message
        for message in _kept(state.path, since, endpoint, call_id, f"{config.source}: state.path")
        if message.delivered >= now - state.keep  # a stopped run leaves what outlived keep until it purges
    ]
    if not messages:
        only = (f" for endpoint {endpoint}" if endpoint else "") + (f" of call {call_id}" if call_id else "")
        print(f"nothing delivered since {_utc(since)}{only} is kept in {state.path} (state.keep: {state.keep:g} s)")
        return 0
    headers = {"User-Agent": f"hookrunner/{__version__}"}
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30.0)) as http:
        deliverers = await deliverers_for(config_path, http)
        sent = await _send(messages, deliverers, config.source, dry_run)
    failed = len(messages) - sent
    if dry_run:
        print(f"{state.path}: {sent} would be sent" + (f", {failed} could not be" if failed else ""))
        return 0
    print(f"{state.path}: {sent} sent, {failed} failed")
    return 0 if failed == 0 else 1


async def _send(
    messages: list[KeptMessage], deliverers: dict[tuple[str, str], Deliverer], source: str, dry_run: bool
) -> int:
    """Deliver each message once, in order (or only say so); how many were (would be) delivered. Each one not
    delivered is a line on stderr."""
    sent = 0
    held: dict[tuple[str, str, str], str] = {}  # (plugin, endpoint, call) -> the id not delivered that holds it
    gone: dict[tuple[str, str], str] = {}  # (plugin, endpoint) -> why it accepts nothing more
    for message in messages:
        target = (message.plugin, message.endpoint)
        call = (*target, message.key)
        deliver = deliverers.get(target)
        if deliver is None:
            why = f"no endpoint {message.endpoint} of plugin {message.plugin} in {source}"
        elif dry_run:
            why = None
        elif target in gone:
            why = f"{message.endpoint} accepts nothing more: {gone[target]}"
        elif call in held:
            why = f"an earlier message of its call, {held[call]}, was not sent"
        else:
            outcome = await _attempt(deliver, message)
            why = None if outcome.kind == "delivered" else outcome.why or outcome.kind
            if why is not None:
                held[call] = message.id
            if outcome.kind == "gone":
                gone[target] = why or "gone"
        if why is None:
            print(f"{_where(message)}: {'would be sent' if dry_run else 'sent'}")
            sent += 1
        else:
            command_line(f"{_where(message)}: not sent ({why})", level="warning", prefix="")
    return sent


async def _attempt(deliver: Deliverer, message: KeptMessage) -> Outcome:
    try:
        return await deliver([OutboxMessage(id=message.id, key=message.key, body=message.body)])
    except Exception as exc:  # a deliverer's bug is a failed attempt, as in the outbox (its text may quote a secret)
        return Outcome.retry(f"the deliverer of plugin {message.plugin} raised {type(exc).__name__}")


def _where(message: KeptMessage) -> str:
    submitted = message.submitted if message.submitted is not None else message.delivered
    return f"{_utc(submitted)} {message.endpoint} call {message.key} id {message.id}"
