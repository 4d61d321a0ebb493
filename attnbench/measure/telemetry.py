"""GPU telemetry through NVML (nvidia-ml-py): clocks, temperature, power, throttle reasons,
utilisation, and energy per call from the total-energy counter over the timed loop.

Every CUDA row carries the fields in ``TELEMETRY_KEYS``. Where NVML is missing (CPU rows,
non-NVIDIA devices, no driver) they are all null and ``telemetry_reason`` says why, once per row;
nothing is printed and nothing raises. A query that one GPU does not support leaves its field
null and is named in ``telemetry_reason``.

Energy: ``nvmlDeviceGetTotalEnergyConsumption`` counts millijoules since the driver loaded, but
the driver refreshes it only every ``energy_counter_tick_s`` seconds (measured here, once per
process). The timed loop is lengthened until it spans ``energy_window_s`` >= max(the configured
minimum, ``min_ticks`` counter updates); ``energy_resolution_rel`` = tick / window bounds the
relative error a stale reading at either end can cause. The timed loop flushes the L2 cache
before every call, so a flush-only loop of the same length is measured right after and its
energy subtracted: ``energy_j_per_call`` = (loop energy - flush energy) / iterations.

The counter comes from the board's power sensor; on A100/H100 it samples only part of each
refresh period (Yang et al., "Part-time Power Measurements: nvidia-smi's Lack of Attention",
arXiv:2312.02741), which is harmless for a steady loop of identical calls many refresh periods
long, as here, but makes single-call or bursty readings unreliable.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from attnbench.spec import one_line

# NVML clock event ("throttle") reason bits, nvml.h nvmlClocksEventReason*.
THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
ENERGY_COUNTER_WRAP = 2**64  # the counter is an unsigned 64-bit count of millijoules

SNAPSHOT_KEYS = ("sm_clock_mhz", "mem_clock_mhz", "temp_c", "power_w", "throttle",
                 "util_gpu_pct", "util_mem_pct")
ENERGY_KEYS = ("energy_j_per_call", "energy_loop_j", "energy_flush_j", "energy_iters",
               "energy_window_s", "energy_counter_tick_s", "energy_resolution_rel", "gpu_power_avg_w")
TELEMETRY_KEYS = (tuple(f"gpu_{k}_{when}" for when in ("before", "after") for k in SNAPSHOT_KEYS)
                  + ("gpu_power_limit_w",) + ENERGY_KEYS + ("telemetry_reason",))


class TelemetryUnavailable(Exception):
    """NVML cannot be used for this device; the message is the row's telemetry_reason."""


# -- pure functions (tested on recorded values) ----------------------------------------
def null_telemetry(reason: str | None) -> dict[str, Any]:
    """Every telemetry field null, with ``telemetry_reason`` = ``reason``."""
    return {**dict.fromkeys(TELEMETRY_KEYS), "telemetry_reason": reason}


def decode_throttle(mask: int | None) -> list[str] | None:
    """NVML clock event reason bitmask -> names; unknown bits as 'unknown_0x...'. None stays None."""
    if mask is None:
        return None
    names = [name for bit, name in THROTTLE_BITS if mask & bit]
    known = sum(bit for bit, _ in THROTTLE_BITS)
    rest = int(mask) & ~known
    for shift in range(64):
        if rest >> shift & 1:
            names.append(f"unknown_{1 << shift:#x}")
    return names


def energy_delta_mj(e0_mj: int | None, e1_mj: int | None, wrap: int = ENERGY_COUNTER_WRAP) -> int | None:
    """Millijoules between two counter readings; a reading below the first is a wraparound."""
    if e0_mj is None or e1_mj is None:
        return None
    if e1_mj >= e0_mj:
        return int(e1_mj - e0_mj)
    return int(e1_mj + wrap - e0_mj)


def energy_per_call_j(loop_mj: tuple[int | None, int | None], flush_mj: tuple[int | None, int | None],
                      iters: int) -> float | None:
    """(loop energy - flush-only energy) / iters in joules, from (before, after) counter readings
    in millijoules of the timed loop and of a flush-only loop of ``iters`` iterations each.
    None when a reading is missing or the difference is negative (counter too coarse)."""
    loop, flush = energy_delta_mj(*loop_mj), energy_delta_mj(*flush_mj)
    if loop is None or flush is None or iters <= 0 or loop < flush:
        return None
    return (loop - flush) / 1000.0 / iters


def energy_window_ms(min_window_ms: float, tick_s: float | None, min_ticks: int) -> float:
    """The energy loop's target duration: the configured minimum or ``min_ticks`` counter updates."""
    ticks_ms = 1e3 * tick_s * min_ticks if tick_s else 0.0
    return max(float(min_window_ms), ticks_ms)


def reps_for_window(n_rep: int, window_ms: float, est_ms_per_iter: float, max_reps: int) -> int:
    """``n_rep`` lengthened so that iterations of ``est_ms_per_iter`` span ``window_ms`` (capped)."""
    need = math.ceil(window_ms / max(est_ms_per_iter, 1e-6))
    return max(n_rep, min(need, max_reps))


