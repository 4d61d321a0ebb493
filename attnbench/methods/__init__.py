"""Built-in attention methods: one module per family, each registering itself on import."""
from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    """Import every module in this package so that their @register decorators run."""
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if not mod.startswith("_") and mod != "base":
            importlib.import_module(f"{__name__}.{mod}")
