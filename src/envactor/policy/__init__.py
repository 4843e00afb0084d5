"""The policy contract (``Policy``), its hooks, specs, mode views and the builder."""

from envactor.chunking.request import GuidanceRequest
from envactor.normalize import Normalizer
from envactor.policy.base import Policy, PolicyError
from envactor.policy.boundary import ObservationError
from envactor.policy.build import build_policy, save_policy
from envactor.policy.contract import check_policy_class
from envactor.policy.hooks import HOOKS, ContractError
from envactor.policy.modes import ModeEnv
from envactor.policy.specs import FeatureSpec, PolicyParams
from envactor.registry import POLICY_REGISTRY

__all__ = [
    "HOOKS",
    "POLICY_REGISTRY",
    "ContractError",
    "FeatureSpec",
    "GuidanceRequest",
    "ModeEnv",
    "Normalizer",
    "ObservationError",
    "Policy",
    "PolicyError",
    "PolicyParams",
    "build_policy",
    "check_policy_class",
    "save_policy",
]
