"""Hostile configs: alias bombs and exploding interpolation are refused quickly, a config cannot
make envactor read and quote other files, and booleans / infinities are not numbers."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from envactor.config import (
    ConfigError,
    compose,
    load_policy_config,
    load_yaml,
    parse_override,
    validate,
)
from envactor.config.limits import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_NODES,
    MAX_REF_CHAIN,
    MAX_RESOLVED,
    MAX_STRING_CHARS,
)
from envactor.nn import ComponentError, build_component
from envactor.policy.policies.flow import FlowParams
from envactor.policy.policies.mlp_chunk import MLPChunkParams

SECRET = "hunter2-SECRET-token-0xDEADBEEF"
CAP_S = 5.0  # generous: each of these is refused in milliseconds


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@contextmanager
def refused_within(seconds: float = CAP_S) -> Iterator[list[ConfigError]]:
    """Expect a ConfigError, raised within ``seconds`` of wall-clock time."""
    caught: list[ConfigError] = []
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        yield caught
    elapsed = time.perf_counter() - start
    caught.append(info.value)
    assert elapsed < seconds, f"refused after {elapsed:.1f} s"


def alias_bomb(levels: int, width: int = 9) -> str:
    """A billion-laughs YAML: each level lists ``width`` aliases of the one below, so the last
    expands to width**levels strings. Built as text: nothing is ever expanded here."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"policy: {{type: pid, params: {{kp: *a{levels - 1}}}}}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ item 7: size


@pytest.mark.timeout(60)
@pytest.mark.parametrize("levels", [7, 9, 30])
def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path, levels: int) -> None:
    p = write(tmp_path, "policy.yaml", alias_bomb(levels))
    assert p.stat().st_size < 2000
    with refused_within() as caught:
        load_policy_config(p)
    err = caught[0]
    # the first level past the limit: 9**5 + ... = 66,430 values
    assert (err.file, err.key, err.line) == (str(p), "a4", 5)
    assert "66,430 values once YAML aliases (*name) are expanded" in str(err)
    assert f"at most {MAX_NODES:,}" in str(err)


@pytest.mark.timeout(60)
def test_alias_bomb_in_an_override_value_and_a_component_file(tmp_path: Path) -> None:
    levels = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    with refused_within() as caught:
        parse_override("policy.params.kp=[" + ", ".join(levels) + "]")
    assert caught[0].file == "<override>" and caught[0].key == "policy.params.kp"
    assert "once YAML aliases (*name) are expanded" in str(caught[0])

    comp = write(tmp_path, "comps/net.yaml", "type: mlp\n" + alias_bomb(8).replace("policy", "p"))
    p = write(tmp_path, "policy.yaml", "model: {component_config_paths: {net: comps/net.yaml}}\n")
    p.write_text(p.read_text() + "policy: {type: pid}\n")
    with refused_within() as caught:
        load_policy_config(p)
    assert caught[0].file == str(comp) and "alias bomb" in str(caught[0])


def test_small_aliases_are_still_fine(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "policy.yaml",
        """
        dims: &dims [64, 64]
        policy:
          type: pid
          params: {a: *dims, b: *dims, c: {<<: {x: 1}, y: *dims}}
        """,
    )
    cfg = compose(p)
    assert cfg.data["policy"]["params"] == {
        "a": [64, 64],
        "b": [64, 64],
        "c": {"x": 1, "y": [64, 64]},
    }


@pytest.mark.timeout(60)
def test_files_read_for_one_config_are_bounded(tmp_path: Path) -> None:
    # a diamond of defaults: each level includes the next one twice -> 2**12 reads
    for i in range(12):
        write(tmp_path, f"d{i}.yaml", f"defaults: [d{i + 1}.yaml, d{i + 1}.yaml]\nk{i}: {i}\n")
    write(tmp_path, "d12.yaml", "leaf: 1\n")
    with refused_within() as caught:
        compose(tmp_path / "d0.yaml")
    assert f"more than {MAX_FILES} files" in str(caught[0])


