"""Finding, loading and checking plugins: entry points of the ``hookrunner`` group and ``[plugins] load``.

Entry points are iterated here rather than through ``pm.load_setuptools_entrypoints`` so that one broken plugin
is reported by name, in one line, instead of an import traceback that hides which package it came from.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .config import Config
from .errors import ConfigError, PluginLoadError
from .settings import suggest

log = logging.getLogger("hookrunner.plugins")

ENTRY_POINT_GROUP = "hookrunner"


@dataclass
class PluginInfo:
    """What ``hookrunner plugins`` shows about one plugin."""

    name: str
    source: str  # "entry point of <dist>", or the path/module given in plugins.load
    version: str | None
    active: bool
    hooks: list[str] = field(default_factory=list)


@dataclass
class LoadedPlugins:
    pm: pluggy.PluginManager
    infos: list[PluginInfo]

    @property
    def active_names(self) -> list[str]:
        return [info.name for info in self.infos if info.active]


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(config: Config) -> LoadedPlugins:
    """Register every entry-point plugin not disabled, then the modules of ``[plugins] load``.

    Raises ``PluginLoadError`` (one line per problem) for a module that cannot be imported, a duplicate name or an
    implementation of a hook that does not exist.
    """
    pm = new_plugin_manager()
    infos: list[PluginInfo] = []
    problems: list[str] = []
    disabled = set(config.disable)
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        dist = ep.dist
        source = f"entry point of {dist.name}" if dist else f"entry point {ep.value}"
        version = dist.version if dist else None
        if ep.name in disabled:
            infos.append(PluginInfo(ep.name, source, version, active=False))
            continue
        if pm.has_plugin(ep.name):
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = ep.load()
        except Exception as exc:  # a plugin's own bug: name it, keep the details for --log-level debug
            log.debug("loading plugin %s failed", ep.name, exc_info=True)
            problems.append(f"plugin {ep.name} ({source}): cannot be loaded: {type(exc).__name__}: {exc}")
            continue
        problems += _register(pm, plugin, ep.name, source)
        infos.append(PluginInfo(ep.name, source, version, active=True))
    for index, spec in enumerate(config.load):
        try:
            module = _import_local(spec, config.base_dir)
        except PluginLoadError as exc:
            problems.append(f"{config.source}: plugins.load[{index}]: {exc}")
            continue
        name = module.__name__.rsplit(".", 1)[-1]
        if name in disabled:
            infos.append(PluginInfo(name, spec, None, active=False))
            continue
        if pm.has_plugin(name):
            problems.append(f"{config.source}: plugins.load[{index}]: a plugin named {name} is already loaded")
            continue
        problems += _register(pm, module, name, spec)
        infos.append(PluginInfo(name, spec, getattr(module, "__version__", None), active=True))
    problems += _unknown_hooks(pm)
    known = {info.name for info in infos}
    for index, name in enumerate(config.disable):
        if name not in known:
            log.warning("%s: plugins.disable[%d]: no plugin named %s%s", config.source, index, name, suggest(name, known))
    if problems:
        raise PluginLoadError("\n".join(problems))
    for info in infos:
        if info.active:
            plugin = pm.get_plugin(info.name)
            info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
    return LoadedPlugins(pm, infos)


def _register(pm: pluggy.PluginManager, plugin: Any, name: str, source: str) -> list[str]:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        return [f"plugin {name} ({source}): {exc}"]
    except ValueError as exc:
        return [f"plugin {name} ({source}): cannot be registered: {exc}"]
    return []


def _unknown_hooks(pm: pluggy.PluginManager) -> list[str]:
    """``pm.check_pending()`` as one line per misnamed implementation, with the nearest hook suggested."""
    known = [name for name in dir(hookspecs) if not name.startswith("_") and callable(getattr(hookspecs, name))]
    known = [name for name in known if hasattr(getattr(hookspecs, name), "hookrunner_spec")]
    problems = []
    for name in dir(pm.hook):
        if name.startswith("_"):
            continue
        caller = getattr(pm.hook, name)
        if getattr(caller, "spec", True) is None:
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    problems.append(
                        f"plugin {impl.plugin_name}: implements {name}, which is not a hookrunner hook"
                        f"{suggest(name, known)}"
                    )
    return problems


def _import_local(spec: str, base_dir: Path) -> ModuleType:
    """Import a ``plugins.load`` entry: a path to a ``.py`` file (relative to the config) or a module name."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = (base_dir / spec).resolve()
        if not path.is_file():
            raise PluginLoadError(f"no such file: {path}")
        module_name = path.stem
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginLoadError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            log.debug("importing %s failed", path, exc_info=True)
            raise PluginLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise PluginLoadError(f"no module named {spec!r} (a module name on sys.path, or a path to a .py file)") from None
        raise PluginLoadError(f"importing {spec} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        log.debug("importing %s failed", spec, exc_info=True)
        raise PluginLoadError(f"importing {spec} failed: {type(exc).__name__}: {exc}") from None


def validate_plugin_settings(config: Config, loaded: LoadedPlugins) -> None:
    """Check every ``[plugins.NAME]`` table: NAME must be a plugin found, and its ``validate_settings`` agree."""
    problems: list[str] = []
    known = {info.name for info in loaded.infos}
    for name in config.plugin_settings:
        if name not in known:
            problems.append(f"{config.source}: plugins.{name}: no plugin named {name} is installed{suggest(name, known)}")
    for impl in loaded.pm.hook.validate_settings.get_hookimpls():
        table = config.plugin_settings.get(impl.plugin_name, {})
        try:
            found = impl.function(*[{"settings": table}[arg] for arg in impl.argnames])
        except Exception as exc:
            problems.append(f"plugin {impl.plugin_name}: validate_settings raised {type(exc).__name__}: {exc}")
            continue
        for problem in found or []:
            problems.append(f"{config.source}: plugins.{impl.plugin_name}.{problem}")
    if problems:
        raise ConfigError("\n".join(problems))
