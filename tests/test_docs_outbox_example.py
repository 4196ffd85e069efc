"""The outbox example of docs/writing-plugins.md ("Delivering durably: an outbox") does what the page says: every
caller turn reaches the CRM although the CRM fails at first, and what the CRM refuses is in the dead-letter file."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import trio

from hookrunner.testing import Reply, run_plugins, running_receiver, sim_call

from helpers import REPO

DOC = REPO / "docs" / "writing-plugins.md"


def documented_crm_plugin(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    section = DOC.read_text(encoding="utf-8").split("## Delivering durably: an outbox", 1)[1]
    source = re.search(r"^```python\n(.*?)^```\n", section, re.S | re.M)
    assert source is not None, "the section shows its plugin in a python block"
    module = types.ModuleType("hookrunner_crm_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source.group(1), str(DOC), "exec"), module.__dict__)
    return module


async def test_the_documented_outbox_retries_until_delivered_and_dead_letters_what_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    crm = documented_crm_plugin(monkeypatch)
    turns = ["I want to cancel", "REFUSE this one", "Thanks"]
    answered: dict[str, int] = {}

    def flaky_crm(request: Any) -> Reply:
        [body] = request.json()
        answered[body["said"]] = answered.get(body["said"], 0) + 1
        if "REFUSE" in body["said"]:
            return Reply(422)
        return Reply(503) if answered[body["said"]] == 1 else Reply(200)  # down at first, then fine

    dead = tmp_path / "crm-dead.jsonl"
    async with running_receiver() as receiver:
        receiver.respond("/turns", flaky_crm)
        settings = {"crm": {"url": receiver.url("/turns"), "dead_letter": str(dead)}}
        with trio.fail_after(30):
            result = await run_plugins({"crm": crm.CrmPlugin}, [sim_call("CALL-CRM", user=turns)], settings=settings)
    assert result.exit_code == 0 and not result.failures
    assert answered == {"I want to cancel": 2, "REFUSE this one": 1, "Thanks": 2}  # retried after the 503
    [letter] = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["body"]["said"] == "REFUSE this one" and letter["endpoint"] == "crm"
