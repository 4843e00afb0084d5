"""docs/plugins.md's third-party policy package (``tests/plugin_pkg``), installed for real.

pip builds the package and installs it into a fresh virtualenv (no index, no build isolation:
setuptools comes from this environment). That virtualenv sees this environment's packages
(torch, envactor) through a ``.pth`` file that adds this environment's site directories; the
``--system-site-packages`` switch would show the *base* interpreter's packages instead, which
do not include them. Subprocesses of the virtualenv's python then reach the policy and its
component only through the entry points the package declares. The page shows the package's
files verbatim; the first test checks that, so the page and the package cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "tests" / "plugin_pkg"
PAGE = ROOT / "docs" / "plugins.md"
FILES = [
    "pyproject.toml",
    "src/envactor_plugin_demo/__init__.py",
    "src/envactor_plugin_demo/configs/policy.yaml",
    "src/envactor_plugin_demo/policy.py",
    "src/envactor_plugin_demo/velocity.py",
]
BUILD_LEFTOVERS = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
HOOKS = "_chunk, _loss, _guided_chunk, _prefix_chunk, _explore, _update"


def _fenced(text: str) -> list[str]:
    """The code of every fenced block of a Markdown page."""
    return [m.group(1) for m in re.finditer(r"^```[^\n`]*\n(.*?)^```\s*$", text, re.M | re.S)]


def test_page_shows_the_package_files_verbatim() -> None:
    shipped = sorted(
        p.relative_to(PKG).as_posix()
        for p in PKG.rglob("*")
        if p.is_file()
        and not any(part in ("build", "__pycache__") or part.endswith(".egg-info")
                    for part in p.relative_to(PKG).parts)
    )  # fmt: skip
    assert shipped == sorted(FILES), "a file of tests/plugin_pkg is missing from docs/plugins.md"
    blocks = _fenced(PAGE.read_text())
    for rel in FILES:
        assert (PKG / rel).read_text() in blocks, f"docs/plugins.md does not show {rel} as it is"


def _run(cmd: list[str], cwd: Path, timeout: float = 240) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join(c if len(c) < 80 else c[:40] + "..." for c in cmd)
    assert done.returncode == 0, f"{shown}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtualenv with the package installed by pip (and nothing else)."""
    root = tmp_path_factory.mktemp("plugin-venv")
    venv.create(root / "venv", with_pip=False, symlinks=True)
    python = root / "venv" / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   root).strip()  # fmt: skip
    host = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in host)
    Path(purelib, "_envactor_host_env.pth").write_text(lines)
    src = root / "src"
    shutil.copytree(PKG, src, ignore=BUILD_LEFTOVERS)  # pip builds in the tree: not the repo's
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    _run([*pip, "--no-build-isolation", str(src)], root)
    assert (Path(purelib) / "envactor_plugin_demo" / "configs" / "policy.yaml").is_file()
    return python


@pytest.mark.slow
def test_envactor_policies_lists_the_plugin_with_its_hooks(plugin_python: Path) -> None:
    assert importlib.util.find_spec("envactor_plugin_demo") is None  # only the venv has it
    main = "import sys; from envactor.cli import main; sys.exit(main(sys.argv[1:]))"
    out = _run([str(plugin_python), "-c", main, "policies"], plugin_python.parent).splitlines()
    row = next(i for i, line in enumerate(out) if line.startswith("demo_flow "))
    assert "Flow-matching chunk policy with training-time RTC" in out[row]
    assert out[row + 1].split() == ["hooks:", *HOOKS.split()]
    shown = next(b for b in _fenced(PAGE.read_text()) if b.startswith("demo_flow "))
    assert shown.splitlines() == out[row : row + 2]  # the page quotes the command's output
    assert any(line.startswith("flow ") for line in out)  # the built-ins are still there


