"""``RemotePolicy``: a policy server that looks like a local envactor ``Policy`` to the runtime.

The vector actor and the executors call ``predict``, ``guided_inference``, ``reset`` and
``set_env_seeds`` as usual. Each env id gets its own connection (so the server batches the rows
of one call into one forward pass and keeps per-env state per connection); the rows of a call
are sent on every connection before any reply is read. The SERVER normalizes inputs and
unnormalizes actions, so this side uses identity normalization. Per-env seeds are forwarded
(``set_seed`` control frames) so seeded runs reproduce the local policy's noise.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from envactor.chunking.masks import SCHEDULES, prefix_weights
from envactor.normalize import Normalizer
from envactor.policy.base import ACTION_KEY, EnvIds, Policy, PolicyError
from envactor.policy.boundary import ObservationError
from envactor.runtime.client import PolicyClient, RemoteError, infer_message
from envactor.runtime.wire import packb

__all__ = ["RemotePolicy", "params_from_metadata", "recover_guidance"]

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
        "control_hz": meta.get("control_hz"),
    }


def recover_guidance(
    prefix: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, int, int, str] | None:
    """(remainder (L, A), d, s, schedule) that make the server rebuild exactly ``weights``.

    ``Policy._guided_chunk`` receives the padded prefix Y (H, A) and the mask W (H,), not the
    remainder and d that produced them. W is 1 on the d frozen actions, decays on the overlap
    and is 0 from the first index the remainder does not reach, so L = last nonzero index + 1
    and d = the count of leading ones; s and the schedule are found by matching W. Positions
    where W is 0 do not influence the result, so cutting the remainder there changes nothing.
    Returns None when W is all zero (nothing to continue: a plain request).
    """
    horizon = int(weights.shape[0])
    w = np.asarray(weights, dtype=np.float32)
    nonzero = np.flatnonzero(w > 0)
    if nonzero.size == 0:
        return None
    length = int(nonzero[-1]) + 1
    ones = int(np.argmin(w == 1.0)) if not np.all(w == 1.0) else horizon
    delay = min(ones, length)
    for schedule in SCHEDULES:
        for s in (horizon - length, *range(horizon + 1)):
            cand = prefix_weights(delay, s, horizon, schedule)  # type: ignore[arg-type]
            cand[length:] = 0.0
            if np.allclose(cand, w, rtol=0.0, atol=1e-6):
                return np.array(prefix[:length], dtype=np.float32), delay, s, schedule
    raise PolicyError(
        f"RemotePolicy: guidance weights {np.round(w, 4).tolist()} match no (d, s, schedule) the "
        "server can rebuild; use the blend method or a schedule from "
        f"{list(SCHEDULES)}"
    )


class RemotePolicy(Policy):
    """A policy served by ``envactor serve`` (or any openpi-format server) used as a local one.

    Args:
        host, port, api_key: where the server is; extra keyword arguments go to each
            ``PolicyClient`` (``timeout``, ``retries``, ...).

    Collect-mode exploration is not forwarded (the served policy's ``_explore`` does not run).
    Call ``close()`` (or use ``with``) to close the connections.
    """

    trainable: ClassVar[bool] = False
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
        prefix: torch.Tensor,
        weights: torch.Tensor,
        beta: float,
        *,
        jacobian: str = "vjp",
    ) -> torch.Tensor:
        self._forward_seeds(env_ids)
        msgs = []
        for b in range(len(env_ids)):
            found = recover_guidance(prefix[b].cpu().numpy(), weights[b].cpu().numpy())
            if found is None:
                msgs.append(infer_message(self._row(obs, b)))
                continue
            remainder, delay, s, schedule = found
            rtc = {"schedule": schedule, "max_guidance_weight": float(beta),
                   "jacobian": jacobian, "method": "auto"}  # fmt: skip
            msgs.append(infer_message(self._row(obs, b), remainder, delay, s, rtc))
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
