"""Suite-wide settings and shared fixtures: one torch thread (the CI machine has 2 shared cores;
OpenMP spinning across helpers' threads made small training steps 10-20x slower), and a small
checkpoint of the demo's kind (``demo_checkpoint``)."""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small checkpoint of the demo's kind, made once: the pendulum expert's demonstrations,
    ``train`` on a ``flow`` policy with the demo's model settings (H = 8, s = 4, 20 Hz,
    training-time RTC) for a few steps, ``save_policy``. Its numbers are meaningless; it is a
    checkpoint of the demo's shape, with dataset stats."""
    from envactor import save_policy
    from envactor.runtime.collect import collect
    from envactor.train import train

    root = tmp_path_factory.mktemp("demo-ckpt")
    collect(
        "envactor/PendulumSwingUp-v0", episodes=4, out=root / "dataset", num_envs=4, seed=0,
        progress=False, env_kwargs={"action_noise_std": 0.1},
    )  # fmt: skip
    demo_model = [  # the demo's flow model: H = 8, s = 4, 20 Hz, training-time RTC up to d = 4
        "policy.params.horizon=8",
        "policy.params.n_action_steps=4",
        "policy.params.control_hz=20",
        "model.components.velocity.type=flow_prefix_velocity_mlp",
        "policy.params.prefix_max_delay=4",
    ]
    result = train(
        "flow", root / "dataset", out_dir=root / "train", steps=3, batch_size=16, lr=1e-3,
        warmup_steps=1, save_every=3, overrides=demo_model, progress=False,
    )  # fmt: skip
    return save_policy(result.policy, root / "policy", step=result.step)
