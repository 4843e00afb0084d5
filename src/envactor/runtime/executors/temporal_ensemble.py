"""Temporal ensembling (ACT): query every step, average every prediction for the current step."""

from __future__ import annotations

import numpy as np

from envactor.policy.base import Policy
from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor, EnvState


@EXECUTORS.register("temporal_ensemble")
class TemporalEnsembleExecutor(ChunkExecutor):
    """Output ``sum_i w_i a_i / sum_i w_i`` over all arrived chunks that cover the current step,
    ``w_i = exp(-m i)`` with i = 0 the OLDEST prediction (ACT, m = 0.01 by default). A chunk is
    requested every step; with delay d each arrives d steps after its observation."""

    name = "temporal_ensemble"

    def __init__(self, policy: Policy, *, m: float = 0.01, **kwargs: object) -> None:
        super().__init__(policy, **kwargs)  # type: ignore[arg-type]
        self.m = float(m)

    def _wants(self, st: EnvState) -> bool:
        return True

    def _deliver(self, st: EnvState) -> None:
        live = st.live
        while st.pending and st.pending[0].ready <= st.t:
            p = st.pending.pop(0)
            live.append((p.t0, p.chunk))
            st.chunk = p.chunk  # marks "has a chunk" for the base class
            st.version = p.version
        live[:] = [(t0, c) for t0, c in live if t0 + self.horizon > st.t]

    def _next_action(self, st: EnvState) -> np.ndarray | None:
        preds = [c[st.t - t0] for t0, c in st.live if 0 <= st.t - t0 < self.horizon]
        if not preds:
            return None
        w = np.exp(-self.m * np.arange(len(preds)))  # live is oldest first
        return (np.tensordot(w, np.stack(preds), axes=1) / w.sum()).astype(np.float32)

    def _ran_out(self, st: EnvState) -> bool:
        return not any(0 <= st.t - t0 < self.horizon for t0, _ in st.live)

    def _source_index(self, st: EnvState) -> int:
        return st.t - st.live[-1][0]  # the newest chunk's action for this step
