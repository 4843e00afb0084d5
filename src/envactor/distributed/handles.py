"""One calling convention for a Ray actor and an in-process object (``--workers 0``).

``local(obj).method.remote(*args)`` calls ``obj.method(*args)`` at once and wraps the result,
``put(value)`` boxes a value like ``ray.put``, and ``get(x)`` resolves either kind. So the
weight store, publisher and subscriber run the same code with or without a cluster.
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["LocalRef", "get", "is_local", "local", "put"]

_ids = itertools.count()


class LocalRef:
    """An in-process stand-in for ``ray.ObjectRef``: holds the value."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self._id = next(_ids)

    def hex(self) -> str:
        return f"local-{self._id:08x}"


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> LocalRef:
        return LocalRef(self._fn(*args, **kwargs))


class _LocalActor:
    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._obj, name))


def local(obj: Any) -> Any:
    """``obj`` behind the actor-handle interface (``handle.method.remote(...)``)."""
    return _LocalActor(obj)


def is_local(handle: Any) -> bool:
    """True for a handle made by ``local``."""
    return isinstance(handle, _LocalActor)


def put(value: Any, *, local_mode: bool) -> Any:
    """``ray.put(value)``, or a ``LocalRef`` in process."""
    if local_mode:
        return LocalRef(value)
    import ray

    return ray.put(value)


def get(ref: Any) -> Any:
    """Resolve a ``LocalRef`` or a Ray ``ObjectRef`` (or a list of either)."""
    if isinstance(ref, list):
        return [get(r) for r in ref]
    if isinstance(ref, LocalRef):
        return ref.value
    import ray

    return ray.get(ref)
