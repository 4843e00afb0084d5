"""Executors that condition the new chunk on the unexecuted remainder of the previous one.

Timing of naive async; each request carries each env's remainder ``chunk[idx:]`` and d (a
:class:`~envactor.chunking.GuidanceRequest` with the executor's ``method``), so the first d
actions of the new chunk continue what runs while inference is in flight.
"""

from __future__ import annotations

from envactor.runtime.executors.base import EXECUTORS, ChunkExecutor


@EXECUTORS.register("blend")
class BlendExecutor(ChunkExecutor):
    """Post-hoc prefix blend ``prev * W + pred * (1 - W)`` with the soft mask (model-agnostic)."""

    name = "blend"
    method = "blend"


@EXECUTORS.register("rtc")
class RTCExecutor(ChunkExecutor):
    """Real-time chunking: guided flow sampling with the true vector-Jacobian product; policies
    that cannot be guided fall back to the blend."""

    name = "rtc"
    method = "guided"


@EXECUTORS.register("rtc_identity")
class RTCIdentityExecutor(ChunkExecutor):
    """RTC with the identity-Jacobian shortcut (no backward pass), for honest comparison."""

    name = "rtc_identity"
    method = "guided"
    jacobian = "identity"


@EXECUTORS.register("rtc_trained")
class RTCTrainedExecutor(ChunkExecutor):
    """Training-time RTC (Black et al., arXiv 2512.05964; docs/chunking.md): the policy was
    trained with clean prefixes and samples the new chunk with the d committed actions written in
    (the hook ``_prefix_chunk``; the ``flow`` policy with ``prefix_max_delay > 0``). No guidance,
    no backward pass."""

    name = "rtc_trained"
    method = "prefix"
