"""Executors: crashing, hanging and memory-hungry methods become rows; the parent alone writes;
a killed parent loses no written row; a locked folder refuses a second sweep."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench import rows
from attnbench.cli import main
from attnbench.results import FolderLock, read_rows
from attnbench.run.schedule import Schedule
from attnbench.settings import Point

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
TINY = ["--heads", "2", "--head-dim", "8", "--min-run-time", "0.01", "--quiet", "--no-flops"]


def run_main(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def by_point(out):
    latest, _ = rows.dedup(read_rows(out / "rows.jsonl"))
    return {(r["method"], r["n"]): r for r in latest}


def test_misbehaving_points_become_rows_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", "--plugin", str(PLUGINS / "misbehave.py"), "--methods", "misbehave,uniform",
            "--n", "16,24,40,48,56", "--executor", "process", "--timeout", "3", "--worker-mem-limit", "8",
            "--out", str(out)] + TINY
    code, stdout, stderr = run_main(args, capsys)
    assert code == 0, stderr
    got = by_point(out)
    assert len(got) == 10
    assert all(got[("uniform", n)]["status"] == "ok" for n in (16, 24, 40, 48, 56))
    assert got[("misbehave", 16)]["status"] == "ok"
    abort, segv = got[("misbehave", 24)], got[("misbehave", 40)]
    assert abort["status"] == "crashed" and "SIGABRT" in abort["message"], abort["message"]
    assert segv["status"] == "crashed" and "SIGSEGV" in segv["message"], segv["message"]
    assert "Segmentation fault" in segv["message"]            # the last line of its stderr
    hang = got[("misbehave", 48)]
    assert hang["status"] == "timeout" and "3 s --timeout" in hang["message"]
    assert got[("misbehave", 56)]["status"] == "oom", got[("misbehave", 56)]["message"]
    for n in (24, 40, 48, 56):
        assert f"failed: misbehave n={n}" in stderr
    pids = {r["worker_pid"] for r in got.values()}
    assert len(pids) >= 4 and os.getpid() not in pids         # replaced after each death and kill
    assert all(r["executor"] == "process" and r["worker_host"] == socket.gethostname() for r in got.values())
    declared = {f.name for f in rows.fields_of("attention")}
    assert all(set(r) == declared for r in got.values())        # crashed and timeout rows too

    code, stdout, _ = run_main(args, capsys)                   # a rerun measures nothing new
    assert code == 0 and stdout.startswith("0 rows written") and "10 already measured" in stdout

    before = len(read_rows(out / "rows.jsonl"))
    code, stdout, stderr = run_main(args + ["--retry-failed"], capsys)
    assert code == 0, stderr
    retried = read_rows(out / "rows.jsonl")[before:]
    assert sorted((r["method"], r["n"]) for r in retried) == [("misbehave", 24), ("misbehave", 40), ("misbehave", 48)]
    assert [r["status"] for r in sorted(retried, key=lambda r: r["n"])] == ["crashed", "crashed", "timeout"]


def test_schedule_keeps_an_n_on_its_worker_and_lets_idle_workers_steal():
    pts = [Point("a", {}, n, m) for n in (8, 16) for m in range(3)]
    s = Schedule(pts)
    first = s.next_for("w0", None)
    second = s.next_for("w1", None)
    assert first.n == 8 and second.n == 16                     # a fresh n for the second worker
    assert s.next_for("w0", 8).n == 8 and s.next_for("w0", 8).n == 8
    assert s.next_for("w0", 8).n == 16                         # n=8 done: takes from n=16
    assert s.next_for("w1", 16).n == 16 and not s


def test_progress_line_names_the_point_in_flight_on_each_worker():
    from attnbench.run import Progress

    shown = []
    progress = Progress(shown.append)
    progress.start("w1", Point("anchor", {}, 1024, 30))
    progress.start("w0", Point("uniform", {}, 196, None))
    assert shown[-1] == "w0: uniform n=196 | w1: anchor n=1024 m=30"
    progress.stop("w1")
    assert shown[-1] == "w0: uniform n=196"


def test_huge_n_is_an_oom_row_and_an_impossible_n_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, stderr = run_main(["sweep", "--methods", "uniform", "--n", "100000000", "--heads", "6",
                                "--head-dim", "64", "--out", str(out), "--quiet", "--executor", "inline"], capsys)
    assert code == 0, stderr
    (row,) = read_rows(out / "rows.jsonl")
    assert row["status"] == "oom" and "workload n=100000000" in row["message"]
    code, _, stderr = run_main(["sweep", "--methods", "uniform", "--n", "1000000000000", "--out", str(out),
                                "--quiet"], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "1000000000000" in stderr


def test_a_locked_folder_refuses_a_second_sweep(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sweep", "--methods", "uniform", "--n", "16", "--out", str(out)] + TINY
    with FolderLock(out):
        code, _, stderr = run_main(args, capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in stderr
    assert not (out / "rows.jsonl").exists()
    (out / ".lock").write_text("999999 some-host\n")            # a dead holder's lock: taken over
    assert run_main(args, capsys)[0] == 0
    assert len(read_rows(out / "rows.jsonl")) == 1


def test_two_concurrent_sweeps_into_one_folder(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), "sweep", "--plugin", str(PLUGINS / "sleepy.py"),
           "--methods", "sleepy", "--n", "16", "--m", "1,2", "--executor", "inline", "--out", str(out)] + TINY
    env = {**os.environ, "ATTNBENCH_SLEEPY_S": "0.3"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert sorted(r["m"] for r in read_rows(out / "rows.jsonl")) == [1, 2]


def _complete_prefix(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


@pytest.mark.parametrize("executor, kills", [("inline", 7), ("process", 3)])
def test_parent_killed_at_random_moments_loses_no_written_row(tmp_path, executor, kills):
    """SIGKILL of the sweep's process, ten times in all: every complete row stays, none is doubled."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "bench.py"), "sweep", "--methods", "uniform,vanilla-math,anchor",
           "--n", "16,20,24,28,32", "--m", "2,4", "--executor", executor, "--out", str(out)] + TINY
    grid = 5 * 4
    rng = random.Random(1234 if executor == "inline" else 4321)
    seen = b""
    for _ in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = seen.count(b"\n")
        target = start + rng.randint(0, 3)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            path = out / "rows.jsonl"
            if path.exists() and path.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = (out / "rows.jsonl").read_bytes() if (out / "rows.jsonl").exists() else b""
        assert data.startswith(seen)                           # append-only: no written row lost
        seen = _complete_prefix(data)
        keys = [rows.identity(r) for r in (json.loads(x) for x in seen.splitlines())]
        assert len(keys) == len(set(keys))                     # no duplicates
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    final = read_rows(out / "rows.jsonl")
    assert (out / "rows.jsonl").read_bytes().startswith(seen)
    assert len(final) == len({rows.identity(r) for r in final}) == grid


def test_a_worker_exit_leaks_no_semaphore(tmp_path):
    """A lock made in a worker (its default start method is spawn, so the lock is a named
    semaphore) is released when the worker exits: no resource-tracker warning for the user."""
    done = subprocess.run([sys.executable, "bench.py", "sweep", "--plugin", str(PLUGINS / "lockholder.py"),
                           "--methods", "lockholder", "--n", "16", "--executor", "process",
                           "--out", str(tmp_path / "run")] + TINY,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert read_rows(tmp_path / "run" / "rows.jsonl")[0]["status"] == "ok"
    assert "leaked semaphore" not in done.stderr, done.stderr[-500:]