def test_large_file_is_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "policy.yaml"
    p.write_text("policy: {type: pid}\n# " + "x" * MAX_FILE_BYTES + "\n")
    with refused_within() as caught:
        load_yaml(p)
    assert caught[0].file == str(p)
    assert f"{p.stat().st_size:,} bytes" in str(caught[0])
    assert f"at most {MAX_FILE_BYTES:,} bytes" in str(caught[0])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 100_000 + "]" * 100_000 + "\n",  # flow style
        "a: " + "{b: " * 40_000 + "1" + "}" * 40_000 + "\n",
        "".join(" " * i + f"k{i}:\n" for i in range(300)) + " " * 300 + "v: 1\n",  # block style
        "a:\n  " + "- " * 100_000 + "x\n",
    ],
    ids=["flow-lists", "flow-maps", "block-maps", "block-lists"],
)
def test_deep_nesting_is_refused_quickly(tmp_path: Path, text: str) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text(text)
    with refused_within() as caught:
        load_yaml(p)
    assert f"nest more than {MAX_DEPTH} levels" in str(caught[0]) and caught[0].file == str(p)


def test_deep_nesting_through_an_alias_is_refused(tmp_path: Path) -> None:
    deep = "[" * 40 + "]" * 40
    p = write(tmp_path, "x.yaml", f"a: &a {deep}\nb: {'[' * 40}*a{']' * 40}\n")
    with refused_within() as caught:
        load_yaml(p)
    assert "nest 80 levels deep once YAML aliases" in str(caught[0])


def test_nesting_at_the_limit_loads(tmp_path: Path) -> None:
    p = write(tmp_path, "x.yaml", "a: " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1))
    node = compose(p).data["a"]
    for _ in range(MAX_DEPTH - 1):
        node = node[0]
    assert node == 1


# ---------------------------------------------------------------------- item 7: interpolation


@pytest.mark.timeout(60)
def test_doubling_string_interpolation_is_refused(tmp_path: Path) -> None:
    lines = ['s0: "xxxxxxxx"'] + [f's{i}: "${{s{i - 1}}}${{s{i - 1}}}"' for i in range(1, 64)]
    p = write(tmp_path, "policy.yaml", "\n".join(lines) + "\n")
    with refused_within() as caught:
        compose(p)
    err = caught[0]
    # 8 * 2**14 = 131,072 > 100,000: s14 is the first string over the limit
    assert (err.file, err.key, err.line) == (str(p), "s14", 15)
    assert f"more than {MAX_STRING_CHARS:,} characters" in str(err)


@pytest.mark.timeout(60)
def test_doubling_list_interpolation_is_refused(tmp_path: Path) -> None:
    lines = ["l0: [1, 2]"] + [f'l{i}: ["${{l{i - 1}}}", "${{l{i - 1}}}"]' for i in range(1, 64)]
    p = write(tmp_path, "policy.yaml", "\n".join(lines) + "\n")
    with refused_within() as caught:
        compose(p)
    assert caught[0].file == str(p) and caught[0].key is not None
    assert f"more than {MAX_RESOLVED:,} values" in str(caught[0])


@pytest.mark.timeout(60)
def test_long_reference_chains_are_refused(tmp_path: Path) -> None:
    lines = [f'c{i}: "${{c{i + 1}}}"' for i in range(3000)] + ["c3000: 1"]
    p = write(tmp_path, "policy.yaml", "\n".join(lines) + "\n")
    with refused_within() as caught:
        compose(p)
    assert f"references nest more than {MAX_REF_CHAIN} deep" in str(caught[0])
    assert "c0 -> c1 -> c2 -> ... ->" in str(caught[0])
    short = [f'c{i}: "${{c{i + 1}}}"' for i in range(20)] + ["c20: 1"]
    p.write_text("\n".join(short) + "\n")
    assert compose(p).data["c0"] == 1


