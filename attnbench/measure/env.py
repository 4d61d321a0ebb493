"""The environment a measurement ran in: device, versions, git commit, NVML state."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


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
        return torch.cuda.get_device_name(0)
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


def nvml_info(device_index: int = 0) -> dict[str, Any]:
    """Driver, clocks and power limit through nvidia-ml-py; nulls and a reason without NVML."""
    empty = dict.fromkeys(NVML_KEYS)
    try:
        import pynvml
    except ImportError as exc:
        return {**empty, "nvml_reason": f"nvidia-ml-py not importable: {exc}"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return {**empty, "nvml_reason": f"NVML unavailable: {exc}"}
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {
            "nvml_driver": driver.decode() if isinstance(driver, bytes) else driver,
            "gpu_sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "gpu_mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
            "gpu_max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "gpu_power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
            "gpu_temperature_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "nvml_reason": None,
        }
    except Exception as exc:
        return {**empty, "nvml_reason": f"NVML query failed: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def collect_env(device: str = "cpu", seed: int | None = None) -> dict[str, Any]:
    """Everything needed to reproduce or compare a row: stored with every row."""
    cuda = device == "cuda" and torch.cuda.is_available()
    env: dict[str, Any] = {
        "device_name": device_label(device) if cuda else cpu_model(),
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
    }
    if device == "cuda":
        env.update(nvml_info(torch.cuda.current_device() if cuda else 0))
    else:
        env.update({**dict.fromkeys(NVML_KEYS), "nvml_reason": f"not a GPU run (device {device})"})
    return env
