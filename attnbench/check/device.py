"""The machine class a speed baseline holds on: a CPU's model and stepping, or a GPU's name."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CPUINFO = Path("/proc/cpuinfo")
CPU_FIELDS = ("model name", "cpu family", "model", "stepping")


def cpu_class(cpuinfo: str) -> str:
    """'<model name> family F model M stepping S' from the first processor of /proc/cpuinfo text.

    Virtual machines report generic names ("Intel(R) Xeon(R) Processor"), so the numbers count."""
    found: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if found:
                break
            continue
        key, _, value = line.partition(":")
        if key.strip() in CPU_FIELDS:
            found.setdefault(key.strip(), value.strip())
    name = found.get("model name", "unknown cpu")
    return f"{name} family {found.get('cpu family', '?')} model {found.get('model', '?')} " \
           f"stepping {found.get('stepping', '?')}"


def machine_class(device: str) -> str:
    """This machine's class for ``device``: the GPU name, or the CPU's cpu_class."""
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        return cpu_class(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        import platform
        return platform.processor() or platform.machine() or "unknown cpu"


def baseline_machine_class(baseline: dict[str, Any]) -> str:
    """The class stored with a baseline; older files only have the environment's device name."""
    stored = baseline.get("machine_class")
    if isinstance(stored, str):
        return stored
    env = (baseline.get("provenance") or {}).get("env") or {}
    return str(env.get("device_name") or env.get("cpu_model") or "unknown")
