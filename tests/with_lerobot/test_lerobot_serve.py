"""``envactor serve`` of the fixture LeRobot ACT, answered for openpi-format clients: envactor's
own ``PolicyClient`` and, where it is installed, the official ``openpi-client`` package. ACT is
deterministic, so each reply equals LeRobot's reference chunk for that observation."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lerobot.policies")
pytest.importorskip("websockets")

from envactor.runtime.serving.client import PolicyClient

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lerobot"
STATE, ENV_STATE = "observation.state", "observation.environment_state"
START_TIMEOUT_S = 240  # imports torch and LeRobot, loads and warms the policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """``envactor serve <fixture ACT> --port P`` in a subprocess; yields P once it listens."""
    port = free_port()
    cmd = [sys.executable, "-m", "envactor.cli", "serve", str(FIXTURES / "act"),
           "--port", str(port), "--max-batch", "4"]  # fmt: skip
    env = {**os.environ, "ENVACTOR_DEBUG": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"envactor serve did not start within {START_TIMEOUT_S} s: {seen}")
            if line is None:
                pytest.fail(f"envactor serve exited with {proc.wait()}: {''.join(seen)}")
            seen.append(line)
            if f"on ws://127.0.0.1:{port}" in line:
                assert line.startswith("envactor serve: lerobot (weights v0)"), line
                break
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference" / "act.npz") as f:
        return dict(f)


def observations(r: dict[str, np.ndarray]) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(one robot's observation, LeRobot's chunk for it) for 4 reference rows."""
    rows = [(0, 0), (1, 2), (3, 1), (5, 2)]
    return [({STATE: r["obs_state"][i, b], ENV_STATE: r["obs_env_state"][i, b]}, r["chunk"][i, b])
            for i, b in rows]  # fmt: skip


def test_envactor_client_gets_lerobots_chunks(server: int) -> None:
    with PolicyClient(port=server) as client:
        meta = client.metadata
        assert meta["policy"] == "lerobot" and meta["action_shape"] == [10, 4]
        spec = {"shape": [4], "dtype": "float32"}
        assert meta["input_features"] == {STATE: spec, ENV_STATE: spec}
        for obs, want in observations(reference()):
            reply = client.infer(obs)
            assert reply["actions"].shape == (10, 4) and reply["actions"].dtype == np.float32
            np.testing.assert_allclose(reply["actions"], want, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
def test_official_openpi_client_gets_lerobots_chunks(server: int) -> None:
    pytest.importorskip("openpi_client")
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(host="127.0.0.1", port=server)
    try:
        assert client.get_server_metadata()["policy"] == "lerobot"
        for obs, want in observations(reference()):
            # openpi clients send float64 state and extra keys (a prompt); both are accepted
            sent = {k: v.astype(np.float64) for k, v in obs.items()}
            reply = client.infer({**sent, "prompt": "push the block"})
            assert np.asarray(reply["actions"]).shape == (10, 4)
            np.testing.assert_allclose(reply["actions"], want, rtol=0, atol=1e-5)
    finally:
        client._ws.close()
