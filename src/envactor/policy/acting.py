"""The acting boundary of ``envactor.Policy``: what runs around every hook call.

Observations in (checked, normalized, recorded in the env's history), the hook called under
``eval()`` + inference mode with the acting (EMA) weights, the chunk checked and unnormalized
out. ``Policy`` inherits these helpers from :class:`ActingBoundary`; like the public methods they
are owned by the base class (``envactor.policy.hooks``), so a subclass cannot replace one by
accident. Every runtime reaches a hook through here: ``predict``, ``guided_inference`` (all
three guidance methods), ``select_action``, ``observe`` and the mode views.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from envactor.chunking.request import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy.boundary import (
    FastBoundary,
    ObservationError,
    batch_size_of,
    dummy_observation,
    inference_guard,
    to_numpy,
    to_tensor,
)
from envactor.policy.guard import action_bounds, check_finite, guard_guided
from envactor.policy.history import ObsHistory
from envactor.policy.modes import ModeEnv
from envactor.policy.queues import ChunkQueues

if TYPE_CHECKING:
    from envactor.policy.ema import EmaShadow
    from envactor.policy.specs import FeatureSpec, PolicyParams

ACTION_KEY = "action"
EnvIds = Sequence[Hashable]
Obs = Mapping[str, Any]


class PolicyError(RuntimeError):
    """A policy that broke its contract at run time (bad chunk shape, missing loss, ...)."""


def _scoped(ids: list[Hashable], scope: str | None) -> list[Hashable]:
    """The env ids the hooks see: a mode view's ids carry the view (``ModeEnv``)."""
    return ids if scope is None else [ModeEnv(scope, e) for e in ids]


