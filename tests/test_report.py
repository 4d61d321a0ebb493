"""bench.py report on synthetic rows: every output, every ok row, determinism, clear messages,
and the statistics (scaling exponent, crossover, Pareto front) against known answers."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attnbench.cli import main
from attnbench.report import stats
from attnbench.report import tables as T
from attnbench.report.claims import claims_table, load_paper
from attnbench.report.load import load_runs, normalise

NS = (256, 512, 1024, 2048, 4096)
ENV = {"device_name": "Test CPU", "torch": "0.0", "git_commit": "abc123", "python": "3.x",
       "roofline": {"copy_gbps": 20.0, "matmul_tflops": 0.5}}


def attention_row(method, n, latency, m=None, status="ok", message=None, device="cpu", **extra):
    """A sweep-like row; MACs and error are simple functions of n and m."""
    macs = 6 * n * (m or n) * 64
    row = {"method": method, "family": method.split("-")[0], "params": {}, "n": n, "m": m, "batch": 1,
           "heads": 6, "head_dim": 64, "dtype": "float32", "device": device, "mode": "fwd",
           "workload": "gaussian", "seed": 0, "status": status, "message": message,
           "run_id": "run-1", "env": ENV, "timestamp": "2026-01-01T00:00:00+00:00"}
    if status == "ok":
        row.update(latency_ms=latency, latency_p20_ms=latency * 0.95, latency_p80_ms=latency * 1.05,
                   peak_mem_bytes=n * (m or n) * 24, macs_analytic=macs, macs_fvcore=macs, flops_torch=2 * macs,
                   err_rel_fro=0.0 if m is None else 1.0 / m, err_cos_mean=1.0 - (0 if m is None else 0.1 / m),
                   bytes_min=4 * 6 * n * 64 * 4, achieved_gbps=4 * 6 * n * 64 * 4 / latency / 1e6,
                   achieved_tflops=2 * macs / latency / 1e9)
    return {**row, **extra}


def model_row(arch, attention, params, macs, m=None, family="vanilla"):
    return {"kind": "model", "method": attention, "family": family, "arch": arch, "attention": attention,
            "img": 224, "n": 197, "m": m, "param_count": params, "params": {},
            "batch": 8, "dtype": "float32", "device": "cpu", "mode": "fwd", "status": "ok", "message": None,
            "macs_fvcore": macs, "flops_torch": 2 * macs, "images_per_s": 10.0, "run_id": "run-2", "env": ENV,
            "timestamp": "2026-01-01T00:01:00+00:00"}


def synthetic_rows():
    """vanilla-sdpa ~ n^2, anchor ~ n, an unregistered method, failures, and model rows."""
    rows = []
    for n in NS:
        rows.append(attention_row("vanilla-sdpa", n, 1e-5 * n ** 2, energy_j_per_call=1e-6 * n ** 2,
                                  gpu_power_avg_w=300.0))
        rows.append(attention_row("mystery-attn", n, 2e-4 * n ** 1.5, err_skill=0.5, energy_j_per_call=1e-5 * n))
        for m in (10, 30):
            rows.append(attention_row("anchor", n, 1e-3 * m * n / 30, m=m, err_skill=0.1 * m,
                                      energy_j_per_call=1e-5 * n))
    rows.append(attention_row("anchor", 16, None, m=30, status="unsupported", message="budget m=30 exceeds n=16."))
    rows.append(attention_row("vanilla-math", 65536, None, status="oom", message="not run: scratch memory too big"))
    rows += [model_row("deit-small", "vanilla-math", 22_050_664, 4_598_882_304),
             model_row("deit-small", "anchor", 20_405_608, 3_974_332_416, m=30, family="anchor")]
    return rows


def write_run(folder: Path, rows, invocation=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if invocation:
        (folder / "runs.jsonl").write_text(json.dumps({"run_id": "run-1", "argv": ["bench.py", "sweep", "--n", "x"],
                                                       "env": ENV, "timestamp": "2026-01-01T00:00:00+00:00"}) + "\n")
    return folder


def run_cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


FIGURES = ("latency_vs_n", "memory_vs_n", "macs_vs_n", "error_vs_m", "pareto", "speedup_heatmap", "energy_vs_n",
           "roofline")
TABLES = ("provenance", "measurements", "scaling", "ablation_m", "table1", "energy", "models", "claims", "failed")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of the synthetic run, built twice into two folders (for the determinism check)."""
    base = tmp_path_factory.mktemp("rep")
    run = write_run(base / "run", synthetic_rows())
    outs = []
    for name in ("a", "b"):
        code = main(["report", "--run", str(run), "--out", str(base / name)])
        assert code == 0
        outs.append(base / name)
    return run, outs


