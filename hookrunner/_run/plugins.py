"""Finding, loading and checking plugins: entry points of the ``hookrunner`` group and ``[plugins] load``.

Entry points are iterated here rather than through ``pm.load_setuptools_entrypoints`` so that one broken plugin
is reported by name, in one line, instead of an import traceback that hides which package it came from.

An entry point may name a module, an object or a class. A class is instantiated, with no arguments, each time the
plugins are loaded (once per run, per ``Runner``), so what a plugin keeps on ``self`` belongs to one run: two runs
in one process (a test suite, a service and a ``replay``) never share it, as they share a module's globals.

``load_plugins(config)`` (``check``, ``run``) refuses to go on when any plugin it would activate is broken;
``load_plugins(config, strict=False)`` (``hookrunner plugins``) records each problem on the plugin's
``PluginInfo.error`` instead, and also loads disabled plugins, into a throwaway plugin manager, to show their hooks.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from hookrunner._run import hookspecs
from hookrunner._run.asyncio_hooks import FLAG as ASYNCIO_FLAG
from hookrunner._core.api import HOOKRUNNER_API_VERSION
from hookrunner._core.config import Config
from hookrunner._core.errors import ConfigError, PluginLoadError
from hookrunner._core.settings import Setting, check_table, describe, suggest

log = logging.getLogger("hookrunner.plugins")
#: What a plugin's own code may raise while it is loaded or asked for its settings: any exception, and
#: ``sys.exit()`` (a real Ctrl-C, KeyboardInterrupt, still stops the command).
PLUGIN_FAILURES = (Exception, SystemExit)

ENTRY_POINT_GROUP = "hookrunner"

#: Local plugin files are imported as ``hookrunner_local.<file stem>``, so that a plugin file named like a module
#: of the standard library or of an installed package (``email.py``) cannot replace it in ``sys.modules``.
LOCAL_NAMESPACE = "hookrunner_local"


@dataclass
class PluginInfo:
    """What ``hookrunner plugins`` shows about one plugin."""

    name: str
    source: str  # "entry point of <dist>", or the path/module given in plugins.load
    version: str | None
    active: bool  # registered and called by ``run`` (never true for a broken plugin)
    hooks: list[str] = field(default_factory=list)
    #: Why the plugin cannot be used, in one line (only set by ``load_plugins(..., strict=False)``, or for an
    #: incompatible plugin).
    error: str | None = None
    #: The plugin asks for a newer plugin API than this hookrunner's: listed, never activated, not fatal.
    incompatible: bool = False
    #: The plugin sets ``HOOKRUNNER_ASYNCIO = True``: its coroutine hooks run on the run's asyncio loop.
    asyncio: bool = False


@dataclass
class LoadedPlugins:
    pm: pluggy.PluginManager
    infos: list[PluginInfo]

    @property
    def active_names(self) -> list[str]:
        return [info.name for info in self.infos if info.active]

    @property
    def asyncio_names(self) -> frozenset[str]:
        """The active plugins that set ``HOOKRUNNER_ASYNCIO = True``: the run opens an asyncio loop for them."""
        return frozenset(info.name for info in self.infos if info.active and info.asyncio)


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


class _Loader:
    """One pass over every plugin found; collects ``PluginInfo``s and, in strict mode, the problems to raise."""

    def __init__(self, config: Config, strict: bool) -> None:
        self.config = config
        self.strict = strict
        self.pm = new_plugin_manager()
        self.disabled = set(config.plugins.disable)
        self.infos: list[PluginInfo] = []
        self.problems: list[str] = []

    def add(self, name: str, source: str, version: str | None, load: Any, where: str | None = None) -> None:
        """Load (``load()`` returns the plugin or its class, or raises ``PluginLoadError``), check and register one
        plugin; a class is instantiated here, once per load (``plugin_object``).

        ``where`` starts each line reporting a problem (default: ``plugin NAME (SOURCE)``).

        A disabled plugin is not imported in strict mode (disabling is how a user sets a broken plugin aside); in
        lenient mode it is, into a throwaway plugin manager, so that its hooks can be shown.
        """
        disabled = name in self.disabled
        info = PluginInfo(name, source, version, active=False)
        self.infos.append(info)
        where = where or f"plugin {name} ({source})"
        if disabled and self.strict:
            return
        try:
            found = load()
        except PluginLoadError as exc:
            self.fail(info, str(exc), disabled, where)
            return
        if info.version is None:
            info.version = declared_by(found, "__version__")
        needed = declared_by(found, "HOOKRUNNER_API_VERSION")
        if isinstance(needed, int) and needed > HOOKRUNNER_API_VERSION:
            # Not fatal: the other plugins run; this one is set aside with one line saying why.
            info.incompatible = True
            info.error = (
                f"needs plugin API {needed}, this hookrunner has {HOOKRUNNER_API_VERSION}: upgrade hookrunner "
                "to use it"
            )
            if not disabled:
                log.error("%s: not activated: %s", where, info.error)
            return
        try:
            plugin = plugin_object(found)  # after the version check: an incompatible class is never instantiated
        except PluginLoadError as exc:
            self.fail(info, str(exc), disabled, where)
            return
        try:
            info.asyncio = asks_for_asyncio(plugin)
        except PluginLoadError as exc:  # a HOOKRUNNER_ASYNCIO that is not a bool
            self.fail(info, str(exc), disabled, where)
            return
        pm = new_plugin_manager() if disabled else self.pm
        wrappers = _hook_wrappers(pm, plugin)
        if wrappers:
            for hook in wrappers:
                self.fail(
                    info,
                    f"{hook} is a hook wrapper (wrapper=True or hookwrapper=True), which hookrunner does not "
                    "support: each implementation is called on its own; make it a plain @hookimpl",
                    disabled,
                    where,
                )
            return
        misnamed = _misnamed_arguments(pm, plugin)
        if misnamed:
            for problem in misnamed:
                self.fail(info, problem, disabled, where)
            return
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            self.fail(info, _one_line(str(exc)), disabled, where)
            return
        except ValueError as exc:
            self.fail(info, f"cannot be registered: {_one_line(str(exc))}", disabled, where)
            return
        info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        for problem in _unknown_hooks(pm, plugin):
            self.fail(info, problem, disabled, where)
        if info.error and not disabled:
            pm.unregister(name=name)  # lenient mode: listed with its error, never called
        info.active = not disabled and info.error is None

    def fail(self, info: PluginInfo, problem: str, disabled: bool, where: str) -> None:
        info.error = problem if info.error is None else f"{info.error}; {problem}"
        if not disabled:
            self.problems.append(f"{where}: {problem}")


def load_plugins(config: Config, strict: bool = True) -> LoadedPlugins:
    """Register every entry-point plugin not disabled, then the modules of ``[plugins] load``.

    With ``strict`` (``check`` and ``run``), raise ``PluginLoadError`` (one line per problem) for a plugin that
    cannot be imported, two plugins with one name, a hook wrapper or an implementation of a hook that does not
    exist. Without it (``hookrunner plugins``), each problem is recorded on the plugin's ``PluginInfo.error``
    and the plugin is left inactive.
    """
    loader = _Loader(config, strict)
    _add_entry_points(loader)
    _add_local_plugins(loader, config)
    known = {info.name for info in loader.infos}
    for index, name in enumerate(config.plugins.disable):
        if name not in known:
            log.warning("%s: plugins.disable[%d]: no plugin named %s%s", config.source, index, name, suggest(name, known))
    if strict and loader.problems:
        raise PluginLoadError("\n".join(loader.problems))
    return LoadedPlugins(loader.pm, loader.infos)


def _add_entry_points(loader: _Loader) -> None:
    by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    for name in sorted(by_name):
        eps = _one_per_distribution(by_name[name])
        first = eps[0]
        dist = first.dist
        if len(eps) > 1:
            declared = "; ".join(f"{_dist_label(ep)}: {ep.value}" for ep in eps)

            def load(declared: str = declared, count: int = len(eps)) -> Any:
                raise PluginLoadError(
                    f"{count} distributions declare a hookrunner entry point of this name ({declared}); "
                    "uninstall all but one"
                )

            loader.add(name, f"entry points of {' and '.join(_dist_label(ep, version=False) for ep in eps)}", None, load)
            continue
        source = f"entry point of {dist.name}" if dist else f"entry point {first.value}"
        loader.add(name, source, dist.version if dist else None, lambda ep=first: _load_entry_point(ep))


def _one_per_distribution(eps: list[importlib.metadata.EntryPoint]) -> list[importlib.metadata.EntryPoint]:
    """The same distribution found twice on sys.path declares its entry point twice: count it once."""
    seen: dict[str | None, importlib.metadata.EntryPoint] = {}
    for ep in eps:
        key = ep.dist.name.lower().replace("_", "-") if ep.dist else ep.value
        seen.setdefault(key, ep)
    return list(seen.values())


def _dist_label(ep: importlib.metadata.EntryPoint, version: bool = True) -> str:
    if ep.dist is None:
        return f"entry point {ep.value}"
    return f"{ep.dist.name} {ep.dist.version}" if version else ep.dist.name


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> Any:
    try:
        return ep.load()
    except PLUGIN_FAILURES as exc:  # a plugin's own bug: name it, keep the details for --log-level debug
        log.debug("loading plugin %s failed", ep.name, exc_info=True)
        raise PluginLoadError(f"cannot be loaded: {type(exc).__name__}: {_one_line(str(exc))}") from None


def plugin_object(found: Any) -> Any:
    """What is registered for what an entry point (or a test) names: a class is instantiated with no arguments,
    each time the plugins are loaded, so each run has its own instance; a module or any other object is
    registered as it is. A class that needs arguments, or whose constructor raises, is a ``PluginLoadError``
    (one line, without the plugin's name: the caller says which)."""
    if not inspect.isclass(found):
        return found
    name = found.__qualname__
    needed = _required_arguments(found)
    if needed:
        raise PluginLoadError(
            f"cannot be loaded: {name}() needs {', '.join(needed)}: hookrunner instantiates a plugin class with no "
            "arguments, once per run; give them defaults, or read them from app.settings in on_startup"
        )
    try:
        return found()
    except PLUGIN_FAILURES as exc:  # the plugin's own bug: name it, keep the details for --log-level debug
        log.debug("instantiating plugin class %s failed", name, exc_info=True)
        raise PluginLoadError(
            f"cannot be loaded: {name}() raised {type(exc).__name__}: {_one_line(str(exc))}"
        ) from None


def _required_arguments(cls: type) -> list[str]:
    """The constructor arguments of ``cls`` that have no default."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: calling it says what is wrong
        return []
    return [
        parameter.name
        for parameter in parameters
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def asks_for_asyncio(plugin: Any) -> bool:
    """Whether ``plugin`` declares ``HOOKRUNNER_ASYNCIO = True`` (``declared_by``: on itself, or in the module of
    its class). Anything but a bool is a ``PluginLoadError`` (one line, without the plugin's name: the caller says
    which)."""
    value = declared_by(plugin, ASYNCIO_FLAG)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PluginLoadError(f"{ASYNCIO_FLAG} must be True or False, got {value!r}")
    return value


def declared_by(plugin: Any, attribute: str) -> Any:
    """A declaration a plugin makes beside its hooks (``HOOKRUNNER_API_VERSION``, ``__version__``): the plugin's own
    attribute or, for a class or an instance of one, the attribute of the module the class is defined in, where
    the scaffold and the tutorial put them; None when neither has it."""
    value = getattr(plugin, attribute, None)
    if value is not None or isinstance(plugin, ModuleType):
        return value
    cls = plugin if inspect.isclass(plugin) else type(plugin)
    return getattr(sys.modules.get(cls.__module__), attribute, None)


def _add_local_plugins(loader: _Loader, config: Config) -> None:
    for index, spec in enumerate(config.plugins.load):
        where = f"{config.source}: plugins.load[{index}]"
        name = _local_name(spec)
        taken = any(info.name == name for info in loader.infos) and name not in loader.disabled

        def load(spec: str = spec, taken: bool = taken, name: str = name) -> ModuleType:
            if taken:
                raise PluginLoadError(f"a plugin named {name} is already loaded")
            return _import_local(spec, config.base_dir)

        loader.add(name, spec, None, load, where=f"{where}: plugin {name}")


def _local_name(spec: str) -> str:
    """The name a ``plugins.load`` entry is registered under: the file's stem, or the module's last part."""
    if _is_path(spec):
        return Path(spec).stem
    return spec.rsplit(".", 1)[-1]


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _import_local(spec: str, base_dir: Path) -> ModuleType:
    """Import a ``plugins.load`` entry: a path to a ``.py`` file (relative to the config) or a module name."""
    if _is_path(spec):
        path = (base_dir / spec).resolve()
        if not path.is_file():
            raise PluginLoadError(f"no such file: {path}")
        module_name = f"{LOCAL_NAMESPACE}.{_local_name(spec)}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise PluginLoadError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        _local_namespace()
        sys.modules[module_name] = module  # dataclasses, pickling and typing look the module up by name
        try:
            module_spec.loader.exec_module(module)
        except PLUGIN_FAILURES as exc:
            sys.modules.pop(module_name, None)
            log.debug("importing %s failed", path, exc_info=True)
            raise PluginLoadError(f"importing {path} failed: {type(exc).__name__}: {_one_line(str(exc))}") from None
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise PluginLoadError(f"no module named {spec!r} (a module name on sys.path, or a path to a .py file)") from None
        raise PluginLoadError(f"importing {spec} failed: {type(exc).__name__}: {exc}") from None
    except PLUGIN_FAILURES as exc:
        log.debug("importing %s failed", spec, exc_info=True)
        raise PluginLoadError(f"importing {spec} failed: {type(exc).__name__}: {_one_line(str(exc))}") from None


def _local_namespace() -> ModuleType:
    """The (empty) parent package of local plugin modules, created on first use."""
    namespace = sys.modules.get(LOCAL_NAMESPACE)
    if namespace is None:
        namespace = ModuleType(LOCAL_NAMESPACE, "Local plugins of [plugins] load, imported by hookrunner.")
        namespace.__path__ = []  # a package, so that hookrunner_local.<stem> is a valid module name
        sys.modules[LOCAL_NAMESPACE] = namespace
    return namespace


def _hook_implementations(pm: pluggy.PluginManager, plugin: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(attribute, hook name, options)`` of each hook implementation of ``plugin``, before it is registered."""
    for attr in dir(plugin):
        try:
            opts = pm.parse_hookimpl_opts(plugin, attr)
        except Exception:  # an attribute that raises on access is pluggy's to report at register()
            continue
        if opts:
            yield attr, opts.get("specname") or attr, dict(opts)


def _hook_wrappers(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Hooks that ``plugin`` implements as wrappers: hookrunner calls each implementation on its own, so a wrapper
    (which pluggy runs around the others) would never see what it expects."""
    return sorted(
        hook for _, hook, opts in _hook_implementations(pm, plugin) if opts.get("wrapper") or opts.get("hookwrapper")
    )


def _misnamed_arguments(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """One line per hook implementation asking for an argument its hook does not give, with the nearest one:
    pluggy matches arguments by name, and its own message names neither the right names nor the likely typo."""
    problems = []
    for attr, hook_name, _ in _hook_implementations(pm, plugin):
        hook = getattr(pm.hook, hook_name, None)
        if hook is None or hook.spec is None:
            continue  # not a hookrunner hook: _unknown_hooks says so
        given = list(hook.spec.argnames)
        try:
            asked = [
                name
                for name, parameter in inspect.signature(getattr(plugin, attr)).parameters.items()
                if parameter.default is inspect.Parameter.empty
                and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.POSITIONAL_ONLY)
            ]
        except (TypeError, ValueError):
            continue
        for name in asked:
            if name not in given:
                problems.append(
                    f"{hook.name}: no argument named {name}{suggest(name, given)}; the hook gives {', '.join(given)}"
                )
    return problems


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """``pm.check_pending()`` for one plugin: one line per misnamed implementation, with the nearest hook."""
    known = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "hookrunner_spec")]
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is not None:
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not impl.optionalhook:
                problems.append(f"implements {caller.name}, which is not a hookrunner hook{suggest(caller.name, known)}")
    return problems


def _one_line(text: str) -> str:
    """An error text from a library or a plugin, which may span lines, as one line."""
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def validate_plugin_settings(config: Config, loaded: LoadedPlugins) -> None:
    """Check every ``[plugins.NAME]`` table: NAME must be a plugin found, and its ``validate_settings`` agree.

    A plugin's ``validate_settings`` is called inside an error boundary: raising, being ``async``, or returning
    anything but a list of strings is one line naming the plugin, never a traceback. An active plugin that has a
    table but no ``validate_settings`` gets a warning: nobody checks that table.
    """
    problems: list[str] = []
    known = {info.name for info in loaded.infos}
    for name in config.plugins.settings:
        if name not in known:
            problems.append(f"{config.source}: plugins.{name}: no plugin named {name} is installed{suggest(name, known)}")
    validators = {impl.plugin_name: impl for impl in loaded.pm.hook.validate_settings.get_hookimpls()}
    schemas = plugin_schemas(loaded)
    for info in loaded.infos:
        declared = info.name in validators or info.name in schemas
        if info.active and info.name in config.plugins.settings and not declared:
            log.warning(
                "%s: plugins.%s: plugin %s does not declare its settings (no settings_schema or validate_settings), "
                "so this table is not checked",
                config.source,
                info.name,
                info.name,
            )
    schema_failed = set()
    for name, schema in schemas.items():
        if isinstance(schema, str):  # the hook itself failed
            problems.append(f"plugin {name}: {schema}")
            schema_failed.add(name)
            continue
        found = check_table(config.plugins.settings.get(name, {}), schema, f"plugins.{name}")[1]
        problems += [f"{config.source}: {problem}" for problem in found]
        if found:
            schema_failed.add(name)
    for name, impl in validators.items():
        if name not in schema_failed:  # its own checks assume the schema's; no second line for one mistake
            table = config.plugins.settings.get(name, {})
            declared_schema = schemas.get(name)
            if isinstance(declared_schema, dict):  # as app.settings will be: settings["key"] works for a defaulted key
                table = check_table(table, declared_schema, open_keys=True)[0]
            problems += _call_validate_settings(name, impl, table, config.source)
    if problems:
        raise ConfigError("\n".join(problems))


def settings_with_defaults(config: Config, loaded: LoadedPlugins) -> dict[str, dict[str, Any]]:
    """Every plugin's ``[plugins.NAME]`` table with its schema's top-level defaults filled in: what ``app.settings``
    holds, so a plugin reads ``app.settings["key"]`` without repeating its defaults. Assumes the tables passed
    ``validate_plugin_settings``."""
    tables = {name: dict(table) for name, table in config.plugins.settings.items()}
    for name, schema in plugin_schemas(loaded).items():
        if isinstance(schema, dict):
            tables[name] = check_table(tables.get(name, {}), schema, open_keys=True)[0]
    return tables


def plugin_schemas(loaded: LoadedPlugins) -> dict[str, dict[str, Setting] | str]:
    """Each plugin's ``settings_schema()``, or the one-line reason it could not be had."""
    schemas: dict[str, dict[str, Setting] | str] = {}
    for impl in loaded.pm.hook.settings_schema.get_hookimpls():
        try:
            schema = impl.function()
        except PLUGIN_FAILURES as exc:
            schemas[impl.plugin_name] = f"settings_schema raised {type(exc).__name__}: {_one_line(str(exc))}"
            continue
        if not isinstance(schema, dict) or not all(isinstance(value, Setting) for value in schema.values()):
            schemas[impl.plugin_name] = "settings_schema must return a dict of hookrunner.Setting"
            continue
        schemas[impl.plugin_name] = schema
    return schemas


def _call_validate_settings(name: str, impl: pluggy.HookImpl, table: dict[str, Any], source: str) -> list[str]:
    """The problems one plugin's ``validate_settings`` finds (``FILE: plugins.NAME.key: ...``), or one
    ``plugin NAME: ...`` line for a bug of its own."""
    try:
        result = impl.function(*[{"settings": table}[arg] for arg in impl.argnames])
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited, on purpose: no "coroutine was never awaited" warning
            return [
                f"plugin {name}: validate_settings must be a plain function, not async "
                "(it runs before the event loop starts)"
            ]
        if result is None:
            return []
        if not isinstance(result, (list, tuple)):
            return [f"plugin {name}: validate_settings must return a list of problems (strings), got {_shown(result)}"]
        found = list(result)
    except PLUGIN_FAILURES as exc:
        log.debug("plugin %s: validate_settings raised", name, exc_info=True)
        return [f"plugin {name}: validate_settings raised {type(exc).__name__}: {_one_line(str(exc))}"]
    for item in found:
        if not isinstance(item, str):
            return [f"plugin {name}: validate_settings must return a list of strings, got a list holding {_shown(item)}"]
    return [f"{source}: plugins.{name}.{_one_line(item)}" for item in found]


def _shown(value: Any) -> str:
    if isinstance(value, (str, bool, int, float, list, dict)):
        return describe(value)
    return f"a {type(value).__name__}"
