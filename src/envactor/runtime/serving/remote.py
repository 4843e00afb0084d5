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

openpi servers (metadata without envactor's ``protocol`` field, see ``PolicyClient``) get plain
observation frames only: no ``set_seed``, ``episode_start`` or ``observe`` frames and no
guidance fields. Their metadata usually lacks ``action_shape`` and ``input_features``: give them
as ``RemotePolicy(..., action_shape=(H, A), input_features={key: shape})``. Guided calls (the
``rtc`` executor and others with method ``guided``) fall back to plain chunk requests and the
client-side post-hoc blend ``Y * W + pred * (1 - W)``; training-time RTC (``rtc_trained``) is
refused; seeds are not forwarded; ``reset`` leaves the server's per-connection state alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from envactor.chunking.request import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy.base import ACTION_KEY, EnvIds, Policy, PolicyError
from envactor.policy.boundary import ObservationError
from envactor.runtime.serving.client import (
    PolicyClient,
    RemoteError,
    UnsupportedRequestError,
    infer_message,
)
from envactor.runtime.serving.wire import packb

__all__ = ["RemotePolicy", "params_from_metadata"]

_EPISODE_START = {"__ctrl__": "episode_start", "__experiment__": "", "__task__": "",
                  "__episode_id__": 0}  # fmt: skip


FeatureShapes = Mapping[str, Sequence[int] | Mapping[str, Any]]
"""Input features given by hand: ``{key: shape}`` or ``{key: {"shape": [...], "dtype": ...}}``."""


def _features(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    """``{key: shape}`` or metadata-style ``{key: {shape, dtype}}`` -> policy input features."""
    try:
        feats = {}
        for k, v in raw.items():
            spec = v if isinstance(v, Mapping) else {"shape": v}
            feats[str(k)] = {
                "shape": [int(n) for n in spec["shape"]],
                "dtype": str(spec.get("dtype") or "float32"),
                "norm": "identity",
            }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"{where}: expected {{key: shape}} or {{key: {{'shape': [...], 'dtype': ...}}}}, got "
            f"{raw!r} ({type(exc).__name__}: {exc})"
        ) from None
    return feats


def _action_shape(raw: Any, where: str) -> tuple[int, int]:
    try:
        horizon, adim = (int(x) for x in raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: expected [H, A], got {raw!r} ({exc})") from None
    return horizon, adim


def params_from_metadata(
    meta: Mapping[str, Any],
    action_shape: Sequence[int] | None = None,
    input_features: FeatureShapes | None = None,
    *,
    uri: str = "",
) -> dict[str, Any]:
    """Policy params of a remote policy from the server's metadata (identity normalization).

    ``action_shape`` [H, A] and ``input_features`` given here are used when the metadata lacks
    them (an openpi server's usually does); where both exist they must agree."""
    where = f"server metadata{' of ' + uri if uri else ''}"
    shape = None if action_shape is None else _action_shape(action_shape, "action_shape=")
    feats = None if input_features is None else _features(input_features, "input_features=")
    if "action_shape" in meta:
        served = _action_shape(meta["action_shape"], f"{where} 'action_shape'")
        if shape is not None and shape != served:
            raise ValueError(f"action_shape={shape} disagrees with {where}: {served}")
        shape = served
    if "input_features" in meta:
        served_f = _features(meta["input_features"], f"{where} 'input_features'")
        if feats is not None and feats != served_f:
            raise ValueError(f"input_features={feats} disagree with {where}: {served_f}")
        feats = served_f
    hints = {"action_shape": "action_shape=(H, A)", "input_features": "input_features={key: shape}"}
    missing = [n for n, v in (("action_shape", shape), ("input_features", feats)) if v is None]
    if missing:
        raise ValueError(
            f"{where} has no {' or '.join(map(repr, missing))} (its keys: "
            f"{sorted(map(str, meta))}); pass "
            f"{', '.join(hints[m] for m in missing)} to RemotePolicy"
        )
    assert shape is not None and feats is not None
    horizon, adim = shape
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
    """A policy served by ``envactor serve`` (or an openpi server) used as a local one.

    Args:
        host, port, api_key: where the server is; extra keyword arguments go to each
            ``PolicyClient`` (``timeout``, ``retries``, ...).
        action_shape: ``(H, A)`` of the served chunks, for a server whose metadata lacks
            ``action_shape`` (an openpi server); checked against the metadata when it has one.
        input_features: ``{key: shape}`` (or ``{key: {"shape", "dtype"}}``) of the
            observations to send, likewise for a server whose metadata lacks them.

    Collect-mode exploration is not forwarded. Against an openpi server only observations are
    sent (see the module docstring). Call ``close()`` (or use ``with``) to close the connections.
    """

    trainable: ClassVar[bool] = False
    stacks_history: ClassVar[bool] = False
    registered_name: ClassVar[str] = "remote"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        *,
        action_shape: Sequence[int] | None = None,
        input_features: FeatureShapes | None = None,
        **client: Any,
    ) -> None:
        probe = PolicyClient(host, port, api_key, **client)
        meta = probe.metadata
        try:
            params = params_from_metadata(meta, action_shape, input_features, uri=probe.uri)
        except ValueError:
            probe.close()
            raise
        openpi = probe.openpi_server
        if openpi and params["n_obs_steps"] > 1:
            probe.close()
            raise UnsupportedRequestError(
                f"openpi server {probe.uri} declares n_obs_steps={params['n_obs_steps']} but has "
                "no observe frame: RemotePolicy cannot give it the steps without a request"
            )
        modes: dict[str, Any] = {k: "identity" for k in params["input_features"]}
        modes[ACTION_KEY] = "identity"
        super().__init__({}, Normalizer(modes, {}), **params)
        self.weight_version = int(meta.get("weight_version") or 0)
        self.remote_metadata = dict(meta)
        self.uri = probe.uri
        self.openpi_server = openpi  # no envactor protocol there: send observations only
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
        if self.openpi_server:  # no guidance fields: a plain request, blended here
            return self._blend(obs, env_ids, request, prefix)
        return self._conditioned(obs, env_ids, request)

    def _prefix_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: EnvIds,
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        if self.openpi_server:
            raise PolicyError(
                f"openpi server {self.uri} cannot run training-time RTC (method 'prefix', "
                "executor rtc_trained): it takes plain observations only; use the rtc or blend "
                "executor (blended client-side) or serve the policy with envactor serve"
            )
        return self._conditioned(obs, env_ids, request)

    def _observe(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> None:
        if self.n_obs_steps > 1 and not self.openpi_server:
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
        if self.openpi_server:  # it has no episode frame: its per-connection state is its own
            return
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
        if self.openpi_server:  # no set_seed frame there: its noise is its own
            return
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
