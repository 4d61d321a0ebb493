"""The executors' recorded benchmarks: process-vs-inline overhead, and scaling over workers.

    python scripts/executor_bench.py overhead [--pairs 2] [--sweep-args "..."]
    python scripts/executor_bench.py scaling --executor process|ray [--workers 1,4] [--ray-address ADDR]

``overhead`` runs the default CPU sweep (``bench.py sweep --quiet``, plus --sweep-args) with
``--executor inline`` and ``--executor process`` in alternation, ``--pairs`` times, into fresh
folders, and prints each run's wall time and the per-pair ratio process / inline.

``scaling`` runs a 64-point sweep of ``tests/plugins/sleepy.py`` (each call sleeps
ATTNBENCH_SLEEPY_S, 1 s by default; --min-run-time sets how many calls a point makes) with each
worker count, and prints wall time, the span from the first to the last row written, and the
speed-up and efficiency against the first count. With ``--ray-address`` the sweep joins a running cluster
(started beforehand, e.g.
``ray start --head --resources '{"attnbench_timing": 4}'``), so Ray's own start-up is left out
of the wall time; actor start-up stays in.

Every line also gives the 1-minute load average before and after the run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from attnbench.results import read_rows  # noqa: E402
SLEEPY = ["--plugin", "tests/plugins/sleepy.py", "--methods", "sleepy", "--n", "16,24,32,40,48,56,64,72",
          "--m", "1,2,3,4,5,6,7,8", "--heads", "2", "--head-dim", "8", "--no-flops"]


def sweep(out: Path, args: list[str], env: dict[str, str] | None = None) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "bench.py", "sweep", "--quiet", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"sweep failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    rows = read_rows(out / "rows.jsonl")
    stamps = sorted(dt.datetime.fromisoformat(r["timestamp"]) for r in rows)
    bad = sum(r["status"] != "ok" for r in rows)
    warnings = [ln.strip()[:160] for ln in done.stderr.splitlines() if "warn" in ln.lower()]
    return {"wall_s": round(wall, 1), "rows": len(rows), "not_ok": bad,
            "span_s": (stamps[-1] - stamps[0]).total_seconds(), "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}",
            **({"stderr_warnings": warnings} if warnings else {})}


def overhead(a: argparse.Namespace, tmp: Path) -> None:
    extra = shlex.split(a.sweep_args)
    for i in range(a.pairs):
        walls = {}
        order = ("inline", "process") if i % 2 == 0 else ("process", "inline")
        for executor in order:
            r = sweep(tmp / f"{executor}-{i}", ["--executor", executor, *extra])
            walls[executor] = r["wall_s"]
            print(f"pair {i + 1} {executor:7s} {json.dumps(r)}", flush=True)
        print(f"pair {i + 1}: process / inline = {walls['process'] / walls['inline']:.3f}", flush=True)


def scaling(a: argparse.Namespace, tmp: Path) -> None:
    extra = ["--executor", a.executor] + (["--ray-address", a.ray_address] if a.ray_address else [])
    first = None
    for w in (int(x) for x in a.workers.split(",")):
        r = sweep(tmp / f"{a.executor}-{w}", [*SLEEPY, "--min-run-time", a.min_run_time, *extra, "--workers", str(w)],
                  {"ATTNBENCH_SLEEPY_S": a.sleep})
        first = first or (w, r)
        speed = first[1]["wall_s"] / r["wall_s"]
        span = first[1]["span_s"] / r["span_s"] if r["span_s"] else float("nan")
        print(f"{a.executor} workers={w} {json.dumps(r)} speed-up wall {speed:.2f}x (efficiency "
              f"{speed / (w / first[0]):.0%}), rows span {span:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--pairs", type=int, default=2)
    o.add_argument("--sweep-args", default="", help="more `bench.py sweep` options, one string")
    s = sub.add_parser("scaling")
    s.add_argument("--executor", choices=("process", "ray"), default="process")
    s.add_argument("--workers", default="1,4")
    s.add_argument("--ray-address", default=None)
    s.add_argument("--sleep", default="1", help="seconds per call of the sleepy method")
    s.add_argument("--min-run-time", default="0.01", help="seconds of timed calls per point (more: more calls)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="attnbench-exec-") as name:
        (overhead if a.what == "overhead" else scaling)(a, Path(name))


if __name__ == "__main__":
    main()
