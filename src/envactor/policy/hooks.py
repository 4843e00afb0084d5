"""The hooks a policy writes and the rule that it writes nothing else of the base class.

``HOOKS`` are the protected methods a subclass of ``envactor.Policy`` may implement. Every other
method, property or helper the base class defines (its public API and the private helpers of
its acting boundary) is *owned*: ``Policy.__init_subclass__`` refuses a subclass, registered or
not, that redefines one. The owned names are read from the classes themselves, so a method added
to the base is protected without a list to keep up to date.
"""

from __future__ import annotations

from functools import cached_property
from types import FunctionType

HOOKS: dict[str, str] = {
    "_chunk": "(obs, env_ids) -> (B, H, A): the plain forward pass (required)",
    "_loss": "(batch) -> {'loss': ...}: learn mode (required when trainable)",
    "_guided_chunk": "(obs, env_ids, request, prefix) -> (B, H, A): guided sampling (rtc)",
    "_prefix_chunk": "(obs, env_ids, request, prefix) -> (B, H, A): training-time RTC",
    "_explore": "(chunk, env_ids) -> chunk: collect-mode noise",
    "_reset": "(env_ids) -> None: clear per-env state (all when None)",
    "_observe": "(obs, env_ids) -> None: an observation of a step with no chunk request",
    "_update": "() -> None: after each update() (EMA step): target networks, counters",
}
"""Hook name -> its signature and job (``envactor policies`` prints the implemented ones)."""

_MEMBER_TYPES = (FunctionType, property, cached_property, classmethod, staticmethod)


class ContractError(TypeError):
    """A policy class that breaks the contract: it redefines what the base class owns."""


def owned_names(*bases: type) -> frozenset[str]:
    """Methods, properties and helpers defined on ``bases`` that are not hooks or dunders."""
    return frozenset(
        name
        for klass in bases
        for name, value in vars(klass).items()
        if isinstance(value, _MEMBER_TYPES)
        and name not in HOOKS
        and not (name.startswith("__") and name.endswith("__"))
    )


def check_overrides(cls: type, base: type, owned: frozenset[str]) -> None:
    """Raise :class:`ContractError` when a class between ``cls`` and ``base`` redefines an owned
    name; public methods and private helpers are named separately."""
    where = f"policy class {cls.__module__}.{cls.__qualname__}"
    for klass in cls.__mro__:
        if klass is base:
            return
        bad = sorted(owned & set(vars(klass)))
        if not bad:
            continue
        public = [n for n in bad if not n.startswith("_")]
        private = [n for n in bad if n.startswith("_")]
        parts = []
        if public:
            parts.append(f"overrides public method(s) {public} of envactor.Policy")
        if private:
            parts.append(f"redefines internal helper(s) {private} of envactor.Policy (rename them)")
        raise ContractError(
            f"{where} {' and '.join(parts)} (defined in {klass.__qualname__}); implement hooks "
            f"instead: {', '.join(HOOKS)}"
        )


def implemented_hooks(cls: type, base: type) -> list[str]:
    """The hooks ``cls`` defines itself or inherits from a class other than ``base``."""
    return [h for h in HOOKS if getattr(cls, h, None) is not getattr(base, h, None)]
