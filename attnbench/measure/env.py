"""The environment a measurement ran in: device, versions, git commit, NVML state."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from .allocator import policy as allocator_policy
from .telemetry import NvmlDevice, TelemetryUnavailable


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_label(device: str) -> str:
    """The model of the device a row runs on: the GPU's name, or the CPU's model name."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return cpu_model()


def git_commit() -> str | None:
    """The commit of the source tree attnbench is imported from, with '+dirty' if modified."""
    root = Path(__file__).resolve().parents[2]
    try:
        proc = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=5)
        sha = proc.stdout.strip()
        if proc.returncode != 0 or not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


NVML_KEYS = ("nvml_driver", "gpu_sm_clock_mhz", "gpu_mem_clock_mhz", "gpu_max_sm_clock_mhz",
             "gpu_power_limit_w", "gpu_temperature_c")


def nvml_info(torch_index: int = 0) -> dict[str, Any]:
    """Driver, clocks, power limit and temperature of torch's CUDA device ``torch_index``, reached
    through telemetry's UUID-based NVML handle (right under CUDA_VISIBLE_DEVICES); nulls and a
    reason without NVML, a null field and its error in ``nvml_reason`` for an unsupported query."""
    try:
        dev = NvmlDevice.for_torch_index(torch_index)
    except TelemetryUnavailable as exc:
        return {**dict.fromkeys(NVML_KEYS), "nvml_reason": str(exc)}
    errors: list[str] = []
    driver = dev.query(dev.nv.nvmlSystemGetDriverVersion, errors, "driver version")
    info = {
        "nvml_driver": driver.decode() if isinstance(driver, bytes) else driver,
        "gpu_sm_clock_mhz": dev.clock_mhz("sm", errors),
        "gpu_mem_clock_mhz": dev.clock_mhz("mem", errors),
        "gpu_max_sm_clock_mhz": dev.clock_mhz("sm", errors, getter="nvmlDeviceGetMaxClockInfo"),
        "gpu_power_limit_w": dev.power_limit_w(errors),
        "gpu_temperature_c": dev.temperature_c(errors),
    }
    return {**info, "nvml_reason": "; ".join(dict.fromkeys(errors)) or None}


def collect_env(device: str = "cpu", seed: int | None = None) -> dict[str, Any]:
    """Everything needed to reproduce or compare a row: stored with every row."""
    cuda = device == "cuda" and torch.cuda.is_available()
    index = torch.cuda.current_device() if cuda else 0
    env: dict[str, Any] = {
        "device_name": torch.cuda.get_device_name(index) if cuda else cpu_model(),
        "device_type": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "xformers": _version("xformers"),
        "fvcore": _version("fvcore"),
        "numpy": _version("numpy"),
        "git_commit": git_commit(),
        "seed": seed,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "allocator": allocator_policy(),   # the heap policy every timing process applies
    }
    if device == "cuda":
        env.update(nvml_info(index))
    else:
        env.update({**dict.fromkeys(NVML_KEYS), "nvml_reason": f"not a GPU run (device {device})"})
    return env
