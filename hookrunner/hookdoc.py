"""The hook reference (``docs/hooks.md``), generated from ``hookspecs.py`` so that it cannot drift from the code.

Regenerate with ``python -m hookrunner.hookdoc > docs/hooks.md``; a test fails when the committed page differs.
"""

from __future__ import annotations

import inspect

from . import hookspecs
from .api import HOOKRUNNER_API_VERSION

#: Hooks called before the event loop runs: they must be plain functions and their return value is used.
PLAIN_ONLY = {"settings_schema", "validate_settings", "outbox_deliverers"}
RETURNS = {
    "settings_schema": "a dict of `hookrunner.Setting` by key",
    "validate_settings": "a list of problems (`key.path: ...` strings), or None",
    "outbox_deliverers": "a dict of deliverers by endpoint name",
}


def _hooks() -> list[tuple[str, object]]:
    return [(name, value) for name, value in vars(hookspecs).items() if hasattr(value, f"{hookspecs.PROJECT_NAME}_spec")]


def _example(name: str, parameters: list[str]) -> str:
    asynchronous = name not in PLAIN_ONLY
    head = f"{'async ' if asynchronous else ''}def {name}({', '.join(parameters)}):"
    body = {
        "settings_schema": '    return {"threshold": Setting("number", 3.0, doc="how many before alerting")}',
        "validate_settings": '    return [] if settings.get("threshold", 3) < 10 else ["threshold: expected less than 10"]',
        "outbox_deliverers": "    return {endpoint.name: make_deliverer(endpoint, app.http) for endpoint in endpoints(app)}",
        "on_startup": "    app.start_soon(flush_every_minute, app)",
        "on_trigger": "    print(trigger.full_type, trigger.rule, trigger.call_id)",
        "on_call_finished": "    print(call.id, reason, len(call.turns))",
    }.get(name)
    if body is None and "event" in parameters:
        body = "    print(call.id, event.event_type, getattr(event, 'text', ''))"
    return f"```python\n@hookimpl\n{head}\n{body or '    ...'}\n```"


def render() -> str:
    """The whole page, as Markdown."""
    lines = [
        "# Hook reference",
        "",
        "<!-- Generated from hookrunner/hookspecs.py by `python -m hookrunner.hookdoc`; do not edit by hand. -->",
        "",
        f"Plugin API version: {HOOKRUNNER_API_VERSION} (`hookrunner.HOOKRUNNER_API_VERSION`).",
        "",
        inspect.cleandoc(hookspecs.__doc__ or ""),
        "",
    ]
    for name, function in _hooks():
        parameters = list(inspect.signature(function).parameters)  # type: ignore[arg-type]
        lines += [
            f"## `{name}({', '.join(parameters)})`",
            "",
            inspect.cleandoc(function.__doc__ or ""),  # type: ignore[union-attr]
            "",
            f"- May be `async def`: {'no, a plain function' if name in PLAIN_ONLY else 'yes'}",
            f"- Return value: {RETURNS.get(name, 'ignored')}",
            "",
            _example(name, parameters),
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
