"""Webhook deliveries as Atoms sends them: a signed pre-conversation POST when a call starts, a post-conversation
one after it ends, to one push URL; 30 s to answer, never retried.

When: a call with a scripted ``start`` gets its pre-conversation delivery at that start; a call without one at the
moment the simulator starts serving (it is listed ``in_progress`` from then, waiting for a subscriber, so that is
when a webhook-driven runner must learn of it). The post-conversation delivery goes when the call's clock reaches
its end, so a call without ``start`` gets one only after somebody subscribed. Calls declared
``status = "completed"`` get none. Each delivery is its own task: a slow receiver holds up nothing else.

Body (JSON, compact, UTF-8), in the SDK's models (``WebhookEventPreConversation``, ``WebhookEventPostConversation``;
the values rendered by ``records.py``, as the listing's and the stored conversation's are)::

    {"id": "dlv_...", "event": "{agentId}.pre-conversation", "url": PUSH_URL, "description": "...",
     "metadata": {"callId", "agentId", "eventType": "pre-conversation",
                  "conversationType": "telephonyInbound" | "telephonyOutbound" | "webcall",
                  "fromPhone", "toPhone" (E.164)}}

and for ``post-conversation`` ``metadata`` has ``callId``, ``agentId``, ``eventType``, ``conversationType``,
``recordingUrl``, ``callData`` (``fromNumber``, ``toNumber``, ``callDuration`` in seconds, ``callStatus``,
``callDirection``, ``answerTime``, ``endTime``), ``transcript`` (``[{"role": "agent"|"user", "content",
"timestamp"}]``, the stream's ``tts_completed`` and ``user_transcription`` events) and ``variables``.
``X-Signature`` is HMAC-SHA256 over the raw body bytes keyed with the secret's UTF-8 bytes, as ``hex`` (default),
``base64`` or ``sha256=hex``; no secret: no header. The same bytes and signature go out again on ``send_again`` (a replay).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import httpx
import trio

from hookrunner._simulator import records
from hookrunner._simulator.calls import Calls, CallState
from hookrunner._simulator.responses import encode, iso
from hookrunner._simulator.script import SIGNATURE_ENCODINGS, SimEvent

#: How the stream renders a call's script event (``SimulatorApp.event_fields``): the transcript quotes it.
EventFields = Callable[[CallState, int, SimEvent], dict[str, Any]]

__all__ = ["Delivery", "PushResult", "Pusher", "sign"]

Kind = Literal["pre-conversation", "post-conversation"]
_DESCRIPTIONS = {
    "pre-conversation": "Sent before the conversation starts (simulated)",
    "post-conversation": "Sent after the conversation ends (simulated)",
}


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

    def __init__(
        self,
        url: str | None,
        secret: str | None,
        encoding: str = "hex",
        timeout: float = 30.0,
        *,
        event_fields: EventFields,
    ) -> None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"push URL must start with http:// or https://, got {url!r}")
        sign(b"", "", encoding)  # reject an unknown encoding now, not at the first delivery
        self.url, self.secret, self.encoding, self.timeout = url, secret, encoding, timeout
        self.event_fields = event_fields
        self.deliveries: dict[str, Delivery] = {}
        self.results: list[PushResult] = []
        self._client: httpx.AsyncClient | None = None
        self._changed = trio.Event()
        self._calls: Calls | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, calls: Calls) -> None:
        """Send every call's deliveries at their moments, until cancelled. Nothing to do without a URL."""
        if self.url is None:
            return
        async with httpx.AsyncClient(timeout=None) as client:  # each send is bounded by its own cancel scope
            self._client = client
            try:
                async with trio.open_nursery() as nursery:
                    self._calls, self._nursery = calls, nursery
                    for state in calls:
                        if state.call.status != "completed":
                            nursery.start_soon(self._follow, calls, state, nursery)
            finally:
                self._client = self._calls = self._nursery = None

    def follow(self, state: CallState) -> None:
        """Send the deliveries of a call started while serving (``on_demand.py``); nothing without a URL."""
        if self._nursery is not None and self._calls is not None:
            self._nursery.start_soon(self._follow, self._calls, state, self._nursery)

    async def _follow(self, calls: Calls, state: CallState, nursery: trio.Nursery) -> None:
        await trio.sleep_until(calls.listed_from(state))
        nursery.start_soon(self._send, self._build(calls, state, "pre-conversation"), "first")
        await state.clock_started.wait()
        end = calls.end_time(state)
        assert end is not None
        await trio.sleep_until(end)
        nursery.start_soon(self._send, self._build(calls, state, "post-conversation"), "first")

    def _build(self, calls: Calls, state: CallState, kind: Kind) -> Delivery:
        call = state.call
        delivery_id = f"dlv_{uuid.uuid4().hex}"
        metadata: dict[str, Any] = {
            "callId": call.id,
            "agentId": call.agent_id,
            "eventType": kind,
            "conversationType": records.webhook_conversation_type(call),
        }
        from_phone, to_phone = records.phones(call)
        if kind == "pre-conversation":
            metadata.update(fromPhone=from_phone, toPhone=to_phone)
        else:
            metadata.update(self._after(calls, state, from_phone, to_phone))
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

    def _after(self, calls: Calls, state: CallState, from_phone: str, to_phone: str) -> dict[str, Any]:
        """The post-conversation metadata beyond the ids: the recording, callData, transcript and variables."""
        call, speed = state.call, calls.speed
        events = [self.event_fields(state, index, event) for index, event in enumerate(call.events)]
        scheduled = [state.start_wall + event.at / speed for event in call.events]
        call_data: dict[str, Any] = {
            "fromNumber": from_phone,
            "toNumber": to_phone,
            "callDuration": round(call.end_at / speed, 3),
            "callStatus": "completed",
            "answerTime": iso(round(state.start_wall * 1000)),
            "endTime": iso(round((state.start_wall + call.end_at / speed) * 1000)),
        }
        direction = records.call_direction(call)
        if direction is not None:
            call_data["callDirection"] = direction
        return {
            "recordingUrl": records.recording_url(call),
            "callData": call_data,
            "transcript": records.transcript(zip(events, scheduled)),
            "variables": records.variables(call, state.start_wall),
        }

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
