"""docs/hooks.md is generated from the hookspecs: it documents every hook and never drifts from the code."""

from __future__ import annotations

from hookrunner._run import hookdoc, hookspecs

from helpers import REPO


def test_the_committed_hook_reference_is_what_the_hookspecs_generate() -> None:
    committed = (REPO / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert committed == hookdoc.render(), "regenerate with: python -m hookrunner._run.hookdoc > docs/hooks.md"


def test_every_hook_has_a_section_with_its_docstring_and_an_example() -> None:
    page = hookdoc.render()
    hooks = [name for name, value in vars(hookspecs).items() if hasattr(value, "hookrunner_spec")]
    assert len(hooks) >= 18
    for name in hooks:
        section = page.split(f"## `{name}(", 1)[1].split("\n## ", 1)[0]
        assert inspect_first_line(getattr(hookspecs, name)) in section
        example = section.split("```python\n", 1)[1].split("\n```", 1)[0]
        assert f"@hookimpl\ndef {name}(" in example or f"@hookimpl\nasync def {name}(" in example, name
        compile(example, f"<example of {name}>", "exec")  # the examples are real Python, not pseudo-code
        assert "- May be `async def`:" in section


def inspect_first_line(function) -> str:
    return function.__doc__.strip().splitlines()[0]
