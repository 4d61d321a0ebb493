"""attnbench: efficient attention implementations side by side.

    import attnbench
    attnbench.list_methods()
    attn = attnbench.create("anchor", heads=6, head_dim=64, m=30)
    out = attn(q, k, v, grid=(14, 14))      # q, k, v, out: (B, heads, N, head_dim)

The names below are imported on first use (PEP 562), so that ``import attnbench`` and the
command line's ``--help`` do not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create": "attnbench.registry", "get_info": "attnbench.registry", "list_methods": "attnbench.registry",
    "load_plugin": "attnbench.registry", "register": "attnbench.registry",
    "load_frame": "attnbench.frame",
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
