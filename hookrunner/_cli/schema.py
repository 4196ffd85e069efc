"""``hookrunner plugins --settings NAME``: a plugin's settings schema printed as the TOML table a user would write."""

from __future__ import annotations

import tomli_w

from hookrunner._core.errors import ConfigError, PluginLoadError
from hookrunner._core.settings import suggest
from hookrunner._run.plugins import LoadedPlugins, plugin_schemas

__all__ = ["print_settings"]


def print_settings(loaded: LoadedPlugins, name: str) -> int:
    """``plugins --settings NAME``: the plugin's settings schema as a commented TOML table of defaults."""
    known = [info.name for info in loaded.infos]
    if name not in known:
        raise ConfigError(f"plugins --settings: no plugin named {name}{suggest(name, known)}")
    schema = plugin_schemas(loaded).get(name)
    if schema is None:
        print(f"plugin {name} declares no settings schema (no settings_schema hook)")
        return 0
    if isinstance(schema, str):
        raise PluginLoadError(f"plugin {name}: {schema}")
    _print_table(f"plugins.{name}", schema)
    return 0


def _print_table(path: str, schema: dict, array: bool = False) -> None:
    print(f"[[{path}]]" if array else f"[{path}]")
    nested = []
    for key, setting in schema.items():
        if setting.items is not None:
            nested.append((key, setting))
            continue
        default = "(required)" if setting.required else "(not set)" if setting.default is None else None
        value = f"# {key} = ...  {default}" if default else f"{key} = {_inline_toml(setting.default)}"
        note = setting.doc or setting.expected or ""
        print(f"{value:<50} # {note}" if note else value)
    for key, setting in nested:
        print()
        if setting.doc:
            print(f"# {setting.doc}")
        _print_table(f"{path}.{key}", dict(setting.items), array=True)


def _inline_toml(value: object) -> str:
    """A default as it would be written on one line of a config file."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_inline_toml(item)}" for key, item in value.items()) + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline_toml(item) for item in value) + "]"
    return tomli_w.dumps({"v": value}).strip()[len("v = ") :]
