"""Config validation holds for any input: whatever a config file holds, reading it gives a Config or a
ConfigError whose every line names the file first; never another exception (a traceback for the user)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings

from hookrunner._core.config import ATOMS_SCHEMA, DEFAULT_API_KEY_ENV, DISCOVERY_SCHEMA, PLUGINS_SCHEMA, RECONNECT_SCHEMA, RUNNER_SCHEMA, SERVER_SCHEMA, TOP_SCHEMA, Config, config_from_dict, default_config_table, load_config
from hookrunner._core.errors import ConfigError

from helpers import REPO

SOURCE = "prop.toml"
KNOWN_KEYS = sorted(
    {*TOP_SCHEMA, *ATOMS_SCHEMA, *RECONNECT_SCHEMA, *RUNNER_SCHEMA, *DISCOVERY_SCHEMA, *SERVER_SCHEMA, *PLUGINS_SCHEMA}
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

huge_integers = st.one_of(
    st.integers(min_value=2**1000, max_value=10**1200),
    st.integers(min_value=-(10**1200), max_value=-(2**1000)),
    st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 2**1024]),
)
scalars = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\n", "http://[::1", "http://127.0.0.1:99999/x", "ftp://x", "a" * 200, "CALL-1"]),
    st.integers(),
    huge_integers,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12))
#: Any value TOML can hold (no dates: config values never are).
toml_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=16
)


def assert_config_or_config_error(data: Any, source: str = SOURCE) -> None:
    try:
        result = config_from_dict(data, source=source)
    except ConfigError as error:
        lines = str(error).splitlines()
        assert lines, "an empty ConfigError"
        assert all(line.startswith(f"{source}: ") for line in lines), lines
    else:
        assert isinstance(result, Config)


@FAST
@given(st.dictionaries(keys, toml_values, max_size=6))
def test_any_table_gives_a_config_or_a_config_error_naming_the_file_on_every_line(data: dict[str, Any]) -> None:
    assert_config_or_config_error(data)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(sorted(TOP_SCHEMA)),
        st.dictionaries(keys, toml_values, max_size=6) | toml_values,
        max_size=5,
    )
)
def test_any_shape_under_the_known_tables_gives_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    assert_config_or_config_error(data)


def valid_config() -> dict[str, Any]:
    table = default_config_table()
    table["atoms"]["api_key_env"] = DEFAULT_API_KEY_ENV
    table["runner"]["calls"] = ["CALL-1", "CALL-2"]
    table["discovery"]["webhook_secret_env"] = "HOOK_SECRET"
    table["server"]["token_env"] = "TOKEN"
    table["plugins"]["console"] = {"interims": "never"}
    return table


def key_paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in table.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += key_paths(value, (*prefix, key))
    return paths


VALID = valid_config()
PATHS = key_paths(VALID)


def test_the_valid_config_the_mutations_start_from_is_valid() -> None:
    assert isinstance(config_from_dict(valid_config(), source=SOURCE), Config)


@FAST
@given(st.lists(st.tuples(st.sampled_from(PATHS), toml_values), min_size=1, max_size=3))
@example([(("runner", "hook_timeout"), 10**400)])
@example([(("atoms",), "x")])
@example([(("runner", "reconnect"), 3)])
@example([(("runner", "calls"), ["a" * 70000])])
def test_replacing_any_keys_value_of_a_valid_config_gives_a_config_or_a_config_error(
    replacements: list[tuple[tuple[str, ...], Any]],
) -> None:
    data = copy.deepcopy(VALID)
    for path, value in replacements:
        here = data
        for key in path[:-1]:
            if not isinstance(here.get(key), dict):
                break  # an earlier replacement turned a parent into something else
            here = here[key]
        else:
            here[path[-1]] = value
    assert_config_or_config_error(data)


@FAST
@given(st.sampled_from(PATHS), keys, toml_values)
def test_adding_any_key_anywhere_gives_a_config_or_a_config_error(path: tuple[str, ...], key: str, value: Any) -> None:
    data = copy.deepcopy(VALID)
    here = data
    for part in path:
        if isinstance(here.get(part), dict):
            here = here[part]
    here[key] = value
    assert_config_or_config_error(data)


def assert_loads_or_config_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.toml"
        path.write_bytes(raw)
        try:
            load_config(path)
        except ConfigError as error:
            lines = str(error).splitlines()
            assert lines and all(line.startswith(f"{path}: ") for line in lines), lines


EXAMPLE = (REPO / "config.example.toml").read_bytes()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
@example(b"\xff\xfe[\x00a\x00]\x00")
@example(b"[runner]\nhook_timeout = 1" + b"0" * 5000)
@example(b"a = " + b"[" * 5000)
@example(b"a = " + b"{b = " * 3000)
def test_any_bytes_as_a_config_file_give_only_config_errors(raw: bytes) -> None:
    assert_loads_or_config_error(raw)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(EXAMPLE)), st.integers(0, 40), st.binary(max_size=12))
def test_the_example_config_with_any_bytes_spliced_in_gives_a_config_or_config_errors(
    at: int, cut: int, inserted: bytes
) -> None:
    assert_loads_or_config_error(EXAMPLE[:at] + inserted + EXAMPLE[at + cut :])


@pytest.mark.parametrize("value", ["x", 3, [], 1.5, True])
def test_a_config_that_is_not_a_table_is_a_config_error(value: Any) -> None:
    assert_config_or_config_error(value)
