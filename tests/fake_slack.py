"""A loopback fake of Slack for tests: a plain ASGI app served by hypercorn on trio, on 127.0.0.1.

It answers the two ways of posting a message and checks each payload the way Slack does:

- ``POST /api/chat.postMessage`` (the Web API; point the plugin's ``api_base_url`` at ``fake.api_base_url``):
  the bearer token must be one the fake knows (else HTTP 200 ``{"ok": false, "error": "invalid_auth"}``, or
  ``not_authed`` without one), the channel one it knows (``channel_not_found``), the body JSON (``invalid_json``)
  with a ``text`` or ``blocks`` (``no_text``), ``text`` at most 40,000 characters (``msg_too_long``), at most 50
  blocks of known types whose section texts hold at most 3,000 characters (``invalid_blocks``). Success answers
  ``{"ok": true, "channel": ..., "ts": "1700000000.000100"}`` with a ts unique to the fake.
- ``POST /services/<id>`` (incoming webhooks; ``fake.webhook_url(id)``): 200 ``ok``; an unknown id is 404
  ``no_service``; the same payload checks answer 400 (``invalid_payload``, ``no_text``, ``msg_too_long``,
  ``invalid_blocks``).

Slack allows about one message a second per channel (per webhook for incoming webhooks): a request reaching a
channel less than ``min_interval`` seconds after the previous one is answered 429 with ``Retry-After: 1`` and
counted in ``rate_limited``. A test may also script answers for the next requests (``script``: a 429 with its
own Retry-After, a 5xx, an ``ok: false`` error) or take the whole service down (``outage = 503``).

Every request is recorded (``requests``): when it arrived, the route, the channel, the token used, ``thread_ts``,
``text``, ``blocks`` and the answer given.

    async with running_fake_slack(tokens={"xoxb-good"}, channels={"C-OPS"}, webhooks={"T1/B1/x"}) as slack:
        url = slack.api_base_url        # for [plugins.slack] api_base_url
        hook = slack.webhook_url("T1/B1/x")
        ...
        await slack.wait_for_posts(3)
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from hookrunner._core.asgi import read_body
from hookrunner.testing.receiver import LoopbackServer, serving

__all__ = ["FakeSlack", "SlackRequest", "Scripted", "running_fake_slack", "TEXT_LIMIT", "ADVISED_TEXT_LIMIT", "SECTION_LIMIT", "BLOCK_LIMIT"]


TEXT_LIMIT = 40_000
#: What Slack's docs advise for the top-level text (a message's fallback): at most this many characters.
ADVISED_TEXT_LIMIT = 4_000
SECTION_LIMIT = 3_000
BLOCK_LIMIT = 50
CONTEXT_ELEMENTS_LIMIT = 10
BLOCK_TYPES = frozenset({"section", "context", "header", "divider", "actions", "image", "rich_text", "input", "file"})
TEXT_TYPES = frozenset({"mrkdwn", "plain_text"})
API_PATH = "/api/chat.postMessage"
WEBHOOK_PREFIX = "/services/"


@dataclass(frozen=True)
class Scripted:
    """A scripted answer for one request: ``status`` (429, 5xx...), its ``Retry-After``, or an ``ok: false``
    ``error`` (with status 200, as the Web API does)."""

    status: int = 503
    retry_after: float | None = None
    error: str | None = None


@dataclass
class SlackRequest:
    """One request as the fake saw it, and what it answered."""

    at: float  # trio.current_time() when the whole body was read
    wall: float  # time.time() at the same moment
    method: str
    path: str
    kind: str  # "api", "webhook" or "other"
    body: bytes
    content_type: str
    token: str | None = None  # the bearer token, as sent
    webhook: str | None = None  # the webhook id of /services/<id>
    channel: str | None = None  # as asked (api) or the webhook's channel
    payload: dict[str, Any] | None = None
    thread_ts: str | None = None
    text: str | None = None
    blocks: list[Any] | None = None
    status: int = 0  # the HTTP status answered
    error: str | None = None  # Slack's error (ok: false, or the webhook's body), None when accepted
    ts: str | None = None  # the new message's ts when accepted
    rate_limited: bool = False  # answered 429 by the fake's own per-channel limit
    scripted: bool = False  # answered from ``script`` or ``outage``
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        """Slack accepted the message (it is in the channel)."""
        return self.ts is not None

    @property
    def where(self) -> str:
        """The rate-limit key: the channel for the Web API, the webhook for incoming webhooks."""
        return f"webhook:{self.webhook}" if self.kind == "webhook" else f"channel:{self.channel}"

    @property
    def section_texts(self) -> list[str]:
        return [
            block["text"]["text"]
            for block in self.blocks or []
            if isinstance(block, dict) and block.get("type") == "section" and isinstance(block.get("text"), dict)
        ]

    @property
    def block_texts(self) -> list[str]:
        """Every text of every block (sections, their fields, context elements, headers)."""
        texts: list[str] = []
        for block in self.blocks or []:
            if not isinstance(block, dict):
                continue
            for obj in [block.get("text"), *(block.get("fields") or []), *(block.get("elements") or [])]:
                if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                    texts.append(obj["text"])
        return texts

    @property
    def everything(self) -> str:
        """The fallback text and every block text, for looking something up wherever it is shown."""
        return "\n".join([self.text or "", *self.block_texts])


def _check_text_object(obj: Any, limit: int) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("type") in TEXT_TYPES
        and isinstance(obj.get("text"), str)
        and 0 < len(obj["text"]) <= limit
    )


def blocks_problem(blocks: Any) -> str | None:
    """Slack's error for a ``blocks`` value, or None when it would be accepted."""
    if isinstance(blocks, str):  # the Web API also takes them JSON-encoded
        try:
            blocks = json.loads(blocks)
        except ValueError:
            return "invalid_blocks_format"
    if not isinstance(blocks, list) or len(blocks) > BLOCK_LIMIT:
        return "invalid_blocks"
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            return "invalid_blocks"
        kind = block["type"]
        if kind == "section":
            text, fields = block.get("text"), block.get("fields")
            if text is None and not fields:
                return "invalid_blocks"
            if text is not None and not _check_text_object(text, SECTION_LIMIT):
                return "invalid_blocks"
            if fields is not None and (
                not isinstance(fields, list) or len(fields) > 10 or not all(_check_text_object(f, 2000) for f in fields)
            ):
                return "invalid_blocks"
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 0 < len(elements) <= CONTEXT_ELEMENTS_LIMIT:
                return "invalid_blocks"
            for element in elements:
                if isinstance(element, dict) and element.get("type") in TEXT_TYPES:
                    if not _check_text_object(element, SECTION_LIMIT):
                        return "invalid_blocks"
                elif not (isinstance(element, dict) and element.get("type") == "image"):
                    return "invalid_blocks"
        elif kind == "header":
            text = block.get("text")
            if not (isinstance(text, dict) and text.get("type") == "plain_text" and _check_text_object(text, 150)):
                return "invalid_blocks"
    return None


