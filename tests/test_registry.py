"""Registry: duplicates, lazy import by convention, entry-point plugins, did-you-mean."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from envactor.registry import POLICY_REGISTRY, Registry, RegistryError


class Alpha:
    pass


class Beta:
    pass


def test_register_get_names_contains() -> None:
    reg: Registry[type] = Registry("widget")
    reg.register("alpha")(Alpha)
    assert reg.get("alpha") is Alpha
    assert "alpha" in reg and "beta" not in reg and 3 not in reg
    assert reg.names() == ["alpha"]
    assert Alpha.registered_name == "alpha"  # type: ignore[attr-defined]


def test_duplicate_names_both_classes() -> None:
    reg: Registry[type] = Registry("widget")
    reg.add("thing", Alpha)
    reg.add("thing", Alpha)  # the same object again is harmless
    with pytest.raises(RegistryError) as err:
        reg.add("thing", Beta)
    msg = str(err.value)
    assert "test_registry.Alpha" in msg and "test_registry.Beta" in msg and "'thing'" in msg


def test_unknown_name_lists_known_and_suggests() -> None:
    reg: Registry[type] = Registry("widget")
    reg.add("temporal_ensemble", Alpha)
    reg.add("sync", Beta)
    with pytest.raises(RegistryError) as err:
        reg.get("temporal_ensembel")
    msg = str(err.value)
    assert "unknown widget 'temporal_ensembel'" in msg
    assert "sync, temporal_ensemble" in msg
    assert "did you mean 'temporal_ensemble'?" in msg


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_lazy_import_by_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "lazypkg" / "__init__.py", "")
    _write(
        tmp_path / "lazypkg" / "gadget.py",
        """
        from tests_registry_shared import REG

        @REG.register("gadget")
        class Gadget:
            pass
        """,
    )
    reg: Registry[type] = Registry("widget", lazy_module_prefix="lazypkg")
    shared = type(sys)("tests_registry_shared")
    shared.REG = reg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_registry_shared", shared)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "gadget" not in reg._items
    assert reg.get("gadget").__name__ == "Gadget"
    with pytest.raises(RegistryError, match="unknown widget 'nothing'"):
        reg.get("nothing")


def test_lazy_import_does_not_hide_broken_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "brokenpkg" / "__init__.py", "")
    _write(tmp_path / "brokenpkg" / "bad.py", "import module_that_does_not_exist_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("widget", lazy_module_prefix="brokenpkg")
    with pytest.raises(ModuleNotFoundError, match="module_that_does_not_exist_xyz"):
        reg.get("bad")


def test_builtin_policy_lazily_imported() -> None:
    sys.modules.pop("envactor.policy.policies.pid", None)
    POLICY_REGISTRY._items.pop("pid", None)
    cls = POLICY_REGISTRY.get("pid")
    assert cls.__module__.startswith("envactor.policy.policies.pid")


def test_entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package installed into a site dir (dist-info with entry_points.txt)."""
    site = tmp_path / "site"
    _write(
        site / "envactor_tinyplug" / "__init__.py",
        """
        import torch
        from envactor import Policy

        class TinyPlugPolicy(Policy):
            '''A plugin policy that outputs zeros.'''
            trainable = False

            def _chunk(self, obs, env_ids):
                b = next(iter(obs.values())).shape[0]
                return torch.zeros(b, *self.action_shape)
        """,
    )
    dist = site / "envactor_tinyplug-0.1.0.dist-info"
    _write(dist / "METADATA", "Metadata-Version: 2.1\nName: envactor-tinyplug\nVersion: 0.1.0\n")
    _write(
        dist / "entry_points.txt",
        "[envactor.policies]\ntinyplug = envactor_tinyplug:TinyPlugPolicy\n",
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    POLICY_REGISTRY._items.pop("tinyplug", None)
    try:
        assert "tinyplug" in POLICY_REGISTRY.names()
        cls = POLICY_REGISTRY.get("tinyplug")
        assert cls.__name__ == "TinyPlugPolicy"
        policy = cls(
            {},
            None,
            input_features={"observation.state": {"shape": [2], "norm": "identity"}},
            action_dim=3,
            horizon=4,
            n_action_steps=2,
            action_norm="identity",
        )
        import numpy as np

        out = policy.predict({"observation.state": np.ones((5, 2), np.float32)})
        assert out.shape == (5, 4, 3) and not out.any()
    finally:
        POLICY_REGISTRY._items.pop("tinyplug", None)
        sys.modules.pop("envactor_tinyplug", None)


@pytest.mark.parametrize("name", ["__init__", "_hidden", "os.path", "../evil", "a b", ""])
def test_private_dotted_or_path_names_import_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A config's ``type:`` cannot import a package's internals (or anything else) by name."""
    _write(tmp_path / "quietpkg" / "__init__.py", "")
    _write(tmp_path / "quietpkg" / "_hidden.py", "raise RuntimeError('imported _hidden')\n")
    _write(tmp_path / "quietpkg" / "public.py", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("widget", lazy_module_prefix="quietpkg", list_lazy_modules=True)
    before = set(sys.modules)
    with pytest.raises(RegistryError, match="unknown widget"):
        reg.get(name)
    assert {m for m in set(sys.modules) - before if m.startswith("quietpkg.")} == set()
    assert reg.names() == ["public"]  # private modules are not advertised as names either


def test_entry_point_executor_reaches_every_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An executor from a plugin's ``envactor.executors`` entry point is a choice of ``eval``
    and ``run`` and builds like a built-in one."""
    from envactor import build_policy
    from envactor.cli import build_parser
    from envactor.runtime.executors import EXECUTORS, make_executor

    site = tmp_path / "site"
    _write(
        site / "envactor_tinyexec" / "__init__.py",
        """
        from envactor.runtime.executors.guided import BlendExecutor

        class LateBlend(BlendExecutor):
            '''The blend, replanning late (a plugin executor).'''
        """,
    )
    dist = site / "envactor_tinyexec-0.1.0.dist-info"
    _write(dist / "METADATA", "Metadata-Version: 2.1\nName: envactor-tinyexec\nVersion: 0.1.0\n")
    _write(
        dist / "entry_points.txt",
        "[envactor.executors]\nlate_blend = envactor_tinyexec:LateBlend\n",
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        assert "late_blend" in EXECUTORS.names()
        parser = build_parser()
        args = parser.parse_args(
            ["eval", "flow", "--env", "Pendulum-v1", "--executor", "late_blend"]
        )
        assert args.executor == "late_blend"
        run = parser.parse_args(
            ["run", "envactor/PendulumSwingUp-v0", "--ckpt", "x", "--executor", "late_blend"]
        )
        assert run.executor == "late_blend"
        policy = build_policy("mlp_chunk")
        assert type(make_executor("late_blend", policy)).__name__ == "LateBlend"
    finally:
        EXECUTORS._items.pop("late_blend", None)
        sys.modules.pop("envactor_tinyexec", None)
