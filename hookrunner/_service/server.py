"""The runner's own HTTP server (``[server]``): pushes of call ids in, health and metrics out.

Routes:

- ``POST /atoms/webhook``: Atoms' signed webhooks. A ``pre-conversation`` delivery is followed at once; every
  verified delivery (post-conversation too) goes to plugins' ``on_platform_webhook`` in the background, so the
  answer never waits on a plugin (Atoms gives up after 30 s and never retries).
- ``POST /calls``: ``{"call_id": ...}`` with ``Authorization: Bearer <server.token_env>``, for the code that starts
  outbound calls.
- ``GET /healthz``: 200 while the runner follows calls, 503 once a stop began (a load balancer stops sending).
- ``GET /metrics``: Prometheus text format.

It is served by hypercorn on trio inside the runner's nursery (``hookrunner._core.asgi``), so handlers call the runner
directly: no locks, no threads.
"""

from __future__ import annotations

import hmac
import json
import logging
import resource
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from hookrunner._core.asgi import BodyTooLarge, errors, header, lifespan, read_body, send_body, send_json, serve_asgi
from hookrunner._core.callids import call_id_problem
from hookrunner._run.metrics import CONTENT_TYPE
from hookrunner._core.logs import logged_at
from hookrunner._core.platform_delivery import BadDelivery, parse_delivery
from hookrunner._service.atoms_webhook import SEEN_LIMIT, SeenDeliveries, signature_valid
from hookrunner._state.spool import spool_platform_webhooks
from hookrunner._core.text import one_line, shown

if TYPE_CHECKING:
    from hookrunner._run.intake import RunnerView

log = logging.getLogger("hookrunner.server")

MAX_BODY = 1024 * 1024  # a delivery is a few KiB; anything this big is not one
BODY_TIMEOUT = 10.0  # seconds to receive a whole body
PRE_CONVERSATION = "pre-conversation"
#: The delivery kinds counted by name on /metrics; any other is counted as "other".
PLATFORM_KINDS = frozenset({PRE_CONVERSATION, "post-conversation"})