def payload_problem(payload: Any) -> str | None:
    """Slack's error for a message payload (text and blocks), or None."""
    if not isinstance(payload, dict):
        return "invalid_payload"
    text, blocks = payload.get("text"), payload.get("blocks")
    if text is not None and not isinstance(text, str):
        return "invalid_arguments"
    if not text and not blocks:
        return "no_text"
    if text is not None and len(text) > TEXT_LIMIT:
        return "msg_too_long"
    if blocks is not None:
        return blocks_problem(blocks)
    return None


class FakeSlack(LoopbackServer):
    """The ASGI app and what it recorded; ``serve()`` puts it on a port (see ``running_fake_slack``)."""

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (),
        channels: Iterable[str] = (),
        webhooks: Iterable[str] = (),
        min_interval: float | None = 0.9,
    ) -> None:
        self.tokens = set(tokens)
        self.channels = set(channels)
        self.webhooks = set(webhooks)
        self.min_interval = min_interval
        self.base_url = ""
        self.requests: list[SlackRequest] = []
        self.outage: int | None = None  # answer every request with this status (a Slack that is down)
        self._scripted: deque[Scripted] = deque()
        self._last: dict[str, float] = {}  # rate-limit key -> when its latest request arrived
        self._messages: dict[str, dict[str, SlackRequest]] = {}  # channel -> ts -> the post
        self._serial = 0
        self._changed = trio.Event()

    # --- setting up ----------------------------------------------------------------------------------------------

    @property
    def api_base_url(self) -> str:
        return f"{self.base_url}/api"

    def webhook_url(self, webhook_id: str) -> str:
        return f"{self.base_url}{WEBHOOK_PREFIX}{webhook_id}"

    def script(self, answers: Sequence[Scripted | int]) -> None:
        """Answer the next requests that pass the credentials, channel and rate-limit checks with ``answers``."""
        self._scripted.extend(Scripted(answer) if isinstance(answer, int) else answer for answer in answers)

    # --- what was received -----------------------------------------------------------------------------------

    @property
    def rate_limited(self) -> int:
        """How many requests the fake's own per-channel limit refused (429): each one a sender that hammered."""
        return sum(1 for request in self.requests if request.rate_limited)

    def posts(self, channel: str | None = None, webhook: str | None = None) -> list[SlackRequest]:
        """The messages accepted (in the order they arrived), of one channel or webhook, or all."""
        return [
            request
            for request in self.requests
            if request.ok
            and (channel is None or (request.kind == "api" and request.channel == channel))
            and (webhook is None or request.webhook == webhook)
        ]

    def to(self, channel: str | None = None, webhook: str | None = None) -> list[SlackRequest]:
        """Every request (whatever the answer) for one channel or webhook."""
        return [
            request
            for request in self.requests
            if (channel is None or (request.kind == "api" and request.channel == channel))
            and (webhook is None or request.webhook == webhook)
        ]

    def message(self, channel: str, ts: str) -> SlackRequest | None:
        return self._messages.get(channel, {}).get(ts)

    async def wait_for_posts(
        self, count: int, channel: str | None = None, webhook: str | None = None, timeout: float = 10.0
    ) -> list[SlackRequest]:
        """Wait until ``count`` messages were accepted (of ``channel``/``webhook``, or any)."""
        with trio.fail_after(timeout):
            while True:
                got = self.posts(channel, webhook)
                if len(got) >= count:
                    return got
                if self._changed.is_set():
                    self._changed = trio.Event()
                await self._changed.wait()

    # --- answering ----------------------------------------------------------------------------------------------

    def _new_ts(self) -> str:
        self._serial += 1
        return f"1700000000.{self._serial * 100:06d}"

    def _rate_limit(self, request: SlackRequest) -> bool:
        """True when the request comes too soon after the previous one to the same channel (then answered 429)."""
        key = request.where
        previous = self._last.get(key)
        self._last[key] = request.at
        if self.min_interval is None or previous is None:
            return False
        return request.at - previous < self.min_interval

    def _answer(self, request: SlackRequest) -> tuple[int, dict[str, str], bytes]:
        """Decide the answer; fills the request's outcome fields."""
        api = request.kind == "api"

        def refuse(error: str, status: int = 200) -> tuple[int, dict[str, str], bytes]:
            request.status, request.error = status, error
            if api:
                return status, {"content-type": "application/json"}, json.dumps({"ok": False, "error": error}).encode()
            return status, {"content-type": "text/plain"}, error.encode()

        if request.kind == "other" or request.method != "POST":
            request.status, request.error = 404, "unknown_method"
            return 404, {"content-type": "text/plain"}, b"unknown_method"
        if self.outage is not None:
            request.scripted = True
            request.status, request.error = self.outage, "outage"
            return self.outage, {"content-type": "text/html"}, b"<html>Slack is having trouble</html>"
        if api:
            if request.token is None:
                return refuse("not_authed")
            if request.token not in self.tokens:
                return refuse("invalid_auth")
        elif request.webhook not in self.webhooks:
            return refuse("no_service", 404)
        payload = None
        try:
            payload = json.loads(request.body) if "json" in request.content_type else None
        except ValueError:
            payload = None
        if payload is None:
            return refuse("invalid_json" if api else "invalid_payload", 200 if api else 400)
        request.payload = payload if isinstance(payload, dict) else None
        if isinstance(payload, dict):
            request.text = payload.get("text") if isinstance(payload.get("text"), str) else None
            request.blocks = payload.get("blocks") if isinstance(payload.get("blocks"), list) else None
            if api:
                request.channel = payload.get("channel")
                thread_ts = payload.get("thread_ts")
                request.thread_ts = None if thread_ts is None else str(thread_ts)
        if api and request.channel not in self.channels:
            return refuse("channel_not_found")
        if self._rate_limit(request):
            request.rate_limited = True
            request.retry_after = 1
            request.status, request.error = 429, "ratelimited"
            body = json.dumps({"ok": False, "error": "ratelimited"}).encode() if api else b"rate_limited"
            return 429, {"retry-after": "1", "content-type": "application/json" if api else "text/plain"}, body
        if self._scripted:
            scripted = self._scripted.popleft()
            request.scripted = True
            request.retry_after = scripted.retry_after
            headers = {} if scripted.retry_after is None else {"retry-after": f"{scripted.retry_after:g}"}
            if scripted.error is not None:
                request.status, request.error = scripted.status, scripted.error
                body = json.dumps({"ok": False, "error": scripted.error}).encode() if api else scripted.error.encode()
                return scripted.status, {**headers, "content-type": "application/json"}, body
            request.status, request.error = scripted.status, f"HTTP {scripted.status}"
            return scripted.status, {**headers, "content-type": "text/plain"}, f"status {scripted.status}".encode()
        problem = payload_problem(payload)
        if problem is not None:
            return refuse(problem, 200 if api else 400)
        request.status = 200
        request.ts = self._new_ts()
        if api:
            self._messages.setdefault(str(request.channel), {})[request.ts] = request
            answer = {"ok": True, "channel": request.channel, "ts": request.ts, "message": {"text": request.text}}
            return 200, {"content-type": "application/json"}, json.dumps(answer).encode()
        return 200, {"content-type": "text/plain"}, b"ok"

    # --- ASGI -------------------------------------------------------------------------------------------------

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = await read_body(receive)
        if body is None:
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        path = scope["path"]
        kind = "api" if path == API_PATH else "webhook" if path.startswith(WEBHOOK_PREFIX) else "other"
        authorization = headers.get("authorization", "")
        request = SlackRequest(
            at=trio.current_time(),
            wall=time.time(),
            method=scope["method"],
            path=path,
            kind=kind,
            body=body,
            content_type=headers.get("content-type", ""),
            token=authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else None,
            webhook=path[len(WEBHOOK_PREFIX) :] if kind == "webhook" else None,
        )
        status, reply_headers, body = self._answer(request)
        self.requests.append(request)
        self._changed.set()
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply_headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        try:
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except Exception:  # the client went away
            pass



@asynccontextmanager
async def running_fake_slack(*, port: int = 0, **kwargs: Any) -> AsyncIterator[FakeSlack]:
    """A fake Slack on 127.0.0.1 (a free port, or ``port``) for the ``async with`` block."""
    async with serving(FakeSlack(**kwargs), port=port) as slack:
        yield slack
