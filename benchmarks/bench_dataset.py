"""Training-window loading: envactor's LeRobot reader vs LeRobot's own ``LeRobotDataset``.

Writes one LeRobot v3.0 dataset (two cameras, AV1 as LeRobot writes by default, keyframe every
2 frames) and reads random training windows from it -- the observation at t with both camera
frames and ``action[t : t + H]`` -- in three ways, in one run:

- LeRobot: ``LeRobotDataset(...)[i]`` with ``delta_timestamps`` for the action chunk (its own
  decoding per item, torchcodec backend);
- envactor, streaming: ``LeRobotDataset.frames(batch)`` (one seek per episode and camera in the
  batch) plus the action windows from the data rows;
- envactor, preloaded: ``ChunkWindows`` decodes each episode once, sequentially, then gathers.
  Its figure includes the one-off decode, spread over the samples drawn.

Prints samples/s of each and the ratios. Needs LeRobot (run it with .venv-lerobot's python:
``make test-lerobot`` sets that venv up).

    .venv-lerobot/bin/python benchmarks/bench_dataset.py --episodes 20 --frames 150
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from envactor.data import ChunkWindows, LeRobotDataset, LeRobotWriter


def make_dataset(root: Path, episodes: int, frames: int, size: tuple[int, int], fps: int) -> None:
    rng = np.random.default_rng(0)
    h, w = size
    feats = {
        "observation.state": {"shape": [6], "dtype": "float32"},
        "action": {"shape": [6], "dtype": "float32"},
        "observation.images.top": {"shape": [h, w, 3], "dtype": "video"},
        "observation.images.wrist": {"shape": [h // 2, w // 2, 3], "dtype": "video"},
    }
    yy, xx = np.mgrid[0:h, 0:w]
    with LeRobotWriter(root, feats, fps, codec="libsvtav1") as writer:
        for e in range(episodes):
            t = np.arange(frames)[:, None, None]
            top = ((xx[None] + 3 * t + 40 * e) % 256).astype(np.uint8)
            top = np.stack([top, (yy[None] + t) % 256 * np.ones_like(top), top // 2], -1)
            top = top.astype(np.uint8)
            writer.add_episode(
                {
                    "observation.state": rng.standard_normal((frames, 6)).astype(np.float32),
                    "action": rng.standard_normal((frames, 6)).astype(np.float32),
                    "observation.images.top": top,
                    "observation.images.wrist": np.ascontiguousarray(top[:, ::2, ::2]),
                },
                task="move",
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--fps", type=int, default=30)
    args = ap.parse_args()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset as LeRobotsDataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bench"
        t0 = time.perf_counter()
        make_dataset(root, args.episodes, args.frames, (args.height, args.width), args.fps)
        print(
            f"dataset: {args.episodes} episodes x {args.frames} frames, cameras "
            f"{args.height}x{args.width} + {args.height // 2}x{args.width // 2}, AV1 g=2; "
            f"written in {time.perf_counter() - t0:.1f} s"
        )
        n_total = args.episodes * args.frames
        rng = np.random.default_rng(1)
        indices = rng.integers(0, n_total, size=args.samples)
        keys = ["observation.state", "observation.images.top", "observation.images.wrist"]
        delta = {"action": [k / args.fps for k in range(args.horizon)]}

        theirs = LeRobotsDataset(
            "bench/x", root=root, delta_timestamps=delta, video_backend="torchcodec"
        )
        theirs[0]  # open files, warm caches
        t0 = time.perf_counter()
        for i in indices:
            theirs[int(i)]
        lerobot_rate = args.samples / (time.perf_counter() - t0)

        ours = LeRobotDataset(root)
        offsets = np.arange(args.horizon)
        ours.frames([0], keys)
        t0 = time.perf_counter()
        for b in range(0, args.samples, args.batch):
            idx = indices[b : b + args.batch]
            ours.frames(idx, keys)
            eps = np.searchsorted(ours.episode_starts, idx, side="right") - 1
            last = ours.episode_starts[eps] + ours.episode_lengths[eps] - 1
            ours.frames(np.minimum(idx[:, None] + offsets, last[:, None]).ravel(), ["action"])
        stream_rate = args.samples / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        windows = ChunkWindows(LeRobotDataset(root), args.horizon, keys)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in range(0, args.samples, args.batch):
            windows.batch(indices[b : b + args.batch])
        gather_s = time.perf_counter() - t0
        preload_rate = args.samples / (load_s + gather_s)
        epoch_rate = n_total / (load_s + gather_s * n_total / args.samples)

    print(f"LeRobot LeRobotDataset[i] (torchcodec):   {lerobot_rate:9.1f} samples/s")
    print(
        f"envactor frames(batch) streaming:          {stream_rate:9.1f} samples/s  "
        f"({stream_rate / lerobot_rate:.2f}x LeRobot)"
    )
    print(
        f"envactor ChunkWindows, {args.samples} samples:       {preload_rate:9.1f} samples/s  "
        f"({preload_rate / lerobot_rate:.2f}x; one-off decode {load_s:.2f} s)"
    )
    print(
        f"envactor ChunkWindows, one epoch ({n_total}): {epoch_rate:9.1f} samples/s  "
        f"({epoch_rate / lerobot_rate:.2f}x LeRobot)"
    )


if __name__ == "__main__":
    main()
