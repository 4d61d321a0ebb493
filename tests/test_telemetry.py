"""NVML telemetry: arithmetic and decoding on recorded values, and nulls with a reason without NVML."""
import json
import re
import types

import pytest

from attnbench.cli import main
from attnbench.measure import telemetry as tm
from attnbench.measure.timing import TimingConfig, time_fn
from attnbench.report.energy import energy_markdown, energy_table


def _nvml_works() -> bool:
    try:
        import pynvml
        pynvml.nvmlInit()
        return True
    except Exception:
        return False


# -- energy arithmetic ------------------------------------------------------------------
def test_energy_per_call_from_counter_readings():
    # Timed loop: 1000 iterations, counter went 3_141_592_653 -> 3_141_600_653 mJ (8 J).
    # Flush-only loop of 1000 iterations: 3_141_601_000 -> 3_141_601_500 mJ (0.5 J).
    e = tm.energy_per_call_j((3_141_592_653, 3_141_600_653), (3_141_601_000, 3_141_601_500), 1000)
    assert e == pytest.approx(7.5e-3)  # (8000 - 500) mJ / 1000 calls = 7.5 mJ


def test_energy_delta_wraps_around_the_64_bit_counter():
    assert tm.energy_delta_mj(2**64 - 100, 50) == 150
    assert tm.energy_delta_mj(10, 10) == 0
    assert tm.energy_delta_mj(7, 19) == 12
    assert tm.energy_delta_mj(None, 19) is None and tm.energy_delta_mj(7, None) is None
    e = tm.energy_per_call_j((2**64 - 1000, 3000), (5000, 5400), 8)  # 4000 mJ loop, 400 mJ flushes
    assert e == pytest.approx(3.6 / 8)


@pytest.mark.parametrize("loop,flush,iters", [
    ((None, 10), (0, 1), 5),      # a failed reading
    ((0, 10), (None, None), 5),   # no flush baseline
    ((0, 10), (0, 20), 5),        # flushes "cost more" than the loop: counter too coarse
    ((0, 10), (0, 1), 0),         # no iterations
])
def test_energy_per_call_is_none_when_not_measurable(loop, flush, iters):
    assert tm.energy_per_call_j(loop, flush, iters) is None


def test_loop_lengthened_to_the_counter_resolution():
    # Counter refreshed every 0.1 s: 10 refreshes need 1000 ms > the 300 ms minimum.
    assert tm.energy_window_ms(300, 0.1, 10) == pytest.approx(1000)
    assert tm.energy_window_ms(300, 0.005, 10) == pytest.approx(300)
    assert tm.energy_window_ms(300, None, 10) == pytest.approx(300)
    assert tm.reps_for_window(50, 1000, 0.25, 100_000) == 4000
    assert tm.reps_for_window(50, 1000, 0.25, 1000) == 1000     # capped
    assert tm.reps_for_window(5000, 1000, 0.25, 100_000) == 5000  # already long enough
    assert tm.resolution_rel(0.1, 1.25) == pytest.approx(0.08)
    assert tm.resolution_rel(None, 1.25) is None
    assert tm.average_power_w(350_000, 1.25) == pytest.approx(280.0)


def test_counter_tick_measured_between_two_refreshes():
    readings = iter([5, 5, 5, 9, 9, 9, 9, 14, 14])
    tick = tm._measure_tick(lambda: next(readings), max_wait_s=5.0)
    assert tick is not None and 0 <= tick < 1.0
    stuck = tm._measure_tick(lambda: 5, max_wait_s=0.01)
    assert stuck is None


# -- throttle decoding -----------------------------------------------------------------
@pytest.mark.parametrize("mask,names", [
    (0x0, []),
    (0x1, ["gpu_idle"]),
    (0x4, ["sw_power_cap"]),
    (0x44, ["sw_power_cap", "hw_thermal_slowdown"]),
    (0x88, ["hw_slowdown", "hw_power_brake_slowdown"]),
    (0x1004, ["sw_power_cap", "unknown_0x1000"]),
])
def test_throttle_decoding_of_recorded_bitmasks(mask, names):
    assert tm.decode_throttle(mask) == names


def test_throttle_names_match_nvml_constants():
    pynvml = pytest.importorskip("pynvml")
    prefix = "nvmlClocksThrottleReason"
    skip = {"None", "All", "UserDefinedClocks"}  # no bit / every bit / deprecated alias
    for attr in dir(pynvml):
        if attr.startswith(prefix) and attr[len(prefix):] not in skip:
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", attr[len(prefix):]).lower()
            assert tm.decode_throttle(getattr(pynvml, attr)) == [snake], attr


