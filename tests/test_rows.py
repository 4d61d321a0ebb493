"""The one row definition: identity key, types, de-duplication, and that every place agrees."""
import json
import re
from pathlib import Path

import pytest
import torch

from attnbench import rows
from attnbench.measure.error import exact_reference
from attnbench.measure.timing import TimingConfig
from attnbench.point import measure_point, point_data
from attnbench.point import base_row
from attnbench.settings import Point, SweepConfig
from attnbench.workloads import make_workload

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tmp_path, **kw):
    kw = {"workload": "gaussian", "fit": "none", "executor": "inline", **kw}
    return SweepConfig(ns=(32,), ms=(4,), methods=("anchor",), heads=2, head_dim=8, out=tmp_path,
                       timing=TimingConfig(cpu_min_run_time_s=0.01), count_flops=True, **kw)


def measured_row(cfg, method="anchor", m=4, params=None):
    wl = make_workload("gaussian", 1, cfg.heads, 32, cfg.head_dim, dtype=torch.float32, device="cpu")
    ref = lambda: exact_reference(wl.q, wl.k, wl.v)  # noqa: E731
    p = Point(method, params or {}, 32, m)
    return measure_point(cfg, p, wl, ref, point_data(cfg, wl, 32, ref))


def test_a_measured_row_holds_exactly_the_declared_fields(tmp_path):
    row = measured_row(tiny_cfg(tmp_path))
    assert row["status"] == "ok", row["message"]
    row.update(run_id="r", env={}, timestamp="t")        # added by the sweep loop
    declared = {f.name for f in rows.fields_of("attention")}
    assert set(row) == declared, (set(row) - declared, declared - set(row))
    assert rows.type_problem(row) is None


def test_a_model_row_holds_exactly_the_declared_fields():
    from attnbench.models.audit import ModelConfig, measure_model

    row = measure_model(ModelConfig(arch="deit-tiny", attention="anchor", img=64, m=4, batch=1, timing=False,
                                    params={"shared": True}))
    assert row["status"] == "ok", row["message"]
    row.update(run_id="r", env={}, timestamp="t")
    declared = {f.name for f in rows.fields_of("model")}
    assert set(row) == declared, (set(row) - declared, declared - set(row))
    assert row["params"] == {"shared": True} and row["m"] == 4 and row["param_count"] > 0


def test_identity_separates_what_differs_and_ignores_outcomes(tmp_path):
    cfg = tiny_cfg(tmp_path)
    a = base_row(cfg, Point("anchor", {}, 32, 4))
    assert rows.identity(a) == rows.identity({**a, "latency_ms": 3.0, "status": "ok", "env": {"x": 1}})
    for change in ({"device_name": "other CPU"}, {"timing_mode": "cuda_graph"}, {"fit_cfg": {"iters": 3}},
                   {"m": 5}, {"params": {"shared": True}}, {"layer": 2}, {"seed": 1}):
        assert rows.identity({**a, **change}) != rows.identity(a), change


def test_dedup_keeps_the_last_row_of_each_identity():
    first = {"method": "anchor", "n": 8, "m": 2, "status": "ok", "latency_ms": 1.0}
    rows_in = [first, {**first, "m": 3}, {**first, "latency_ms": 2.0}]
    kept, dropped = rows.dedup(rows_in)
    assert dropped == 1 and len(kept) == 2
    assert [r["latency_ms"] for r in kept if r["m"] == 2] == [2.0]


@pytest.mark.parametrize("change, needle", [
    ({"n": "abc"}, "'n' is str"), ({"latency_ms": "fast"}, "'latency_ms' is str"),
    ({"status": "great"}, "unknown status"), ({"params": [1]}, "'params' is list"),
    ({"n": True}, "'n' is bool")])
def test_type_problems_are_named(change, needle):
    row = {"method": "anchor", "n": 8, "status": "ok", "device": "cpu", "dtype": "float32", "mode": "fwd"}
    assert rows.type_problem(row) is None
    assert needle in rows.type_problem({**row, **change})


def test_the_documented_table_is_the_generated_one():
    text = (ROOT / "docs" / "rows.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- row-fields:begin -->\n(.*?)\n<!-- row-fields:end -->", text, re.S)
    assert found, "docs/rows.md lacks the row-fields markers"
    assert found.group(1).strip() == rows.markdown_table().strip(), \
        "docs/rows.md's row table is stale: run `python -m attnbench.rows > /tmp/t` and paste it"
    for f in rows.FIELDS:   # and every declared field is named in it
        assert f"`{f.name}`" in found.group(1) or f.group in ("telemetry", "roofline"), f.name


def test_harness_failure_is_a_harness_error_row_not_the_methods(tmp_path, monkeypatch):
    import attnbench.point as point

    def broken(*a, **k):
        raise ValueError("flop counter exploded")

    monkeypatch.setattr(point, "_count_flops", broken)
    monkeypatch.setenv("ATTNBENCH_STRICT", "0")
    row = measured_row(tiny_cfg(tmp_path))
    assert row["status"] == "harness_error"
    assert "flop counting" in row["message"] and "flop counter exploded" in row["message"]
    monkeypatch.setenv("ATTNBENCH_STRICT", "1")
    with pytest.raises(ValueError, match="exploded"):
        measured_row(tiny_cfg(tmp_path))