SCENARIO = r"""
import json, sys
import numpy as np
from envactor import POLICY_REGISTRY, build_policy, evaluate
from envactor.nn import build_component

facts = {"listed": "demo_flow" in POLICY_REGISTRY.names()}
facts["imported_to_list"] = "envactor_plugin_demo" in sys.modules
block = build_component({"type": "demo_velocity", "horizon": 4, "action_dim": 2, "cond_dim": 3})
facts["component"] = type(block).__module__
facts["policy_imported_for_component"] = "envactor_plugin_demo.policy" in sys.modules

from envactor.runtime.collect import collect
from envactor.train import train
from envactor_plugin_demo.policy import DemoFlow

policy = build_policy("demo_flow")
facts.update(cls=type(policy).__module__ + "." + type(policy).__name__, name=policy.name,
             hooks=policy.hooks(), can_prefix=policy.can_prefix(), can_guide=policy.can_guide(),
             params=type(policy.params).__name__, ema_decay=policy.params.ema_decay,
             velocity=type(policy.components["velocity"]).__name__)
try:
    build_policy("demo_flow", overrides=["policy.params.num_steps=0"])
except ValueError as err:
    facts["bad_param"] = str(err)

collect("envactor/PendulumSwingUp-v0", episodes=4, out="demos", num_envs=4, seed=0,
        progress=False, env_kwargs={"max_episode_steps": 60})
result = train("demo_flow", "demos", out_dir="run", steps=30, batch_size=32, lr=1e-3,
               warmup_steps=1, save_every=30, progress=False)
trained = result.policy
facts.update(updates=trained.updates, stats=result.stats_sources)

# normalization: what the hook sees, and what comes back out
seen = {}

class Spy(DemoFlow):
    def _prefix_chunk(self, obs, env_ids, request, prefix):
        seen.update(obs=obs["observation.state"].numpy().copy(), prefix=prefix.numpy().copy())
        return super()._prefix_chunk(obs, env_ids, request, prefix)

spy = Spy(trained.components, trained.normalizer, **trained.params.model_dump())
raw = np.array([[-1.0, 0.0, 0.5]], np.float32)
rem = np.array([[0.5], [1.0], [-0.5], [0.25]], np.float32)
out = spy.guided_inference({"observation.state": raw}, prev_chunk=[rem], delay=2, method="prefix")
stats, eps = trained.normalizer.stats, trained.normalizer.eps
s, a = stats["observation.state"], stats["action"]
want_obs = (raw - s["mean"]) / (s["std"] + eps)
padded = np.concatenate([rem, np.repeat(rem[-1:], 4, 0)])[None]
want_prefix = 2 * (padded - a["min"]) / (a["max"] - a["min"] + eps) - 1
facts.update(obs_err=float(np.abs(seen["obs"] - want_obs).max()),
             prefix_err=float(np.abs(seen["prefix"] - want_prefix).max()),
             obs_moved=float(np.abs(seen["obs"] - raw).max()),
             committed_err=float(np.abs(out[0, :2] - rem[:2]).max()))

# EMA: acting (prefix chunks included) uses the EMA weights, which the checkpoint stores
def prefix_chunk(p):
    p.set_env_seeds({0: 7})
    return p.guided_inference({"observation.state": raw}, prev_chunk=[rem], delay=2,
                              method="prefix")

mine = prefix_chunk(trained)
saved = build_policy(result.checkpoint)
live = build_policy(result.checkpoint)
live.load_weights(trained.learn_mode.state_dict()["model"])  # the training weights
facts.update(ema_vs_checkpoint=float(np.abs(mine - prefix_chunk(saved)).max()),
             ema_vs_training=float(np.abs(mine - prefix_chunk(live)).max()))

for executor in ("rtc_trained", "rtc", "blend"):
    run = evaluate(result.checkpoint, "envactor/PendulumSwingUp-v0", executor=executor,
                   delay=2, num_envs=2, num_episodes=2, env_kwargs={"max_episode_steps": 40})
    summary = run.summary()
    facts[executor] = [summary["episodes"], summary["length_mean"], summary["return_mean"]]
print(json.dumps(facts))
"""


@pytest.mark.slow
def test_installed_plugin_builds_trains_and_runs_every_executor(
    plugin_python: Path, tmp_path: Path
) -> None:
    """Through its entry points only: the policy and its component are found, its YAML and
    pydantic params are used, training fits it to the data (stats, EMA, ``_update``), and its
    ``_prefix_chunk`` gets normalization and the EMA weights from the base class."""
    facts = json.loads(_run([str(plugin_python), "-c", SCENARIO], tmp_path).splitlines()[-1])
    assert facts["listed"] and not facts["imported_to_list"]
    assert facts["component"] == "envactor_plugin_demo.velocity"
    assert not facts["policy_imported_for_component"]  # the components entry point alone
    assert facts["cls"] == "envactor_plugin_demo.policy.DemoFlow" and facts["name"] == "demo_flow"
    assert facts["hooks"] == HOOKS.split(", ") and facts["can_prefix"] and facts["can_guide"]
    assert facts["params"] == "DemoFlowParams" and facts["ema_decay"] == 0.99
    assert facts["velocity"] == "DemoVelocity"
    assert "policy.params.num_steps" in facts["bad_param"]
    assert facts["updates"] == 30
    assert set(facts["stats"]) == {"observation.state", "action"}
    assert facts["obs_err"] < 1e-5 and facts["prefix_err"] < 1e-5
    assert facts["obs_moved"] > 0.1  # the hook saw normalized values, not the raw ones
    assert facts["committed_err"] < 1e-5
    assert facts["ema_vs_checkpoint"] < 1e-6 and facts["ema_vs_training"] > 1e-4
    for executor in ("rtc_trained", "rtc", "blend"):
        episodes, length, ret = facts[executor]
        assert episodes == 2 and length == 40 and ret < 0, (executor, facts[executor])
