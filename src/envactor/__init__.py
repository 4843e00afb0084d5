"""envactor: one policy class, trained, evaluated across many envs, executed in chunks in real
time, served over the network and distributed on Ray.

Heavy or optional parts (runtime, Ray, websockets, MuJoCo) load on first use.
"""

from typing import Any

from envactor.chunking.request import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy import POLICY_REGISTRY, Policy, PolicyParams, build_policy, save_policy
from envactor.registry import COMPONENT_REGISTRY, Registry

__version__ = "0.1.0"

__all__ = [
    "COMPONENT_REGISTRY",
    "POLICY_REGISTRY",
    "GuidanceRequest",
    "Normalizer",
    "Policy",
    "PolicyParams",
    "Registry",
    "__version__",
    "build_policy",
    "evaluate",
    "save_policy",
]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from envactor.runtime.evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'envactor' has no attribute {name!r}")