def test_every_listed_file_is_written(built):
    _, (out, _) = built
    for name in FIGURES:
        png, svg = out / "figures" / f"{name}.png", out / "figures" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        import matplotlib.image

        pixels = matplotlib.image.imread(png)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01, name
        assert "<svg" in svg.read_text()[:2000], name
    for name in TABLES:
        assert (out / "tables" / f"{name}.csv").stat().st_size > 0, name
        tex = (out / "tables" / f"{name}.tex").read_text()
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert "src='figures/" not in html  # self-contained
    md = (out / "report.md").read_text()
    assert all(f"figures/{name}.png" in md for name in FIGURES)


def test_tables_hold_every_ok_row_and_every_failure(built):
    run, (out, _) = built
    rows = synthetic_rows()
    measured = pd.read_csv(out / "tables" / "measurements.csv")
    ok = [r for r in rows if r["status"] == "ok" and r.get("kind") != "model"]
    assert len(measured) == len(ok)
    got = {(s.split(" ")[0], n) for s, n in zip(measured["series"], measured["n"])}
    assert got == {(r["method"], r["n"]) for r in ok}
    assert {"err_skill", "energy_j_per_call", "gpu_power_avg_w"} <= set(measured.columns)
    assert "attn_kl_mean" not in measured.columns  # optional columns only when rows carry them
    failed = pd.read_csv(out / "tables" / "failed.csv")
    assert sorted(failed["status"]) == ["oom", "unsupported"]
    assert set(failed["message"]) == {r["message"] for r in rows if r["status"] != "ok"}
    models = pd.read_csv(out / "tables" / "models.csv")
    assert sorted(models["attention"]) == ["anchor", "vanilla-math"]
    md = (out / "report.md").read_text()
    assert "mystery-attn" in md and "abc123" in md and "bench.py sweep --n x" in md


def test_energy_table_holds_every_row_with_an_energy_reading(built):
    _, (out, _) = built
    energy = pd.read_csv(out / "tables" / "energy.csv")
    want = sorted((r["method"], r["m"] or -1, r["n"], r["energy_j_per_call"]) for r in synthetic_rows()
                  if r["status"] == "ok" and r.get("energy_j_per_call") is not None)
    assert len(want) == 4 * len(NS)
    got = [(r.method, -1 if pd.isna(r.m) else r.m, r.n, r.energy_j_per_call) for r in energy.itertuples()]
    assert [g[:3] for g in got] == [w[:3] for w in want]
    assert [g[3] for g in got] == pytest.approx([w[3] for w in want], rel=1e-3)
    assert "Energy per call (J, NVML counter)" in (out / "report.md").read_text()


def test_output_is_deterministic(built):
    _, (a, b) = built
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_scaling_exponent_recovered_from_rows_with_known_slope():
    rng = np.random.default_rng(0)
    slope = 1.37
    ns = [196, 392, 784, 1568, 3136, 6272]
    rows = [attention_row("mystery-attn", n, 0.01 * n ** slope * float(np.exp(rng.normal(0, 0.02)))) for n in ns]
    ok = T.ok_attention(normalise(pd.DataFrame(rows).assign(source="s")))
    fit = T.scaling_table(ok, points=4).iloc[0]
    assert abs(fit["slope"] - slope) <= 0.05
    assert fit["ci95_low"] < slope < fit["ci95_high"]
    assert fit["n_fitted"] == "784,1568,3136,6272"


def test_exponent_interval_shrinks_to_the_slope_without_noise():
    fit = stats.fit_exponent([100, 200, 400, 800], [3 * n ** 0.8 for n in (100, 200, 400, 800)])
    assert fit["slope"] == pytest.approx(0.8, abs=1e-9)
    assert fit["ci_high"] - fit["ci_low"] == pytest.approx(0, abs=1e-6)
    assert stats.fit_exponent([100, 200], [1, 2])["ci_low"] is None  # two points: no interval