def test_references_that_nest_too_deep_are_refused(tmp_path: Path) -> None:
    lines = ["n0: [1]"] + [f'n{i}: [[[[[[[[[["${{n{i - 1}}}"]]]]]]]]]]' for i in range(1, 12)]
    p = write(tmp_path, "policy.yaml", "\n".join(lines) + "\n")
    with refused_within() as caught:
        compose(p)
    assert f"a config may nest at most {MAX_DEPTH}" in str(caught[0])
    assert caught[0].file == str(p) and caught[0].line is not None


# --------------------------------------------------------- item 8: other files are not quoted


def component_policy(tmp_path: Path, rel: str) -> Path:
    return write(
        tmp_path,
        "cfg/policy.yaml",
        f"""
        model:
          component_config_paths:
            net: {rel}
        policy:
          type: pid
        """,
    )


def assert_no_secret(fn: Callable[[], object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn()
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value) and SECRET not in info.value.message
    return info.value


def test_component_path_to_a_non_yaml_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "etc" / "passwd"
    secret.parent.mkdir()
    secret.write_text(f"root:{SECRET}:0:0:root:/root:/bin/bash\n")
    p = component_policy(tmp_path, "../etc/passwd")
    err = assert_no_secret(lambda: load_policy_config(p))
    assert (err.file, err.key, err.line) == (str(p), "model.component_config_paths.net", 3)
    assert "expected a YAML file (.yaml or .yml), got '../etc/passwd'" in str(err)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (f"{SECRET}\n", "found a string"),
        (f"root:{SECRET}:0:0:root:/root:/bin/bash\nbin:x:1:1::/bin\n", "found a string"),
        (f"- {SECRET}\n", "found a list"),
        ("12345\n", "found an integer"),
    ],
)
def test_component_file_that_is_not_a_mapping_is_not_quoted(
    tmp_path: Path, content: str, found: str
) -> None:
    comp = write(tmp_path, "other/secret.yaml", content)
    p = component_policy(tmp_path, "../other/secret.yaml")
    err = assert_no_secret(lambda: load_policy_config(p))
    assert err.file == os.path.normpath(comp) and err.line == 1
    assert "expected a mapping with 'type:' and the block's parameters" in str(err)
    assert f"named by model.component_config_paths.net at {p}:3" in str(err)
    assert found in str(err)


def test_defaults_file_that_is_not_a_mapping_is_not_quoted(tmp_path: Path) -> None:
    write(tmp_path, "secret.yaml", f"{SECRET}\n")
    write(tmp_path, "notes.txt", f"key: {SECRET}\n")
    p = write(tmp_path, "cfg/policy.yaml", "defaults: [../secret.yaml]\npolicy: {type: pid}\n")
    err = assert_no_secret(lambda: compose(p))
    assert err.file == os.path.normpath(tmp_path / "secret.yaml") and "found a string" in str(err)
    assert f"a defaults file, named by defaults[0] at {p}:1" in str(err)
    p.write_text("defaults: [../notes.txt]\npolicy: {type: pid}\n")
    err = assert_no_secret(lambda: compose(p))
    assert (err.file, err.key, err.line) == (str(p), "defaults[0]", 1)
    assert "expected a YAML file (.yaml or .yml), got '../notes.txt'" in str(err)


