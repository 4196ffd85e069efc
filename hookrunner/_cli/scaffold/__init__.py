"""``hookrunner new-plugin NAME [DIR]``: a ready plugin package whose tests pass as generated.

The files are templates beside this module (``*.tmpl``), filled with ``string.Template`` so that the braces of
Python and TOML in them need no escaping.
"""

from __future__ import annotations

import importlib.metadata
import re
import string
from pathlib import Path

from hookrunner._core.api import HOOKRUNNER_API_VERSION, __version__
from hookrunner._core.errors import ConfigError
from hookrunner._run.plugins import ENTRY_POINT_GROUP

TEMPLATES = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "{module}/__init__.py": "plugin.py.tmpl",
    "tests/test_plugin.py": "test_plugin.py.tmpl",
}


def names(name: str) -> dict[str, str]:
    """``hookrunner-sentiment`` -> distribution ``hookrunner-sentiment``, module ``hookrunner_sentiment``,
    plugin (entry point) ``sentiment``, class ``SentimentPlugin`` (the entry point names it: one instance per run)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise ConfigError(f"new-plugin: {name!r} is not a usable name (letters, digits, - and _, starting with a letter)")
    distribution = name.lower().replace("_", "-")
    if not distribution.startswith("hookrunner-"):
        distribution = f"hookrunner-{distribution}"
    plugin = distribution[len("hookrunner-") :].replace("-", "_")
    return {
        "distribution": distribution,
        "module": distribution.replace("-", "_"),
        "plugin": plugin,
        "class_name": "".join(part[:1].upper() + part[1:] for part in plugin.split("_")) + "Plugin",
        "api_version": str(HOOKRUNNER_API_VERSION),
        "hookrunner_version": __version__,
    }


def _installed_plugin(plugin: str) -> str | None:
    """Where an installed plugin of this name comes from (``the hookrunner distribution``), or None."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == plugin:
            return f"the {ep.dist.name} distribution" if ep.dist else ep.value
    return None


def write_plugin(name: str, directory: Path) -> Path:
    """Write the package into ``directory/<distribution>``; refuses to overwrite anything."""
    values = names(name)
    taken = _installed_plugin(values["plugin"])
    if taken is not None:  # two entry points of one name: neither plugin would load, and the user learns it late
        raise ConfigError(
            f"new-plugin: {name}: a plugin named {values['plugin']} is installed already ({taken}); choose another name"
        )
    root = directory / values["distribution"]
    if root.exists():
        raise ConfigError(f"new-plugin: {root} already exists; not overwriting it")
    here = Path(__file__).parent
    for target, template in TEMPLATES.items():
        path = root / target.format(**values)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = string.Template((here / template).read_text(encoding="utf-8")).substitute(values)
        path.write_text(text, encoding="utf-8")
    return root
