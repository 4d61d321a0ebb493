"""``check --base REV``: this tree against a git revision, side by side on this machine.

Each round starts a fresh pair of worker processes (``worker.py``), one importing the working
tree's package and one a temporary worktree of REV; both load the same seeded inputs, saved
once here. Every sample times one configuration in both, alternating head and base runs
(``parts`` of each, the fastest of each counting), so both see the same machine state; the
sample is time(head) / time(base). Correctness is judged here, with this tree's reference, on
the outputs both workers saved.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnbench.check.prepare import Measured
from attnbench.check.stats import median_ci, speed_verdict
from attnbench.check.suite import Settings, SuiteEntry
from attnbench.check.verdict import Row, correctness_row
from attnbench.measure.allocator import steady_env
from attnbench.measure.error import error_metrics

WORKER = Path(__file__).with_name("worker.py")
BOOT = "import runpy, sys; sys.path[0] = sys.argv[1]; runpy.run_path(sys.argv[2], run_name='__main__')"


class Worker:
    """One timing process over a source tree; its stderr goes to ``log``."""

    def __init__(self, root: Path, log: Path) -> None:
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", BOOT, str(root), str(WORKER)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                         env=steady_env())  # both sides: one heap policy, whatever the revision

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def answer(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"timing worker died: {tail[0]}")
        return json.loads(line)

    def time(self, key: str, number: int) -> float:
        return self.ask({"time": key, "number": number})["ms"]

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()


def save_inputs(wls: dict[int, Any], path: Path) -> None:
    """{n: (q, k, v, grid)} of the seeded workloads, on CPU, for both workers."""
    torch.save({n: (wl.q.cpu(), wl.k.cpu(), wl.v.cpu(), wl.grid) for n, (wl, _, _) in wls.items()}, path)


def job(entries: list[SuiteEntry], s: Settings, tmp: Path, side: str, plugins: tuple[str, ...]) -> dict[str, Any]:
    return {"entries": [{**asdict(e), "key": e.key} for e in entries], "settings": asdict(s),
            "inputs": str(tmp / "inputs.pt"), "outputs": str(tmp / f"out-{side}.pt"), "plugins": list(plugins)}


def start_pair(roots: dict[str, Path], entries: list[SuiteEntry], s: Settings, tmp: Path,
               plugins: tuple[str, ...], n: int) -> tuple[dict[str, Worker], dict[str, dict]]:
    """A fresh (head, base) pair, both started before either is waited on; their 'ready' answers."""
    workers = {side: Worker(root, tmp / f"{side}-{n}.log") for side, root in roots.items()}
    try:
        for side, w in workers.items():
            w.proc.stdin.write(json.dumps(job(entries, s, tmp, side, plugins if side == "head" else ())) + "\n")
            w.proc.stdin.flush()
        return workers, {side: w.answer() for side, w in workers.items()}
    except Exception:
        close(workers)
        raise


def close(workers: dict[str, Worker]) -> None:
    for w in workers.values():
        w.close()


def sample(workers: dict[str, Worker], key: str, numbers: dict[str, int], parts: int,
           flip: int) -> tuple[float, float]:
    """time(head) / time(base) for one configuration: the fastest of ``parts`` alternating runs each."""
    best = {"head": math.inf, "base": math.inf}
    for p in range(parts):
        for side in (("head", "base") if (p + flip) % 2 == 0 else ("base", "head")):
            best[side] = min(best[side], workers[side].time(key, numbers[side]))
    return best["head"], best["base"]


def time_round(workers: dict[str, Worker], ready: dict[str, dict], keys: list[str], s: Settings,
               reps: int, samples: dict[str, list]) -> None:
    """``reps`` recorded repetitions (after one unrecorded), each visiting the keys in a rotating order."""
    numbers = {}
    for key in keys:  # the same number of calls per run on both sides: equal cache and overhead shares
        number = max(ready[side]["ready"][key]["number"] for side in workers)
        numbers[key] = {side: number for side in workers}
    for r in range(reps + 1):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            pair = sample(workers, key, numbers[key], s.parts, r)
            if r:
                samples[key].append(pair)


def measure_rounds(roots: dict[str, Path], entries: list[SuiteEntry], s: Settings, tmp: Path,
                   plugins: tuple[str, ...], rounds: int, reps: int, first: tuple | None = None) -> dict[str, list]:
    """(head ms, base ms) samples per key over ``rounds`` fresh pairs; ``first``: a pair already started."""
    samples: dict[str, list] = {e.key: [] for e in entries}
    for n in range(rounds):
        workers, ready = first if (n == 0 and first) else start_pair(roots, entries, s, tmp, plugins, n)
        try:
            time_round(workers, ready, [e.key for e in entries], s, reps, samples)
        finally:
            close(workers)
    return samples


def side_measured(entry: SuiteEntry, ready: dict, outputs: dict, wl: tuple) -> Measured:
    """One side's state of an entry as a Measured: status, and its error on the shared inputs."""
    _, ref, plain = wl
    state = ready["ready"][entry.key]
    res = Measured(entry, status=state["status"], message=state["message"], plain_err=plain)
    if res.status == "ok":
        err = error_metrics(outputs[entry.key].to(ref.device), ref)
        res.err_rel_fro, res.out_finite = err["err_rel_fro"], err["out_finite"]
    return res


def correctness(entries: list[SuiteEntry], ready: dict[str, dict], tmp: Path, wls: dict[int, Any],
                label: str) -> tuple[dict[str, Row], list[SuiteEntry], dict[str, float]]:
    """Rows of entries that fail (or are new at the base), the entries to time, and the head errors."""
    outs = {side: torch.load(tmp / f"out-{side}.pt") for side in ready}
    rows, timed, errs = {}, [], {}
    for e in entries:
        head = side_measured(e, ready["head"], outs["head"], wls[e.n])
        base = side_measured(e, ready["base"], outs["base"], wls[e.n])
        errs[e.key] = head.err_rel_fro
        bad = correctness_row(head, {"err_rel_fro": base.err_rel_fro} if base.status == "ok" else None)
        if bad is not None:
            rows[e.key] = bad
        elif base.status != "ok":
            rows[e.key] = Row(e.key, "new", note=f"not measured at {label}: {base.message}")
        else:
            timed.append(e)
    return rows, timed, errs


def speed_row(key: str, pairs: list, tolerance: float, err: float | None) -> Row:
    ratio, lo, hi = median_ci([h / b for h, b in pairs])
    med = [float(np.median(x)) for x in zip(*pairs)]
    return Row(key, speed_verdict(ratio, lo, hi, tolerance), med[1], med[0], ratio, lo, hi,
               note=f"err {err:.3g}" if err is not None else "")