def resolution_rel(tick_s: float | None, window_s: float | None) -> float | None:
    """Counter update interval / loop duration: the relative error bound from stale readings."""
    if not tick_s or not window_s:
        return None
    return tick_s / window_s


def average_power_w(delta_mj: int | None, seconds: float | None) -> float | None:
    if delta_mj is None or not seconds:
        return None
    return delta_mj / 1000.0 / seconds


# -- NVML access ----------------------------------------------------------------------
_UNAVAILABLE: dict[str, str] = {}   # why NVML cannot be used, remembered per process
_DEVICES: dict[int, "NvmlDevice"] = {}


def _nvml():
    """The initialised pynvml module, or TelemetryUnavailable (remembered: tried once)."""
    if "reason" in _UNAVAILABLE:
        raise TelemetryUnavailable(_UNAVAILABLE["reason"])
    try:
        import pynvml
    except ImportError as exc:
        _UNAVAILABLE["reason"] = f"nvidia-ml-py not importable: {one_line(exc)}"
        raise TelemetryUnavailable(_UNAVAILABLE["reason"]) from None
    try:
        pynvml.nvmlInit()  # reference counted; kept open for the process
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        _UNAVAILABLE["reason"] = f"NVML unavailable: {one_line(exc)}"
        raise TelemetryUnavailable(_UNAVAILABLE["reason"]) from None
    return pynvml


