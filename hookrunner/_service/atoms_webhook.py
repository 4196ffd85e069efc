"""Atoms' own webhooks (pre-conversation, post-conversation, ...): checking their signature and who sent them and whether they came before.

A delivery is signed in ``X-Signature`` with HMAC-SHA256 of the raw body, keyed with the webhook's secret. How the
digest is encoded is not documented, so hex and base64 (standard or URL-safe, padded or not) are accepted, with
or without a ``sha256=`` prefix; the comparison is constant-time (``hmac.compare_digest``) whichever it is.
Atoms waits 30 s and never retries, so a repeated delivery id can only be a replay or a duplicate: the
``SeenDeliveries`` window acknowledges it without acting twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["signature_valid", "SeenDeliveries", "SEEN_LIMIT"]

#: Delivery ids remembered (a day of a busy account's pushes is far fewer).
SEEN_LIMIT = 100_000

_DIGEST_SIZE = hashlib.sha256().digest_size


def _decoded(signature: str) -> bytes | None:
    """The digest bytes a signature header spells, in any accepted encoding; None if it spells none."""
    text = signature.strip()
    if text[:7].lower() == "sha256=":
        text = text[7:].strip()
    if len(text) == 2 * _DIGEST_SIZE:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(padded.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
        if len(raw) == _DIGEST_SIZE:
            return raw
    return None


def signature_valid(body: bytes, header: str | None, secret: str) -> bool:
    """Whether ``header`` is HMAC-SHA256(secret, body) in hex or base64, optionally prefixed ``sha256=``."""
    if not header or not secret:
        return False
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    given = _decoded(header)
    if given is None:
        hmac.compare_digest(expected, expected)  # the same work for a malformed header as for a wrong one
        return False
    return hmac.compare_digest(expected, given)


class SeenDeliveries:
    """Delivery ids already acted on, the most recent ``limit`` of them; ``known`` are those a previous run
    accepted (the journal's), so a push replayed after a restart is still recognised."""

    def __init__(self, limit: int = SEEN_LIMIT, *, known: Iterable[str] = ()) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self._ids.update((delivery_id, None) for delivery_id in known)
        while len(self._ids) > limit:
            self._ids.popitem(last=False)

    def __contains__(self, delivery_id: str) -> bool:
        """Whether the id was acted on already (a repeat, acknowledged and ignored)."""
        return delivery_id in self._ids

    def remember(self, delivery_id: str) -> None:
        """The delivery was accepted: a repeat of it is ignored from now on."""
        self._ids[delivery_id] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def first_time(self, delivery_id: str) -> bool:
        """True the first time an id is seen (and remembers it); False for a repeat."""
        if delivery_id in self._ids:
            return False
        self.remember(delivery_id)
        return True
