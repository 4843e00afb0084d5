"""What registration checks of a policy class: public methods kept, required hooks present."""

from __future__ import annotations

from typing import Any

from envactor.policy.base import Policy
from envactor.policy.specs import PolicyParams
from envactor.registry import POLICY_REGISTRY, RegistryError

PUBLIC_METHODS = frozenset(
    {
        "predict", "guided_inference", "warmup", "freeze_all_model_params", "reset", "forward",
        "select_action", "update", "learn_mode", "collect_mode", "eval_mode", "load_weights",
        "acting_state_dict", "set_env_seeds", "name", "input_features", "action_shape",
        "device", "can_guide", "observe", "n_obs_steps",
        "_acting", "_learning", "_predict", "_prepare", "_act_from_queues", "_observe",
        "_remember",
    }
)  # fmt: skip


def check_policy_class(name: str, cls: Any) -> None:
    """Registry validator: a policy subclasses ``Policy``, keeps its public methods, has hooks."""
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise RegistryError(f"policy {name!r}: expected a subclass of envactor.Policy, got {cls!r}")
    where = f"policy {name!r} ({cls.__module__}.{cls.__qualname__})"
    for klass in cls.__mro__:
        if klass is Policy:
            break
        bad = sorted(PUBLIC_METHODS & set(vars(klass)))
        if bad:
            raise RegistryError(
                f"{where} overrides public method(s) {bad} of envactor.Policy (defined in "
                f"{klass.__qualname__}); implement the hooks _chunk/_loss/_guided_chunk/_explore/"
                f"_reset instead"
            )
    required = ["_chunk"] + (["_loss"] if cls.trainable else [])
    missing = [h for h in required if getattr(cls, h) is getattr(Policy, h)]
    if missing:
        raise RegistryError(
            f"{where} is missing required hook(s) {missing}"
            + (" (set trainable = False for a policy with no loss)" if "_loss" in missing else "")
        )
    if not (isinstance(cls.Params, type) and issubclass(cls.Params, PolicyParams)):
        raise RegistryError(f"{where}: Params must subclass envactor.policy.PolicyParams")


POLICY_REGISTRY.validator = check_policy_class
