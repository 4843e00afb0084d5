"""Property tests: composing any YAML mapping with any overrides either works or raises
ConfigError (a ValueError the CLI prints as one line), never another exception."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envactor.config import ConfigError, compose, dump_yaml, load_policy_config, parse_override

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Words a config uses, and strings that look like paths, references or YAML syntax.
WORDS = [
    "policy",
    "params",
    "type",
    "model",
    "components",
    "component_config_paths",
    "defaults",
    "checkpoint",
    "horizon",
    "net",
    "a",
    "b",
    "0",
    "a.b",
    "a[0]",
    "x y",
    "<<",
    "${a}",
    "${a.b}",
    "$${a}",
    "${env:HOME}",
    "${env:ENVACTOR_UNSET_VAR_XYZ}",
    "${",
    "}",
    "[",
    "base.yaml",
    "../base.yaml",
    "a\x00.yaml",
    "x" * 300 + ".yaml",
    "~nobody-here/a.yaml",
    "missing.yaml",
    "",
]
CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
KEYS = st.one_of(st.sampled_from(WORDS), st.text(CHARS, max_size=8))
STRINGS = st.one_of(
    st.sampled_from(WORDS),
    st.text(CHARS, max_size=12),
    st.builds(lambda a, b: f"${{{a}}}{b}", st.sampled_from(WORDS), st.sampled_from(WORDS)),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    STRINGS,
)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.integers(0, 3), st.booleans()), inner, max_size=4),
    ),
    max_leaves=20,
)
MAPPINGS = st.dictionaries(KEYS, TREES, max_size=6)


def _policy(params: dict[Any, Any], component: dict[Any, Any], extra: dict[Any, Any]) -> dict:
    """A valid policy skeleton with random params, a random inline component and extra keys."""
    return {
        **extra,
        "model": {"components": {"net": {"type": "mlp", **component}}},
        "policy": {"type": "pid", "params": params},
    }


POLICIES = st.builds(_policy, MAPPINGS, MAPPINGS, st.dictionaries(KEYS, TREES, max_size=2))

# YAML-ish text from tokens: syntax errors, anchors, aliases and merge keys.
TOKENS = [
    "a: ",
    "b: ",
    "policy: ",
    "defaults: ",
    "&x ",
    "*x",
    "&y ",
    "*y",
    "<<: ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    "- ",
    "\n",
    "\n  ",
    "1",
    "true",
    ".inf",
    "${a}",
    '"${a}"',
    "!!str ",
    "!!python/name:os.system ",
    "'",
    '"',
    "#",
    "---\n",
]
RAW_TEXT = st.lists(st.sampled_from(TOKENS), max_size=25).map("".join)

KNOWN = ["policy.params", "policy.params.kp", "policy.type", "model.components.net", "a", "policy"]
OVERRIDE_KEYS = st.lists(
    st.one_of(KEYS, st.sampled_from(KNOWN), st.integers(0, 3).map(lambda i: f"[{i}]")), max_size=4
)
OVERRIDE_VALUES = st.one_of(
    RAW_TEXT,
    st.text(CHARS, max_size=10),
    TREES.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=1 << 20).strip()),
)


def _override(parts: list[str], value: str, sep: str) -> str:
    key = ""
    for part in parts:
        key += part if part.startswith("[") or not key else f".{part}"
    return f"{key}{sep}{value}"


OVERRIDES = st.lists(
    st.builds(_override, OVERRIDE_KEYS, OVERRIDE_VALUES, st.sampled_from(["=", "=", "", " = "])),
    max_size=3,
)


def _dump(data: dict[Any, Any]) -> str:
    return dump_yaml(data)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("props")
    (root / "base.yaml").write_text("policy: {type: pid, params: {kp: 1.0}}\na: 1\n")
    return root


def _only_config_errors(path: Path, overrides: list[str]) -> None:
    """Both entry points either work or raise ConfigError; nothing else may escape."""
    try:
        cfg = compose(path, overrides)
    except ConfigError as e:
        assert str(e) and isinstance(e, ValueError)
    else:
        assert isinstance(cfg.data, dict)
    try:
        load_policy_config(path, overrides)
    except ConfigError as e:
        assert str(e)


@SETTINGS
@given(data=MAPPINGS, overrides=OVERRIDES)
def test_random_mappings_with_random_overrides(
    workdir: Path, data: dict[Any, Any], overrides: list[str]
) -> None:
    path = workdir / "policy.yaml"
    path.write_text(_dump(data), encoding="utf-8")
    _only_config_errors(path, overrides)


@SETTINGS
@given(data=POLICIES, overrides=OVERRIDES)
def test_random_policies_with_random_overrides(
    workdir: Path, data: dict[Any, Any], overrides: list[str]
) -> None:
    path = workdir / "policy.yaml"
    path.write_text(_dump(data), encoding="utf-8")
    _only_config_errors(path, overrides)


@SETTINGS
@given(text=RAW_TEXT, overrides=OVERRIDES)
def test_random_yaml_text_with_random_overrides(
    workdir: Path, text: str, overrides: list[str]
) -> None:
    path = workdir / "raw.yaml"
    path.write_text(text, encoding="utf-8")
    _only_config_errors(path, overrides)


PLAIN_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="$"),
    max_size=10,
)
PLAIN_TREES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        PLAIN_TEXT,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(PLAIN_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(data=st.dictionaries(PLAIN_TEXT.filter(lambda k: k != "defaults"), PLAIN_TREES))
def test_a_composed_mapping_keeps_its_plain_values(workdir: Path, data: dict[str, Any]) -> None:
    """Without ``defaults`` and ``${``, composing what ``dump_yaml`` wrote gives it back."""
    text = _dump(data)
    path = workdir / "plain.yaml"
    path.write_text(text, encoding="utf-8")
    assert _nan_free(compose(path).data) == _nan_free(data)


def _nan_free(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, dict):
        return {k: _nan_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_free(v) for v in value]
    return value


@SETTINGS
@given(text=st.text(CHARS, max_size=40))
def test_any_override_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        ov = parse_override(text)
    except ConfigError:
        return
    assert ov.text == text and ov.path