class ServiceApp:
    """The ASGI app. ``webhook_secret`` None turns ``/atoms/webhook`` off, ``token`` None turns ``/calls`` off."""

    def __init__(self, runner: RunnerView, *, webhook_secret: str | None, token: str | None) -> None:
        self.runner = runner
        self._secret = webhook_secret
        self._token = token
        self._seen = SeenDeliveries(known=runner.accepted_deliveries(SEEN_LIMIT))  # a replay after a restart is still one
        self._routes = {
            ("POST", "/atoms/webhook"): self._atoms_webhook,
            ("POST", "/calls"): self._post_call,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/metrics"): self._metrics,
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        handler = self._routes.get((scope["method"], path))
        if handler is None:
            if any(route_path == path for _, route_path in self._routes):
                await send_json(send, 405, errors(f"{scope['method']} is not allowed on {path}"))
            else:
                await send_json(send, 404, errors(f"no such route: {path}"))
            return
        await handler(scope, receive, send)

    # --- routes ---------------------------------------------------------------------------------------------

    async def _healthz(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = self.runner.state
        body = {
            "status": state,
            "calls_active": len(self.runner.calls.active),
            "calls_waiting": self.runner.calls.waiting,
            **self.runner.health(),
        }
        await send_json(send, 200 if state == "serving" else 503, body)

    async def _metrics(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send_body(send, 200, await self.runner.metrics_page(), CONTENT_TYPE)

    async def _atoms_webhook(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        outcomes = self.runner.stats.platform_webhooks
        if self._secret is None:
            await send_json(send, 404, errors("Atoms webhooks are off: set discovery.webhook_secret_env"))
            return
        body = await _body(scope, receive, send)
        if body is None:
            return
        if not signature_valid(body, header(scope, b"x-signature"), self._secret):
            outcomes["bad_signature"] += 1
            if logged_at(outcomes["bad_signature"]):
                log.warning(
                    "atoms webhook: refused a delivery with a missing or wrong X-Signature (%d bytes; %d refused so far)",
                    len(body),
                    outcomes["bad_signature"],
                )
            await send_json(send, 401, errors("missing or wrong X-Signature"))
            return
        try:
            delivery = parse_delivery(body)
        except BadDelivery as exc:
            outcomes["unreadable"] += 1
            log.warning("atoms webhook: a signed delivery we cannot read: %s", one_line(str(exc), 200))
            await send_json(send, 400, errors(str(exc)))
            return
        if delivery.id in self._seen:
            outcomes["duplicate"] += 1
            log.info("atoms webhook: delivery %s (%s) again: acknowledged, ignored", shown(delivery.id), shown(delivery.event))
            await send_json(send, 200, {"status": True, "duplicate": True})
            return
        problem = None if delivery.call_id is None else call_id_problem(delivery.call_id)
        if problem is not None:
            outcomes["bad_call_id"] += 1
            self.runner.refuse_call_id("push", f"delivery {shown(delivery.id)}: metadata.callId: {problem}")
            # signed, so Atoms' own: it never retries, so it is kept where a person can see it
            spool_platform_webhooks(self.runner.config.runner.spool_file, [delivery], why="refused for its metadata.callId")
            await send_json(send, 400, errors(f"metadata.callId: {problem}"))
            return
        answer: dict[str, Any] = {"status": True}
        if delivery.kind == PRE_CONVERSATION:
            if delivery.call_id is None:
                outcomes["no_call_id"] += 1
                log.warning("atoms webhook: pre-conversation delivery %s has no metadata.callId", delivery.id)
            else:
                offer = self.runner.follow(delivery.call_id, "push")
                if offer is None:
                    outcomes["refused_stopping"] += 1
                    log.warning("%s: pushed while the runner is stopping: not followed", delivery.call_id)
                    await send_json(send, 503, errors("the runner is stopping"))
                    return
                answer.update(call_id=delivery.call_id, result=offer.value)
        # Atoms never sends it again after a 200: with the journal on, it is written down first
        if not await self.runner.take_platform_webhook(delivery):
            await send_json(send, 503, errors("the runner is stopping"))  # (not remembered: a retry is welcome)
            return
        self._seen.remember(delivery.id)
        outcomes[delivery.kind if delivery.kind in PLATFORM_KINDS else "other"] += 1  # labels stay bounded
        await send_json(send, 200, answer)

    async def _post_call(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._token is None:
            await send_json(send, 403, errors("POST /calls is off: set server.token_env"))
            return
        given = header(scope, b"authorization") or ""
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), self._token.encode()):
            await send_json(send, 401, errors("missing or wrong bearer token"), [(b"www-authenticate", b"Bearer")])
            return
        body = await _body(scope, receive, send)
        if body is None:
            return
        try:
            data = json.loads(body)
            call_id = data["call_id"]
            if not isinstance(call_id, str) or not call_id.strip():
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            await send_json(send, 400, errors('expected a JSON body {"call_id": "CALL-..."}'))
            return
        call_id = call_id.strip()
        problem = call_id_problem(call_id)
        if problem is not None:
            self.runner.refuse_call_id("api", f"call_id: {problem}")
            await send_json(send, 400, errors(f"call_id: {problem}"))
            return
        offer = self.runner.follow(call_id, "api")
        if offer is None:
            await send_json(send, 503, errors("the runner is stopping"))
            return
        await send_json(send, 202, {"status": True, "call_id": call_id, "result": offer.value})


def routes(*, webhooks: bool, calls: bool) -> list[str]:
    """What the server answers: Atoms webhooks only with a secret to check them, POST /calls only with a token."""
    return ["GET /healthz", "GET /metrics"] + ["POST /atoms/webhook"] * webhooks + ["POST /calls"] * calls


async def start_server(runner: RunnerView, nursery: trio.Nursery, *, webhook_secret: str | None, token: str | None) -> str:
    """Listen on ``[server] host:port`` in ``nursery``; the base URL it listens on (port 0 picks a free one)."""
    server = runner.config.server
    max_connections = _connections_that_fit(server.max_connections)
    app = ServiceApp(runner, webhook_secret=webhook_secret, token=token)
    # a burst of pushes (every call of a campaign starting at once) must queue, not be refused: hypercorn's
    # default listen backlog of 100 drops the rest, and Atoms never retries a delivery. A flood of idle
    # connections must not take the file descriptors the calls' streams need: at most max_connections are open
    # (one more closes the quietest), and one that sends no request for idle_timeout is closed.
    serve = partial(
        serve_asgi, app, server.host, server.port, log=log, graceful_timeout=1.0, backlog=1024,
        max_connections=max_connections, idle_timeout=server.idle_timeout,
    )  # fmt: skip
    url = await nursery.start(serve)
    served = routes(webhooks=webhook_secret is not None, calls=token is not None)
    log.info("server: listening on %s (%s)", url, ", ".join(served))
    return url


def _connections_that_fit(wanted: int) -> int:
    """``server.max_connections``, or half the open-file limit when that is less: the server's clients must leave
    file descriptors for the calls' streams and the plugins' deliveries."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted <= soft // 2:
        return wanted
    fitted = max(1, soft // 2)
    log.warning(
        "server.max_connections: %d is more than half the open-file limit (%d); serving at most %d connections "
        "(raise LimitNOFILE / ulimit -n)",
        wanted,
        soft,
        fitted,
    )
    return fitted


async def _body(scope: dict[str, Any], receive: Any, send: Any) -> bytes | None:
    """The request body, or None after answering 413 (too big: checked before and while reading, never buffered
    past MAX_BODY) or 408 (not sent within BODY_TIMEOUT: a slow sender cannot hold a connection open)."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY:
        await send_json(send, 413, errors(f"body over {MAX_BODY} bytes"))
        return None
    body: bytes | None = None
    with trio.move_on_after(BODY_TIMEOUT):
        try:
            body = await read_body(receive, limit=MAX_BODY)
        except BodyTooLarge:
            await send_json(send, 413, errors(f"body over {MAX_BODY} bytes"))
            return None
        if body is None:
            return None  # the client went away
        return body
    await send_json(send, 408, errors(f"body not received within {BODY_TIMEOUT:g} s"))
    return None
