"""The ray executor on a local two-node cluster (Ray's own cluster utilities), fake GPUs."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from attnbench import rows  # noqa: E402
from attnbench.measure.timing import TimingConfig  # noqa: E402
from attnbench.results import read_rows  # noqa: E402
from attnbench.sweep import SweepConfig, run_sweep  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
NODE = {"num_cpus": 1, "num_gpus": 1, "resources": {"attnbench_timing": 1}}
ERROR_FIELDS = ("status", "err_rel_fro", "err_max_abs", "err_cos_mean", "macs_analytic")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args=NODE)
    worker = c.add_node(**NODE)
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


def cfg(out, executor, address=None):
    return SweepConfig(ns=(16, 24, 32, 40, 48), ms=(2, 4), methods=("uniform", "vanilla-math", "anchor"),
                       heads=2, head_dim=8, out=out, timing=TimingConfig(cpu_min_run_time_s=0.01),
                       count_flops=False, executor=executor, ray_address=address, workload="gaussian", fit="none")


def test_ray_rows_equal_the_process_rows_and_name_their_node(cluster, tmp_path):
    c, _ = cluster
    run_sweep(cfg(tmp_path / "process", "process"), progress=False)
    run_sweep(cfg(tmp_path / "ray", "ray", c.address), progress=False)
    by_process = {rows.identity(r): r for r in read_rows(tmp_path / "process" / "rows.jsonl")}
    by_ray = {rows.identity(r): r for r in read_rows(tmp_path / "ray" / "rows.jsonl")}
    assert len(by_ray) == 20 and by_ray.keys() == by_process.keys()
    nodes = {n.node_id for n in c.list_all_nodes()}
    for key, r in by_ray.items():
        p = by_process[key]
        assert r["status"] == p["status"] == "ok"
        for f in ERROR_FIELDS[1:]:
            assert r[f] == pytest.approx(p[f], rel=1e-6, abs=1e-6), f
        assert r["executor"] == "ray" and r["ray_node_id"] and p["ray_node_id"] is None
        assert r["worker_pid"] != os.getpid()
        assert r["ray_node_id"] in nodes
    assert len({r["ray_node_id"] for r in by_ray.values()}) == 2     # both nodes measured


@pytest.mark.slow
def test_a_node_killed_mid_sweep_loses_no_written_row(cluster, tmp_path):
    c, worker = cluster
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), "sweep", "--plugin", str(ROOT / "tests" / "plugins" / "sleepy.py"),
           "--methods", "sleepy,uniform", "--n", "16,24,32,40,48", "--m", "1,2,3", "--executor", "ray",
           "--ray-address", c.address, "--heads", "2", "--head-dim", "8", "--min-run-time", "0.01",
           "--no-flops", "--quiet", "--out", str(out)]
    env = {**os.environ, "ATTNBENCH_SLEEPY_S": "0.2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = out / "rows.jsonl"
    deadline = time.time() + 240
    while not (path.exists() and path.read_bytes().count(b"\n") >= 4):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    written = path.read_bytes()
    written = written[: written.rfind(b"\n") + 1]
    c.remove_node(worker)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert path.read_bytes().startswith(written)
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    final = read_rows(path)
    keys = [rows.identity(r) for r in final]
    assert len(set(keys)) == len(keys) == 20 and all(r["status"] == "ok" for r in final)