def test_crossover_matches_the_closed_form():
    ns = [128, 256, 512, 1024, 2048]
    # method a*n, reference b*n^2: equal at n = a/b = 700; log ratio is linear in log n, so exact
    n_cross, note = stats.crossover(ns, [0.7 * n for n in ns], ns, [1e-3 * n * n for n in ns])
    assert note == "interpolated" and n_cross == pytest.approx(700, rel=1e-9)
    assert stats.crossover(ns, [1.0] * 5, ns, [2.0] * 5)[0] is None
    assert stats.crossover(ns, [3.0] * 5, ns, [2.0] * 5)[0] is None


def test_pareto_mask_agrees_with_brute_force():
    rng = np.random.default_rng(1)
    x, y = list(rng.random(40)), list(rng.random(40))
    brute = [not any(x[j] <= x[i] and y[j] <= y[i] and (x[j], y[j]) != (x[i], y[i]) for j in range(40))
             for i in range(40)]
    assert stats.pareto_mask(x, y) == brute


def test_devices_are_kept_apart(tmp_path):
    rows = [attention_row("anchor", n, 1.0, m=10, device=d) for d in ("cpu", "cuda") for n in (256, 512)]
    data = load_runs([write_run(tmp_path / "r", rows)])
    grouped = T.groups(T.ok_attention(data.rows))
    assert len(grouped) == 2
    assert [sorted(set(g["device"])) for _, g in grouped] == [["cpu"], ["cuda"]]


def test_claims_put_measured_next_to_published():
    df = normalise(pd.DataFrame(synthetic_rows()).assign(source="s"))
    claims = claims_table(df)
    deit_s = claims[(claims["model"] == "DeiT-S") & (claims["quantity"] == "params (M)")].iloc[0]
    assert deit_s["published"] == 21.9 and deit_s["measured"] == pytest.approx(22.050664)
    assert deit_s["diff_pct"] == pytest.approx(100 * (22.050664 - 21.9) / 21.9)
    anchor = claims[claims["model"] == "AnchorFormer-S"]
    assert set(anchor["source"]) == {"Table 1, page unknown"} and len(anchor) == 2
    red = claims[(claims["model"] == "AnchorFormer-S vs DeiT-S") & (claims["quantity"] == "MACs reduction (%)")]
    assert red["published"].iloc[0] == pytest.approx(100 * (1 - 2.7 / 4.6))
    assert red["measured"].iloc[0] == pytest.approx(100 * (1 - 3_974_332_416 / 4_598_882_304))


def test_claims_from_hand_written_numbers():
    """A made-up published table and made-up model rows with round ratios; every claim by hand."""
    paper = pd.DataFrame([
        {"model": "Base", "arch": "deit-small", "attention": "vanilla", "m": float("nan"), "params_m": 20.0,
         "macs_g": 5.0, "table": "Table 9", "page": 3},
        {"model": "Fast", "arch": "deit-small", "attention": "anchor", "m": 30.0, "params_m": 15.0,
         "macs_g": 2.5, "table": "Table 9", "page": 3}])
    rows = [model_row("deit-small", "vanilla-math", 22_000_000, 4_000_000_000),
            model_row("deit-small", "anchor", 16_500_000, 3_000_000_000, m=30, family="anchor")]
    claims = claims_table(normalise(pd.DataFrame(rows).assign(source="s")), paper=paper)
    got = sorted((r.model, r.quantity, r.published, r.measured, r.diff_pct) for r in claims.itertuples())
    want = sorted([
        ("Base", "params (M)", 20.0, 22.0, 10.0), ("Base", "MACs (G, fvcore)", 5.0, 4.0, -20.0),
        ("Fast", "params (M)", 15.0, 16.5, 10.0), ("Fast", "MACs (G, fvcore)", 2.5, 3.0, 20.0),
        ("Fast vs Base", "params reduction (%)", 25.0, 25.0, 0.0),
        ("Fast vs Base", "MACs reduction (%)", 50.0, 25.0, -50.0)])
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert [g[2:] for g in got] == [pytest.approx(w[2:]) for w in want]
    assert set(claims["source"]) == {"Table 9, page 3"}


