"""A LeRobot checkpoint as an envactor ``Policy``: LeRobot's own model and processors in the hooks.

``_chunk`` is ``postprocessor(model.predict_action_chunk(preprocessor(obs)))``, raw units in and
out: the checkpoint's saved pipelines (LeRobot's normalizer and unnormalizer steps included) do
all normalization, so envactor's normalizer is identity for these policies. envactor's boundary
adds what it adds to every policy: shape checks, per-env queues and noise, the observation
history (``n_obs_steps``, Diffusion's 2 frames: LeRobot's queues are filled from it before each
call), the executors, the vector actor, the server and weight streaming (the LeRobot model is
the component ``model``).

Images: envactor carries camera frames as uint8 ``(H, W, C)``; the hook turns them into float32
``(C, H, W)`` in [0, 1], as LeRobot's environment wrapper does, before the preprocessor.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections import deque
from collections.abc import Hashable, Mapping
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from envactor.interop.lerobot.checkpoint import (
    CHUNK_LENGTH,
    CONFIG_FILE,
    LeRobotCheckpointError,
    envactor_params,
    import_lerobot,
    lerobot_checkpoint_dir,
    policy_type,
    processor_stats,
    require_processors,
)
from envactor.normalize import Normalizer
from envactor.policy.base import ACTION_KEY, EnvIds, Policy, PolicyError
from envactor.policy.specs import PolicyParams

# types whose predict_action_chunk takes the prior ``noise`` (B, horizon, A) of their sampler
PRIOR_HORIZON = {"diffusion": "horizon"}
IMAGES_KEY = "observation.images"  # LeRobot's stacked-cameras key (Diffusion's queues)


class LeRobotParams(PolicyParams):
    """Params of a LeRobot checkpoint, read from its ``config.json`` (not written by hand)."""

    lerobot_type: str
    source: str = ""


class LeRobotPolicy(Policy):
    """A LeRobot policy (``act``, ``diffusion``) behind the envactor contract.

    Built by ``build_policy(DIR)`` / ``load_lerobot_policy(DIR)`` from a ``pretrained_model``
    folder. ``horizon`` H is the chunk ``predict_action_chunk`` returns (ACT: ``chunk_size``;
    Diffusion: ``n_action_steps``, its sample from the current step on), ``n_action_steps`` and
    ``n_obs_steps`` are the checkpoint's. Acting only (``trainable = False``).
    """

    Params = LeRobotParams
    trainable: ClassVar[bool] = False
    required_components = ("model",)
    registered_name: ClassVar[str] = "lerobot"

    def __init__(
        self,
        components: Mapping[str, nn.Module] | None = None,
        normalizer: Normalizer | None = None,
        *,
        processors: tuple[Any, Any] | None = None,
        **params: Any,
    ) -> None:
        super().__init__(components, normalizer, **params)
        if processors is None:
            raise PolicyError(
                "policy 'lerobot' needs the checkpoint's (preprocessor, postprocessor); build it "
                "with envactor.build_policy(DIR) on a LeRobot pretrained_model folder"
            )
        self.preprocessor, self.postprocessor = processors
        model: Any = self.components["model"]  # a LeRobot PreTrainedPolicy
        self._cameras = [k for k, s in self.input_features.items() if s.dtype == "uint8"]
        self._stacked_cameras = list(getattr(model.config, "image_features", None) or [])
        field = PRIOR_HORIZON.get(self.lerobot_type)
        takes_noise = "noise" in inspect.signature(model.predict_action_chunk).parameters
        self._prior_shape: tuple[int, int] | None = None
        if field is not None and takes_noise:
            self._prior_shape = (int(getattr(model.config, field)), self.params.action_dim)
        self._injected: dict[Hashable, deque[torch.Tensor]] = {}

    @property
    def lerobot_type(self) -> str:
        """The LeRobot policy type (``config.json``'s ``type``)."""
        return str(self.params.lerobot_type)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ hooks
    def _chunk(self, obs: dict[str, torch.Tensor], env_ids: EnvIds) -> torch.Tensor:
        model: Any = self.components["model"]
        n = self.n_obs_steps
        frames = [obs] if n == 1 else [{k: v[:, i] for k, v in obs.items()} for i in range(n)]
        batches = [self._lerobot_batch(f) for f in frames]
        current = self._fill_queues(model, batches)
        if self._prior_shape is None:
            actions = model.predict_action_chunk(current)
        else:
            actions = model.predict_action_chunk(current, noise=self._prior(env_ids))
        out: torch.Tensor = self.postprocessor(actions)
        return out.to(device=self.device, dtype=torch.float32)

    def _lerobot_batch(self, frame: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One time step ``{key: (B, ...)}`` through the checkpoint's preprocessor."""
        batch = dict(frame)
        for key in self._cameras:  # uint8 (B, H, W, C) -> float32 (B, C, H, W) in [0, 1]
            batch[key] = batch[key].permute(0, 3, 1, 2).to(torch.float32).div(255.0).contiguous()
        out: dict[str, torch.Tensor] = self.preprocessor(batch)
        # the pipeline also returns action=None, next.reward, ...: keep the observations only
        return {k: v for k, v in out.items() if k.startswith("observation.")}

    def _fill_queues(
        self, model: Any, batches: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Load the history into the model's observation queues (policies that read their
        history from LeRobot's ``_queues``, as Diffusion does); the current step's batch."""
        if self._stacked_cameras:
            for b in batches:
                b[IMAGES_KEY] = torch.stack([b[k] for k in self._stacked_cameras], dim=-4)
        queues = getattr(model, "_queues", None)
        if isinstance(queues, dict):
            from lerobot.policies.utils import populate_queues

            model.reset()  # fresh queues of maxlen n_obs_steps; oldest frame first
            for b in batches:
                populate_queues(model._queues, b)
        return batches[-1]

    # ------------------------------------------------------------------ sampler noise
    def queue_prior_noise(self, noise: Mapping[Hashable, Any]) -> None:
        """Replay hook: env ``e``'s next chunk(s) start from ``noise[e]``, shape ``(horizon, A)``
        or ``(k, horizon, A)`` for its next k chunks, instead of a draw from its generator.

        For samplers with a prior (Diffusion: ``(config.horizon, A)``). Queued noise survives
        ``reset`` (like the per-env generators)."""
        if self._prior_shape is None:
            raise PolicyError(
                f"LeRobot policy type {self.lerobot_type!r} draws no prior noise envactor can set"
            )
        for env, value in noise.items():
            t = torch.as_tensor(np.asarray(value), dtype=torch.float32)
            if t.dim() == 2:
                t = t[None]
            if tuple(t.shape[1:]) != self._prior_shape:
                raise ValueError(
                    f"prior noise of env {env!r}: expected shape {self._prior_shape} or "
                    f"(k, {', '.join(map(str, self._prior_shape))}), got {tuple(t.shape)}"
                )
            self._injected.setdefault(env, deque()).extend(t.unbind(0))

    def _prior(self, env_ids: EnvIds) -> torch.Tensor:
        """The sampler's prior ``(B, horizon, A)``: queued noise, else each env's generator."""
        assert self._prior_shape is not None
        if not self._injected:
            return self._randn(env_ids, *self._prior_shape)
        rows = []
        for env in env_ids:
            queued = self._injected.get(env)
            if queued:
                rows.append(queued.popleft().to(self.device))
                if not queued:
                    del self._injected[env]
            else:
                rows.append(self._randn([env], *self._prior_shape)[0])
        return torch.stack(rows)


def params_from_config(config: Any, kind: str, folder: Path) -> dict[str, Any]:
    """envactor params of a loaded LeRobot policy config (its defaults filled in)."""
    fields: dict[str, Any] = {
        name: {k: {"type": getattr(f.type, "value", str(f.type)), "shape": list(f.shape)}
               for k, f in getattr(config, name).items()}
        for name in ("input_features", "output_features")
    }  # fmt: skip
    for name in ("n_action_steps", "n_obs_steps", CHUNK_LENGTH[kind]):
        fields[name] = getattr(config, name, None)
    return envactor_params(kind, fields, folder)


def load_lerobot_policy(path: str | Path, *, device: str | torch.device = "cpu") -> LeRobotPolicy:
    """The LeRobot checkpoint at ``path`` (a ``pretrained_model`` folder, or a training step
    folder holding one) as a ready envactor policy on ``device``; LeRobot is imported here."""
    folder = lerobot_checkpoint_dir(path)
    if folder is None:
        raise LeRobotCheckpointError(
            f"{path}: expected a LeRobot pretrained_model folder (config.json with a 'type', "
            "model.safetensors, policy_preprocessor.json, policy_postprocessor.json)"
        )
    kind = policy_type(folder)
    fields = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    envactor_params(kind, fields, folder)  # unsupported types and features fail before import
    require_processors(folder)
    configs = import_lerobot("configs.policies", folder)
    factory = import_lerobot("policies.factory", folder)
    dev = str(torch.device(device))
    overrides = {"device_processor": {"device": dev}}
    try:
        with redirect_stdout(sys.stderr):  # LeRobot prints while loading; stdout stays clean
            config = configs.PreTrainedConfig.from_pretrained(folder)
            config.device = dev
            model = factory.get_policy_class(kind).from_pretrained(folder, config=config)
            pre, post = factory.make_pre_post_processors(
                model.config,
                pretrained_path=str(folder),
                preprocessor_overrides=overrides,
                postprocessor_overrides=overrides,
            )
    except ModuleNotFoundError:
        import_lerobot(f"policies.{kind}.modeling_{kind}", folder)  # names what is missing
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise LeRobotCheckpointError(
            f"{folder}: LeRobot could not load this checkpoint: {type(exc).__name__}: {exc}"
        ) from exc
    params = params_from_config(model.config, kind, folder)
    modes: dict[str, Any] = {k: "identity" for k in params["input_features"]}
    modes[ACTION_KEY] = "identity"
    # identity: LeRobot's processors normalize; the action's raw stats are kept for the
    # real-time controller's limits (Normalizer.stats()["action"])
    stats = {ACTION_KEY: processor_stats(folder, ACTION_KEY)}
    norm = Normalizer(modes, stats)
    policy = LeRobotPolicy({"model": model}, norm, processors=(pre, post), **params)
    version = getattr(sys.modules.get("lerobot"), "__version__", "unknown")
    policy.config = {
        "policy": {"type": "lerobot", "params": {k: v for k, v in params.items()}},
        "lerobot": {"path": str(folder), "type": kind, "version": version},
    }
    return policy.to(dev)