def _nvml_handle(nv, torch_index: int):
    """The NVML handle of torch's CUDA device: by UUID (CUDA_VISIBLE_DEVICES reorders indices)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(torch_index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        try:
            return nv.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
        except Exception:
            pass
    return nv.nvmlDeviceGetHandleByIndex(torch_index)


@dataclass
class NvmlDevice:
    """One GPU seen through NVML; every query returns None on failure and notes the error."""

    nv: Any
    handle: Any
    tick_s: float | None = None
    tick_measured: bool = False

    @classmethod
    def for_torch_index(cls, torch_index: int) -> "NvmlDevice":
        if torch_index not in _DEVICES:
            nv = _nvml()
            try:
                _DEVICES[torch_index] = cls(nv, _nvml_handle(nv, torch_index))
            except Exception as exc:
                raise TelemetryUnavailable(f"NVML has no handle for cuda:{torch_index}: {exc}") from None
        return _DEVICES[torch_index]

    def query(self, fn: Callable[[], Any], errors: list[str], label: str) -> Any:
        try:
            return fn()
        except Exception as exc:  # NVMLError_NotSupported on some boards / vGPUs
            errors.append(f"{label}: {exc}")
            return None

    def throttle_mask(self) -> int:
        get = getattr(self.nv, "nvmlDeviceGetCurrentClocksEventReasons", None) \
            or self.nv.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(get(self.handle))

    def clock_mhz(self, which: str, errors: list[str], getter: str = "nvmlDeviceGetClockInfo") -> int | None:
        """The current (or, with ``getter='nvmlDeviceGetMaxClockInfo'``, maximum) 'sm' or 'mem' clock."""
        kind = getattr(self.nv, f"NVML_CLOCK_{which.upper()}")
        return self.query(lambda: getattr(self.nv, getter)(self.handle, kind), errors, f"{which} clock")

    def temperature_c(self, errors: list[str]) -> int | None:
        return self.query(lambda: self.nv.nvmlDeviceGetTemperature(self.handle, self.nv.NVML_TEMPERATURE_GPU),
                          errors, "temperature")

    def snapshot(self, errors: list[str]) -> dict[str, Any]:
        """Clocks (MHz), temperature (C), power (W), throttle reasons, utilisation (%) now."""
        nv, h, q = self.nv, self.handle, self.query
        util = q(lambda: nv.nvmlDeviceGetUtilizationRates(h), errors, "utilization")
        power_mw = q(lambda: nv.nvmlDeviceGetPowerUsage(h), errors, "power")
        return {
            "sm_clock_mhz": self.clock_mhz("sm", errors),
            "mem_clock_mhz": self.clock_mhz("mem", errors),
            "temp_c": self.temperature_c(errors),
            "power_w": None if power_mw is None else power_mw / 1000.0,
            "throttle": decode_throttle(q(self.throttle_mask, errors, "throttle reasons")),
            "util_gpu_pct": None if util is None else int(util.gpu),
            "util_mem_pct": None if util is None else int(util.memory),
        }

    def power_limit_w(self, errors: list[str]) -> float | None:
        mw = self.query(lambda: self.nv.nvmlDeviceGetEnforcedPowerLimit(self.handle), errors, "power limit")
        return None if mw is None else mw / 1000.0

    def energy_mj(self, errors: list[str]) -> int | None:
        return self.query(lambda: int(self.nv.nvmlDeviceGetTotalEnergyConsumption(self.handle)),
                          errors, "energy counter")

    def counter_tick(self, max_wait_s: float = 2.0) -> float | None:
        """Seconds between two refreshes of the energy counter (measured once, then cached)."""
        if not self.tick_measured:
            self.tick_measured = True
            self.tick_s = _measure_tick(lambda: self.energy_mj([]), max_wait_s)
        return self.tick_s


def _next_change(read: Callable[[], int | None], start: int | None, deadline: float) -> tuple[int | None, float | None]:
    """Poll ``read`` until it differs from ``start``; (value, time) or (None, None) at the deadline."""
    while time.perf_counter() < deadline:
        value = read()
        if value is None:
            return None, None
        if value != start:
            return value, time.perf_counter()
    return None, None


def _measure_tick(read: Callable[[], int | None], max_wait_s: float) -> float | None:
    first = read()
    if first is None:
        return None
    v1, t1 = _next_change(read, first, time.perf_counter() + max_wait_s)
    if t1 is None:
        return None
    _, t2 = _next_change(read, v1, time.perf_counter() + max_wait_s)
    return None if t2 is None else t2 - t1


# -- the timed loop's telemetry ---------------------------------------------------------
@dataclass(frozen=True)
class EnergyBudget:
    min_window_ms: float = 300.0  # the energy loop lasts at least this long...
    min_ticks: int = 10           # ...and at least this many energy-counter refreshes
    max_reps: int = 100_000       # cap on the lengthened loop, iterations


class LoopTelemetry:
    """Readings around one timed CUDA loop. Use: lengthen(), begin(), [loop], end(), flush_baseline(),
    fields(). With NVML unavailable every method is a no-op and fields() is null_telemetry(reason)."""

    def __init__(self, torch_index: int, budget: EnergyBudget | None = None) -> None:
        self.budget = budget or EnergyBudget()
        self.errors: list[str] = []
        self.dev: NvmlDevice | None = None
        self.reason: str | None = None
        try:
            self.dev = NvmlDevice.for_torch_index(torch_index)
        except TelemetryUnavailable as exc:
            self.reason = str(exc)
        self.before = self.after = None
        self.loop_mj = self.flush_mj = (None, None)
        self.loop_s = None

    def lengthen(self, n_rep: int, est_ms_per_iter: float) -> int:
        """Iterations of the timed loop so that it spans the energy window."""
        if self.dev is None:
            return n_rep
        window = energy_window_ms(self.budget.min_window_ms, self.dev.counter_tick(), self.budget.min_ticks)
        return reps_for_window(n_rep, window, est_ms_per_iter, self.budget.max_reps)

    def begin(self) -> None:
        """Call after a device synchronize, just before the timed loop."""
        if self.dev is not None:
            self.before = self.dev.snapshot(self.errors)
            self.loop_mj = (self.dev.energy_mj(self.errors), None)
            self._t0 = time.perf_counter()

    def end(self) -> None:
        """Call after the device synchronize that ends the timed loop."""
        if self.dev is not None:
            self.loop_s = time.perf_counter() - self._t0
            self.loop_mj = (self.loop_mj[0], self.dev.energy_mj(self.errors))
            self.after = self.dev.snapshot(self.errors)

    def flush_baseline(self, flush: Callable[[], Any], iters: int, sync: Callable[[], None]) -> None:
        """Energy of ``iters`` flushes alone, to subtract from the timed loop's."""
        if self.dev is None or self.loop_mj[0] is None:
            return
        sync()
        e0 = self.dev.energy_mj(self.errors)
        for _ in range(iters):
            flush()
        sync()
        self.flush_mj = (e0, self.dev.energy_mj(self.errors))

    def fields(self, iters: int) -> dict[str, Any]:
        if self.dev is None:
            return null_telemetry(self.reason)
        out = null_telemetry(None)
        for when, snap in (("before", self.before), ("after", self.after)):
            for k, v in (snap or {}).items():
                out[f"gpu_{k}_{when}"] = v
        out["gpu_power_limit_w"] = self.dev.power_limit_w(self.errors)
        out.update(self._energy_fields(iters))
        out["telemetry_reason"] = "; ".join(dict.fromkeys(self.errors)) or None
        return out

    def _energy_fields(self, iters: int) -> dict[str, Any]:
        loop, flush = energy_delta_mj(*self.loop_mj), energy_delta_mj(*self.flush_mj)
        tick = self.dev.tick_s
        if loop is not None and tick is None:
            self.errors.append("energy counter refresh interval not measurable")
        per_call = energy_per_call_j(self.loop_mj, self.flush_mj, iters)
        if loop is not None and flush is not None and per_call is None:
            self.errors.append("energy: the flush-only loop read more than the timed loop (counter too coarse)")
        return {
            "energy_j_per_call": per_call,
            "energy_loop_j": None if loop is None else loop / 1000.0,
            "energy_flush_j": None if flush is None else flush / 1000.0,
            "energy_iters": iters if loop is not None else None,
            "energy_window_s": self.loop_s if loop is not None else None,
            "energy_counter_tick_s": tick,
            "energy_resolution_rel": resolution_rel(tick, self.loop_s) if loop is not None else None,
            "gpu_power_avg_w": average_power_w(loop, self.loop_s),
        }


def cpu_telemetry() -> dict[str, Any]:
    """The null fields of a CPU row."""
    return null_telemetry("CPU row: NVML telemetry exists for NVIDIA GPUs only")
