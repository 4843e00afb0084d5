"""envactor.distributed without a cluster: payload, store, name maps, version stamps, DAgger."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envactor.distributed import handles
from envactor.distributed.broadcast import (
    SyncEvery,
    WeightPublisher,
    WeightSubscriber,
    load_partial,
    parse_sync_every,
)
from envactor.distributed.payload import pack, policy_weights, unpack
from envactor.distributed.store import WeightStore
from envactor.normalize import Normalizer
from envactor.policy.build import build_policy, save_policy
from envactor.runtime.actor import EpisodeMetrics, EpisodesStarted, VectorActor
from envactor.runtime.evaluate import make_vector_env
from envactor.weights import WeightsError


def zero_mean_policy(name: str = "mlp_chunk", **kw: str) -> object:
    """A pendulum-sized policy whose zero output unnormalizes to exactly zero torque."""
    torch.manual_seed(0)
    over = ["policy.params.action_norm=mean_std", *(f"{k}={v}" for k, v in kw.items())]
    policy = build_policy(name, overrides=over)
    policy.normalizer = Normalizer(
        {"observation.state": "mean_std", "action": "mean_std"},
        {
            "observation.state": {"mean": np.zeros(3), "std": np.ones(3)},
            "action": {"mean": np.zeros(1), "std": np.ones(1)},
        },
    )
    return policy


# ---------------------------------------------------------------------------- payload
def test_payload_round_trip_is_exact_and_zero_copy() -> None:
    sd = {
        "a.w": torch.randn(4, 3),
        "a.b": torch.arange(5, dtype=torch.int64),
        "b.h": torch.randn(7).to(torch.bfloat16),
        "b.t": torch.randn(3, 4).t(),  # non-contiguous
    }
    payload = pack(sd, version=3)
    assert payload.version == 3
    assert payload.viewed == {"b.h": "bfloat16"}
    assert payload.nbytes == 4 * 12 + 8 * 5 + 2 * 7 + 4 * 12
    back = unpack(payload)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # tensors share the arrays' memory: no copy on the worker side
    assert back["a.w"].data_ptr() == payload.tensors["a.w"].ctypes.data


def test_pack_refuses_non_tensors() -> None:
    with pytest.raises(TypeError, match=r"weights 'x': expected a torch.Tensor, got list"):
        pack({"x": [1.0]}, 0)  # type: ignore[dict-item]


# ---------------------------------------------------------------------------- store
def test_store_versions_sync_and_staleness() -> None:
    store = WeightStore()
    assert store.sync("w0", -1) is None  # nothing published yet
    assert store.publish(1, ["ref1"], 100) == 1
    with pytest.raises(ValueError, match="version 1 is not newer than the store's 1"):
        store.publish(1, ["ref1b"])
    with pytest.raises(TypeError, match="one-element list"):
        store.publish(2, "ref2")  # type: ignore[arg-type]
    assert store.sync("w0", -1, steps=5) == (1, ["ref1"])
    store.ack("w0", 1)
    assert store.sync("w0", 1, steps=9) is None  # up to date: no reference sent
    store.publish(4, ["ref4"])
    store.sync("w1", 1)
    st = store.status()
    assert st["version"] == 4 and st["publishes"] == 2
    assert st["workers"]["w0"]["staleness"] == 3 and st["workers"]["w0"]["steps"] == 9
    assert st["max_staleness"] == 3
    assert not store.acked_all(4, ["w0", "w1"])
    store.ack("w0", 4)
    store.ack("w1", 4)
    assert store.acked_all(4, ["w0", "w1"]) and store.status()["max_staleness"] == 0


def test_parse_sync_every() -> None:
    assert parse_sync_every("chunk") == SyncEvery("chunk")
    assert parse_sync_every("episode") == SyncEvery("episode")
    assert parse_sync_every("steps:25") == SyncEvery("steps", 25)
    assert parse_sync_every(10) == SyncEvery("steps", 10)
    for bad in ("chunks", "steps:x", 0, "steps:0"):
        with pytest.raises(ValueError, match="sync_every"):
            parse_sync_every(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- partial loads
def test_load_partial_with_name_map_and_errors() -> None:
    policy = build_policy("flow")
    learner = build_policy("flow")
    for p in learner.parameters():
        torch.nn.init.constant_(p, 0.5) if p.requires_grad else None
    before_enc = {k: v.clone() for k, v in policy.components["encoder"].state_dict().items()}
    sent = {
        k.replace("velocity.", "actor.", 1): v
        for k, v in policy_weights(learner, ["velocity"]).items()
    }
    # the learner calls its velocity net "actor": mapped, loaded in place, encoder untouched
    ptr = next(policy.components["velocity"].parameters()).data_ptr()
    assert load_partial(policy, sent, name_map={"actor": "velocity"}, version=7) == ["velocity"]
    assert policy.weight_version == 7
    assert all(torch.all(p == 0.5) for p in policy.components["velocity"].parameters())
    assert next(policy.components["velocity"].parameters()).data_ptr() == ptr
    for k, v in policy.components["encoder"].state_dict().items():
        assert torch.equal(v, before_enc[k])
    # without the map every name is unmatched: an error, nothing copied
    fresh = build_policy("flow")
    snapshot = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(WeightsError, match="match no tensor of its components"):
        load_partial(fresh, sent)
    # a component sent in part is an error too
    part = {k: v for k, v in policy_weights(learner, ["velocity"]).items() if "bias" not in k}
    with pytest.raises(WeightsError, match="only in part"):
        load_partial(fresh, part)
    assert all(torch.equal(v, snapshot[k]) for k, v in fresh.state_dict().items())


def test_subscriber_pulls_only_on_change(tmp_path: Path) -> None:
    policy = zero_mean_policy()
    store = handles.local(WeightStore())
    pub = WeightPublisher(store)
    sub = WeightSubscriber(policy, store, "w0")
    assert sub.version == -1 and not sub.check()
    info = pub.publish({k: torch.zeros_like(v) for k, v in policy_weights(policy).items()})
    assert info.version == 0 and pub.puts == 1
    assert sub.check() and sub.version == 0
    assert not sub.check()  # same version: no fetch, no load
    assert len(sub.loads) == 1 and sub.loads[0] == (0, info.object_id)
    out = policy.predict({"observation.state": np.ones((2, 3), np.float32)})
    assert np.array_equal(out, np.zeros_like(out))
    # a published version is a snapshot: training the learner after publishing changes nothing
    learner = zero_mean_policy()
    pub.publish(learner, 5)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(1.0)
    assert sub.check() and sub.version == 5
    for k, v in policy.state_dict().items():
        assert torch.equal(v, zero_mean_policy().state_dict()[k]), k
    assert store.status.remote().value["workers"]["w0"]["staleness"] == 0


# ---------------------------------------------------------------------------- actor + stamps
def test_stream_splits_give_the_same_episodes() -> None:
    policy = zero_mean_policy()
    envs = make_vector_env("Pendulum-v1", 2)
    whole = VectorActor(policy, "sync").run(envs, 4, seed=3, max_steps=None)
    parts: dict[int, EpisodeMetrics] = {}
    started: list[int] = []
    for ids in ([3, 1], [0, 2]):
        for ev in VectorActor(policy, "sync").stream(envs, ids, seed=3):
            if isinstance(ev, EpisodesStarted):
                started += ev.episodes
            else:
                parts[ev.episode] = ev
    envs.close()
    assert started == [3, 1, 0, 2]
    for m in whole:
        assert parts[m.episode].episode_return == pytest.approx(m.episode_return, abs=0)
        assert parts[m.episode].seed == 3 + m.episode


def test_actions_carry_the_version_of_their_chunk() -> None:
    """naive_async, d=2, s=2: a version loaded at a request shows up d steps later."""
    policy = zero_mean_policy(**{"policy.params.n_action_steps": "2"})
    actor = VectorActor(policy, "naive_async", delay=2, n_action_steps=2)
    requests = []

    def bump() -> None:
        requests.append(len(requests))
        policy.weight_version = len(requests)  # version k for the k-th request

    actor.executor.before_request = bump
    envs = make_vector_env("Pendulum-v1", 1)
    (m,) = actor.run(envs, 1, record=True, max_steps=None)
    envs.close()
    v = m.trajectory["weight_version"]
    assert len(v) == 200 and m.weight_version == v[-1]
    # request 1 at t=0 (ready at once), then every s=2 steps: t=2,4,... each ready at t+2
    assert v[:6].tolist() == [1, 1, 1, 1, 2, 2]
    assert np.all(np.diff(v) >= 0)
    changes = np.flatnonzero(np.diff(v)) + 1
    assert np.all(changes % 2 == 0) and v[-1] == len(requests) - 1


# ---------------------------------------------------------------------------- DAgger, no Ray
def test_train_online_cli_in_process_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "online"
    cmd = [sys.executable, "-m", "envactor.cli", "train-online", "--workers", "0", "--quick",
           "--iterations", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # each row says how many episodes the success and return are over, and how many dropped
    assert "over 8 episodes (0 dropped)" in res.stdout
    assert "iteration 1: version 1, collected 8 episodes (0 dropped), eval success" in res.stdout
    state = json.loads((out / "state.json").read_text())
    assert state["iteration"] == 1 and state["version"] == 1
    assert (out / "checkpoints" / "v0001" / "meta.json").is_file()
    # a second start without --resume refuses to overwrite
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr

    from envactor.distributed.dagger import OnlineSettings, train_online

    rows = train_online(
        OnlineSettings.quick(out=out, workers=0, iterations=2, resume=True), progress=False
    )
    assert [r["version"] for r in rows] == [0, 1, 2]
    assert build_policy(out / "checkpoints" / "v0002").weight_version == 2
    with open(out / "curve.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in table] == [0, 1, 2]
    assert [(r["eval_episodes"], r["eval_dropped"]) for r in table] == [("8", "0")] * 3
    assert [(r["episodes"], r["dropped"]) for r in table] == [("0", "0"), ("8", "0"), ("8", "0")]
    assert (out / "curve.png").stat().st_size > 1000
    assert not (out / "data" / "agg_0001").exists() and (out / "data" / "agg_0002").is_dir()
    saved = build_policy(out / "checkpoints" / "v0002")
    save_policy(saved, tmp_path / "copy")  # a normal checkpoint: loads and saves


@pytest.mark.parametrize(
    ("sync_every", "expected"),
    [
        # 2 envs, episodes 0 and 1 together then 2 alone, 200 steps each, s = 4: 50 + 50
        # batched requests; every mode also checks once when the call starts
        ("chunk", 1 + 100),  # before every batched request
        ("episode", 1 + 2),  # at each batch of episode starts
        ("steps:50", 1 + 8),  # vector steps 0, 50, ..., 350
    ],
)
def test_sync_every_decides_when_workers_check(sync_every: str, expected: int) -> None:
    from envactor.distributed.pool import WorkerPool

    policy = zero_mean_policy()
    kwargs = {"policy": "mlp_chunk", "task": "Pendulum-v1", "num_envs": 2, "sync_every": sync_every}
    with WorkerPool(0, kwargs) as pool:
        (worker,) = pool.workers.values()
        worker.policy.normalizer = policy.normalizer
        WeightPublisher(pool.store).publish(policy, 1)
        checks = 0
        real = worker.subscriber.check

        def counting() -> bool:
            nonlocal checks
            checks += 1
            return real()

        worker.subscriber.check = counting  # type: ignore[method-assign]
        events = list(worker.rollout([0, 1, 2], seed=0))
    assert [e.episodes for e in events if isinstance(e, EpisodesStarted)] == [[0, 1], [2]]
    assert worker.steps == 400 and checks == expected


# ---------------------------------------------------------------------------- refused up front
def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting Ray or training from here on fails the test."""
    import envactor.distributed.dagger as dagger
    import envactor.distributed.pool as pool

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(pool, "init_ray", forbidden)
    monkeypatch.setattr(dagger, "_bootstrap", forbidden)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--executor", "foo"], "argument --executor: unknown executor 'foo'; known executors: "),
        (["--executor", "rtc_identty"], "did you mean 'rtc_identity'?"),
        (["--sync-every", "steps:0"], "argument --sync-every: expected 'chunk', 'episode'"),
        (["--lr", "nan"], "argument --lr: expected a finite number > 0, got 'nan'"),
        (["--num-envs", "0"], "argument --num-envs: expected an integer >= 1, got '0'"),
        (["--iterations", "-1"], "argument --iterations: expected an integer >= 0, got '-1'"),
        (["--workers", "-1"], "argument --workers: expected an integer >= 0, got '-1'"),
    ],
)  # fmt: skip
def test_train_online_bad_flags_are_refused_while_parsing(
    flags: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from envactor.cli import main

    _no_work(monkeypatch)
    out = tmp_path / "online"
    with pytest.raises(SystemExit) as exc:
        main(["train-online", "--workers", "2", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


LEROBOT_ACT = Path(__file__).parent / "fixtures" / "lerobot" / "act"


def test_train_online_checks_the_rest_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from envactor.cli import main
    from envactor.distributed.dagger import OnlineSettings, train_online

    _no_work(monkeypatch)
    out = tmp_path / "online"
    cases = [
        (["--horizon", "4", "--n-action-steps", "6"], "--n-action-steps must be <= --horizon (4)"),
        (["--init", str(tmp_path / "nope")], f"--init: checkpoint {tmp_path / 'nope'} does not"),
        (["envactor/PendulumSwingUp-v9"], "unknown envactor task 'envactor/PendulumSwingUp-v9'"),
        (["--init", str(LEROBOT_ACT)], "is a LeRobot checkpoint: LeRobot policies are acting-only"),
    ]
    for flags, expected in cases:
        assert main(["train-online", "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
    # the library refuses the same settings, naming its fields, before writing anything
    bad = [
        ({"executor": "foo"}, ValueError, "unknown executor 'foo'"),
        ({"eval_episodes": 0}, ValueError, "eval_episodes: expected an int >= 1, got 0"),
        ({"lr": float("inf")}, ValueError, "lr: expected a finite number > 0, got inf"),
        ({"sync_every": "always"}, ValueError, "sync_every: expected 'chunk'"),
        ({"n_action_steps": 9}, ValueError, "n_action_steps: expected <= horizon=8, got 9"),
        ({"task": "nope"}, KeyError, "unknown envactor task 'nope'"),
    ]
    for kw, kind, expected in bad:
        with pytest.raises(kind, match=expected):
            train_online(OnlineSettings.quick(out=out, workers=2, **kw), progress=False)
    assert not out.exists()