# -- parsing NVML results (values recorded from an idle data-centre GPU) ----------------
class _Recorded:
    """Replays recorded NVML return values; temperature raises as on boards without a sensor."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    values = {"power": 68543, "limit": 700000, "clock": {1: 1980, 2: 2619}, "energy": 912_345_678,
              "throttle": 0x1, "util": types.SimpleNamespace(gpu=0, memory=3)}

    def nvmlDeviceGetPowerUsage(self, h): return self.values["power"]
    def nvmlDeviceGetEnforcedPowerLimit(self, h): return self.values["limit"]
    def nvmlDeviceGetClockInfo(self, h, kind): return self.values["clock"][kind]
    def nvmlDeviceGetTotalEnergyConsumption(self, h): return self.values["energy"]
    def nvmlDeviceGetCurrentClocksEventReasons(self, h): return self.values["throttle"]
    def nvmlDeviceGetUtilizationRates(self, h): return self.values["util"]

    def nvmlDeviceGetTemperature(self, h, sensor):
        raise RuntimeError("Not Supported")


def test_snapshot_units_and_unsupported_fields():
    dev = tm.NvmlDevice(_Recorded(), handle=None)
    errors = []
    snap = dev.snapshot(errors)
    assert snap == {"sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "temp_c": None, "power_w": 68.543,
                    "throttle": ["gpu_idle"], "util_gpu_pct": 0, "util_mem_pct": 3}
    assert errors == ["temperature: Not Supported"]
    assert dev.power_limit_w(errors) == 700.0
    assert dev.energy_mj(errors) == 912_345_678


# -- without NVML ------------------------------------------------------------------------
@pytest.mark.skipif(_nvml_works(), reason="NVML works on this machine")
def test_without_nvml_every_field_is_null_with_one_reason():
    tele = tm.LoopTelemetry(0)
    assert tele.lengthen(17, 0.5) == 17
    tele.begin()
    tele.end()
    tele.flush_baseline(lambda: None, 17, lambda: None)
    fields = tele.fields(17)
    assert set(fields) == set(tm.TELEMETRY_KEYS)
    assert all(fields[k] is None for k in tm.TELEMETRY_KEYS if k != "telemetry_reason")
    assert fields["telemetry_reason"] and "\n" not in fields["telemetry_reason"]
    assert tm.LoopTelemetry(0).reason == fields["telemetry_reason"]  # remembered, not retried


def test_cpu_timing_rows_carry_null_telemetry():
    import torch

    x = torch.randn(32, 32)
    out = time_fn(lambda: x @ x, "cpu", TimingConfig(cpu_min_run_time_s=0.01))
    assert all(out[k] is None for k in tm.TELEMETRY_KEYS if k != "telemetry_reason")
    assert "CPU" in out["telemetry_reason"] and out["timing"]["mode"] == "eager"
    with pytest.raises(ValueError):
        time_fn(lambda: x @ x, "cpu", TimingConfig(cuda_graphs=True))


def test_sweep_completes_with_null_telemetry(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sweep", "--device", "cpu", "--n", "16", "--methods", "vanilla-math", "--out", str(out),
                 "--heads", "2", "--head-dim", "8", "--min-run-time", "0.01", "--no-flops", "--quiet"])
    assert code == 0, capsys.readouterr().err
    (row,) = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert row["status"] == "ok"
    assert all(row[k] is None for k in tm.TELEMETRY_KEYS if k != "telemetry_reason")
    assert row["telemetry_reason"]
    assert energy_table([row]) == []  # nothing to tabulate without energy


def test_cuda_graphs_on_cpu_is_one_line_exit_2(tmp_path, capsys):
    code = main(["sweep", "--device", "cpu", "--n", "16", "--methods", "vanilla-math", "--cuda-graphs",
                 "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


# -- the energy table --------------------------------------------------------------------
def test_energy_table_from_rows():
    def row(method, n, m, e, thr_after):
        return {"status": "ok", "method": method, "n": n, "m": m, "dtype": "bfloat16", "mode": "fwd",
                "timing": {"mode": "eager"}, "latency_ms": 1.0, "energy_j_per_call": e,
                "gpu_throttle_before": ["gpu_idle"], "gpu_throttle_after": thr_after,
                "gpu_power_avg_w": 400.0, "gpu_sm_clock_mhz_after": 1980}

    rows = [row("vanilla-sdpa", 16384, None, 0.02, []), row("anchor", 4096, 30, 0.001, ["sw_power_cap"]),
            row("anchor", 1024, 30, 0.0004, []), {"status": "ok", "method": "x", "energy_j_per_call": None},
            {**row("anchor", 512, 30, 0.1, []), "status": "error"}]
    table = energy_table(rows)
    assert [(r["method"], r["n"]) for r in table] == [("anchor", 1024), ("anchor", 4096), ("vanilla-sdpa", 16384)]
    assert table[1]["throttle"] == "sw_power_cap" and table[0]["throttle"] is None
    md = energy_markdown(table).splitlines()
    assert len(md) == 2 + 3 and "| 0.001 |" in md[3] and md[2].count("|") == md[0].count("|")


class _RecordedLoop(_Recorded):
    """Energy counter readings recorded around a timed loop and its flush-only loop (mJ)."""

    def __init__(self, readings):
        self.readings = iter(readings)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return next(self.readings)


def test_loop_telemetry_fields_from_recorded_readings():
    tele = tm.LoopTelemetry(0)
    tele.dev = tm.NvmlDevice(_RecordedLoop([1000, 9000, 9100, 9600]), handle=None, tick_s=0.1, tick_measured=True)
    assert tele.lengthen(50, 0.25) == 4000  # 10 refreshes of 0.1 s = 1 s of 0.25 ms iterations
    tele.begin()
    tele.end()
    tele.loop_s = 1.25  # the recorded loop's duration
    tele.flush_baseline(lambda: None, 1000, lambda: None)
    f = tele.fields(1000)
    assert set(f) == set(tm.TELEMETRY_KEYS)
    assert f["energy_j_per_call"] == pytest.approx(7.5e-3)   # (8000 - 500) mJ / 1000
    assert f["energy_loop_j"] == pytest.approx(8.0) and f["energy_flush_j"] == pytest.approx(0.5)
    assert f["gpu_power_avg_w"] == pytest.approx(6.4)        # 8 J / 1.25 s
    assert f["energy_resolution_rel"] == pytest.approx(0.08)  # 0.1 s / 1.25 s
    assert f["gpu_power_w_before"] == 68.543 and f["gpu_power_limit_w"] == 700.0
    assert f["gpu_throttle_after"] == ["gpu_idle"] and f["gpu_temp_c_after"] is None
    assert f["telemetry_reason"] == "temperature: Not Supported"  # once, though read twice


# -- on a CUDA machine (skipped elsewhere) ---------------------------------------------------
def cuda_only(fn):
    return pytest.mark.cuda(pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")(fn))


@cuda_only
def test_cuda_rows_carry_telemetry_in_both_timing_modes():
    import dataclasses

    import torch

    x = torch.randn(512, 512, device="cuda")
    cfg = TimingConfig(cuda_warmup_ms=2, cuda_rep_ms=5, energy=tm.EnergyBudget(min_window_ms=50, min_ticks=2))
    eager = time_fn(lambda: x @ x, "cuda", cfg)
    graph = time_fn(lambda: x @ x, "cuda", dataclasses.replace(cfg, cuda_graphs=True))
    assert eager["timing"]["mode"] == "eager" and graph["timing"]["mode"] == "cuda_graph"
    for row in (eager, graph):
        assert set(tm.TELEMETRY_KEYS) <= set(row) and row["latency_ms"] > 0
        if _nvml_works():
            assert row["gpu_sm_clock_mhz_after"] > 0 and row["energy_loop_j"] > 0
            assert row["energy_window_s"] >= 0.05 * 0.9
        else:
            assert row["telemetry_reason"]


@cuda_only
def test_cuda_graph_replay_recomputes_from_current_inputs():
    import torch

    from attnbench.measure.timing import capture_cuda_graph

    x = torch.randn(64, 64, device="cuda")
    graph, out = capture_cuda_graph(lambda: x @ x)
    x.copy_(torch.randn(64, 64, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, x @ x)


# -- the environment's GPU is the one torch runs on ----------------------------------------
class _TwoGpuNvml(types.ModuleType):
    """A fake pynvml with two boards; the handle is the board's UUID, every reading names its board."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    BOARDS = {"GPU-aaaa": {"sm": 1000, "mem": 2000, "max": 1500, "limit_mw": 300_000, "temp": 30},
              "GPU-bbbb": {"sm": 1980, "mem": 2619, "max": 1980, "limit_mw": 700_000, "temp": 41}}

    def __init__(self):
        super().__init__("pynvml")

    def nvmlInit(self): pass
    def nvmlSystemGetDriverVersion(self): return b"999.1"
    def nvmlDeviceGetHandleByIndex(self, i): return list(self.BOARDS)[i]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.BOARDS:
            raise RuntimeError(f"no board {uuid}")
        return uuid

    def nvmlDeviceGetClockInfo(self, h, kind): return self.BOARDS[h]["sm" if kind == 1 else "mem"]
    def nvmlDeviceGetMaxClockInfo(self, h, kind): return self.BOARDS[h]["max"]
    def nvmlDeviceGetEnforcedPowerLimit(self, h): return self.BOARDS[h]["limit_mw"]
    def nvmlDeviceGetTemperature(self, h, sensor): return self.BOARDS[h]["temp"]


def test_env_reports_the_gpu_whose_uuid_torch_sees(monkeypatch):
    """CUDA_VISIBLE_DEVICES=1: torch's cuda:0 is NVML's board 1; the env must describe board 1."""
    import sys

    import torch

    from attnbench.measure import env

    monkeypatch.setitem(sys.modules, "pynvml", _TwoGpuNvml())
    monkeypatch.setattr(tm, "_UNAVAILABLE", {})
    monkeypatch.setattr(tm, "_DEVICES", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake cuda:{i}")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="bbbb"))
    info = env.collect_env("cuda")
    assert {k: info[k] for k in (*env.NVML_KEYS, "nvml_reason")} == {
        "nvml_driver": "999.1", "gpu_sm_clock_mhz": 1980, "gpu_mem_clock_mhz": 2619,
        "gpu_max_sm_clock_mhz": 1980, "gpu_power_limit_w": 700.0, "gpu_temperature_c": 41,
        "nvml_reason": None}
    assert info["device_name"] == "Fake cuda:0"
    assert tm.LoopTelemetry(0).dev.handle == "GPU-bbbb"  # telemetry and env share the one handle
