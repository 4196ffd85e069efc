"""Webhook deliveries as Atoms sends them: a signed pre-conversation POST when a call starts, a post-conversation
one after it ends, to one push URL; 30 s to answer, never retried.

When: a call with a scripted ``start`` gets its pre-conversation delivery at that start; a call without one at the
moment the simulator starts serving (it is listed ``in_progress`` from then, waiting for a subscriber, so that is
when a webhook-driven runner must learn of it). The post-conversation delivery goes when the call's clock reaches
its end, so a call without ``start`` gets one only after somebody subscribed. Calls declared
``status = "completed"`` get none. Each delivery is its own task: a slow receiver holds up nothing else.

Body (JSON, compact, UTF-8)::

    {"id": "dlv_...", "event": "{agentId}.pre-conversation", "url": PUSH_URL, "description": "...",
     "metadata": {"callId", "agentId", "eventType": "pre-conversation", "conversationType", "fromPhone",
                  "toPhone"}}

and for ``post-conversation`` ``metadata`` also has ``transcript``: ``[{"role": "agent"|"user", "text"}]`` from the
script's ``tts_completed`` and ``user_transcription`` events. ``X-Signature`` is HMAC-SHA256 over the raw body
bytes keyed with the secret's UTF-8 bytes, as ``hex`` (default), ``base64`` or ``sha256=hex``; no secret: no
header. The same bytes and signature go out again on ``send_again`` (a replay).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import httpx
import trio

from hookrunner._simulator.calls import Calls, CallState
from hookrunner._simulator.responses import encode
from hookrunner._simulator.script import SIGNATURE_ENCODINGS, SimCall

__all__ = ["Delivery", "PushResult", "Pusher", "sign"]

Kind = Literal["pre-conversation", "post-conversation"]
_DESCRIPTIONS = {
    "pre-conversation": "Sent before the conversation starts (simulated)",
    "post-conversation": "Sent after the conversation ends (simulated)",
}
_SPEAKERS = {"tts_completed": ("agent", "tts_text"), "user_transcription": ("user", "user_transcription_text")}


@dataclass(frozen=True)
class Delivery:
    """One delivery as built when its moment came: the exact bytes and signature every send of it uses."""

    id: str
    event: str  # "{agentId}.pre-conversation" or "{agentId}.post-conversation"
    call_id: str
    body: bytes
    signature: str | None  # the X-Signature value; None without a secret


class PushResult(NamedTuple):
    """How one send of a delivery went."""

    delivery_id: str
    event: str
    call_id: str
    status: int | None  # the receiver's HTTP status; None when it gave none
    error: str | None  # why there was no status: refused, no answer within the timeout, ...
    how: Literal["first", "again", "wrong-signature"]  # the scheduled send, send_again, or with a bad signature


def sign(body: bytes, secret: str, encoding: str = "hex") -> str:
    """HMAC-SHA256 of ``body`` keyed with ``secret`` (UTF-8), encoded as ``hex``, ``base64`` or ``sha256=hex``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    if encoding == "hex":
        return digest.hex()
    if encoding == "base64":
        return base64.b64encode(digest).decode("ascii")
    if encoding == "sha256=hex":
        return "sha256=" + digest.hex()
    raise ValueError(f"signature encoding must be one of {', '.join(SIGNATURE_ENCODINGS)}, got {encoding!r}")