PUBLISHED_TABLE1 = {"DeiT-T": (5.6, 1.3), "DeiT-S": (21.9, 4.6), "DeiT-B": (86.3, 17.5),
                    "AnchorFormer-T": (4.2, 0.7), "AnchorFormer-S": (18.6, 2.7), "AnchorFormer-B": (63.5, 9.2)}


def test_paper_baselines_cite_table_and_page():
    paper = load_paper()
    assert paper["table"].notna().all() and paper["page"].notna().all()
    t1 = paper[paper["table"] == "Table 1"].set_index("model")
    assert {k: (t1.loc[k, "params_m"], t1.loc[k, "macs_g"]) for k in PUBLISHED_TABLE1} == PUBLISHED_TABLE1
    t5 = paper[(paper["table"] == "Table 5") & (paper["attention"] == "anchor")]
    assert sorted(t5["m"].astype(int)) == [10, 10, 30, 30, 50, 50, 100, 100]
    t5_deit = paper[(paper["table"] == "Table 5") & (paper["attention"] == "vanilla")].set_index("model")
    assert {k: (t5_deit.loc[k, "params_m"], t5_deit.loc[k, "macs_g"]) for k in ("DeiT-T", "DeiT-S")} == \
        {k: PUBLISHED_TABLE1[k] for k in ("DeiT-T", "DeiT-S")}


def test_missing_paper_tables_are_an_error_not_an_empty_claims_table(tmp_path):
    from attnbench.report.claims import PaperTablesMissing

    with pytest.raises(PaperTablesMissing, match="no published tables"):
        claims_table(pd.DataFrame([model_row("deit_s", "vanilla", 22_050_664, 4_598_882_304)]
                                  ).assign(kind="model"), paper=load_paper(tmp_path))


