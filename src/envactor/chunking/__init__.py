"""Chunk math: soft prefix masks, guided flow sampling (real-time chunking) and the one
guidance request every runtime builds (:class:`GuidanceRequest`).

Pure functions and values over numpy/torch; the executors that use them live in
``envactor.runtime``.
"""

from envactor.chunking.guidance import DEFAULT_MAX_GUIDANCE_WEIGHT, euler_sample, rtc_sample
from envactor.chunking.masks import prefix_weights, prefix_weights_torch
from envactor.chunking.request import GuidanceMethod, GuidanceRequest

__all__ = [
    "DEFAULT_MAX_GUIDANCE_WEIGHT",
    "GuidanceMethod",
    "GuidanceRequest",
    "euler_sample",
    "prefix_weights",
    "prefix_weights_torch",
    "rtc_sample",
]