def test_yaml_named_link_to_another_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "id_rsa"
    secret.write_text(f"{SECRET}\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "net.yaml").symlink_to(secret)
    p = component_policy(tmp_path, "net.yaml")
    err = assert_no_secret(lambda: load_policy_config(p))
    assert f"is a link to {secret}, which is not named .yaml or .yml" in str(err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.timeout(60)
def test_special_files_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    os.mkfifo(tmp_path / "cfg" / "net.yaml")  # reading it would block forever
    p = component_policy(tmp_path, "net.yaml")
    err = assert_no_secret(lambda: load_policy_config(p))
    assert "found a special file" in str(err)
    err = assert_no_secret(lambda: load_yaml(tmp_path / "cfg" / "net.yaml"))
    assert "found a special file" in str(err)


def test_top_level_scalar_and_binary_files_are_not_quoted(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", f"{SECRET}\n")
    err = assert_no_secret(lambda: load_yaml(p))
    assert (
        str(err) == f"{p}:1: expected a mapping of keys to values at the top level, found a string"
    )
    p.write_bytes(b"\xff\xfe" + SECRET.encode() + b"\x00\x81")
    assert "not UTF-8 text" in str(assert_no_secret(lambda: load_yaml(p)))
    p.write_text(f"token: [{SECRET}\n")
    assert "invalid YAML" in str(assert_no_secret(lambda: load_yaml(p)))


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ('defaults: ["a\\0.yaml"]', "a path may not contain a NUL character"),
        ('model: {component_config_paths: {net: "n\\0et.yaml"}}', "may not contain a NUL"),
        ('checkpoint: "ck\\0pt"', "contains a NUL character"),
        ("defaults: [" + "x" * 5000 + ".yaml]", "File name too long"),
        ("defaults: [loop.yaml]", "Symlink loop"),
        ("model: {component_config_paths: {net: loop.yaml}}", "Symlink loop"),
    ],
)
def test_unusable_paths_are_config_errors(tmp_path: Path, where: str, expected: str) -> None:
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to(tmp_path / "loop.yaml")
    p = write(tmp_path, "policy.yaml", where + "\npolicy: {type: pid}\n")
    with pytest.raises(ConfigError) as info:
        load_policy_config(p)
    assert (info.value.file, info.value.line) == (str(p), 1)
    assert expected in str(info.value) and len(str(info.value)) < 600
    with pytest.raises(ConfigError, match="Symlink loop"):
        load_policy_config(tmp_path / "loop.yaml")


# ------------------------------------------------------ item 11: booleans and non-finite floats

MLP = """
policy:
  type: mlp_chunk
  params:
    input_features:
      observation.state: {shape: [3]}
    action_dim: 1
    horizon: 8
    n_action_steps: 4
"""


def mlp_params(tmp_path: Path, extra: str = "", overrides: tuple[str, ...] = ()) -> MLPChunkParams:
    p = write(tmp_path, "policy.yaml", MLP + textwrap.indent(extra, "    "))
    cfg = load_policy_config(p, overrides)
    return validate(cfg.composed, MLPChunkParams, at="policy.params")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("control_hz: true", "expected a number, got the boolean true"),
        ("explore_std: false", "expected a number, got the boolean false"),
        ("ema_decay: true", "expected a number, got the boolean true"),
        ("explore_std: .inf", "expected a finite number, got .inf"),
        ("explore_std: -.inf", "expected a finite number, got -.inf"),
        ("explore_std: .nan", "expected a finite number, got .nan"),
        ("control_hz: 1e999", "expected a finite number, got .inf"),
    ],
)
def test_bools_and_non_finite_numbers_are_refused_in_params(
    tmp_path: Path, line: str, expected: str
) -> None:
    key = line.split(":")[0]
    with pytest.raises(ConfigError) as info:
        mlp_params(tmp_path, line + "\n")
    err = info.value
    assert (err.file, err.key, err.line) == (
        str(tmp_path / "policy.yaml"),
        f"policy.params.{key}",
        9,
    )
    assert expected in str(err)


