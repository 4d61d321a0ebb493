"""attnbench: efficient attention implementations side by side.

    import attnbench
    attnbench.list_methods()
    attn = attnbench.create("anchor", heads=6, head_dim=64, m=30)
    out = attn(q, k, v, grid=(14, 14))      # q, k, v, out: (B, heads, N, head_dim)
    frame = attnbench.load_frame("results/sweep-cpu")   # rows as a flat pandas DataFrame
"""
from attnbench.registry import create, get_info, list_methods, load_plugin, register

__version__ = "0.1.0"
__all__ = ["create", "get_info", "list_methods", "load_frame", "load_plugin", "register", "__version__"]


def __getattr__(name):
    """``load_frame`` is imported on first use, so ``import attnbench`` does not import pandas."""
    if name == "load_frame":
        from attnbench.frame import load_frame

        return load_frame
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
