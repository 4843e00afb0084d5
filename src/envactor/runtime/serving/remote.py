"""``RemotePolicy``: a policy server that looks like a local envactor ``Policy`` to the runtime.

The vector actor, the executors and the real-time controller call ``predict``,
``guided_inference``, ``observe``, ``reset`` and ``set_env_seeds`` as usual. Each env id gets its
own connection (so the server batches the rows of one call into one forward pass and keeps
per-env state per connection); the rows of a call are sent on every connection before any reply
is read. The SERVER normalizes inputs and unnormalizes actions, so this side uses identity
normalization. Guided and training-time-RTC calls send each row's GuidanceRequest itself
(remainder, d, s and settings), so the server rebuilds exactly the local mask. Per-env seeds are
forwarded (``set_seed`` control frames) so seeded runs reproduce the local policy's noise.

Observation history: the SERVER keeps it (``n_obs_steps`` from the metadata). This side does not
stack frames (``stacks_history = False``): each request carries the current observation, and the
steps without a request reach the server as ``observe`` control frames (the ``_observe`` hook).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from envactor.chunking.request import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy.base import ACTION_KEY, EnvIds, Policy
from envactor.policy.boundary import ObservationError
from envactor.runtime.serving.client import PolicyClient, RemoteError, infer_message
from envactor.runtime.serving.wire import packb

__all__ = ["RemotePolicy", "params_from_metadata"]

_EPISODE_START = {"__ctrl__": "episode_start", "__experiment__": "", "__task__": "",
                  "__episode_id__": 0}  # fmt: skip


def params_from_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Policy params of a remote policy from the server's metadata (identity normalization)."""
    try:
        horizon, adim = (int(x) for x in meta["action_shape"])
        feats = {
            str(k): {
                "shape": [int(n) for n in v["shape"]],
                "dtype": str(v.get("dtype", "float32")),
                "norm": "identity",
            }
            for k, v in meta["input_features"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            "server metadata needs 'action_shape' [H, A] and 'input_features' {key: {shape, "
            f"dtype}}; got keys {sorted(map(str, meta))} ({type(exc).__name__}: {exc})"
        ) from None
    return {
        "input_features": feats,
        "action_dim": adim,
        "action_norm": "identity",
        "horizon": horizon,
        "n_action_steps": int(meta.get("n_action_steps") or horizon),
        "n_obs_steps": int(meta.get("n_obs_steps") or 1),
        "control_hz": meta.get("control_hz"),
    }


class RemotePolicy(Policy):
    """A policy served by ``envactor serve`` (or any openpi-format server) used as a local one.

    Args:
        host, port, api_key: where the server is; extra keyword arguments go to each
            ``PolicyClient`` (``timeout``, ``retries``, ...).

    Collect-mode exploration is not forwarded (the served policy's ``_explore`` does not run).
    Call ``close()`` (or use ``with``) to close the connections.
    """

    trainable: ClassVar[bool] = False
    stacks_history: ClassVar[bool] = False
    registered_name: ClassVar[str] = "remote"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, **client: Any
    ) -> None:
        probe = PolicyClient(host, port, api_key, **client)
        meta = probe.metadata
        params = params_from_metadata(meta)
        modes: dict[str, Any] = {k: "identity" for k in params["input_features"]}
        modes[ACTION_KEY] = "identity"
        super().__init__({}, Normalizer(modes, {}), **params)
        self.weight_version = int(meta.get("weight_version") or 0)
        self.remote_metadata = dict(meta)
        self.uri = probe.uri
        self._connect = (host, port, api_key, dict(client))
        self._spare: PolicyClient | None = probe
        self._clients: dict[Hashable, PolicyClient] = {}
        self._seeded: dict[Hashable, torch.Generator] = {}

    # ------------------------------------------------------------------ hooks
    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        self._forward_seeds(env_ids)
        msgs = [infer_message(self._row(obs, b)) for b in range(len(env_ids))]
        return self._actions(self._exchange(env_ids, msgs))

    def _guided_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: EnvIds,
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        return self._conditioned(obs, env_ids, request)

    def _prefix_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: EnvIds,
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        return self._conditioned(obs, env_ids, request)

    def _observe(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> None:
        if self.n_obs_steps > 1:
            frames = [dict(self._row(obs, b), __ctrl__="observe") for b in range(len(env_ids))]
            self._exchange(env_ids, frames)

    def _conditioned(
        self, obs: dict[str, torch.Tensor], env_ids: EnvIds, request: GuidanceRequest
    ) -> torch.Tensor:
        """Each row with its own one-env request (rows with nothing to continue go plain)."""
        self._forward_seeds(env_ids)
        msgs = []
        for b in range(len(env_ids)):
            row = request.rows([b])
            msgs.append(infer_message(self._row(obs, b), None if row.is_empty else row))
        return self._actions(self._exchange(env_ids, msgs))

    def _reset(self, env_ids: EnvIds | None) -> None:
        ids = list(self._clients) if env_ids is None else [e for e in env_ids if e in self._clients]
        if ids:
            self._exchange(ids, [_EPISODE_START] * len(ids))

    # ------------------------------------------------------------------ connections
    def close(self) -> None:
        """Close every connection to the server."""
        for client in [*self._clients.values(), *([self._spare] if self._spare else [])]:
            client.close()
        self._clients.clear()
        self._spare = None

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self, env: Hashable) -> PolicyClient:
        client = self._clients.get(env)
        if client is None:
            if self._spare is not None:
                client, self._spare = self._spare, None
            else:
                host, port, api_key, kwargs = self._connect
                client = PolicyClient(host, port, api_key, **kwargs)
            self._clients[env] = client
        return client

    def _forward_seeds(self, env_ids: EnvIds) -> None:
        ids = [e for e in env_ids if e in self._rngs and self._seeded.get(e) is not self._rngs[e]]
        if ids:
            frames = [{"__ctrl__": "set_seed", "seed": self._rngs[e].initial_seed()} for e in ids]
            self._exchange(ids, frames)
            self._seeded.update({e: self._rngs[e] for e in ids})

    def _exchange(self, env_ids: EnvIds, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send every env's frame, then read every reply (so the server can batch them)."""
        clients = [self._client(e) for e in env_ids]
        payloads = [packb(m) for m in msgs]
        sent: list[bool | Exception] = []
        for client, payload in zip(clients, payloads):
            try:
                sent.append(client._send(payload))
            except Exception as exc:  # no connection: raised below
                sent.append(exc)
        replies: list[dict[str, Any]] = []
        failure: Exception | None = None
        for env, client, payload, ok in zip(env_ids, clients, payloads, sent):
            if isinstance(ok, Exception):
                failure = failure or ok
                continue
            try:  # read every reply before raising, so no connection is left out of step
                replies.append(client._finish(payload, ok))
            except RemoteError as exc:
                if failure is None:
                    failure = (
                        ObservationError(f"env {env!r}: {exc}")
                        if exc.kind == "ObservationError"
                        else exc
                    )
            except Exception as exc:  # re-raised below, after the other replies
                failure = failure or exc
        if failure is not None:
            raise failure
        return replies

    def _row(self, obs: Mapping[str, torch.Tensor], b: int) -> dict[str, np.ndarray]:
        return {k: v[b].detach().cpu().numpy() for k, v in obs.items()}

    def _actions(self, replies: list[dict[str, Any]]) -> torch.Tensor:
        chunks = np.stack([np.asarray(r["actions"], dtype=np.float32) for r in replies])
        versions = [
            int(r["weight_version"]) for r in replies if r.get("weight_version") is not None
        ]
        if versions:
            self.weight_version = max(versions)
        return torch.from_numpy(chunks).to(self.device)
