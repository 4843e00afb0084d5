"""Named registries: a decorator to register, lazy import by convention, entry-point plugins.

A lookup of an unknown name tries, in order: the registry's conventional module
(``<lazy_module_prefix>.<name>``, for a public identifier only: never ``_private`` or a dotted
or path-like name), then third-party plugins published under the registry's
entry-point group, and only then fails with the known names and the closest match.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import pkgutil
import sys
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """A name that cannot be registered or found; the message says which and why."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the message as written
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A mapping from names to classes (or factories) of one kind.

    Args:
        kind: what is registered, used in error messages ("policy", "component").
        lazy_module_prefix: package whose submodule ``<prefix>.<name>`` is imported when
            ``name`` is unknown (registration happens as a side effect of the import).
        entry_point_group: entry-point group searched for third-party plugins; an entry
            point named ``name`` is loaded (importing its module registers it; if it resolves
            to a class that is not registered yet, it is registered under ``name``).
        validator: called with ``(name, obj)`` at registration; raises to refuse.
    """

    def __init__(
        self,
        kind: str,
        *,
        lazy_module_prefix: str | None = None,
        entry_point_group: str | None = None,
        list_lazy_modules: bool = False,
        validator: Callable[[str, T], None] | None = None,
    ) -> None:
        self.kind = kind
        self.lazy_module_prefix = lazy_module_prefix
        self.entry_point_group = entry_point_group
        self.validator = validator
        self.list_lazy_modules = list_lazy_modules
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` registers the decorated object under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; another object under a taken name is an error."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        old = self._items.get(name)
        if old is obj:
            return
        if old is not None:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered to {_qualname(old)}; "
                f"cannot register {_qualname(obj)} under the same name"
            )
        if self.validator is not None:
            self.validator(name, obj)
        if isinstance(obj, type):
            obj.registered_name = name  # type: ignore[attr-defined]
        self._items[name] = obj

    def get(self, name: str) -> T:
        """The object registered under ``name``, importing it lazily or from a plugin if needed."""
        if name in self._items:
            return self._items[name]
        self._try_lazy_import(name)
        if name in self._items:
            return self._items[name]
        self._try_entry_points(name)
        if name in self._items:
            return self._items[name]
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} {name!r}; known {self.kind} names: "
            f"{', '.join(known) if known else '(none)'}{hint}"
        )

    def names(self) -> list[str]:
        """Sorted names: registered, importable by convention (when listed) and advertised by
        entry points (neither imported)."""
        found = set(self._items)
        if self.list_lazy_modules and self.lazy_module_prefix:
            found.update(_submodules(self.lazy_module_prefix))
        if self.entry_point_group:
            found.update(ep.name for ep in _entry_points(self.entry_point_group))
        return sorted(found)

    def items(self) -> Iterator[tuple[str, T]]:
        """Registered ``(name, object)`` pairs, sorted by name."""
        yield from sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except RegistryError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._items)

    def _try_lazy_import(self, name: str) -> None:
        # Only public module names: ``__init__`` or ``_common`` would import a package's
        # internals a second time under another name, never a registered entry.
        if not self.lazy_module_prefix or not name.isidentifier() or name.startswith("_"):
            return
        module = f"{self.lazy_module_prefix}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only "this module does not exist" is a miss; a broken import inside it is a bug
            # the user must see.
            if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
                return
            raise

    def _try_entry_points(self, name: str) -> None:
        if not self.entry_point_group:
            return
        for ep in _entry_points(self.entry_point_group):
            if ep.name != name:
                continue
            obj = ep.load()
            if name not in self._items:
                self.add(name, obj)
            return


_ENTRY_POINTS: dict[tuple[str, tuple[str, ...]], list[importlib.metadata.EntryPoint]] = {}


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The entry points of ``group``, scanned once per ``sys.path`` (a scan reads every
    installed distribution's metadata: milliseconds, too slow for a per-request lookup). A
    folder added to ``sys.path`` is scanned when next asked; a package installed into a
    folder already on it while the process runs is seen by the next process."""
    key = (group, tuple(sys.path))
    found = _ENTRY_POINTS.get(key)
    if found is None:
        found = _ENTRY_POINTS[key] = list(importlib.metadata.entry_points(group=group))
    return found


def _submodules(package: str) -> list[str]:
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return []
    found = pkgutil.iter_modules(getattr(pkg, "__path__", []))
    return [m.name for m in found if not m.name.startswith("_")]


def _qualname(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    qn = getattr(obj, "__qualname__", type(obj).__qualname__)
    return f"{mod}.{qn}"


POLICY_REGISTRY: Registry = Registry(
    "policy",
    lazy_module_prefix="envactor.policy.policies",
    entry_point_group="envactor.policies",
    list_lazy_modules=True,
)
"""Policies by name; ``envactor.policy.base`` installs the class check as its validator."""

COMPONENT_REGISTRY: Registry = Registry(
    "component",
    lazy_module_prefix="envactor.nn.blocks",
    entry_point_group="envactor.components",
)
"""Neural-network building blocks by ``type:`` name (see ``envactor.nn``)."""
