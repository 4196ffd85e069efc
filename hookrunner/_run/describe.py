"""What plugins say about their own settings, for ``hookrunner check``: ``describe_settings`` (the lines listed
under each plugin) and ``routes_for_trigger`` (where a trigger would go, for ``check --route``).

Each plugin is asked on its own, with its own ``[plugins.NAME]`` table as ``app.settings`` will hold it (defaults
filled in), inside an error boundary: a hook that raises, is ``async`` or returns something other than lines is
one line naming the plugin, never a traceback, and the other plugins are still asked.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import pluggy

from hookrunner._core.config import Config
from hookrunner._core.text import one_line
from hookrunner._core.triggers import Trigger
from hookrunner._run.plugins import PLUGIN_FAILURES, LoadedPlugins, settings_with_defaults

__all__ = ["Answer", "describe_plugins", "trigger_routes", "unrouted_trigger_takers"]

log = logging.getLogger("hookrunner.check")
#: The most characters of one line a plugin gives that are printed (a line stays a line on a terminal).
LINE_LIMIT = 500


@dataclass(frozen=True)
class Answer:
    """One plugin's answer: its lines (None: it has nothing to say), or why it gave none (a bug of its own)."""

    plugin: str
    lines: list[str] | None
    problem: str | None = None


def describe_plugins(config: Config, loaded: LoadedPlugins) -> list[Answer]:
    """The ``describe_settings`` answer of each active plugin implementing it, in the order plugins are listed."""
    return _ask_each(config, loaded, "describe_settings", {})


def trigger_routes(config: Config, loaded: LoadedPlugins, trigger: Trigger) -> list[Answer]:
    """The ``routes_for_trigger`` answer of each active plugin implementing it, in the order plugins are listed."""
    return _ask_each(config, loaded, "routes_for_trigger", {"trigger": trigger})


def unrouted_trigger_takers(loaded: LoadedPlugins) -> list[str]:
    """Active plugins that get triggers (``on_trigger``) but do not say where they go (no ``routes_for_trigger``)."""
    routing = {impl.plugin_name for impl in loaded.pm.hook.routes_for_trigger.get_hookimpls()}
    takers = {impl.plugin_name for impl in loaded.pm.hook.on_trigger.get_hookimpls()}
    return [name for name in loaded.active_names if name in takers and name not in routing]


def _ask_each(config: Config, loaded: LoadedPlugins, hook: str, arguments: dict[str, Any]) -> list[Answer]:
    settings = settings_with_defaults(config, loaded)
    impls = {impl.plugin_name: impl for impl in getattr(loaded.pm.hook, hook).get_hookimpls()}
    return [
        _ask(impls[name], hook, {**arguments, "settings": settings.get(name, {})})
        for name in loaded.active_names
        if name in impls
    ]


def _ask(impl: pluggy.HookImpl, hook: str, arguments: dict[str, Any]) -> Answer:
    name = impl.plugin_name
    try:
        result = impl.function(*[arguments[argument] for argument in impl.argnames])
    except PLUGIN_FAILURES as exc:
        log.debug("plugin %s: %s raised", name, hook, exc_info=True)
        return Answer(name, None, f"{hook} raised {type(exc).__name__}: {one_line(str(exc))}")
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited, on purpose: no "coroutine was never awaited" warning
        return Answer(name, None, f"{hook} must be a plain function, not async (check runs no event loop)")
    if result is None:
        return Answer(name, None)
    if not isinstance(result, (list, tuple)) or not all(isinstance(line, str) for line in result):
        return Answer(name, None, f"{hook} must return a list of strings, got a {type(result).__name__}")
    return Answer(name, [one_line(line, LINE_LIMIT) for line in result])
