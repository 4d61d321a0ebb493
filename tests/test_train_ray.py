"""bench.py train --executor ray: the inline rows from Ray actors, a dying actor is its point's row."""
import json

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from attnbench import rows  # noqa: E402
from attnbench.cli import main  # noqa: E402
from test_train import KILLER  # noqa: E402

pytestmark = pytest.mark.ray
TINY = ["train", "--task", "recall", "--n", "16", "--steps", "3", "--width", "16", "--heads", "2", "--layers", "1",
        "--batch", "4"]
SAME = ("status", "accuracy", "final_loss", "chance", "accuracy_curve", "param_count", "steps_done", "batch")


@pytest.fixture(scope="module")
def cluster():
    """One single-node cluster for the module: two units of the timing resource, so two actors."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"attnbench_timing": 2}})
    yield c
    c.shutdown()


def by_method(path):
    return {r["method"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_ray_rows_equal_the_inline_rows_and_resume(cluster, tmp_path, capsys):
    args = TINY + ["--methods", "vanilla-sdpa,uniform", "--threads", "2"]     # each actor: the driver's threads
    assert main(args + ["--executor", "inline", "--out", str(tmp_path / "inline")]) == 0
    ray_args = args + ["--executor", "ray", "--ray-address", cluster.address, "--out", str(tmp_path / "ray")]
    assert main(ray_args) == 0
    inline, remote = by_method(tmp_path / "inline" / "rows.jsonl"), by_method(tmp_path / "ray" / "rows.jsonl")
    assert set(remote) == set(inline) == {"vanilla-sdpa", "uniform"}
    for name, r in remote.items():
        assert r["executor"] == "ray" and inline[name]["executor"] == "inline"
        assert {f: r[f] for f in SAME} == {f: inline[name][f] for f in SAME}, name
        assert r["status"] == "ok" and r["timing"]["threads"] == 2
    capsys.readouterr()
    assert main(ray_args) == 0                                   # resume: nothing trained again
    assert "2 point(s) already" in capsys.readouterr().out
    assert len((tmp_path / "ray" / "rows.jsonl").read_text().splitlines()) == 2


def test_a_training_that_kills_its_ray_worker_is_an_error_row(cluster, tmp_path):
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    out = tmp_path / "run"
    assert main(TINY + ["--plugin", str(plugin), "--methods", "train-killer,vanilla-sdpa,uniform", "--executor", "ray",
                        "--workers", "2", "--ray-address", cluster.address, "--out", str(out)]) == 0
    got = by_method(out / "rows.jsonl")
    assert set(got) == {"train-killer", "vanilla-sdpa", "uniform"}
    assert got["train-killer"]["status"] == "error" and "worker died" in got["train-killer"]["message"]
    for name in ("vanilla-sdpa", "uniform"):
        assert got[name]["status"] == "ok" and got[name]["executor"] == "ray"
    assert all(rows.type_problem(r) is None for r in got.values())


def test_without_an_address_a_local_instance_of_workers_actors_trains(tmp_path):
    """No --ray-address: the command starts (and stops) its own instance, sized by --workers."""
    out = tmp_path / "run"
    assert main(TINY + ["--methods", "uniform", "--executor", "ray", "--workers", "1", "--out", str(out)]) == 0
    (row,) = by_method(out / "rows.jsonl").values()
    assert row["status"] == "ok" and row["executor"] == "ray" and not ray.is_initialized()   # and stopped


def test_a_ray_that_cannot_start_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("no cluster answers at 127.0.0.1:9\nsecond line")

    monkeypatch.setattr(ray, "init", refuse)
    out = tmp_path / "run"
    rc = main(["train", "--task", "recall", "--methods", "uniform", "--n", "16", "--steps", "2", "--width", "16",
               "--heads", "2", "--layers", "1", "--executor", "ray", "--ray-address", "127.0.0.1:9", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("error: could not join Ray at 127.0.0.1:9: no cluster answers"), err
    assert not (out / "rows.jsonl").exists() or not (out / "rows.jsonl").read_text().strip()