class ActingBoundary:
    """The boundary helpers of ``Policy`` (a mixin; ``self`` is always a ``Policy``)."""

    if TYPE_CHECKING:  # what the helpers use of ``Policy`` (defined there)
        training: bool
        trainable: ClassVar[bool]
        params: PolicyParams
        normalizer: Normalizer | None
        _device: torch.device
        _ema: EmaShadow | None
        _history: ObsHistory
        _n_obs: int
        _stacks: bool
        _observe_hook: bool
        guidance_fallbacks: int

        @property
        def name(self) -> str: ...
        @property
        def input_features(self) -> dict[str, FeatureSpec]: ...
        @property
        def action_shape(self) -> tuple[int, int]: ...
        @property
        def device(self) -> torch.device: ...
        @classmethod
        def can_guide(cls) -> bool: ...
        @classmethod
        def can_prefix(cls) -> bool: ...
        def eval(self) -> Any: ...
        def train(self, mode: bool = True) -> Any: ...
        def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor: ...
        def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
        def _explore(self, chunk: torch.Tensor, env_ids: EnvIds) -> torch.Tensor: ...
        def _observe(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> None: ...
        def _guided_chunk(
            self,
            obs: dict[str, torch.Tensor],
            env_ids: EnvIds,
            request: GuidanceRequest,
            prefix: torch.Tensor,
        ) -> torch.Tensor: ...
        def _prefix_chunk(
            self,
            obs: dict[str, torch.Tensor],
            env_ids: EnvIds,
            request: GuidanceRequest,
            prefix: torch.Tensor,
        ) -> torch.Tensor: ...

    # ------------------------------------------------------------------ modes and weights
    def _acting(self, inference: bool = True) -> AbstractContextManager[Any]:
        """eval() + acting weights; returns the grad context to run in: inference mode (torch's
        own guard, without the Python wrapper), or ``no_grad`` when ``inference`` is False
        (guided sampling backpropagates through the network, which inference tensors forbid)."""
        # Check the root flag only: walking every module each call is what made one anchor's
        # select_action spend 200 ms in eval().
        if self.training:
            self.eval()
        if self._ema is not None:
            self._ema.use("ema")
        return inference_guard(True) if inference else torch.no_grad()

    def _learning(self) -> None:
        if not self.training:
            self.train()
        if self._ema is not None:
            self._ema.use("train")

    def _normalizer(self, override: Normalizer | None) -> Normalizer:
        norm = override if override is not None else self.normalizer
        if norm is None:
            modes = {k: s.norm for k, s in self.input_features.items()}
            modes[ACTION_KEY] = self.params.action_norm
            if all(m in ("identity", "image") for m in modes.values()):
                norm = Normalizer(modes, {})
                self.normalizer = norm
            else:
                raise PolicyError(
                    f"policy {self.name!r} has no normalizer stats but its features need them "
                    f"({modes}); build it from a checkpoint or set policy.normalizer"
                )
        return norm

    # ------------------------------------------------------------------ observations in
    def _fast_boundary(self, norm: Normalizer) -> FastBoundary | None:
        """The numpy-in/numpy-out boundary for ``norm`` on CPU (cached per policy), else None."""
        fast: FastBoundary | None = self.__dict__.get("_fast_boundary_cache")
        p, device = self.params, self._device
        if (
            fast is None
            or fast.norm is not norm
            or fast.device is not device
            or fast.features is not p.input_features
            or fast.horizon != p.horizon
            or fast.action_dim != p.action_dim
        ):
            shape = (p.horizon, p.action_dim)
            fast = FastBoundary(p.input_features, norm, ACTION_KEY, shape, device)
            self.__dict__["_fast_boundary_cache"] = fast  # plain data: skip Module.__setattr__
        return fast if fast.usable else None

    def _prepare(self, obs: Obs, norm: Normalizer) -> tuple[dict[str, torch.Tensor], int]:
        fast = self._fast_boundary(norm)
        prepared = fast.prepare(obs) if fast is not None else None
        return prepared if prepared is not None else self._prepare_general(obs, norm)

    def _prepare_general(
        self, obs: Obs, norm: Normalizer, steps: int = 1
    ) -> tuple[dict[str, torch.Tensor], int]:
        """Any device, numpy or torch inputs; raises the errors that name key and expectation.
        ``steps > 1``: histories ``(B, steps, ...)`` (training windows)."""
        batch = batch_size_of(obs, self.input_features, steps)
        dev = self.device
        out = {}
        for key, spec in self.input_features.items():
            out[key] = norm.normalize(key, to_tensor(key, obs[key], spec, dev))
        return out, batch

    def _checked(self, chunk: Any, batch: int, hook: str) -> torch.Tensor:
        want = (batch, *self.action_shape)
        if not isinstance(chunk, torch.Tensor) or tuple(chunk.shape) != want:
            got = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
            raise PolicyError(f"policy {self.name!r}: {hook} must return shape {want}, got {got}")
        return chunk

    @staticmethod
    def _ids(env_ids: EnvIds | None, batch: int) -> list[Hashable]:
        if env_ids is None:
            return list(range(batch))
        ids = list(env_ids)
        if len(ids) != batch:
            raise ObservationError(f"got {len(ids)} env ids for a batch of {batch}")
        return ids

    # ------------------------------------------------------------------ history
    def _remember(
        self,
        obs_t: dict[str, torch.Tensor],
        ids: list[Hashable],
        history: ObsHistory | None,
        rows: list[int] | None,
        scope: str | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[Hashable]]:
        """Record ``obs_t`` (every row) in ``history`` (default: the policy's); the histories
        ``(B, n, ...)`` of ``rows`` (all when None) and their env ids. A policy that does not
        stack (``stacks_history = False``) gets its rows' frames as they are, and the other rows
        go to its ``_observe`` hook."""
        if not self._stacks:
            if rows is None:
                return obs_t, ids
            chosen = set(rows)
            quiet = [i for i in range(len(ids)) if i not in chosen]
            if quiet and self._observe_hook:
                frames = {k: v[quiet] for k, v in obs_t.items()}
                self._observe(frames, _scoped([ids[i] for i in quiet], scope))
            return {k: v[rows] for k, v in obs_t.items()}, [ids[i] for i in rows]
        hist = self._history if history is None else history
        hist.push(ids, obs_t)
        if rows is not None:
            ids = [ids[i] for i in rows]
        return hist.stack(ids), ids

    def _observe_rows(
        self,
        obs: Obs,
        env_ids: EnvIds | None,
        history: ObsHistory | None,
        scope: str | None = None,
    ) -> None:
        """One step's observations of envs that ask for no chunk: history and ``_observe``."""
        norm = self._normalizer(None)
        with self._acting():
            obs_t, batch = self._prepare(obs, norm)
            ids = self._ids(env_ids, batch)
            if self._stacks:
                (self._history if history is None else history).push(ids, obs_t)
            if self._observe_hook:
                self._observe(obs_t, _scoped(ids, scope))

    # ------------------------------------------------------------------ chunks out
    def _predict(
        self,
        obs: Obs,
        normalizer: Normalizer | None,
        env_ids: EnvIds | None,
        explore: bool,
        history: ObsHistory | None = None,
        rows: list[int] | None = None,
        scope: str | None = None,
        samples: int = 1,
    ) -> np.ndarray:
        """Chunks for every row of ``obs`` (with history: every row is recorded in ``history``,
        default the policy's, and only ``rows`` are predicted when given); ``samples > 1``:
        ``(B, samples, H, A)``, each row repeated (with its env id) after the history."""
        norm = self._normalizer(normalizer)
        fast = self._fast_boundary(norm)
        with self._acting():
            prepared = fast.prepare(obs) if fast is not None else None
            obs_t, batch = prepared or self._prepare_general(obs, norm)
            ids: list[Hashable] = (
                list(range(batch)) if env_ids is None else self._ids(env_ids, batch)
            )
            if self._n_obs > 1:
                obs_t, ids = self._remember(obs_t, ids, history, rows, scope)
                batch = len(ids)
            if scope is not None:
                ids = _scoped(ids, scope)
            if samples > 1:  # after the history: each observation is recorded once
                obs_t = {k: v.repeat_interleave(samples, dim=0) for k, v in obs_t.items()}
                ids = [e for e in ids for _ in range(samples)]
                batch *= samples
            chunk = self._chunk(obs_t, ids)
            hook = "_chunk"
            if explore:
                chunk = self._checked(chunk, batch, hook)
                chunk, hook = self._explore(chunk, ids), "_explore"
            out = fast.finish(chunk, batch) if fast is not None else None
            if out is None:  # the general path checks the shape (the fast one said no)
                chunk = self._checked(chunk, batch, hook)
                out = to_numpy(norm.unnormalize(ACTION_KEY, chunk))
            if samples > 1:
                return out.reshape(batch // samples, samples, *out.shape[1:])
            return out

    def _guided(
        self,
        obs: Obs,
        normalizer: Normalizer | None,
        env_ids: EnvIds | None,
        request: GuidanceRequest,
    ) -> np.ndarray:
        """A chunk per row that continues ``request``'s remainders, through the hook its method
        names: ``_guided_chunk`` (or the blend when the policy has none), ``_prefix_chunk`` or
        the blend. The prefix is normalized here, so every hook sees normalized actions."""
        method = request.method
        if method == "prefix" and not self.can_prefix():
            raise PolicyError(
                f"policy {self.name!r} does not implement _prefix_chunk (training-time RTC), "
                f"which the guidance method 'prefix' (executor rtc_trained) needs"
            )
        norm = self._normalizer(normalizer)
        guided = method == "guided" and self.can_guide()
        with self._acting(inference=not guided):
            obs_t, batch = self._prepare(obs, norm)
            prefix_np = request.prefix
            want = (batch, *self.action_shape)
            if prefix_np.shape != want:
                raise ObservationError(
                    f"guidance request: expected {want[0]} envs with remainders of action dim "
                    f"{want[2]} (horizon {want[1]}), got {request.batch_size} envs, prefix "
                    f"{prefix_np.shape}"
                )
            dev = self.device
            prefix = norm.normalize(ACTION_KEY, torch.from_numpy(prefix_np).to(dev))
            ids = self._ids(env_ids, batch)
            if self._n_obs > 1:
                obs_t, ids = self._remember(obs_t, ids, None, None)
            if method == "prefix":
                chunk, hook = self._prefix_chunk(obs_t, ids, request, prefix), "_prefix_chunk"
            elif guided:
                chunk, hook = self._guided_chunk(obs_t, ids, request, prefix), "_guided_chunk"
            else:
                chunk, hook = self._blend(obs_t, ids, request, prefix), "_chunk"
            chunk = self._checked(chunk, batch, hook)
            if guided:
                chunk = self._guard_guided(chunk, obs_t, ids, norm)
            else:
                check_finite(chunk, self.name, hook, ids)
            return to_numpy(norm.unnormalize(ACTION_KEY, chunk))

    def _guard_guided(
        self,
        chunk: torch.Tensor,
        obs: dict[str, torch.Tensor],
        ids: list[Hashable],
        norm: Normalizer,
    ) -> torch.Tensor:
        """``chunk`` with every row that is non-finite or leaves the action range replaced by
        the plain sample, clamped to the range (:mod:`envactor.policy.guard`)."""
        cache = self.__dict__.get("_bounds_cache")
        if cache is None or cache[0] is not norm or cache[1] != (chunk.device, chunk.dtype):
            bounds = action_bounds(norm, ACTION_KEY, chunk.device, chunk.dtype)
            cache = (norm, (chunk.device, chunk.dtype), bounds)
            self.__dict__["_bounds_cache"] = cache  # plain data: skip Module.__setattr__

        def plain(rows: list[int]) -> torch.Tensor:
            sub = self._chunk({k: v[rows] for k, v in obs.items()}, [ids[i] for i in rows])
            return self._checked(sub, len(rows), "_chunk")

        chunk, rows = guard_guided(chunk, cache[2], plain, self.name, ids)
        self.guidance_fallbacks += len(rows)
        return chunk

    def _blend(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: EnvIds,
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        """The post-hoc blend ``prefix * W + pred * (1 - W)`` (model-agnostic)."""
        pred = self._chunk(obs, env_ids)
        w = request.weights_like(prefix).to(pred.dtype)[..., None]
        return prefix * w + pred * (1.0 - w)

    def _act_from_queues(
        self,
        batch: Obs,
        env_ids: EnvIds | None,
        queues: ChunkQueues,
        explore: bool,
        history: ObsHistory | None = None,
        scope: str | None = None,
    ) -> np.ndarray:
        n = batch_size_of(batch, self.input_features)
        ids = self._ids(env_ids, n)
        rows = [i for i, e in enumerate(ids) if queues.needs_chunk(e)]
        if self._n_obs > 1 and not rows:  # every step's observation enters the history
            self._observe_rows(batch, ids, history, scope)
        elif rows:
            if self._n_obs > 1:
                chunks = self._predict(batch, None, ids, explore, history, rows, scope)
            else:
                keys = self.input_features
                sub = {k: batch[k][rows] if len(rows) < n else batch[k] for k in keys}
                chunks = self._predict(sub, None, [ids[i] for i in rows], explore, scope=scope)
            s = self.params.n_action_steps
            for j, i in enumerate(rows):
                queues.push(ids[i], chunks[j, :s])
        return np.stack([queues.pop(e) for e in ids])

    # ------------------------------------------------------------------ warm-up and learning
    def _warm(self, batch_size: int) -> None:
        """``warmup``: dummy passes through ``_chunk`` and, when the policy guides,
        ``_guided_chunk`` (with the signature the runtimes call it with)."""
        ids: list[Hashable] = list(range(batch_size))
        for guided in (False, True) if self.can_guide() else (False,):
            with self._acting(inference=not guided):
                obs_t = {
                    k: to_tensor(k, v, self.input_features[k], self.device).float()
                    for k, v in dummy_observation(self.input_features, batch_size).items()
                }
                if self._stacks:  # a history of n equal frames, as after a reset
                    n = self._n_obs
                    obs_t = {k: v[:, None].expand(-1, n, *v.shape[1:]) for k, v in obs_t.items()}
                if not guided:
                    self._checked(self._chunk(obs_t, ids), batch_size, "_chunk")
                    continue
                horizon, adim = self.action_shape
                rest = horizon - self.params.n_action_steps
                remainder = np.zeros((batch_size, rest, adim), np.float32)
                request = GuidanceRequest.build(remainder, min(1, rest), horizon=horizon)
                zeros = torch.zeros(batch_size, *self.action_shape, device=self.device)
                chunk = self._guided_chunk(obs_t, ids, request, zeros)
                self._checked(chunk, batch_size, "_guided_chunk")

    def _learn(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``forward``: training weights, the batch normalized (history windows ``(B,
        n_obs_steps, ...)`` when ``n_obs_steps > 1``), ``_loss`` checked."""
        if not self.trainable:
            raise PolicyError(f"policy {self.name!r} is not trainable")
        self._learning()
        norm = self._normalizer(None)
        if self._n_obs > 1:  # training windows: (B, n_obs_steps, ...) per key
            obs_t, n = self._prepare_general(batch, norm, self._n_obs)
        else:
            obs_t, n = self._prepare(batch, norm)
        if ACTION_KEY not in batch:
            raise ObservationError(
                f"a training batch needs key {ACTION_KEY!r}; got {sorted(batch)}"
            )
        action = torch.as_tensor(batch[ACTION_KEY], dtype=torch.float32).to(self.device)
        if tuple(action.shape) != (n, *self.action_shape):
            raise ObservationError(
                f"batch['action']: expected shape {(n, *self.action_shape)}, "
                f"got {tuple(action.shape)}"
            )
        obs_t[ACTION_KEY] = norm.normalize(ACTION_KEY, action)
        for key, value in batch.items():
            if key not in obs_t and isinstance(value, np.ndarray | torch.Tensor):
                obs_t[key] = torch.as_tensor(value).to(self.device)
        out = self._loss(obs_t)
        if not isinstance(out, dict) or "loss" not in out:
            raise PolicyError(f"policy {self.name!r}: _loss must return a dict with key 'loss'")
        return out
