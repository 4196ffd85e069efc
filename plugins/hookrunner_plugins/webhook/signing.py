"""Standard Webhooks signatures (standardwebhooks.com, v1): what hookrunner sends and how a receiver checks it.

Signing and verifying use the reference implementation (the ``standardwebhooks`` package); this module only adds
what the spec leaves to the sender: several signatures at once while a secret is being rotated.

Verifying from another language: take the raw request body as received (do not re-serialize it), the headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``; compute base64(HMAC-SHA256(key, "{id}.{timestamp}.
{body}")) where key is the base64-decoded part of the secret after ``whsec_``; accept when it equals (in constant
time) any ``v1,<signature>`` entry of the space-separated ``webhook-signature`` header, and reject timestamps more
than 5 minutes away from now. Libraries exist for most languages: https://github.com/standard-webhooks.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["Signer", "verify", "WebhookVerificationError", "secret_problem"]


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is not a usable ``whsec_`` secret, or None."""
    if not secret.startswith("whsec_"):
        return "expected a secret starting with whsec_"
    encoded = secret[len("whsec_") :]
    try:
        # strict: a receiver decoding strictly must derive the same key (padding may be left out)
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return "expected whsec_ followed by base64"
    if not 24 <= len(key) <= 64:
        return f"expected a key of 24 to 64 bytes after whsec_ (Standard Webhooks), got {len(key)}"
    return None


class Signer:
    """Signs with every given secret: the current one first, then those being rotated out."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        self._webhooks = [Webhook(secret) for secret in secrets]

    def headers(self, message_id: str, body: bytes, moment: datetime | None = None) -> dict[str, str]:
        """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for ``body`` sent now."""
        moment = moment or datetime.now(timezone.utc)
        text = body.decode("utf-8")
        signatures = " ".join(webhook.sign(message_id, moment, text) for webhook in self._webhooks)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signatures,
        }


def verify(payload: bytes | str, headers: Mapping[str, str], secret: str) -> Any:
    """Check a delivery from hookrunner and return its parsed JSON body.

    ``payload`` is the raw request body, ``headers`` the request headers (any case), ``secret`` the endpoint's
    ``whsec_...`` secret. Raises ``WebhookVerificationError`` for anything that is not a valid delivery (a wrong
    or malformed signature, a missing header, a timestamp out of tolerance, a body that is not UTF-8 JSON), so a
    receiver answers 400 for every bad request by catching that one exception.
    """
    webhook = Webhook(secret)  # a malformed secret is the receiver's mistake: its own error, not a bad delivery
    try:
        return webhook.verify(payload, dict(headers))
    except WebhookVerificationError:
        raise
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeError, OverflowError, RecursionError) as exc:
        raise WebhookVerificationError(f"not a valid delivery ({type(exc).__name__})") from None
