"""The service's intakes: the listing poller (``[discovery] poll``) and the server (``[server]``), started by the
runner (or the supervisor of its workers) through ``hookrunner._run.intake``; ``service_runner`` and
``service_supervisor`` are the one place each is built with them."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from hookrunner._core.config import Config
from hookrunner._core.errors import AuthError, ConfigError
from hookrunner._core.failures import first_leaf
from hookrunner._core.logs import redact_in_logs
from hookrunner._run.intake import Intake, RunnerView
from hookrunner._run.plugins import LoadedPlugins
from hookrunner._run.runner import Runner
from hookrunner._service.server import start_server
from hookrunner._service.supervisor import Supervisor
from hookrunner._stream.listing import ListingPoller

__all__ = ["service_runner", "service_supervisor", "service_intakes", "ListingIntake", "ServerIntake"]


class ListingIntake:
    """Lists live calls every ``discovery.interval`` and follows the new ones, until a stop."""

    async def start(self, runner: RunnerView, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._run, runner)

    async def _run(self, runner: RunnerView) -> None:
        poller = ListingPoller(
            runner.config.discovery,
            client=runner.atoms_client,
            base_url=runner.config.atoms.base_url,
            api_key=runner.api_key,
            follow=runner.follow,
            stats=runner.stats,
            limiter=runner.rest_limiter,
        )
        with runner.until_stop():
            try:
                await poller.run()
            except AuthError as exc:
                runner.key_refused(exc)


class ServerIntake:
    """``[server]``: /healthz, /metrics, Atoms webhooks and POST /calls, answering until plugins have shut down."""

    def __init__(self, *, webhook_secret: str | None, token: str | None) -> None:
        self._webhook_secret = webhook_secret
        self._token = token

    async def start(self, runner: RunnerView, nursery: trio.Nursery) -> None:
        server = runner.config.server
        try:
            runner.server_url = await start_server(runner, nursery, webhook_secret=self._webhook_secret, token=self._token)
        except* OSError as failed:  # hypercorn binds inside nested nurseries: the error comes wrapped
            exc = first_leaf(failed)
            runner.cannot_go_on(
                ConfigError(
                    f"{runner.config.source}: server: cannot listen on {server.host}:{server.port} "
                    f"({getattr(exc, 'strerror', None) or exc})"
                )
            )


def service_intakes(config: Config) -> list[Intake]:
    """The intakes ``config`` asks for. Secrets are read here, before anything starts: a missing variable is a
    config error, not a failure at run time."""
    intakes: list[Intake] = []
    if config.server.enabled:
        webhook_secret = config.secret("discovery.webhook_secret_env", config.discovery.webhook_secret_env)
        token = config.secret("server.token_env", config.server.token_env)
        for secret in (webhook_secret, token):
            redact_in_logs(secret)
        intakes.append(ServerIntake(webhook_secret=webhook_secret, token=token))
    if config.service and config.discovery.poll:
        intakes.append(ListingIntake())
    return intakes


def service_runner(config: Config, plugins: LoadedPlugins, *, api_key: str, calls: Sequence[str] = ()) -> Runner:
    """A runner for ``config`` with the intakes it asks for (one process)."""
    return Runner(config, plugins, api_key=api_key, calls=calls, intakes=service_intakes(config))


def service_supervisor(
    config: Config, *, api_key: str, calls: Sequence[str] = (), workers: int, log_level: str, log_format: str
) -> Supervisor:
    """A supervisor of ``workers`` worker processes for ``config``, with the intakes it asks for in front."""
    return Supervisor(
        config,
        api_key=api_key,
        count=workers,
        calls=calls,
        intakes=service_intakes(config),
        log_level=log_level,
        log_format=log_format,
    )
