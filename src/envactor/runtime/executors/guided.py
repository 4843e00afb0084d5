"""Executors that condition the new chunk on the unexecuted remainder of the previous one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from envactor.policy.modes import stack_observations
from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor, EnvId, EnvState


class _GuidedExecutor(ChunkExecutor):
    """Timing of naive async; the request carries each env's remainder ``chunk[idx:]`` and d,
    so the first d actions of the new chunk continue what runs while inference is in flight."""

    method: ClassVar[str] = "auto"
    jacobian: ClassVar[str] = "vjp"

    def __init__(
        self, policy: Any, *, schedule: str = "exp", max_guidance_weight: float = 5.0, **kwargs: Any
    ) -> None:
        super().__init__(policy, **kwargs)
        self.schedule = schedule
        self.max_guidance_weight = float(max_guidance_weight)

    def _request(
        self,
        env_ids: list[EnvId],
        obs: Mapping[EnvId, Mapping[str, Any]],
        states: Mapping[EnvId, EnvState],
    ) -> np.ndarray:
        ids, batch = stack_observations(obs, list(self.policy.input_features))
        adim = self.policy.params.action_dim
        prev, delays = [], []
        for e in ids:
            st = states[e]
            if st.chunk is None:  # first chunk of the episode: nothing to continue
                prev.append(np.zeros((0, adim), np.float32))
                delays.append(0)
            else:
                prev.append(st.chunk[st.idx :])
                delays.append(self.delay)
        if all(len(p) == 0 for p in prev):
            return self.policy.predict(batch, env_ids=ids, explore=self.explore)
        return self._infer(batch, ids, prev, delays)

    def _infer(
        self, batch: dict[str, Any], ids: list[EnvId], prev: list[np.ndarray], delays: list[int]
    ) -> np.ndarray:
        """The conditioned call: ``guided_inference`` with this executor's method."""
        return self.policy.guided_inference(
            batch,
            prev_chunk=prev,
            delay=delays,
            env_ids=ids,
            method=self.method,  # type: ignore[arg-type]
            schedule=self.schedule,  # type: ignore[arg-type]
            max_guidance_weight=self.max_guidance_weight,
            jacobian=self.jacobian,  # type: ignore[arg-type]
        )


@EXECUTORS.register("blend")
class BlendExecutor(_GuidedExecutor):
    """Post-hoc prefix blend ``prev * W + pred * (1 - W)`` with the soft mask (model-agnostic)."""

    name = "blend"
    method = "blend"


@EXECUTORS.register("rtc")
class RTCExecutor(_GuidedExecutor):
    """Real-time chunking: guided flow sampling with the true vector-Jacobian product; policies
    that cannot be guided fall back to the blend."""

    name = "rtc"


@EXECUTORS.register("rtc_identity")
class RTCIdentityExecutor(_GuidedExecutor):
    """RTC with the identity-Jacobian shortcut (no backward pass), for honest comparison."""

    name = "rtc_identity"
    jacobian = "identity"


@EXECUTORS.register("rtc_trained")
class RTCTrainedExecutor(_GuidedExecutor):
    """Training-time RTC (Black et al., arXiv 2512.05964; docs/chunking.md): the policy was
    trained with clean prefixes and samples the new chunk with the d committed actions written in
    (``prefix_inference``; the ``flow`` policy with ``prefix_max_delay > 0``). No guidance, no
    backward pass."""

    name = "rtc_trained"

    def _infer(
        self, batch: dict[str, Any], ids: list[EnvId], prev: list[np.ndarray], delays: list[int]
    ) -> np.ndarray:
        infer = getattr(self.policy, "prefix_inference", None)
        if infer is None:
            raise TypeError(
                f"executor 'rtc_trained' needs a policy trained with training-time RTC (a method "
                f"prefix_inference, e.g. flow with prefix_max_delay > 0); got policy "
                f"{self.policy.name!r}"
            )
        out: np.ndarray = infer(batch, prev_chunk=prev, delay=delays, env_ids=ids)
        return out