def test_wheel_ships_the_paper_tables_readable_through_the_package(tmp_path):
    """A wheel (what a non-editable install unpacks) holds baselines/paper/*.csv as
    attnbench.paper_tables, and load_paper() reads them from there, not from the source tree."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a clean copy: a stale build/ of the checkout would leak into the wheel
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(".*", "venv", "build", "dist", "results", "tests",
                                                              "*.egg-info", "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel, = tmp_path.glob("attnbench-*.whl")
    csvs = sorted(p.name for p in (root / "baselines" / "paper").glob("*.csv"))
    assert len(csvs) >= 2
    assert {f"attnbench/paper_tables/{c}" for c in csvs} <= set(zipfile.ZipFile(wheel).namelist())
    probe = ("import attnbench, json; from attnbench.report.claims import load_paper; p = load_paper(); "
             "print(json.dumps([attnbench.__file__, len(p), sorted(p['table'].unique())]))")
    read = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(wheel)})  # zipimport: no source tree
    assert read.returncode == 0, read.stderr
    where, n_rows, tables = json.loads(read.stdout.strip().splitlines()[-1])
    assert where.startswith(str(wheel))
    assert n_rows == sum(len(pd.read_csv(root / "baselines" / "paper" / c)) for c in csvs)
    assert tables == ["Table 1", "Table 5"]


def one_line_error(code, err, *needles):
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err


def test_missing_run_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["report", "--run", str(tmp_path / "nope")], capsys)
    one_line_error(code, err, "does not exist", "nope")


def test_empty_run_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "rows.jsonl").write_text("")
    code, _, err = run_cli(["report", "--run", str(tmp_path / "empty")], capsys)
    one_line_error(code, err, "empty")


def test_no_run_under_results_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["report"], capsys)
    one_line_error(code, err, "no run found")


def test_rows_without_a_required_field_name_it(tmp_path, capsys):
    rows = [attention_row("anchor", 256, 1.0, m=10)]
    del rows[0]["method"]
    code, _, err = run_cli(["report", "--run", str(write_run(tmp_path / "r", rows))], capsys)
    one_line_error(code, err, "lacks field(s) method")


def test_rows_lacking_a_figure_field_name_it_and_the_rest_is_written(tmp_path, capsys):
    """One run lacks latency_ms, a second run is missing: both named, everything else written."""
    rows = [attention_row(meth, n, 1e-5 * n * n, m=m) for n in (256, 1024)
            for meth, m in (("vanilla-sdpa", None), ("anchor", 10))]
    for r in rows:
        del r["latency_ms"]
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "--run", str(write_run(tmp_path / "r", rows)), "--run", str(tmp_path / "gone"),
                            "--out", str(out)], capsys)
    one_line_error(code, err, "latency_ms", "latency_vs_n", "gone", "does not exist")
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert (out / "figures" / "memory_vs_n.png").exists() and (out / "figures" / "error_vs_m.png").exists()
    assert not (out / "figures" / "latency_vs_n.png").exists()
    assert "rows lack latency_ms" in (out / "report.md").read_text()
    assert len(pd.read_csv(out / "tables" / "measurements.csv")) == len(rows)


def test_report_opens_with_the_verdict_and_ends_with_provenance(built):
    _, (out, _) = built
    md = (out / "report.md").read_text()
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads[0] == "## Verdict" and heads[-1] == "## Provenance"
    assert heads.index("## Figures") < heads.index("## Tables")
    verdict = pd.read_csv(out / "tables" / "verdict.csv")
    assert list(verdict["n"]) == list(NS)
    # anchor m=10 has err_skill 1.0 here and is faster than mystery-attn (0.5) at every n
    assert all(str(c).startswith("anchor m=10:") for c in verdict["fastest, err_skill ≥ 0.5"])
    crossover = pd.read_csv(out / "tables" / "crossover.csv").set_index("family")
    # mystery 2e-4 n^1.5 = 1e-5 n^2 at n = 400, between the measured 256 and 512
    assert crossover.loc["mystery", "overtakes vanilla-sdpa"].startswith("between n=256 and n=512 (≈ 400")


def test_every_link_has_a_target(built):
    import re

    _, (out, _) = built
    md = (out / "report.md").read_text()
    slugs = {re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
             for line in md.splitlines() if line.startswith("#")}
    targets = set(re.findall(r"\]\(#([^)]+)\)", md))
    assert targets and targets <= slugs
    html = (out / "report.html").read_text()
    hrefs = set(re.findall(r"href='#([^']+)'", html))
    ids = set(re.findall(r" id='([^']+)'", html))
    assert hrefs and hrefs <= ids
    assert all(h.startswith("row-") for h in hrefs)
    assert "<script>" in html and "sortable" in html and "http" not in html.split("<script>")[1]


def test_mfu_column_and_flash_attention_basis(built):
    _, (out, _) = built
    measured = pd.read_csv(out / "tables" / "measurements.csv")
    rows = {(r["method"], r["m"] or -1, r["n"]): r for r in synthetic_rows() if r["status"] == "ok" and "kind" not in r}
    want = [rows[(s.split(" ")[0], -1 if pd.isna(m) else m, n)]["achieved_tflops"] / ENV["roofline"]["matmul_tflops"]
            for s, m, n in zip(measured["series"], measured["m"], measured["n"])]
    assert list(measured["mfu"]) == pytest.approx(want, rel=1e-3)
    assert list(measured["achieved_tflops_fa"]) == pytest.approx(list(measured["achieved_tflops"]), rel=1e-3)  # fwd


def test_flash_attention_basis_counts_the_backward_as_2_5_forwards():
    macs, latency_ms = 6 * 1024 * 1024 * 64, 2.0
    row = attention_row("vanilla-sdpa", 1024, latency_ms, mode="fwdbwd")
    row["achieved_tflops"] = 3 * 2 * macs / (latency_ms * 1e-3) / 1e12          # the rows' basis: bwd = 2 fwd
    ok = T.ok_attention(normalise(pd.DataFrame([row])))
    assert ok["achieved_tflops_fa"].iloc[0] == pytest.approx(3.5 * 2 * macs / (latency_ms * 1e-3) / 1e12)
    assert ok["mfu_fa"].iloc[0] == pytest.approx(ok["achieved_tflops_fa"].iloc[0] / 0.5)
    assert ok["mfu"].iloc[0] == pytest.approx(row["achieved_tflops"] / 0.5)
