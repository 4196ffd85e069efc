"""What hookrunner promises a plugin author, pinned (trio's test_exports is the model): the names of ``hookrunner``,
``hookrunner.delivery`` and ``hookrunner.testing``, and that the bundled plugins, which a third party reads as
examples, import nothing else of hookrunner. A change to a list below is a change to the plugin API: say so in the
changelog, and bump ``HOOKRUNNER_API_VERSION`` when a plugin could notice."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import hookrunner
import hookrunner.delivery
import hookrunner.testing

PUBLIC = {
    "hookrunner": {
        "__version__", "HOOKRUNNER_API_VERSION", "hookimpl", "redact_in_logs",
        "App", "CallContext", "Turn",
        "Event", "SseInit", "SseClose", "UserInterimTranscription", "UserTranscription", "TtsCompleted",
        "CallStart", "CallEnd", "TurnLatency", "Metrics", "UnknownEvent", "EVENT_CLASSES", "FinishReason",
        "PlatformDelivery", "Trigger", "SEVERITIES", "type_selected",
        "Setting", "check_table", "at_least", "between", "one_of", "url_problem", "http_url", "secret_problem",
        "key_text", "HookrunnerError", "ConfigError", "PluginLoadError",
    },
    "hookrunner.delivery": {
        "Outbox", "OutboxMessage", "Outcome", "Deliverer", "RetryPolicy", "Pacing", "retry_settings", "retry_problems",
        "parse_retry_after", "DEFAULT_MAX_RETRY_AFTER", "request", "truncated", "json_bytes", "one_line",
    },
    "hookrunner.testing": {
        "HookFailure", "TEST_API_KEY", "make_event", "make_trigger", "make_delivery", "sim_call", "sim_script", "simulator",
        "config_table", "make_runner", "start_plugins", "run_plugins", "RunResult", "PluginRun",
        "Receiver", "ReceivedRequest", "Reply", "running_receiver", "refusing_port",
    },
}  # fmt: skip
PUBLIC_MODULES = set(PUBLIC) | {"hookrunner.testing.receiver"}
PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins" / "hookrunner_plugins"


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_the_public_names_are_exactly_the_promised_ones(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == PUBLIC[module_name]
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names what it does not define"


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_every_public_name_is_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    undocumented = [
        name
        for name in module.__all__
        if (inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name)))
        and not inspect.getdoc(getattr(module, name))
    ]
    assert undocumented == []


def test_every_other_module_is_plainly_internal() -> None:
    """Beside the public modules, every module and sub-package of hookrunner has a leading underscore."""
    root = Path(hookrunner.__file__).parent
    public = {name.split(".", 1)[1] for name in PUBLIC_MODULES if "." in name}
    exposed = []
    for path in root.iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if (path.suffix == ".py" or (path / "__init__.py").is_file()) and not name.startswith("_"):
            if name not in {part.split(".")[0] for part in public}:
                exposed.append(name)
    assert exposed == []


def _hookrunner_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every import of a hookrunner module in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hookrunner"):
            found += [(node.lineno, node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names if alias.name.startswith("hookrunner.")]
    return found


def test_the_bundled_plugins_import_only_public_names() -> None:
    sources = sorted(PLUGINS_DIR.rglob("*.py"))
    assert len(sources) > 5  # (the plugins are where this test thinks they are)
    private = []
    for path in sources:
        for line, module, name in _hookrunner_imports(path):
            if module.startswith("hookrunner_plugins"):
                continue
            if module not in PUBLIC_MODULES or (name and module in PUBLIC and name not in PUBLIC[module]):
                private.append(f"{path.relative_to(PLUGINS_DIR)}:{line}: {module} {name}".rstrip())
    assert private == []


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    """The test above would pass on an empty list: it must also catch what it is there to catch."""
    source = tmp_path / "plugin.py"
    source.write_text("from hookrunner import App\nfrom hookrunner._delivery.outbox import Outbox\nimport hookrunner._run\n")
    imports = _hookrunner_imports(source)
    assert [(module, name) for _, module, name in imports if module not in PUBLIC_MODULES] == [
        ("hookrunner._delivery.outbox", "Outbox"),
        ("hookrunner._run", ""),
    ]
