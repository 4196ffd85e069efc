"""Plugins made ready to run, the same way for every caller: ``hookrunner run`` and ``check``, a SIGHUP reload,
``redeliver`` and ``replay``, and ``hookrunner.testing``.

Loading, registering a test's own plugin objects, checking ``[plugins.NAME]`` tables and filling in defaults is
one sequence; done by hand in several places it drifts (a reload that skips a check, a test that sees settings
without their defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from hookrunner._core.config import Config, load_config
from hookrunner._core.errors import PluginLoadError
from hookrunner._delivery.outbox import Deliverer
from hookrunner._run.context import App
from hookrunner._run.plugins import (
    LoadedPlugins, PluginInfo, asks_for_asyncio, load_plugins, plugin_object, settings_with_defaults,
    validate_plugin_settings,
)  # fmt: skip

__all__ = ["prepare_plugins", "checked_settings", "plugin_apps", "registered", "deliverers_for"]


def prepare_plugins(config: Config, extra: Sequence[tuple[str, Any]] = ()) -> LoadedPlugins:
    """The config's plugins (and ``extra`` plugin objects or classes by name, from ``hookrunner.testing``), loaded and
    registered, with every ``[plugins.NAME]`` table checked; raises ConfigError/PluginLoadError with every problem."""
    loaded = load_plugins(config)
    for name, plugin in extra:
        registered(loaded, name, plugin)
    validate_plugin_settings(config, loaded)
    return loaded


def checked_settings(config: Config, loaded: LoadedPlugins) -> dict[str, dict[str, Any]]:
    """Every active plugin's ``[plugins.NAME]`` table of ``config``, checked (ConfigError with every problem) and
    with its defaults filled in: what ``app.settings`` holds, at start and after a reload."""
    validate_plugin_settings(config, loaded)
    return settings_with_defaults(config, loaded)


def plugin_apps(
    config: Config, loaded: LoadedPlugins, http: httpx.AsyncClient, names: Sequence[str], **runtime: Any
) -> dict[str, App]:
    """One ``App`` per plugin of ``names``, with its settings (defaults filled in) and the config's place;
    ``runtime`` is what the caller lends plugins (``start_soon``, ``emit_trigger``, the outboxes...)."""
    settings = settings_with_defaults(config, loaded)
    return {
        name: App(
            name=name,
            settings=settings.get(name, {}),
            http=http,
            config_dir=config.base_dir,
            config_path=config.path,
            on_asyncio=name in loaded.asyncio_names,
            **runtime,
        )
        for name in names
    }


def registered(loaded: LoadedPlugins, name: str, plugin: Any) -> None:
    """Register a plugin object under ``name`` as if it had been found (a test's own plugin; a class is instantiated,
    once per run, as an entry point's is); PluginLoadError for a class that cannot be, or a ``HOOKRUNNER_ASYNCIO``
    that is not a bool, as the loader would say it."""
    try:
        plugin = plugin_object(plugin)
        asyncio = asks_for_asyncio(plugin)
    except PluginLoadError as exc:
        raise PluginLoadError(f"plugin {name} (hookrunner.testing): {exc}") from None
    loaded.pm.register(plugin, name=name)
    loaded.infos.append(PluginInfo(name, "hookrunner.testing", None, active=True, asyncio=asyncio))


def _unavailable(*_: Any) -> None:
    raise RuntimeError("not available while redelivering dead letters")


async def deliverers_for(config_path: Path, http: httpx.AsyncClient) -> dict[tuple[str, str], Deliverer]:
    """(plugin, endpoint) -> deliverer, from every active plugin of ``config_path`` that implements
    ``outbox_deliverers``: how ``redeliver`` and ``replay`` send a message outside a run."""
    config = load_config(config_path)
    loaded = prepare_plugins(config)
    impls = loaded.pm.hook.outbox_deliverers.get_hookimpls()
    names = [impl.plugin_name for impl in impls]
    apps = plugin_apps(config, loaded, http, names, start_soon=_unavailable, emit_trigger=_unavailable)
    found: dict[tuple[str, str], Deliverer] = {}
    for impl in impls:
        offered: dict[str, Deliverer] = impl.function(apps[impl.plugin_name]) or {}  # type: ignore[assignment]  # (pluggy: untyped)
        for endpoint, deliver in offered.items():
            found[(impl.plugin_name, endpoint)] = deliver
    return found