def test_a_method_failure_is_an_error_row_even_inside_timing(tmp_path, scratch_registry):
    from attnbench.methods.anchor import AnchorAttention

    @scratch_registry.register("anchor-broken", family="anchor", budget="m", uses_query=False)
    class Broken(AnchorAttention):
        calls = 0

        def forward(self, q, k, v, grid=None):
            Broken.calls += 1
            if Broken.calls > 1:   # the first call passes; the timed ones fail
                raise RuntimeError("kernel fell over")
            return super().forward(q, k, v, grid)

    row = measured_row(tiny_cfg(tmp_path), method="anchor-broken")
    assert row["status"] == "error" and row["message"] == "RuntimeError: kernel fell over"


def test_two_sweeps_into_one_folder_report_the_duplicates(tmp_path):
    from attnbench.report.build import build_report
    from attnbench.results import RowWriter, read_rows
    from attnbench.sweep import run_sweep

    cfg = tiny_cfg(tmp_path / "run")
    run_sweep(cfg, progress=False)
    rows_path = tmp_path / "run" / "rows.jsonl"
    first = read_rows(rows_path)
    for r in first:   # as a second, concurrent sweep would have written them
        RowWriter(rows_path).append({**r, "latency_ms": 99.0})
    result = build_report([tmp_path / "run"], tmp_path / "rep")
    assert any("1 duplicate row(s)" in n and "1 from run" in n for n in result.notes), result.notes
    table = (tmp_path / "rep" / "tables" / "measurements.csv").read_text()
    assert "99" in table and len(table.strip().splitlines()) == 2   # header + the last-written row


def test_eager_and_graph_rows_of_one_point_are_not_collapsed(tmp_path):
    from attnbench.report.load import load_runs
    from attnbench.report.tables import groups, ok_attention
    from attnbench.results import RowWriter, read_rows
    from attnbench.sweep import run_sweep

    run_sweep(tiny_cfg(tmp_path / "run"), progress=False)
    path = tmp_path / "run" / "rows.jsonl"
    (row,) = read_rows(path)
    RowWriter(path).append({**row, "timing_mode": "cuda_graph", "latency_ms": 0.5})
    RowWriter(path).append({**row, "fit_cfg": {"iters": 3}, "latency_ms": 0.7})
    ok = ok_attention(load_runs([tmp_path / "run"]).rows)
    assert len(ok) == 3 and len(groups(ok)) == 3


def test_model_rerun_measures_nothing_new(tmp_path):
    from attnbench.models.audit import ModelConfig, run_models
    from attnbench.results import read_rows

    cfg = ModelConfig(arch="deit-tiny", attention="anchor", img=64, m=4, batch=1, timing=False)
    run_models([cfg], tmp_path)
    again = run_models([cfg], tmp_path)
    assert len(read_rows(tmp_path / "rows.jsonl")) == 1 and again[0]["resumed"]
    assert json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])["run_id"]


def test_m_reaches_the_constructor_within_five_calls_of_the_command(tmp_path, scratch_registry):
    """The budget travels: sweep command -> run_sweep -> run_points -> runner -> measure_point ->
    registry.build -> the constructor: at most five calls in between."""
    import inspect

    from attnbench.cli import main
    from attnbench.methods.anchor import AnchorAttention

    depth = {}

    @scratch_registry.register("anchor-depth", family="anchor", budget="m", uses_query=False)
    class Depth(AnchorAttention):
        def __init__(self, heads, head_dim, m=30, **kw):
            names = [f.function for f in inspect.stack()[1:]]
            depth.setdefault("m", m)
            depth.setdefault("calls", names.index("sweep_cmd") if "sweep_cmd" in names else None)
            super().__init__(heads, head_dim, m=m, **kw)

    code = main(["sweep", "--methods", "anchor-depth", "--n", "16", "--m", "3", "--heads", "1", "--head-dim", "4",
                 "--min-run-time", "0.01", "--no-flops", "--quiet", "--out", str(tmp_path)])
    assert code == 0 and depth["m"] == 3
    assert depth["calls"] is not None and depth["calls"] <= 5, depth


def test_train_rows_are_declared_with_their_identity():
    from attnbench.train.loop import TrainConfig, TrainPoint, base_row

    cfg = TrainConfig(tasks=("recall",), methods=(), ns={"recall": (64,)})
    row = {**base_row(cfg, TrainPoint("recall", "anchor", {}, 16, 64)), "status": "ok", "accuracy": 0.5,
           "chance": 0.125, "final_loss": 1.0, "steps_done": 150, "step_ms": 3.0, "wall_s": 1.0}
    assert rows.type_problem(row) is None
    assert {"task", "train_cfg", "steps", "method", "m", "n", "seed", "device", "dtype"} <= set(rows.key_fields("train"))
    assert rows.identity(row) != rows.identity({**row, "task": "grid"}) != rows.identity({**row, "steps": 2})
    assert rows.identity(row) == rows.identity({**row, "accuracy": 0.9})
    assert "accuracy" in rows.type_problem({**row, "accuracy": "high"})
