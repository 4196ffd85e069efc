"""``hookrunner redeliver``: send dead letters again, removing each line only once it has been delivered.

The letters keep their message ids, so a receiver that already got a message (a timeout after it answered, say)
recognises the duplicate. The plugin that wrote a letter rebuilds the delivery for its endpoint from the config
recorded in the letter (or ``--config``), with the secrets of the environment it runs in.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from pathlib import Path
from collections.abc import Awaitable, Callable

import httpx

from hookrunner._core.logs import command_line
from hookrunner._core.api import __version__
from hookrunner._delivery.dead_letters import DeadLetter, read_dead_letters, rewrite_dead_letters
from hookrunner._core.errors import ConfigError
from hookrunner._delivery.outbox import Deliverer, OutboxMessage

log = logging.getLogger("hookrunner.redeliver")


#: How a letter's deliverer is found: (config file, client) -> {(plugin, endpoint): deliverer}. The run layer
#: provides it (``hookrunner._run.plugin_setup.deliverers_for``): building plugins is not delivery's business.
DeliverersFor = Callable[[Path, httpx.AsyncClient], Awaitable[dict[tuple[str, str], Deliverer]]]


async def redeliver(
    path: Path, *, endpoint: str | None, dry_run: bool, config: Path | None, deliverers_for: DeliverersFor
) -> int:
    """Redeliver the letters of ``path`` (only ``endpoint``'s when given); 0 when none is left, else 1."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such dead-letter file")
    every = read_dead_letters(path)
    letters = [letter for letter in every if endpoint is None or letter.endpoint == endpoint]
    if endpoint is not None and not letters and every:
        names = sorted({letter.endpoint for letter in every})
        raise ConfigError(f"{path}: no letters for endpoint {endpoint} (the file has: {', '.join(names)})")
    if not letters:
        print(f"{path}: nothing to redeliver")
        return 0
    by_config: dict[Path, list[DeadLetter]] = defaultdict(list)
    for letter in letters:
        recorded = letter.record.get("config")
        if config is None and not recorded:
            raise ConfigError(f"{path}:{letter.line_number}: the letter records no config file; pass --config CONFIG")
        by_config[config or Path(str(recorded))].append(letter)
    delivered = failed = 0
    headers = {"User-Agent": f"hookrunner/{__version__}"}
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30.0)) as http:
        for config_path, group in by_config.items():
            deliverers = await deliverers_for(config_path, http)
            for letter in group:
                ok = await _redeliver_one(path, letter, deliverers, dry_run, config_path)
                delivered += ok
                failed += not ok
    verb = "would be sent" if dry_run else "delivered"
    print(f"{path}: {delivered} {verb}, {failed} left in the file", file=sys.stdout)
    return 0 if dry_run or failed == 0 else 1


async def _redeliver_one(
    path: Path, letter: DeadLetter, deliverers: dict[tuple[str, str], Deliverer], dry_run: bool, config_path: Path
) -> bool:
    record = letter.record
    where = f"{path}:{letter.line_number}: {record.get('id')} for {letter.endpoint}"
    deliver = deliverers.get((letter.plugin, letter.endpoint))
    if deliver is None:
        command_line(f"{where}: no endpoint {letter.endpoint} of plugin {letter.plugin} in {config_path}; kept", level="warning", prefix="")
        return False
    if dry_run:
        print(f"{where}: would be sent (call {record.get('key')}, dead-lettered for: {record.get('reason')})")
        return True
    message = OutboxMessage(id=str(record["id"]), key=str(record.get("key")), body=record["body"])
    outcome = await deliver([message])
    if outcome.kind != "delivered":
        command_line(f"{where}: not delivered ({outcome.why}); kept", level="warning", prefix="")
        return False
    rewrite_dead_letters(path, {(letter.plugin, letter.endpoint, str(record["id"]))})
    print(f"{where}: delivered")
    return True
