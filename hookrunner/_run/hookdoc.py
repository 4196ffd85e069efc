"""The hook reference (``docs/hooks.md``), generated from ``hookspecs.py`` so that it cannot drift from the code.

Regenerate with ``python -m hookrunner._run.hookdoc > docs/hooks.md``; a test fails when the committed page differs.
"""

from __future__ import annotations

import inspect
import textwrap

from hookrunner._run import hookspecs
from hookrunner._core.api import HOOKRUNNER_API_VERSION

#: Hooks called before the event loop runs: they must be plain functions and their return value is used.
PLAIN_ONLY = {"settings_schema", "validate_settings", "describe_settings", "routes_for_trigger", "outbox_deliverers"}
RETURNS = {
    "settings_schema": "a dict of `hookrunner.Setting` by key",
    "validate_settings": "a list of problems (`key.path: ...` strings), or None",
    "describe_settings": "a list of lines for `hookrunner check` to print under the plugin, or None",
    "routes_for_trigger": "a list of the routes that would take the trigger (`[]`: none), or None",
    "outbox_deliverers": "a dict of deliverers by endpoint name",
}


def _hooks() -> list[tuple[str, object]]:
    return [(name, value) for name, value in vars(hookspecs).items() if hasattr(value, f"{hookspecs.PROJECT_NAME}_spec")]


def _split_example(doc: str) -> tuple[str, str]:
    """A hookspec docstring is its prose, then ``Example::`` and an indented example: the page shows the example as
    a code block, so the docstring is the one place both are written."""
    prose, marker, example = inspect.cleandoc(doc).partition("\nExample::\n")
    if not marker:
        raise ValueError("every hookspec docstring ends with an 'Example::' section")
    return prose.rstrip(), textwrap.dedent(example).strip("\n")


def render() -> str:
    """The whole page, as Markdown."""
    lines = [
        "# Hook reference",
        "",
        "<!-- Generated from hookrunner/_run/hookspecs.py by `python -m hookrunner._run.hookdoc`; do not edit by hand. -->",
        "",
        f"Plugin API version: {HOOKRUNNER_API_VERSION} (`hookrunner.HOOKRUNNER_API_VERSION`).",
        "",
        inspect.cleandoc(hookspecs.__doc__ or ""),
        "",
    ]
    for name, function in _hooks():
        parameters = list(inspect.signature(function).parameters)  # type: ignore[arg-type]
        prose, example = _split_example(function.__doc__ or "")  # type: ignore[union-attr]
        lines += [
            f"## `{name}({', '.join(parameters)})`",
            "",
            prose,
            "",
            f"- May be `async def`: {'no, a plain function' if name in PLAIN_ONLY else 'yes'}",
            f"- Return value: {RETURNS.get(name, 'ignored')}",
            "",
            f"```python\n{example}\n```",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
