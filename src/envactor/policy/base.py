"""The one policy contract: protected hooks written per policy, public methods owned here.

Subclasses implement ``_chunk`` (and ``_loss`` when trainable); optionally ``_guided_chunk``
(guided sampling, the ``rtc`` executors), ``_prefix_chunk`` (training-time RTC, ``rtc_trained``),
``_explore``, ``_reset``, ``_observe`` and ``_update`` (``envactor.policy.hooks.HOOKS`` lists
them with their signatures). The public methods of the three source protocols (the seed system's
``predict``/``guided_inference``, LeRobot's ``select_action``/``forward``/``reset``/``update`` and
DI-engine's mode views) and the helpers of the acting boundary (``envactor.policy.acting``) live
here; defining a class that overrides one is a ``ContractError``, so every acting path gets
``eval()`` + ``inference_mode``, the acting (EMA) weights, normalization and shape checks
without each policy remembering them.

With ``n_obs_steps = n > 1`` the hooks see ``(B, n, ...)`` tensors: the acting boundary keeps
each env's last n observations (``envactor.policy.history``), per mode view.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from envactor.chunking.masks import Schedule
from envactor.chunking.request import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy.acting import ACTION_KEY, ActingBoundary, EnvIds, Obs, PolicyError
from envactor.policy.ema import EmaShadow
from envactor.policy.history import ObsHistory
from envactor.policy.hooks import check_overrides, implemented_hooks, owned_names
from envactor.policy.modes import MODE_SCOPES, CollectMode, EvalMode, LearnMode, ModeEnv
from envactor.policy.queues import ChunkQueues
from envactor.policy.seed_call import guidance_from_call
from envactor.policy.specs import FeatureSpec, PolicyParams
from envactor.weights import LoadReport, load_state_dict_into

__all__ = ["ACTION_KEY", "EnvIds", "Obs", "Policy", "PolicyError"]


def _count(num_samples: object) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise TypeError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples}")
    return int(num_samples)


class Policy(ActingBoundary, nn.Module):
    """Base class of every envactor policy. See the module docstring for the contract.

    Args:
        components: named ``nn.Module`` parts built from YAML; kept in ``self.components``.
        normalizer: feature and action statistics (from the checkpoint).
        **params: validated against ``Params`` (``policy.params`` in YAML).

    Class settings: ``Params`` (the params model), ``trainable``, ``required_components`` and
    ``stacks_history`` (False for a policy whose model keeps its own observation history, such
    as a remote one: its hooks then see the current frame and ``_observe`` the others).
    """

    Params: ClassVar[type[PolicyParams]] = PolicyParams
    trainable: ClassVar[bool] = True
    required_components: ClassVar[tuple[str, ...]] = ()
    stacks_history: ClassVar[bool] = True
    registered_name: ClassVar[str]
    _owned: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not Policy._owned:
            Policy._owned = owned_names(Policy, ActingBoundary)
        check_overrides(cls, Policy, Policy._owned)

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
        self.normalizer: Normalizer | None = normalizer
        self.weight_version = 0
        self.config: dict[str, Any] = {}
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        self._device = torch.device("cpu")
        self._ema: EmaShadow | None = None
        self._queues = ChunkQueues()
        self._rngs: dict[Hashable, torch.Generator] = {}
        self._n_obs = int(getattr(self.params, "n_obs_steps", 1))
        self._stacks = self._n_obs > 1 and self.stacks_history
        self._observe_hook = type(self)._observe is not Policy._observe
        self._history = ObsHistory(self._n_obs)
        self.guidance_fallbacks = 0
        """Guided chunk rows replaced by the plain sample since the policy was made: they were
        non-finite or left the action range (``envactor.policy.guard``)."""

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
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        """A chunk (B, H, A) guided toward ``prefix``: the request's padded remainders Y
        (normalized, on the policy's device); ``request.weights_like(prefix)`` is the mask W
        (B, H), ``request.beta`` and ``request.jacobian`` the sampler's settings.

        Policies without one get the post-hoc blend ``Y * W + pred * (1 - W)``."""
        return self._blend(obs, env_ids, request, prefix)

    def _prefix_chunk(
        self,
        obs: dict[str, torch.Tensor],
        env_ids: EnvIds,
        request: GuidanceRequest,
        prefix: torch.Tensor,
    ) -> torch.Tensor:
        """Training-time RTC: a chunk (B, H, A) whose committed actions
        (``request.committed_like(prefix)``, (B, H) bool) are ``prefix``'s (normalized)."""
        raise PolicyError(f"policy {self.name!r} does not implement _prefix_chunk")

    def _explore(self, chunk: torch.Tensor, env_ids: EnvIds) -> torch.Tensor:
        """Collect-mode exploration on a normalized chunk (default: none)."""
        return chunk

    def _reset(self, env_ids: EnvIds | None) -> None:
        """Clear per-env state of ``env_ids`` (all when None)."""

    def _observe(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> None:
        """One step's normalized observations (B, ...) of envs that ask for no chunk this step
        (the runtimes call ``observe`` for them when ``n_obs_steps > 1``); default: nothing
        beyond the history the boundary keeps."""

    def _update(self) -> None:
        """Called by ``update()`` after the EMA step: target networks, counters, ..."""

    # ------------------------------------------------------------------ per-env randomness
    def set_env_seeds(self, seeds: Mapping[Hashable, int]) -> None:
        """Seed each env id's noise (e.g. per episode) so results do not depend on batching."""
        for env, seed in seeds.items():
            gen = torch.Generator()
            gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
            self._rngs[env] = gen
            for mode in MODE_SCOPES:  # the views restart from the new seed too
                self._rngs.pop(ModeEnv(mode, env), None)

    def env_seed(self, env_id: Hashable) -> int | None:
        """The seed ``set_env_seeds`` last gave ``env_id``'s noise; None when it was never
        seeded (it then draws from the global torch RNG). Lets a runtime that drives a second
        policy for the same envs seed it per episode too (the ``bid`` executor's weak policy)."""
        gen = self._rngs.get(env_id)
        return None if gen is None else int(gen.initial_seed())

    def _randn(self, env_ids: EnvIds, *shape: int) -> torch.Tensor:
        """Standard normal noise ``(B, *shape)``: row b drawn from env ``env_ids[b]``'s generator.

        Envs never seeded draw from the global torch RNG; a mode view's env draws from its own
        copy of the env's seeded stream."""
        rows = []
        rngs = self._rngs
        for env in env_ids:
            gen = rngs.get(env)
            if gen is None and type(env) is ModeEnv and env.env in rngs:
                gen = rngs[env] = torch.Generator()
                gen.manual_seed(rngs[env.env].initial_seed())
            rows.append(torch.randn(shape, generator=gen))
        if not rows:
            return torch.empty((0, *shape), device=self.device)
        return torch.stack(rows).to(self.device)

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
        """True when the class implements its own guided sampling (``_guided_chunk``)."""
        return cls._guided_chunk is not Policy._guided_chunk

    @classmethod
    def can_prefix(cls) -> bool:
        """True when the class implements training-time RTC (``_prefix_chunk``)."""
        return cls._prefix_chunk is not Policy._prefix_chunk

    @classmethod
    def hooks(cls) -> list[str]:
        """The hooks this class implements (``envactor policies`` lists them)."""
        return implemented_hooks(cls, Policy)

    def _apply(self, fn: Any, recurse: bool = True) -> Policy:
        super()._apply(fn, recurse)
        anchor = self._device_anchor
        assert isinstance(anchor, torch.Tensor)
        self._device = anchor.device
        if self._ema is not None:
            self._ema.refresh()
        return self

    # ------------------------------------------------------------------ seed-system contract
    def predict(
        self,
        obs: Obs,
        normalizer: Normalizer | None = None,
        *,
        env_ids: EnvIds | None = None,
        explore: bool = False,
        num_samples: int = 1,
    ) -> np.ndarray:
        """Batched observations -> action chunks ``(B, H, A)`` in action units (float32).

        ``env_ids`` name the rows (per-env state and noise; default: row indices); ``explore``
        applies ``_explore``. With ``n_obs_steps > 1`` each call is one step of those envs: its
        rows join their histories and ``_chunk`` sees the last ``n_obs_steps`` of them.

        ``num_samples = N > 1`` returns ``(B, N, H, A)``: N chunks per row from one ``_chunk``
        call over ``B * N`` rows (row b repeated N times, its env id too). The observation
        enters the history once; an env's N samples draw its noise one after another, so they
        are independent, and sample j of an env is the same whatever else is in the batch.
        """
        if num_samples == 1 and type(num_samples) is int:
            return self._predict(obs, normalizer, env_ids, explore=explore)
        return self._predict(obs, normalizer, env_ids, explore, samples=_count(num_samples))

    def guided_inference(
        self,
        obs: Obs,
        normalizer: Normalizer | None = None,
        min_num_actions_executed: int | None = None,
        action_chunk_size: int | None = None,
        *,
        request: GuidanceRequest | None = None,
        prev_chunk: np.ndarray | Sequence[np.ndarray] | None = None,
        delay: int | Sequence[int] = 0,
        env_ids: EnvIds | None = None,
        method: str | None = None,
        schedule: Schedule | None = None,
        max_guidance_weight: float | None = None,
        jacobian: str | None = None,
    ) -> np.ndarray:
        """A new chunk ``(B, H, A)`` that continues each env's current one smoothly.

        Give either ``request`` (a :class:`~envactor.chunking.GuidanceRequest`, what every
        runtime sends) or its fields: ``prev_chunk``, the unexecuted remainder of each env's
        previous chunk (``(B, L, A)`` or B arrays ``(L_b, A)``, index 0 = the next action to
        run); ``delay`` d (per env or one for all: the first d actions run before the new chunk
        arrives and are frozen); ``min_num_actions_executed`` s (default ``H - L_b``);
        ``method`` ``"guided"`` (``"auto"``: the policy's guided sampling, else the blend),
        ``"prefix"`` (training-time RTC) or ``"blend"``; ``schedule``, ``max_guidance_weight``
        (beta) and ``jacobian``, each defaulting to the request's default. The seed system's
        call shape, ``prev_action`` (and ``est_delay``) inside ``obs``, is read the same way.
        With no remainder at all this is ``predict``.
        """
        horizon = self.params.horizon
        if action_chunk_size is not None and action_chunk_size != horizon:
            raise ValueError(
                f"action_chunk_size must be the policy's H={horizon}, got {action_chunk_size}"
            )
        request = guidance_from_call(
            obs, horizon, request, prev_chunk, delay, min_num_actions_executed,
            method, schedule, max_guidance_weight, jacobian,
        )  # fmt: skip
        if request is None or request.is_empty:
            return self.predict(obs, normalizer, env_ids=env_ids)
        return self._guided(obs, normalizer, env_ids, request)

    def warmup(self, batch_size: int = 1) -> None:
        """Dummy forward passes (plain and guided) from the declared input spec."""
        self._warm(batch_size)

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
        """Record one step's observations ``(B, ...)`` of envs that ask for no chunk this step
        (the executors and the real-time controller call it every step when ``n_obs_steps >
        1``): each env's history, and the ``_observe`` hook. A cheap no-op when ``n_obs_steps``
        is 1 and the policy has no ``_observe``."""
        if self._n_obs > 1 or self._observe_hook:
            self._observe_rows(obs, env_ids, None)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Learn mode: a normalized batch through ``_loss``; returns ``{"loss": ..., ...}``."""
        return self._learn(batch)

    def select_action(self, batch: Obs, *, env_ids: EnvIds | None = None) -> np.ndarray:
        """One action per row ``(B, A)``; each env replans only when its own queue is empty.
        Every call's observations enter the envs' histories (``n_obs_steps > 1``)."""
        return self._act_from_queues(batch, env_ids, self._queues, explore=False)

    def update(self) -> None:
        """One EMA step of the weights (when ``ema_decay`` is set), then the ``_update`` hook."""
        decay = self.params.ema_decay
        if decay is not None:
            if self._ema is None:
                self._ema = EmaShadow(self.components, decay)
            self._ema.step()
        self._update()

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
        return LearnMode(self)

    @cached_property
    def collect_mode(self) -> CollectMode:
        """Exploring view: ``forward({env_id: obs}) -> {env_id: action}``."""
        return CollectMode(self)

    @cached_property
    def eval_mode(self) -> EvalMode:
        """Deterministic view: ``forward({env_id: obs}) -> {env_id: action}``."""
        return EvalMode(self)
