"""``check --base REV``: this tree against a git revision, side by side on this machine.

Each round starts a fresh pair of worker processes (``worker.py``), one importing the working
tree's package and one a temporary worktree of REV; both load the same seeded inputs, saved
once here, and the same state for every configuration: built, fitted (``Settings.fit``) and
saved once here (``outputs.module_state``), loaded by both after building. Every sample times one
configuration in both, alternating head and base runs (``parts`` of each, the fastest of each
counting), so both see the same machine state; the sample is time(head) / time(base).
Correctness is judged here, with this tree's reference, on the outputs both workers saved on the
correctness inputs: each side's error against exact attention, and the head's output against the
base's, ‖head − base‖ / ‖base‖.
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

from attnbench.check.outputs import relative_difference
from attnbench.check.prepare import Measured, SuiteInputs
from attnbench.check.stats import median_ci, speed_verdict
from attnbench.check.suite import Settings, SuiteEntry
from attnbench.check.verdict import OutputCheck, Row, correctness_row, output_note
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


def _qkvg(wl: Any) -> tuple:
    return wl.q.cpu(), wl.k.cpu(), wl.v.cpu(), wl.grid


def save_inputs(wls: dict[int, SuiteInputs], states: dict[str, Any], path: Path) -> None:
    """For both workers, on CPU: per n the speed inputs and the correctness inputs (q, k, v, grid),
    and per configuration key the state both load (``outputs.module_state``)."""
    torch.save({"speed": {n: _qkvg(x.speed) for n, x in wls.items()},
                "check": {n: _qkvg(x.check) for n, x in wls.items()}, "states": states}, path)


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


def side_measured(entry: SuiteEntry, ready: dict, outputs: dict, inputs: SuiteInputs) -> Measured:
    """One side's state of an entry as a Measured: status, its output and error on the shared inputs."""
    state = ready["ready"][entry.key]
    res = Measured(entry, status=state["status"], message=state["message"], plain_err=inputs.plain_err)
    if res.status == "ok":
        res.out = outputs[entry.key]
        err = error_metrics(res.out.to(inputs.ref.device), inputs.ref)
        res.err_rel_fro, res.out_finite = err["err_rel_fro"], err["out_finite"]
    return res


def state_problem(ready: dict[str, dict], key: str) -> str | None:
    """Why the two sides did not run ``key`` with the same state (None when they did)."""
    for side in ("head", "base"):
        why = ready[side]["ready"][key].get("state")
        if why != "shared":
            return f"{side}: {why or 'no shared state'}"
    return None


def correctness(entries: list[SuiteEntry], ready: dict[str, dict], tmp: Path, wls: dict[int, SuiteInputs],
                oc: OutputCheck) -> tuple[dict[str, Row], list[SuiteEntry], dict[str, str]]:
    """Rows of entries that fail (or are new at the base), the entries to time, and their notes."""
    outs = {side: torch.load(tmp / f"out-{side}.pt") for side in ready}
    rows, timed, notes = {}, [], {}
    for e in entries:
        head = side_measured(e, ready["head"], outs["head"], wls[e.n])
        base = side_measured(e, ready["base"], outs["base"], wls[e.n])
        problem = state_problem(ready, e.key) if head.status == base.status == "ok" else None
        if head.status == base.status == "ok" and problem is None:
            head.out_diff = relative_difference(head.out, base.out)
        bad = correctness_row(head, {"err_rel_fro": base.err_rel_fro} if base.status == "ok" else None, oc)
        notes[e.key] = output_note(head, oc) + (f"; outputs not compared, state not shared ({problem})"
                                                 if problem else "")
        if bad is not None:
            rows[e.key] = bad
        elif base.status != "ok":
            rows[e.key] = Row(e.key, "new", note=f"not measured at {oc.label}: {base.message}")
        else:
            timed.append(e)
    return rows, timed, notes


def speed_row(key: str, pairs: list, tolerance: float, note: str) -> Row:
    ratio, lo, hi = median_ci([h / b for h, b in pairs])
    med = [float(np.median(x)) for x in zip(*pairs)]
    return Row(key, speed_verdict(ratio, lo, hi, tolerance), med[1], med[0], ratio, lo, hi, note=note)
