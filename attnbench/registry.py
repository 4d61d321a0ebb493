"""Method registry: ``@register`` a ``torch.nn.Module`` subclass, ``create`` it by name.

A registered class is constructed as ``cls(heads, head_dim, **params)`` and called as
``module(q, k, v, grid=None)`` with q, k, v shaped (B, heads, N, head_dim).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

ALL_DTYPES = ("float32", "float16", "bfloat16")


class PluginError(Exception):
    """A plugin file or module could not be imported."""


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one method, as data."""

    name: str
    cls: type
    family: str
    budget: str | None = None          # name of the constructor parameter that --m sets
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ALL_DTYPES
    needs_grid: bool = False
    uses_query: bool = True
    head_dims: tuple[int, int] = (1, 4096)  # inclusive range of supported head dims
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    default_sweep: tuple[str, ...] | None = None  # devices whose default sweep includes it (None: all)

    def availability(self, device: str | None = None) -> str | None:
        """None if usable on ``device`` (any device if None), else a sentence saying why not."""
        check = getattr(self.cls, "availability", None)
        reason = check() if callable(check) else None
        if reason:
            return reason
        if device is not None and device not in self.devices:
            return f"{self.name} runs on {', '.join(self.devices)}, not {device}."
        return None


_REGISTRY: dict[str, MethodInfo] = {}
_BUILTINS_LOADED = False


def register(
    name: str,
    *,
    family: str,
    budget: str | None = None,
    devices: tuple[str, ...] | list[str] = ("cpu", "cuda"),
    dtypes: tuple[str, ...] | list[str] = ALL_DTYPES,
    needs_grid: bool = False,
    uses_query: bool = True,
    head_dims: tuple[int, int] = (1, 4096),
    defaults: dict[str, Any] | None = None,
    description: str = "",
    replace: bool = False,
    default_sweep: tuple[str, ...] | list[str] | None = None,
) -> Callable[[type], type]:
    """Class decorator adding an attention module to the registry under ``name``.

    A second registration of the same name raises ``ValueError`` unless ``replace=True``.
    """

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise TypeError(f"@register({name!r}) needs a torch.nn.Module subclass, got {cls!r}")
        if name in _REGISTRY and not replace:
            raise ValueError(f"method {name!r} is already registered; pass replace=True to override it")
        doc = description or (cls.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = MethodInfo(
            name=name, cls=cls, family=family, budget=budget, devices=tuple(devices),
            dtypes=tuple(dtypes), needs_grid=needs_grid, uses_query=uses_query,
            head_dims=tuple(head_dims), defaults=dict(defaults or {}), description=doc,
            default_sweep=None if default_sweep is None else tuple(default_sweep),
        )
        cls.method_name = name
        cls.info = _REGISTRY[name]
        return cls

    return deco


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from attnbench import methods

        methods.load_all()


def get_info(name: str) -> MethodInfo:
    """The ``MethodInfo`` of ``name``; KeyError listing the known names if unknown."""
    _load_builtins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown method {name!r}; known methods: {known}")
    return _REGISTRY[name]


def list_methods(device: str | None = None) -> list[dict[str, Any]]:
    """One dict per registered method: name, family, budget, params, devices, availability."""
    _load_builtins()
    out = []
    for name in sorted(_REGISTRY):
        info = _REGISTRY[name]
        reason = info.availability(device)
        out.append({
            "name": name, "family": info.family, "budget": info.budget,
            "params": dict(info.defaults), "devices": list(info.devices),
            "dtypes": list(info.dtypes), "needs_grid": info.needs_grid,
            "uses_query": info.uses_query, "available": reason is None,
            "reason": reason, "description": info.description,
            "default_sweep": device is None or info.default_sweep is None or device in info.default_sweep,
        })
    return out


def create(name: str, *, heads: int, head_dim: int, **params: Any) -> torch.nn.Module:
    """Instantiate method ``name`` as ``cls(heads, head_dim, **params)``."""
    return build(name, heads=heads, head_dim=head_dim, params=params)


def names_from_spec(spec: str) -> tuple[str, ...]:
    """'a, b,a' -> ('a', 'b'): registered names of a comma list, in order, without repeats.

    KeyError (listing the known names) for an unknown one; an empty tuple when none is named."""
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    for name in names:
        get_info(name)
    return names


def build(name: str, *, heads: int, head_dim: int, params: dict[str, Any] | None = None,
          m: int | None = None) -> torch.nn.Module:
    """Method ``name`` for one measured point: ``params`` over its defaults, and ``m`` (when given)
    as the value of its budget parameter. The one place a point becomes a constructor call."""
    info = get_info(name)
    kwargs = {**info.defaults, **(params or {})}
    if info.budget and m is not None:
        kwargs[info.budget] = m
    return info.cls(heads, head_dim, **kwargs)


def load_plugin(spec: str) -> None:
    """Import a plugin given as a path to a .py file or as a dotted module name."""
    try:
        if spec.endswith(".py") or os.path.sep in spec:
            if not os.path.isfile(spec):
                raise PluginError(f"plugin file {spec!r} does not exist")
            mod_name = "attnbench_plugin_" + os.path.splitext(os.path.basename(spec))[0]
            loader = importlib.util.spec_from_file_location(mod_name, spec)
            if loader is None or loader.loader is None:
                raise PluginError(f"plugin {spec!r} is not an importable Python file")
            module = importlib.util.module_from_spec(loader)
            sys.modules[mod_name] = module
            _load_builtins()  # so a plugin may replace a builtin with replace=True
            loader.loader.exec_module(module)
        else:
            _load_builtins()
            importlib.import_module(spec)
    except PluginError:
        raise
    except Exception as exc:  # any failure inside user code is reported in one line
        raise PluginError(f"plugin {spec!r} failed to import: {type(exc).__name__}: {exc}") from exc


def markdown_table() -> str:
    """The README's methods table: one line per built-in method (plugins left out)."""
    head = ("name", "family", "budget", "needs grid", "uses query", "in the default sweep on",
            "what it computes")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in list_methods():
        info = get_info(row["name"])
        if not info.cls.__module__.startswith("attnbench.methods."):
            continue
        sweep = [d for d in info.devices if info.default_sweep is None or d in info.default_sweep]
        cells = [f"`{info.name}`", info.family, f"`{info.budget}`" if info.budget else "–",
                 "yes" if info.needs_grid else "no", "yes" if info.uses_query else "no",
                 ", ".join(sweep) or "–",
                 info.description.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

