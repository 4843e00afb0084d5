"""Chunk math: soft prefix masks and guided flow sampling (real-time chunking).

Pure functions over numpy/torch; the executors that use them live in ``envactor.runtime``.
"""

from envactor.chunking.guidance import euler_sample, rtc_sample
from envactor.chunking.masks import prefix_weights, prefix_weights_torch

__all__ = ["euler_sample", "prefix_weights", "prefix_weights_torch", "rtc_sample"]
