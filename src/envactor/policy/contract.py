"""What registration checks of a policy class: a ``Policy`` subclass with its required hooks.

That a class keeps the base class's methods is checked when the class is defined
(``Policy.__init_subclass__``, ``envactor.policy.hooks``), registered or not; the registry checks
it again for classes built around that (``type(...)`` with a patched namespace).
"""

from __future__ import annotations

from typing import Any

from envactor.policy.acting import ActingBoundary
from envactor.policy.base import Policy
from envactor.policy.hooks import ContractError, check_overrides, owned_names
from envactor.policy.specs import PolicyParams
from envactor.registry import POLICY_REGISTRY, RegistryError


def check_policy_class(name: str, cls: Any) -> None:
    """Registry validator: a policy subclasses ``Policy``, keeps its public methods, has hooks."""
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise RegistryError(f"policy {name!r}: expected a subclass of envactor.Policy, got {cls!r}")
    where = f"policy {name!r} ({cls.__module__}.{cls.__qualname__})"
    try:
        check_overrides(cls, Policy, owned_names(Policy, ActingBoundary))
    except ContractError as exc:
        raise RegistryError(f"{where}: {exc}") from None
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
