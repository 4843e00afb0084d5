"""envactor.distributed on a real local Ray instance (2 CPUs): propagation by version, one put
per version, a worker killed mid-run, DAgger improving the pendulum policy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from test_distributed_local import zero_mean_policy  # noqa: E402

from envactor.distributed.broadcast import WeightPublisher  # noqa: E402
from envactor.distributed.payload import policy_weights  # noqa: E402
from envactor.distributed.pool import WorkerPool, init_ray  # noqa: E402
from envactor.distributed.store import store_actor  # noqa: E402
from envactor.distributed.worker import checkpoint_files  # noqa: E402
from envactor.policy.build import save_policy  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    policy = zero_mean_policy()
    path = save_policy(policy, tmp_path_factory.mktemp("ckpt") / "policy")
    return checkpoint_files(path)


def _pool(ckpt: dict[str, bytes], n: int, store_name: str, **kw: Any) -> WorkerPool:
    worker_kwargs = dict(policy=ckpt, task="Pendulum-v1", num_envs=2, executor="sync")
    worker_kwargs.update(kw.pop("worker_kwargs", {}))
    return WorkerPool(n, worker_kwargs, store=store_actor(store_name), cpus_per_worker=0.5, **kw)


def _wait(cond: Any, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def test_zero_weights_propagate_by_version(cluster: None, ckpt: dict[str, bytes]) -> None:
    policy = zero_mean_policy()
    with _pool(ckpt, 2, "t-zero", worker_kwargs={"pace_hz": 200}) as pool:
        pub = WeightPublisher(pool.store)
        pub.publish(policy, 1)
        pool.wait_ready()
        result: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: result.update(rep=pool.collect(range(8), seed=0, per_call=4))
        )
        runner.start()
        workers = list(pool.workers)
        _wait(lambda: all(pool.status()["workers"].get(w, {}).get("steps", 0) >= 40
                          for w in workers))  # fmt: skip
        zeros = {k: torch.zeros_like(v) for k, v in policy_weights(policy).items()}
        pub.publish(zeros, 2)
        runner.join(timeout=120)
        assert not runner.is_alive()
        status = pool.status()
    rep = result["rep"]
    assert rep.finished == 8 and not rep.dropped
    assert all(status["workers"][w]["version"] == 2 for w in workers)
    assert status["max_staleness"] == 0
    saw_both = set()
    for ep in rep.episodes:
        v, a = ep.trajectory["weight_version"], ep.trajectory["action"]
        assert set(np.unique(v)) <= {1, 2} and np.all(np.diff(v) >= 0)
        assert np.all(a[v == 2] == 0.0), f"episode {ep.episode}: v2 steps must act exactly zero"
        old = a[v == 1]
        assert old.size == 0 or np.count_nonzero(old) == old.size  # random weights: nonzero
        switch = np.flatnonzero(v == 2)
        if 0 < len(switch) < len(v):
            assert switch[0] % 4 == 0  # at a chunk boundary (sync, s = 4): the first new chunk
            saw_both.add(ep.worker)
    assert saw_both == set(workers), "each worker switched versions mid-episode"


def test_one_put_per_version_whatever_the_workers(
    cluster: None, ckpt: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    puts: list[int] = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda v, **kw: puts.append(1) or real_put(v, **kw))
    policy = zero_mean_policy()
    with _pool(ckpt, 3, "t-puts") as pool:
        pub = WeightPublisher(pool.store)
        for version in (1, 2, 3):
            with torch.no_grad():
                for p in policy.parameters():
                    p.add_(0.01)
            pub.publish(policy, version)
            rep = pool.collect(range(version * 100, version * 100 + 6), seed=0, per_call=2)
            assert {int(v) for e in rep.episodes for v in e.trajectory["weight_version"]} == {
                version
            }
        loads = ray.get([w.weight_loads.remote() for w in pool.workers.values()])
        status = pool.status()
    assert len(puts) == 3 and pub.puts == 3 and status["publishes"] == 3
    ids = {}
    for worker_loads in loads:
        for version, object_id in worker_loads:
            assert ids.setdefault(version, object_id) == object_id  # the same object for all
    assert sorted(ids) == [1, 2, 3]


def test_killed_worker_is_replaced_and_episodes_add_up(
    cluster: None, ckpt: dict[str, bytes]
) -> None:
    policy = zero_mean_policy()
    ids = list(range(10))
    with _pool(ckpt, 2, "t-kill", faults={"w0": 60}) as pool:
        WeightPublisher(pool.store).publish(policy, 1)
        rep = pool.collect(ids, seed=5, per_call=4)
        assert pool.replaced == 1 and "w0" not in pool.workers and len(pool.workers) == 2
    finished = [e.episode for e in rep.episodes]
    assert len(rep.failures) == 1 and "w0 died" in rep.failures[0]
    assert len(rep.dropped) == 2  # w0 had 2 envs mid-episode at step 60 (episodes are 200)
    assert len(finished) == len(set(finished)) and not set(finished) & set(rep.dropped)
    assert sorted(finished + rep.dropped) == ids and rep.finished + len(rep.dropped) == 10
    assert all(e.worker != "w0" and len(e.trajectory["action"]) == 200 for e in rep.episodes)
    # the survivors' episodes are exactly what one in-process worker produces for those ids
    with WorkerPool(0, {"policy": ckpt, "task": "Pendulum-v1", "num_envs": 2}) as local:
        WeightPublisher(local.store).publish(policy, 1)
        ref = {e.episode: e for e in local.collect(finished, seed=5).episodes}
    for e in rep.episodes:
        assert np.array_equal(e.trajectory["action"], ref[e.episode].trajectory["action"])


def test_dagger_improves_the_pendulum_policy(cluster: None, tmp_path: Path) -> None:
    from envactor.distributed.dagger import OnlineSettings, train_online

    rows = train_online(OnlineSettings.quick(out=tmp_path / "online", workers=2), progress=False)
    assert [r["version"] for r in rows] == [0, 1, 2]
    first, last = rows[0]["eval_success"], rows[-1]["eval_success"]
    assert last >= first + 0.5, rows  # measured: 0.00 -> 1.00 on 8 fixed eval seeds
    assert rows[-1]["dataset_episodes"] == 4 + 2 * 8 and rows[-1]["dropped"] == 0
    assert (tmp_path / "online" / "curve.png").is_file()


def test_bad_weights_fail_loudly_naming_the_worker(cluster: None, ckpt: dict[str, bytes]) -> None:
    policy = zero_mean_policy()
    with _pool(ckpt, 1, "t-bad") as pool:
        pub = WeightPublisher(pool.store)
        pub.publish({f"actor.{k}": v for k, v in policy_weights(policy).items()}, 1)
        with pytest.raises(RuntimeError, match=r"worker w0 failed: .*match no tensor"):
            pool.collect(range(2))
        assert pool.replaced == 0  # an error in the weights is not a crash to retry
        pub.publish(policy, 2)  # the worker survived and takes the next, good version
        assert pool.collect(range(2)).finished == 2


def test_worker_killed_during_evaluation_is_counted_and_excluded(
    cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from envactor.distributed.dagger import EVAL_BASE, OnlineSettings, train_online

    init = save_policy(zero_mean_policy(), tmp_path / "init")  # pendulum-sized, no training
    s = OnlineSettings.quick(out=tmp_path / "online", workers=2, init=init, iterations=0,
                             num_envs=2, eval_episodes=8)  # fmt: skip
    # the curve's first row is the evaluation of version 0: w1 takes ids 0-3, w0 ids 4-7 and
    # dies at its vector step 60, mid-way through episodes 4 and 5 (200 steps each)
    (row,) = train_online(s, progress=False, faults={"w0": 60})
    assert (row["eval_episodes"], row["eval_dropped"]) == (6, 2)
    assert "over 6 episodes (2 dropped)" in capsys.readouterr().out
    # success and return are over the 6 finished episodes: exactly what one in-process worker
    # gets for those ids
    finished = [EVAL_BASE + i for i in (0, 1, 2, 3, 6, 7)]
    noise = {"action_noise_std": s.action_noise_std}
    kwargs = {"policy": checkpoint_files(init), "task": s.task, "num_envs": 2,
              "executor": s.executor, "env_kwargs": noise}  # fmt: skip
    with WorkerPool(0, kwargs) as local:
        ref = local.collect(finished, seed=s.seed).episodes
    assert row["eval_return"] == float(np.mean([e.metrics["episode_return"] for e in ref]))
    succ = [e.metrics["success"] for e in ref if e.metrics["success"] is not None]
    assert len(succ) == 6 and row["eval_success"] == float(np.mean(succ))
    curve = (tmp_path / "online" / "curve.csv").read_text().splitlines()
    header, first = curve[0].split(","), curve[1].split(",")
    assert (
        first[header.index("eval_dropped")] == "2" and first[header.index("eval_episodes")] == "6"
    )
