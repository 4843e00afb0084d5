"""The one policy contract: protected hooks written per policy, public methods owned here.

Subclasses implement ``_chunk`` (and ``_loss`` when trainable); optionally ``_guided_chunk``,
``_explore`` and ``_reset``. The public methods of the three source protocols (the seed
system's ``predict``/``guided_inference``, LeRobot's ``select_action``/``forward``/``reset``/
``update`` and DI-engine's mode views) live here and may not be overridden, so every acting path
gets ``eval()`` + ``inference_mode``, normalization and shape checks without each policy
remembering them. Registration (``POLICY_REGISTRY.register``) enforces that.

With ``n_obs_steps = n > 1`` the hooks see ``(B, n, ...)`` tensors: the acting boundary keeps
each env's last n observations (``envactor.policy.history``), per mode view.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from envactor.chunking.masks import Schedule
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
from envactor.policy.ema import EmaShadow
from envactor.policy.history import ObsHistory
from envactor.policy.prefix import build_prefix
from envactor.policy.queues import ChunkQueues
from envactor.policy.specs import FeatureSpec, PolicyParams
from envactor.weights import LoadReport, load_state_dict_into

if TYPE_CHECKING:
    from envactor.policy.modes import CollectMode, EvalMode, LearnMode

ACTION_KEY = "action"
EnvIds = Sequence[Hashable]
Obs = Mapping[str, Any]


class PolicyError(RuntimeError):
    """A policy that broke its contract at run time (bad chunk shape, missing loss, ...)."""


class Policy(nn.Module):
    """Base class of every envactor policy. See the module docstring for the contract.

    Args:
        components: named ``nn.Module`` parts built from YAML; kept in ``self.components``.
        normalizer: feature and action statistics (from the checkpoint).
        **params: validated against ``Params`` (``policy.params`` in YAML).
    """

    Params: ClassVar[type[PolicyParams]] = PolicyParams
    trainable: ClassVar[bool] = True
    required_components: ClassVar[tuple[str, ...]] = ()
    registered_name: ClassVar[str]

    def __init__(
        self,
        components: Mapping[str, nn.Module] | None = None,
        normalizer: Normalizer | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        self.params = self.Params.model_validate(params)
        self.components = nn.ModuleDict(dict(components or {}))
        missing = [c for c in self.required_components if c not in self.components]
        if missing:
            raise PolicyError(
                f"policy {self.name!r} needs components {list(self.required_components)}; "
                f"missing {missing} (got {list(self.components)})"
            )
        self.normalizer = normalizer
        self.weight_version = 0
        self.config: dict[str, Any] = {}
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        self._device = torch.device("cpu")
        self._ema: EmaShadow | None = None
        self._queues = ChunkQueues()
        self._rngs: dict[Hashable, torch.Generator] = {}
        self._n_obs = int(getattr(self.params, "n_obs_steps", 1))
        self._history = ObsHistory(self._n_obs)

    # ------------------------------------------------------------------ hooks (override these)
    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        """Normalized observations (B, ...) -> normalized action chunk (B, H, A).

        With ``n_obs_steps = n > 1`` each observation is ``(B, n, ...)``, oldest first."""
        raise NotImplementedError

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalized batch (observations, ``action`` (B, H, A), ...) -> ``{"loss": scalar}``."""
        raise NotImplementedError(f"policy {self.name!r} is not trainable")

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
        """A chunk conditioned on ``prefix`` (B, H, A) with mask ``weights`` (B, H).

        The default is the post-hoc blend ``prefix * W + pred * (1 - W)``; flow policies override
        it with true guided sampling.
        """
        pred = self._chunk(obs, env_ids)
        w = weights.to(pred.dtype)[..., None]
        return prefix * w + pred * (1.0 - w)

    def _explore(self, chunk: torch.Tensor, env_ids: EnvIds) -> torch.Tensor:
        """Collect-mode exploration on a normalized chunk (default: none)."""
        return chunk

    # ------------------------------------------------------------------ per-env randomness
    def set_env_seeds(self, seeds: Mapping[Hashable, int]) -> None:
        """Seed each env id's noise (e.g. per episode) so results do not depend on batching."""
        for env, seed in seeds.items():
            gen = torch.Generator()
            gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
            self._rngs[env] = gen

    def _randn(self, env_ids: EnvIds, *shape: int) -> torch.Tensor:
        """Standard normal noise ``(B, *shape)``: row b drawn from env ``env_ids[b]``'s generator.

        Envs never seeded draw from the global torch RNG.
        """
        rows = []
        for env in env_ids:
            gen = self._rngs.get(env)
            rows.append(torch.randn(shape, generator=gen))
        if not rows:
            return torch.empty((0, *shape), device=self.device)
        return torch.stack(rows).to(self.device)

    def _reset(self, env_ids: EnvIds | None) -> None:
        """Clear per-env state of ``env_ids`` (all when None)."""

    # ------------------------------------------------------------------ specs and state
    @property
    def name(self) -> str:
        """The registered name of this policy class."""
        return getattr(type(self), "registered_name", type(self).__name__.lower())

    @property
    def input_features(self) -> dict[str, FeatureSpec]:
        """Declared observation features (key -> shape, dtype, norm)."""
        return self.params.input_features

    @property
    def action_shape(self) -> tuple[int, int]:
        """Shape of one env's chunk, ``(H, A)``."""
        return (self.params.horizon, self.params.action_dim)

    @property
    def device(self) -> torch.device:
        """Device the policy's tensors live on."""
        return self._device

    @property
    def n_obs_steps(self) -> int:
        """Observations per env the hooks see: ``(B, n_obs_steps, ...)`` when above 1."""
        return self._n_obs

    @classmethod
    def can_guide(cls) -> bool:
        """True when the class implements its own guided (conditioned) sampling."""
        return cls._guided_chunk is not Policy._guided_chunk

    def _apply(self, fn: Any, recurse: bool = True) -> Policy:
        super()._apply(fn, recurse)
        anchor = self._device_anchor
        assert isinstance(anchor, torch.Tensor)
        self._device = anchor.device
        if self._ema is not None:
            self._ema.refresh()
        return self

    # ------------------------------------------------------------------ mode switching
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

    # ------------------------------------------------------------------ seed-system contract
    def predict(
        self,
        obs: Obs,
        normalizer: Normalizer | None = None,
        *,
        env_ids: EnvIds | None = None,
        explore: bool = False,
    ) -> np.ndarray:
        """Batched observations -> action chunks ``(B, H, A)`` in action units (float32).

        ``env_ids`` name the rows (per-env state and noise; default: row indices); ``explore``
        applies ``_explore``. With ``n_obs_steps > 1`` each call is one step of those envs: its
        rows join their histories and ``_chunk`` sees the last ``n_obs_steps`` of them.
        """
        return self._predict(obs, normalizer, env_ids, explore=explore)

    def _predict(
        self,
        obs: Obs,
        normalizer: Normalizer | None,
        env_ids: EnvIds | None,
        explore: bool,
        history: ObsHistory | None = None,
        rows: list[int] | None = None,
    ) -> np.ndarray:
        """Chunks for every row of ``obs`` (with history: every row is recorded in ``history``,
        default the policy's, and only ``rows`` are predicted when given)."""
        norm = self._normalizer(normalizer)
        fast = self._fast_boundary(norm)
        with self._acting():
            prepared = fast.prepare(obs) if fast is not None else None
            obs_t, batch = prepared or self._prepare_general(obs, norm)
            ids: list[Hashable] = (
                list(range(batch)) if env_ids is None else self._ids(env_ids, batch)
            )
            if self._n_obs > 1:
                obs_t, ids = self._remember(obs_t, ids, history, rows)
                batch = len(ids)
            chunk = self._chunk(obs_t, ids)
            hook = "_chunk"
            if explore:
                chunk = self._checked(chunk, batch, hook)
                chunk, hook = self._explore(chunk, ids), "_explore"
            out = fast.finish(chunk, batch) if fast is not None else None
            if out is None:  # the general path checks the shape (the fast one said no)
                chunk = self._checked(chunk, batch, hook)
                out = to_numpy(norm.unnormalize(ACTION_KEY, chunk))
            return out

    def guided_inference(
        self,
        obs: Obs,
        normalizer: Normalizer | None = None,
        min_num_actions_executed: int | None = None,
        action_chunk_size: int | None = None,
        *,
        prev_chunk: np.ndarray | Sequence[np.ndarray] | None = None,
        delay: int | Sequence[int] = 0,
        env_ids: EnvIds | None = None,
        method: Literal["auto", "blend"] = "auto",
        schedule: Schedule = "exp",
        max_guidance_weight: float = 5.0,
        jacobian: Literal["vjp", "identity"] = "vjp",
    ) -> np.ndarray:
        """A new chunk ``(B, H, A)`` that continues ``prev_chunk`` smoothly.

        ``prev_chunk`` is the unexecuted remainder of each env's previous chunk (``(B, L, A)`` or
        B arrays ``(L_b, A)``), index 0 = the next action to run. ``delay`` is d (per env or one
        for all): the first d actions will run before the new chunk arrives and are frozen.
        ``min_num_actions_executed`` is s (default ``H - L_b``). ``method="auto"`` uses the
        policy's guided sampling when it has one (true RTC), else the post-hoc blend.
        """
        horizon = self.params.horizon
        if action_chunk_size is not None and action_chunk_size != horizon:
            raise ValueError(
                f"action_chunk_size must be the policy's H={horizon}, got {action_chunk_size}"
            )
        if prev_chunk is None:
            return self.predict(obs, normalizer, env_ids=env_ids)
        norm = self._normalizer(normalizer)
        guided = method == "auto" and self.can_guide()
        with self._acting(inference=not guided):
            obs_t, batch = self._prepare(obs, norm)
            prefix_np, weights_np = build_prefix(
                prev_chunk, batch, delay, min_num_actions_executed, self.action_shape, schedule
            )
            dev = self.device
            prefix = norm.normalize(ACTION_KEY, torch.from_numpy(prefix_np).to(dev))
            weights = torch.from_numpy(weights_np).to(dev)
            ids = self._ids(env_ids, batch)
            if self._n_obs > 1:
                obs_t, ids = self._remember(obs_t, ids, None, None)
            if method not in ("auto", "blend"):
                raise ValueError(f"method must be 'auto' or 'blend', got {method!r}")
            if not guided:
                chunk = Policy._guided_chunk(self, obs_t, ids, prefix, weights, max_guidance_weight)
            else:
                chunk = self._guided_chunk(
                    obs_t, ids, prefix, weights, max_guidance_weight, jacobian=jacobian
                )
            chunk = self._checked(chunk, batch, "_guided_chunk")
            return to_numpy(norm.unnormalize(ACTION_KEY, chunk))

    def warmup(self, batch_size: int = 1) -> None:
        """Dummy forward passes (plain and guided) from the declared input spec."""
        ids = list(range(batch_size))
        for guided in (False, True) if self.can_guide() else (False,):
            with self._acting(inference=not guided):
                obs_t = {
                    k: to_tensor(k, v, self.input_features[k], self.device).float()
                    for k, v in dummy_observation(self.input_features, batch_size).items()
                }
                if self._n_obs > 1:  # a history of n equal frames, as after a reset
                    n = self._n_obs
                    obs_t = {k: v[:, None].expand(-1, n, *v.shape[1:]) for k, v in obs_t.items()}
                if not guided:
                    self._checked(self._chunk(obs_t, ids), batch_size, "_chunk")
                    continue
                zeros = torch.zeros(batch_size, *self.action_shape, device=self.device)
                weights = torch.zeros(batch_size, self.params.horizon, device=self.device)
                chunk = self._guided_chunk(obs_t, ids, zeros, weights, 5.0)
                self._checked(chunk, batch_size, "_guided_chunk")

    def freeze_all_model_params(self) -> None:
        """Stop gradients to every parameter (acting-only deployments)."""
        for p in self.parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ LeRobot-style contract
    def reset(self, env_ids: EnvIds | None = None) -> None:
        """Clear pending actions, observation history and per-env state of ``env_ids`` (all envs
        when None; then the collect and eval views' state too).

        Per-env noise generators are kept (their streams continue); reseed with
        ``set_env_seeds``."""
        self._queues.reset(env_ids)
        self._history.reset(env_ids)
        if env_ids is None:
            for view in ("collect_mode", "eval_mode"):
                mode = self.__dict__.get(view)
                if mode is not None:
                    mode._clear()
        self._reset(None if env_ids is None else list(env_ids))

    def observe(self, obs: Obs, *, env_ids: EnvIds | None = None) -> None:
        """Record one step's observations ``(B, ...)`` in each env's history without asking for
        a chunk (the executors call it for the envs that do not replan this step). Nothing to do
        when ``n_obs_steps`` is 1."""
        if self._n_obs > 1:
            self._observe(obs, env_ids, self._history)

    def _observe(self, obs: Obs, env_ids: EnvIds | None, history: ObsHistory) -> None:
        norm = self._normalizer(None)
        with self._acting():
            obs_t, batch = self._prepare(obs, norm)
            history.push(self._ids(env_ids, batch), obs_t)

    def _remember(
        self,
        obs_t: dict[str, torch.Tensor],
        ids: list[Hashable],
        history: ObsHistory | None,
        rows: list[int] | None,
    ) -> tuple[dict[str, torch.Tensor], list[Hashable]]:
        """Record ``obs_t`` in ``history`` (default: the policy's); the histories ``(B, n, ...)``
        of ``rows`` (all when None) and their env ids."""
        hist = self._history if history is None else history
        hist.push(ids, obs_t)
        if rows is not None:
            ids = [ids[i] for i in rows]
        return hist.stack(ids), ids

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Learn mode: a normalized batch through ``_loss``; returns ``{"loss": ..., ...}``."""
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

    def select_action(self, batch: Obs, *, env_ids: EnvIds | None = None) -> np.ndarray:
        """One action per row ``(B, A)``; each env replans only when its own queue is empty.
        Every call's observations enter the envs' histories (``n_obs_steps > 1``)."""
        return self._act_from_queues(batch, env_ids, self._queues, explore=False)

    def _act_from_queues(
        self,
        batch: Obs,
        env_ids: EnvIds | None,
        queues: ChunkQueues,
        explore: bool,
        history: ObsHistory | None = None,
    ) -> np.ndarray:
        n = batch_size_of(batch, self.input_features)
        ids = self._ids(env_ids, n)
        rows = [i for i, e in enumerate(ids) if queues.needs_chunk(e)]
        if self._n_obs > 1 and not rows:  # every step's observation enters the history
            self._observe(batch, ids, self._history if history is None else history)
        elif rows:
            if self._n_obs > 1:
                chunks = self._predict(batch, None, ids, explore, history, rows)
            else:
                keys = self.input_features
                sub = {k: batch[k][rows] if len(rows) < n else batch[k] for k in keys}
                chunks = self._predict(sub, None, [ids[i] for i in rows], explore)
            s = self.params.n_action_steps
            for j, i in enumerate(rows):
                queues.push(ids[i], chunks[j, :s])
        return np.stack([queues.pop(e) for e in ids])

    def update(self) -> None:
        """One EMA step of the weights (no-op unless ``ema_decay`` is set)."""
        decay = self.params.ema_decay
        if decay is None:
            return
        if self._ema is None:
            self._ema = EmaShadow(self.components, decay)
        self._ema.step()

    # ------------------------------------------------------------------ weights
    def acting_state_dict(self, *, copy: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """Per-component CPU state dicts of the weights used for acting (EMA when enabled).

        ``copy=False`` returns the live CPU tensors themselves (detached, no clone) for a caller
        that copies them at once, such as a publish into Ray's object store.
        """
        if self._ema is not None:
            self._ema.use("ema")
        return {
            name: {
                k: v.detach().cpu().clone() if copy else v.detach().cpu()
                for k, v in mod.state_dict().items()
            }
            for name, mod in self.components.items()
        }

    def load_weights(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        version: int | None = None,
        name_map: Mapping[str, str] | None = None,
        strict: bool = True,
    ) -> LoadReport:
        """Copy ``<component>.<tensor>`` weights into the components in place; set the version."""
        if self._ema is not None:
            self._ema.use("train")
        report = load_state_dict_into(self.components, state_dict, strict=strict, name_map=name_map)
        if self._ema is not None:
            self._ema.reset_to_live()
        if version is not None:
            self.weight_version = int(version)
        return report

    # ------------------------------------------------------------------ DI-engine-style views
    @cached_property
    def learn_mode(self) -> LearnMode:
        """Training view: ``forward(batch)`` runs one optimization step."""
        from envactor.policy.modes import LearnMode

        return LearnMode(self)

    @cached_property
    def collect_mode(self) -> CollectMode:
        """Exploring view: ``forward({env_id: obs}) -> {env_id: action}``."""
        from envactor.policy.modes import CollectMode

        return CollectMode(self)

    @cached_property
    def eval_mode(self) -> EvalMode:
        """Deterministic view: ``forward({env_id: obs}) -> {env_id: action}``."""
        from envactor.policy.modes import EvalMode

        return EvalMode(self)