def test_horizon_true_is_not_one(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", MLP.replace("horizon: 8", "horizon: true"))
    with pytest.raises(ConfigError) as info:
        validate(load_policy_config(p).composed, MLPChunkParams, at="policy.params")
    assert str(info.value) == (
        f"{p}:7: policy.params.horizon: expected an integer, got the boolean true; booleans are "
        "not numbers here (write 1 or 0 if a number is meant)"
    )  # and not "n_action_steps (s=4) must be <= horizon (H=1)"


def test_bools_and_infinities_from_overrides_name_the_override(tmp_path: Path) -> None:
    for override, expected in [
        ("policy.params.horizon=true", "expected an integer, got the boolean true"),
        ("policy.params.explore_std=.inf", "expected a finite number, got .inf"),
        ("policy.params.input_features.x={shape: [3, true]}", "got the boolean true"),
    ]:
        with pytest.raises(ConfigError) as info:
            mlp_params(tmp_path, overrides=(override,))
        assert info.value.file == "<override>" and expected in str(info.value), override
    with pytest.raises(ConfigError) as info:
        mlp_params(tmp_path, overrides=("policy.params.input_features.x={shape: [3, true]}",))
    assert info.value.key == "policy.params.input_features.x.shape[1]"


def test_infinity_from_an_environment_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENVACTOR_TEST_STD", "inf")
    with pytest.raises(ConfigError) as info:
        mlp_params(tmp_path, "explore_std: ${env:ENVACTOR_TEST_STD}\n")
    assert info.value.key == "policy.params.explore_std" and info.value.line == 9
    assert "expected a finite number, got 'inf'" in str(info.value)
    monkeypatch.setenv("ENVACTOR_TEST_STD", "0.25")
    assert mlp_params(tmp_path, "explore_std: ${env:ENVACTOR_TEST_STD}\n").explore_std == 0.25


def test_numbers_and_real_booleans_still_validate(tmp_path: Path) -> None:
    params = mlp_params(tmp_path, "explore_std: 0\nema_decay: 0.5\ncontrol_hz: 50\n")
    assert (params.horizon, params.explore_std, params.ema_decay, params.control_hz) == (
        8,
        0.0,
        0.5,
        50.0,
    )
    p = write(tmp_path, "flow.yaml", MLP.replace("mlp_chunk", "flow") + "    tau_beta: [1, 1.5]\n")
    flow = validate(load_policy_config(p).composed, FlowParams, at="policy.params")
    assert flow.tau_beta == (1.0, 1.5)


def test_component_params_refuse_infinity_in_the_config(tmp_path: Path) -> None:
    comp = write(tmp_path, "comps/net.yaml", "type: mlp\nin_dim: 3\nout_dim: 8\ndropout: .inf\n")
    p = write(tmp_path, "policy.yaml", "model: {component_config_paths: {net: comps/net.yaml}}\n")
    p.write_text(p.read_text() + MLP)
    with pytest.raises(ConfigError) as info:
        load_policy_config(p)
    assert (info.value.file, info.value.line) == (str(comp), 4)
    assert info.value.key == "model.components.net.dropout"
    assert "expected a finite number, got .inf" in str(info.value)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"in_dim": True, "out_dim": 4}, "parameter 'in_dim': expected int"),
        ({"in_dim": 3, "out_dim": 4, "hidden_dims": [8, False]}, "parameter 'hidden_dims'"),
        (
            {"in_dim": 3, "out_dim": 4, "dropout": float("inf")},
            "expected a finite number, got .inf",
        ),
        (
            {"in_dim": 3, "out_dim": 4, "dropout": float("nan")},
            "expected a finite number, got .nan",
        ),
    ],
)
def test_component_factory_refuses_bools_and_non_finite(
    params: dict[str, object], expected: str
) -> None:
    with pytest.raises(ComponentError) as info:
        build_component({"type": "mlp", **params}, name="net", source="net.yaml")
    assert "component 'net' in net.yaml, type 'mlp'" in str(info.value)
    assert expected in str(info.value)
    assert build_component({"type": "mlp", "in_dim": 3, "out_dim": 4, "layer_norm": True})


def test_config_errors_are_value_errors(tmp_path: Path) -> None:
    """The CLI turns ValueErrors into its one-line errors."""
    assert issubclass(ConfigError, ValueError) and issubclass(ComponentError, ValueError)
    p = write(tmp_path, "policy.yaml", alias_bomb(9))
    with pytest.raises(ValueError, match="alias bomb"):
        load_policy_config(p)
