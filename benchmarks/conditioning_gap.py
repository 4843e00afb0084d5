"""How much of the prefix's effect each sampler reproduces (docs/chunking.md, "Guided RTC at
d >= 3"): an offline measure of conditioning on the replans of real episodes.

A chunk planned from the observation at t assumes that its own first d actions run; in fact the
remainder of the previous chunk does. What the new chunk should do from index d on is what the
policy would plan *given* those d committed actions. The checkpoint's training-time-RTC sampler
(``rtc_trained``, which holds to d = 4 on the demo) is the reference for that conditional.

Situations: the (observation, remainder) pairs at every replan of ``--episodes`` episodes run
with ``rtc_trained`` at delay d and s = d (the demo's settings). For each, K samples of each
sampler give the mean of the executed part, indices d .. d + s - 1, and per sampler

    miss = mean |mean_sampler - mean_ref|        (action units)

against the reference's mean; ``plain`` (unconditioned sampling) gives the gap to close, a second
reference estimate the floor of K-sample noise, and ``closed = 1 - miss / gap`` (over all
situations) the fraction of the prefix's effect a sampler reproduces. ``prefix`` is the mean
|new_i - Y_i| over the frozen i < d.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/conditioning_gap.py \
        --ckpt runs/demo-before/policy [--delays 1 2 3 4] [--samples 32]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from envactor import build_policy
from envactor.chunking.request import GuidanceRequest
from envactor.policy.base import Policy
from envactor.runtime.actor import VectorActor
from envactor.runtime.evaluate import make_vector_env
from envactor.runtime.executors import EXECUTORS, EnvState
from envactor.runtime.executors.bid import BIDExecutor

S = "observation.state"


def situations(
    policy: Policy, task: str, d: int, episodes: int, seed: int, noise: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(observation, remainder) at every replan of ``rtc_trained`` episodes at delay d."""
    found: list[tuple[np.ndarray, np.ndarray]] = []

    class Recording(EXECUTORS.get("rtc_trained")):  # type: ignore[misc]
        def _request(
            self, env_ids: list[Any], obs: Mapping[Any, Any], states: Mapping[Any, EnvState]
        ) -> np.ndarray:
            for e in env_ids:
                rest = self._remainder(states[e])
                if len(rest) >= d:
                    found.append((np.asarray(obs[e][S], np.float32), rest.copy()))
            return super()._request(env_ids, obs, states)

    envs = make_vector_env(task, min(16, episodes), action_noise_std=noise)
    try:
        ex = Recording(policy, delay=d, n_action_steps=max(d, 1))
        VectorActor(policy, ex).run(envs, episodes, seed=seed)
    finally:
        envs.close()
    return found


def samplers(policy: Policy, d: int, k: int) -> dict[str, Callable[[dict, GuidanceRequest], Any]]:
    """name -> f(batch of K copies, request of K copies) -> (K, H, A)."""
    bid = BIDExecutor(policy, delay=d, n_action_steps=max(d, 1), num_samples=16)

    def guided(request: GuidanceRequest, **kw: Any) -> GuidanceRequest:
        return request.replace(method="guided", **kw)

    return {
        "reference": lambda b, r: policy.guided_inference(b, request=r.replace(method="prefix")),
        "reference2": lambda b, r: policy.guided_inference(b, request=r.replace(method="prefix")),
        "plain": lambda b, r: policy.predict(b),
        "blend": lambda b, r: policy.guided_inference(b, request=r.replace(method="blend")),
        "rtc b5 n5": lambda b, r: policy.guided_inference(b, request=guided(r)),
        "rtc_identity b5 n5": lambda b, r: policy.guided_inference(
            b, request=guided(r, jacobian="identity")
        ),
        "rtc b20 n5": lambda b, r: policy.guided_inference(b, request=guided(r, beta=20.0)),
        "bid16 coherence": lambda b, r: bid.infer(b, list(range(k)), r),
    }


def measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = build_policy(args.ckpt)
    slow = build_policy(args.ckpt, overrides=["policy.params.num_steps=20"])
    k = args.samples
    for d in args.delays:
        s = max(d, 1)
        found = situations(policy, args.task, d, args.episodes, args.seed, args.noise)
        rng = np.random.default_rng(0)
        picks = rng.choice(len(found), size=min(args.situations, len(found)), replace=False)
        fns = samplers(policy, d, k)
        fns["rtc b20 n20"] = lambda b, r: slow.guided_inference(
            b, request=r.replace(method="guided", beta=20.0)
        )
        means: dict[str, list[np.ndarray]] = {name: [] for name in fns}
        prefix: dict[str, list[float]] = {name: [] for name in fns}
        for i in picks:
            obs, rest = found[int(i)]
            batch = {S: np.repeat(obs[None], k, axis=0)}
            request = GuidanceRequest.build([rest] * k, d, horizon=policy.params.horizon)
            for name, fn in fns.items():
                out = np.asarray(fn(batch, request))
                means[name].append(out[:, d : d + s].mean(axis=0))
                prefix[name].append(float(np.abs(out[:, :d] - rest[None, :d]).mean()))
        ref = np.stack(means["reference"])
        gap = float(np.abs(np.stack(means["plain"]) - ref).mean())
        row: dict[str, Any] = {"d": d, "s": s, "situations": len(picks), "K": k, "gap": gap}
        for name in fns:
            if name == "reference":
                continue
            miss = float(np.abs(np.stack(means[name]) - ref).mean())
            row[name] = {"miss": round(miss, 4), "closed": round(1 - miss / gap, 3),
                         "prefix": round(float(np.mean(prefix[name])), 4)}  # fmt: skip
        print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--ckpt", default="runs/demo/policy")
    p.add_argument("--task", default="envactor/PendulumSwingUp-v0")
    p.add_argument("--delays", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--situations", type=int, default=200, help="replans measured per d")
    p.add_argument("--samples", type=int, default=32, help="K samples per sampler and replan")
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--noise", type=float, default=0.1)
    measure(p.parse_args(argv))


if __name__ == "__main__":
    main()
