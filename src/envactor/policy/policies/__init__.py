"""Built-in policies, one package each; imported lazily by name through ``POLICY_REGISTRY``."""

import pkgutil
from pathlib import Path


def builtin_names() -> list[str]:
    """Names of the built-in policy packages (each registers itself when imported)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))
