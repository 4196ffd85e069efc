"""How the runner meets what feeds it calls without knowing it: an ``Intake`` (the listing poller, the server) is
built by the service (``hookrunner._service``) and started by the runner once plugins are up; it sees the runner
only through ``RunnerView``, the narrow surface below.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx
    import trio

    from hookrunner._core.config import Config
    from hookrunner._core.errors import AuthError, HookrunnerError
    from hookrunner._core.platform_delivery import PlatformDelivery
    from hookrunner._core.stats import Stats
    from hookrunner._run.callbook import CallBook, Offer
    from hookrunner._run.metrics import RunnerMetrics
    from hookrunner._stream.ratelimit import RateLimiter

__all__ = ["Intake", "RunnerView"]


class RunnerView(Protocol):
    """What an intake may see and do of a running runner (``Runner`` is one)."""

    config: Config
    stats: Stats
    calls: CallBook
    metrics: RunnerMetrics
    #: "starting", "serving", "draining", "stopped": what /healthz reports.
    state: str
    #: Where the server listens, once it does.
    server_url: str | None

    @property
    def api_key(self) -> str: ...
    @property
    def atoms_client(self) -> httpx.AsyncClient: ...
    @property
    def rest_limiter(self) -> RateLimiter: ...

    def follow(self, call_id: str, source: str) -> Offer | None: ...
    def refuse_call_id(self, source: str, problem: str) -> None: ...
    async def take_platform_webhook(self, delivery: PlatformDelivery) -> bool:
        """Queue a verified Atoms webhook for plugins; True once it is kept (written to the journal, with one),
        False when the runner no longer takes them (stopping)."""
        ...
    def accepted_deliveries(self, limit: int) -> list[str]:
        """The ids of webhook deliveries previous runs accepted (the journal's window), newest last."""
        ...
    def stop(self) -> None: ...
    def health(self) -> dict[str, Any]:
        """What /healthz shows beyond the state and the call book (a supervisor: its workers)."""
        ...
    def until_stop(self) -> AbstractContextManager[trio.CancelScope]:
        """A scope a stop cancels: what only finds calls runs inside it."""
        ...
    def key_refused(self, exc: AuthError) -> None:
        """Atoms refused the API key: the runner stops and exits with the error."""
        ...
    async def metrics_page(self) -> bytes:
        """What ``GET /metrics`` answers (a supervisor's sums its workers')."""
        ...
    def cannot_go_on(self, exc: HookrunnerError) -> None:
        """The intake cannot work (the server cannot listen): the runner stops and exits with the error."""
        ...


class Intake(Protocol):
    async def start(self, runner: RunnerView, nursery: trio.Nursery) -> None:
        """Start the intake's tasks in ``nursery`` (cancelled once plugins have shut down) and return once it is
        ready; called when the runner takes calls, after the config's and the journal's are followed."""
        ...
