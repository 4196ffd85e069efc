"""An Atoms webhook delivery (pre-conversation, post-conversation, ...) as plugins receive it, read from its body.

The server checks a delivery's signature and replay window (``hookrunner._service.atoms_webhook``); the journal
keeps accepted ones until plugins had them; this module is what both share: the delivery and how a body is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hookrunner._core.text import encodable

__all__ = ["parse_delivery", "PlatformDelivery", "BadDelivery"]

#: The longest delivery id or event name accepted (Atoms' are a few dozen characters); the replay window holds ids.
MAX_ID_LENGTH = 256


class BadDelivery(ValueError):
    """A signed body that is not a delivery we can read; the message says what is missing."""


@dataclass(frozen=True)
class PlatformDelivery:
    """One webhook delivery: ``kind`` is the part of ``event`` after the agent id (``pre-conversation``)."""

    id: str
    event: str
    kind: str
    call_id: str | None
    agent_id: str | None
    body: dict[str, Any]


def parse_delivery(body: bytes) -> PlatformDelivery:
    try:
        data = encodable(json.loads(body))  # a lone surrogate becomes U+FFFD: plugins and the spool can write it
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadDelivery("not JSON") from None
    if not isinstance(data, dict):
        raise BadDelivery("expected a JSON object")
    delivery_id, event = data.get("id"), data.get("event")
    if not isinstance(delivery_id, (str, int)) or isinstance(delivery_id, bool) or not str(delivery_id):
        raise BadDelivery("no delivery id (id)")
    if len(str(delivery_id)) > MAX_ID_LENGTH:
        raise BadDelivery(f"id: longer than {MAX_ID_LENGTH} characters")
    if not isinstance(event, str) or not event:
        raise BadDelivery("no event name (event)")
    if len(event) > MAX_ID_LENGTH:
        raise BadDelivery(f"event: longer than {MAX_ID_LENGTH} characters")
    metadata: dict[str, Any] = data["metadata"] if isinstance(data.get("metadata"), dict) else {}
    kind = event.rsplit(".", 1)[-1]
    if isinstance(metadata.get("eventType"), str) and "." not in event:
        kind = metadata["eventType"]
    call_id = metadata.get("callId")
    agent_id = metadata.get("agentId")
    return PlatformDelivery(
        id=str(delivery_id),
        event=event,
        kind=kind,
        call_id=call_id if isinstance(call_id, str) and call_id.strip() else None,
        agent_id=agent_id if isinstance(agent_id, str) else None,
        body=data,
    )
