"""envactor.config: composition, interpolation, overrides, validation and located errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from envactor.config import (
    ConfigError,
    Location,
    PolicyConfig,
    apply_overrides,
    compose,
    load_policy_config,
    load_yaml,
    params_error,
    parse_override,
    validate,
)


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(fn: object, *args: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


MINIMAL = """
policy:
  type: pid
  params: {kp: 1.5}
"""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    horizon: int
    lr: float = 0.1


# --------------------------------------------------------------------------- broken configs


def test_bad_yaml_syntax_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "policy:\n  type: pid\n  params: {kp: [1, 2}\n")
    err = error_of(load_policy_config, p)
    assert err.file == str(p) and err.line == 3
    assert str(err).startswith(f"{p}:3: invalid YAML")


def test_top_level_list_is_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "- policy\n- model\n")
    err = error_of(load_yaml, p)
    assert (err.file, err.line) == (str(p), 1)
    assert "expected a mapping of keys to values at the top level, found a list" in str(err)


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "# nothing\n")
    err = error_of(load_yaml, p)
    assert err.file == str(p) and "empty" in err.message


def test_duplicate_key_names_file_key_and_both_lines(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "policy.yaml",
        """
        policy:
          type: pid
          params:
            kp: 1.0
            kd: 0.1
            kp: 2.0
        """,
    )
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "policy.params.kp", 6)
    assert "duplicate key 'kp'" in str(err) and "line 4" in str(err)


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "c.yaml",
        """
        base: &b {kp: 1.0, kd: 0.1}
        tuned:
          <<: *b
          kp: 3.0
        """,
    )
    cfg = load_yaml(p)
    assert cfg.data["tuned"] == {"kp": 3.0, "kd": 0.1}
    assert cfg.sources["tuned.kp"] == Location(str(p), 4)
    assert cfg.sources["tuned.kd"] == Location(str(p), 1)


def test_unsafe_tag_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "x: !!python/object/apply:os.getcwd []\n")
    err = error_of(load_yaml, p)
    assert err.file == str(p) and err.line == 1
    assert "python/object/apply" in str(err)


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", MINIMAL + "polcy:\n  type: other\n")
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "polcy", 4)
    assert "unknown key 'polcy'" in str(err) and "did you mean 'policy'?" in str(err)
    assert "allowed keys: model, policy, checkpoint" in str(err)


def test_unknown_key_under_model(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "model:\n  componets: {}\n" + MINIMAL)
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "model.componets", 2)
    assert "did you mean 'components'?" in str(err)


def test_policy_type_wrong_type(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "policy:\n  type: 3\n")
    err = error_of(load_policy_config, p)
    assert str(err) == f"{p}:2: policy.type: Input should be a valid string (got 3)"


def test_policy_params_must_be_a_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "policy:\n  type: pid\n  params: [1]\n")
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "policy.params", 3)
    assert "valid dictionary" in str(err) and "(got a list)" in str(err)


def test_missing_policy_type_points_at_parent_line(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "checkpoint: ck\npolicy:\n  params: {}\n")
    err = error_of(load_policy_config, p)
    assert str(err) == f"{p}:2: policy.type: required key is missing"


def test_checkpoint_wrong_type(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", MINIMAL + "checkpoint: [a, b]\n")
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "checkpoint", 4)


def test_several_errors_are_all_reported_one_per_line(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "policy:\n  type: 3\n  parms: {}\nextra: 1\n")
    err = error_of(load_policy_config, p)
    lines = str(err).splitlines()
    assert lines == [
        f"{p}:2: policy.type: Input should be a valid string (got 3)",
        f"{p}:3: policy.parms: unknown key 'parms' (did you mean 'params'?); "
        "allowed keys: type, params",
        f"{p}:4: extra: unknown key 'extra'; allowed keys: model, policy, checkpoint",
    ]
    assert len(err.errors) == 3 and (err.key, err.line) == ("policy.type", 2)


def test_missing_component_file(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "policy.yaml",
        "model:\n  component_config_paths:\n    enc: comps/enc.yaml\n" + MINIMAL,
    )
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "model.component_config_paths.enc", 3)
    assert "comps/enc.yaml" in str(err) and "no such file" in str(err)


def test_component_without_type_names_the_component_file(tmp_path: Path) -> None:
    comp = write(tmp_path, "comps/enc.yaml", "dims: [8, 8]\n")
    p = write(
        tmp_path,
        "policy.yaml",
        "model:\n  component_config_paths: {enc: comps/enc.yaml}\n" + MINIMAL,
    )
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(comp), "model.components.enc.type", 1)
    assert "required key is missing" in str(err)


def test_component_not_a_mapping(tmp_path: Path) -> None:
    comp = write(tmp_path, "comps/enc.yaml", "- type\n- mlp\n")
    p = write(
        tmp_path,
        "policy.yaml",
        "model:\n  component_config_paths: {enc: comps/enc.yaml}\n" + MINIMAL,
    )
    err = error_of(load_policy_config, p)
    assert err.file == str(comp) and "expected a mapping with 'type:'" in str(err)
    assert "found a list" in str(err) and f"model.component_config_paths.enc at {p}:2" in str(err)


def test_component_in_both_forms(tmp_path: Path) -> None:
    write(tmp_path, "enc.yaml", "type: mlp\n")
    p = write(
        tmp_path,
        "policy.yaml",
        """
        model:
          component_config_paths: {enc: enc.yaml}
          components:
            enc: {type: mlp}
        policy: {type: pid}
        """,
    )
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "model.components.enc", 4)
    assert f"both inline and in model.component_config_paths ({p}:2)" in str(err)


def test_component_name_with_a_dot_is_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "model:\n  components:\n    a.b: {type: mlp}\n" + MINIMAL)
    err = error_of(load_policy_config, p)
    assert err.file == str(p) and err.line == 3 and "pattern" in str(err)


def test_missing_defaults_file(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", "defaults:\n  - base.yaml\n  - nope.yaml\n" + MINIMAL)
    write(tmp_path, "base.yaml", "policy: {type: pid}\n")
    err = error_of(compose, p)
    assert (err.file, err.key, err.line) == (str(p), "defaults[1]", 3)
    assert "'nope.yaml' not found" in str(err)


def test_defaults_cycle_prints_the_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "defaults: [sub/b.yaml]\nx: 1\n")
    write(tmp_path, "sub/b.yaml", "defaults: [../a.yaml]\ny: 2\n")
    err = error_of(compose, a)
    assert "defaults form a cycle: a.yaml -> sub/b.yaml -> a.yaml" in str(err)
    assert (err.file, err.key, err.line) == (str(tmp_path / "sub/b.yaml"), "defaults[0]", 1)


def test_defaults_must_be_a_list(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "x: 1\ndefaults: base.yaml\n")
    err = error_of(compose, p)
    assert (err.file, err.key, err.line) == (str(p), "defaults", 2)


def test_error_in_a_defaults_file_names_that_file(tmp_path: Path) -> None:
    base = write(tmp_path, "base/common.yaml", "policy:\n  type: pid\n  params: 5\n")
    p = write(tmp_path, "policy.yaml", "defaults: [base/common.yaml]\ncheckpoint: ck\n")
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(base), "policy.params", 3)


def test_interpolation_to_unknown_key(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "policy.yaml",
        "policy:\n  type: pid\n  params:\n    horizon: 8\n    steps: ${policy.params.horizn}\n",
    )
    err = error_of(load_policy_config, p)
    assert (err.file, err.key, err.line) == (str(p), "policy.params.steps", 5)
    assert "no key 'horizn' under policy.params" in str(err)
    assert "did you mean 'horizon'?" in str(err)


def test_interpolation_cycle(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "a: ${b}\nb: x${c}\nc: ${a}\n")
    err = error_of(compose, p)
    assert (err.file, err.key, err.line) == (str(p), "c", 3)
    assert "interpolation cycle: a -> b -> c -> a" in str(err)


def test_interpolation_of_own_parent_is_a_cycle(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "a:\n  b: ${a}\n")
    err = error_of(compose, p)
    assert (err.key, err.line) == ("a.b", 2) and "a.b -> a" in str(err)


def test_embedding_a_mapping_in_a_string_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "a: {x: 1}\nb: name_${a}\n")
    err = error_of(compose, p)
    assert (err.key, err.line) == ("b", 2) and "cannot be embedded" in str(err)


def test_unterminated_interpolation(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "a: 1\nb: x_${a\n")
    err = error_of(compose, p)
    assert (err.key, err.line) == ("b", 2) and "unterminated" in str(err)


def test_env_var_unset_without_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENVACTOR_TEST_ROOT", raising=False)
    p = write(tmp_path, "c.yaml", "paths:\n  data: ${env:ENVACTOR_TEST_ROOT}/data\n")
    err = error_of(compose, p)
    assert (err.file, err.key, err.line) == (str(p), "paths.data", 2)
    assert "ENVACTOR_TEST_ROOT is not set" in str(err)


@pytest.mark.parametrize("text", ["no_equals_sign", "=3", "a..b=1", "+a.b=1", "a b=1", "a=[1,"])
def test_bad_override_syntax(text: str) -> None:
    err = error_of(parse_override, text)
    assert err.file == "<override>" and repr(text) in str(err)


def test_override_through_a_scalar(tmp_path: Path) -> None:
    p = write(tmp_path, "policy.yaml", MINIMAL)
    err = error_of(load_policy_config, p, ["policy.type.name=x"])
    assert (err.file, err.key) == ("<override>", "policy.type.name")
    assert f"goes through 'policy.type', which holds a str ('pid'), set at {p}:2" in str(err)


def test_override_list_index_out_of_range(tmp_path: Path) -> None:
    cfg = compose(write(tmp_path, "c.yaml", "xs: [1, 2]\n"))
    err = error_of(apply_overrides, cfg, ["xs[2]=5"])
    assert err.key == "xs[2]" and "list of 2 items" in str(err)


def test_validate_params_names_full_key_path(tmp_path: Path) -> None:
    p = write(
        tmp_path, "policy.yaml", "policy:\n  type: flow\n  params:\n    horizon: abc\n    lr: 1\n"
    )
    cfg = load_policy_config(p)
    err = error_of(cfg.validate_params, Params)
    assert str(err) == (
        f"{p}:4: policy.params.horizon: Input should be a valid integer, "
        "unable to parse string as an integer (got 'abc')"
    )


def test_params_error_from_a_caught_validation_error(tmp_path: Path) -> None:
    from pydantic import ValidationError

    p = write(tmp_path, "policy.yaml", "policy:\n  type: flow\n  params:\n    lr: 0.5\n")
    cfg = load_policy_config(p)
    with pytest.raises(ValidationError) as info:
        Params.model_validate(cfg.params)
    err = params_error(cfg, info.value)
    assert (err.file, err.key, err.line) == (str(p), "policy.params.horizon", 3)


def test_validate_at_a_missing_subtree(tmp_path: Path) -> None:
    cfg = compose(write(tmp_path, "c.yaml", "a:\n  b: 1\n"))
    err = error_of(lambda: validate(cfg, Params, at="a.c"))
    assert (err.key, err.line) == ("a.c", 1) and "no key 'c' under a" in str(err)


# --------------------------------------------------------------------------- working configs


def test_deep_merge_order_and_list_replacement(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "x: {p: 1, q: 1, r: 1}\nxs: [1, 2, 3]\nonly_a: a\n")
    write(tmp_path, "b.yaml", "x: {q: 2, r: 2}\nxs: [9]\n")
    top = write(tmp_path, "top.yaml", "defaults: [a.yaml, b.yaml]\nx: {r: 3}\n")
    cfg = compose(top)
    assert cfg.data == {"x": {"p": 1, "q": 2, "r": 3}, "xs": [9], "only_a": "a"}
    assert cfg.sources["x.p"].file.endswith("a.yaml")
    assert cfg.sources["x.q"] == Location(str(tmp_path / "b.yaml"), 1)
    assert cfg.sources["x.r"] == Location(str(top), 2)
    assert "xs[1]" not in cfg.sources and "defaults" not in cfg.data


def test_nested_defaults_are_relative_to_the_including_file(tmp_path: Path) -> None:
    write(tmp_path, "shared/leaf.yaml", "v: leaf\nw: leaf\n")
    write(tmp_path, "cfg/sub/mid.yaml", "defaults: [../../shared/leaf.yaml]\nw: mid\n")
    top = write(tmp_path, "cfg/top.yaml", "defaults: [sub/mid.yaml]\nz: top\n")
    cfg = compose(top)
    assert cfg.data == {"v": "leaf", "w": "mid", "z": "top"}
    assert cfg.sources["v"] == Location(str(tmp_path / "shared/leaf.yaml"), 1)
    assert [f.name for f in cfg.files] == ["leaf.yaml", "mid.yaml", "top.yaml"]


def test_diamond_defaults_are_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "d.yaml", "d: 1\n")
    write(tmp_path, "b.yaml", "defaults: [d.yaml]\nb: 1\n")
    write(tmp_path, "c.yaml", "defaults: [d.yaml]\nc: 1\n")
    cfg = compose(write(tmp_path, "a.yaml", "defaults: [b.yaml, c.yaml]\n"))
    assert cfg.data == {"d": 1, "b": 1, "c": 1}


def test_interpolation_keeps_types_and_chains(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "c.yaml",
        """
        h: 16
        dims: [64, 64]
        net: {dims: "${dims}", depth: 2}
        copy: ${net}
        n: ${h}
        chained: ${n}
        name: run_${h}_${flag}_${none}
        flag: true
        none: null
        pi: ${f}
        f: 3.5
        literal: cost $${h}
        """,
    )
    d = compose(p).data
    assert d["n"] == 16 and isinstance(d["n"], int) and d["chained"] == 16
    assert d["net"] == {"dims": [64, 64], "depth": 2} and d["copy"] == d["net"]
    assert d["copy"] is not d["net"] and d["copy"]["dims"] is not d["net"]["dims"]
    assert d["name"] == "run_16_true_null" and d["pi"] == 3.5
    assert d["literal"] == "cost ${h}"


def test_interpolation_after_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "h: 16\nsteps: ${h}\n")
    assert compose(p, ["h=32"]).data == {"h": 32, "steps": 32}
    assert compose(p, resolve_refs=False).data["steps"] == "${h}"


def test_env_values_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVACTOR_TEST_SET", "/data")
    monkeypatch.delenv("ENVACTOR_TEST_UNSET", raising=False)
    p = write(
        tmp_path,
        "c.yaml",
        "root: ${env:ENVACTOR_TEST_SET}\nsub: ${env:ENVACTOR_TEST_SET}/x\n"
        "dev: ${env:ENVACTOR_TEST_UNSET,cpu}\nempty: ${env:ENVACTOR_TEST_UNSET,}\n",
    )
    assert compose(p).data == {"root": "/data", "sub": "/data/x", "dev": "cpu", "empty": ""}


def test_overrides_are_typed_and_recorded(tmp_path: Path) -> None:
    p = write(tmp_path, "c.yaml", "a:\n  b: 1\n  c: {d: 1}\n")
    cfg = compose(p, ["a.b=16", "a.l=[1, 2]", "a.c=null", "a.new.deep=hello", "a.s='16'"])
    assert cfg.data == {"a": {"b": 16, "c": None, "l": [1, 2], "new": {"deep": "hello"}, "s": "16"}}
    assert cfg.sources["a.b"] == Location("<override>")
    assert cfg.sources["a.l[1]"] == Location("<override>")
    assert cfg.sources["a.new.deep"] == Location("<override>")
    assert "a.c.d" not in cfg.sources and cfg.sources["a"] == Location(str(p), 1)
    ov = parse_override("policy.params.horizon=16")
    assert (ov.key, ov.value) == ("policy.params.horizon", 16)
    assert parse_override("xs[0]=a=b").value == "a=b"


def test_override_into_a_list_item(tmp_path: Path) -> None:
    cfg = compose(write(tmp_path, "c.yaml", "xs:\n  - {k: 1}\n  - {k: 2}\n"), ["xs.1.k=5"])
    assert cfg.data["xs"] == [{"k": 1}, {"k": 5}]
    assert cfg.sources["xs[1].k"] == Location("<override>")


def _policy_tree(tmp_path: Path) -> Path:
    write(tmp_path, "shared/mlp.yaml", "type: mlp\ndepth: 2\nact: relu\n")
    write(
        tmp_path,
        "cfg/comps/enc.yaml",
        "defaults: [../../shared/mlp.yaml]\nin_dim: 10\nout_dim: ${in_dim}\n"
        "horizon: ${policy.params.horizon}\ndepth: 3\n",
    )
    write(tmp_path, "cfg/base.yaml", "policy:\n  type: flow\n  params: {horizon: 8, lr: 0.1}\n")
    return write(
        tmp_path,
        "cfg/policy.yaml",
        """
        defaults: [base.yaml]
        model:
          component_config_paths: {enc: comps/enc.yaml}
          components:
            head: {type: linear, in_dim: "${model.components.enc.out_dim}", note: "$${x}"}
        policy:
          params: {horizon: 16}
        checkpoint: ../runs/ckpt
        """,
    )


def test_load_policy_config_full(tmp_path: Path) -> None:
    p = _policy_tree(tmp_path)
    cfg = load_policy_config(p)
    assert cfg.path == p.resolve() and cfg.base_dir == p.resolve().parent
    assert cfg.policy_type == "flow" and cfg.params == {"horizon": 16, "lr": 0.1}
    assert cfg.components == {
        "enc": {
            "type": "mlp",
            "depth": 3,
            "act": "relu",
            "in_dim": 10,
            "out_dim": 10,
            "horizon": 16,
        },
        "head": {"type": "linear", "in_dim": 10, "note": "${x}"},
    }
    assert cfg.component_sources == {
        "enc": (tmp_path / "cfg/comps/enc.yaml").resolve(),
        "head": None,
    }
    assert cfg.checkpoint == (tmp_path / "runs/ckpt").resolve()
    assert cfg.composed.sources["model.components.enc.act"].file == str(
        tmp_path / "shared/mlp.yaml"
    )


def test_component_overrides_reach_file_components(tmp_path: Path) -> None:
    p = _policy_tree(tmp_path)
    cfg = load_policy_config(
        p, ["model.components.enc.in_dim=32", "policy.params.horizon=4", "checkpoint=ck"]
    )
    assert cfg.components["enc"]["in_dim"] == 32 and cfg.components["enc"]["out_dim"] == 32
    assert cfg.components["enc"]["horizon"] == 4 and cfg.components["head"]["in_dim"] == 32
    assert cfg.composed.sources["model.components.enc.in_dim"] == Location("<override>")
    assert cfg.checkpoint == (Path.cwd() / "ck").resolve()


def test_resolved_dict_round_trip(tmp_path: Path) -> None:
    cfg = load_policy_config(_policy_tree(tmp_path), ["model.components.enc.act=gelu"])
    saved = cfg.resolved_dict()
    assert saved["model"]["components"]["head"]["note"] == "$${x}"
    text = yaml.safe_dump(saved, sort_keys=False)
    assert str(tmp_path) not in text and "component_config_paths" not in text
    out = tmp_path / "ckpt" / "policy.yaml"
    out.parent.mkdir()
    out.write_text(text, encoding="utf-8")
    again = load_policy_config(out)
    assert again == cfg and isinstance(again, PolicyConfig)
    assert again.components["enc"]["act"] == "gelu" and again.components["head"]["note"] == "${x}"
    assert again.component_sources == {"enc": None, "head": None} and again.checkpoint is None
    assert again != load_policy_config(_policy_tree(tmp_path))


def test_validate_a_subtree(tmp_path: Path) -> None:
    cfg = compose(write(tmp_path, "c.yaml", "outer:\n  horizon: '12'\n"))
    assert validate(cfg, Params, at="outer") == Params(horizon=12, lr=0.1)


def test_exponent_floats_are_floats(tmp_path: Path) -> None:
    cfg = compose(write(tmp_path, "c.yaml", "lr: 1e-4\nbig: 1.0e3\nname: e5\n"), ["wd=5E-2"])
    assert cfg.data == {"lr": 1e-4, "big": 1000.0, "name": "e5", "wd": 0.05}
    assert yaml.safe_load("x: 1e-4") == {"x": "1e-4"}  # the stock loader is left untouched