class Pusher:
    """Builds and sends one simulator's deliveries. ``deliveries`` by id; ``results`` in the order sends ended."""

    def __init__(self, url: str | None, secret: str | None, encoding: str = "hex", timeout: float = 30.0) -> None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"push URL must start with http:// or https://, got {url!r}")
        sign(b"", "", encoding)  # reject an unknown encoding now, not at the first delivery
        self.url, self.secret, self.encoding, self.timeout = url, secret, encoding, timeout
        self.deliveries: dict[str, Delivery] = {}
        self.results: list[PushResult] = []
        self._client: httpx.AsyncClient | None = None
        self._changed = trio.Event()

    async def run(self, calls: Calls) -> None:
        """Send every call's deliveries at their moments, until cancelled. Nothing to do without a URL."""
        if self.url is None:
            return
        async with httpx.AsyncClient(timeout=None) as client:  # each send is bounded by its own cancel scope
            self._client = client
            try:
                async with trio.open_nursery() as nursery:
                    for state in calls:
                        if state.call.status != "completed":
                            nursery.start_soon(self._follow, calls, state, nursery)
            finally:
                self._client = None

    async def _follow(self, calls: Calls, state: CallState, nursery: trio.Nursery) -> None:
        await trio.sleep_until(calls.listed_from(state))
        nursery.start_soon(self._send, self._build(state.call, "pre-conversation"), "first")
        await state.clock_started.wait()
        end = calls.end_time(state)
        assert end is not None
        await trio.sleep_until(end)
        nursery.start_soon(self._send, self._build(state.call, "post-conversation"), "first")

    def _build(self, call: SimCall, kind: Kind) -> Delivery:
        delivery_id = f"dlv_{uuid.uuid4().hex}"
        metadata: dict[str, Any] = {
            "callId": call.id,
            "agentId": call.agent_id,
            "eventType": kind,
            "conversationType": call.conversation_type,
            "fromPhone": call.from_phone,
            "toPhone": call.to_phone,
        }
        if kind == "post-conversation":
            metadata["transcript"] = transcript(call)
        body = encode({
            "id": delivery_id,
            "event": f"{call.agent_id}.{kind}",
            "url": self.url,
            "description": _DESCRIPTIONS[kind],
            "metadata": metadata,
        })  # fmt: skip
        signature = None if self.secret is None else sign(body, self.secret, self.encoding)
        delivery = Delivery(delivery_id, f"{call.agent_id}.{kind}", call.id, body, signature)
        self.deliveries[delivery_id] = delivery
        return delivery

    async def send_again(self, delivery_id: str, *, wrong_signature: bool = False) -> PushResult:
        """Send a delivery again, byte for byte (a replay), or with a signature made with another key."""
        delivery = self.deliveries[delivery_id]  # KeyError: no such delivery
        if not wrong_signature:
            return await self._send(delivery, "again")
        wrong = sign(delivery.body, (self.secret or "") + "-not-the-secret", self.encoding)
        return await self._send(delivery, "wrong-signature", wrong)

    async def _send(self, delivery: Delivery, how: str, signature: str | None = None) -> PushResult:
        assert self.url is not None
        headers = {"content-type": "application/json"}
        signature = signature or delivery.signature
        if signature is not None:
            headers["x-signature"] = signature
        status: int | None = None
        error: str | None = None
        with trio.move_on_after(self.timeout) as waited:
            try:
                status = await self._post(delivery.body, headers)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if waited.cancelled_caught:
            error = f"no answer within {self.timeout:g} s"
        result = PushResult(delivery.id, delivery.event, delivery.call_id, status, error, how)  # type: ignore[arg-type]
        self.results.append(result)
        self._changed.set()
        return result

    async def _post(self, body: bytes, headers: dict[str, str]) -> int:
        assert self.url is not None
        if self._client is not None:
            return (await self._client.post(self.url, content=body, headers=headers)).status_code
        async with httpx.AsyncClient(timeout=None) as client:  # send_again after the simulator stopped
            return (await client.post(self.url, content=body, headers=headers)).status_code

    async def wait(self, count: int, timeout: float) -> list[PushResult]:
        """Wait until ``count`` sends have ended; fails after ``timeout`` seconds."""
        with trio.fail_after(timeout):
            while len(self.results) < count:
                if self._changed.is_set():
                    self._changed = trio.Event()
                await self._changed.wait()
        return list(self.results)


def transcript(call: SimCall) -> list[dict[str, str]]:
    """The call's scripted finals as ``{"role", "text"}``: agent speech (tts_completed) and user turns."""
    turns = []
    for event in call.events:
        speaker = _SPEAKERS.get(event.event_type)
        if speaker is not None and isinstance(event.fields.get(speaker[1]), str):
            turns.append({"role": speaker[0], "text": event.fields[speaker[1]]})
    return turns
