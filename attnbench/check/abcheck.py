"""The A/B comparison: correctness of both sides, then speed ratios head / base, suspects again."""
from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

from attnbench.check.ab import close, correctness, measure_rounds, save_inputs, speed_row, start_pair
from attnbench.check.prepare import prepare, workloads_for
from attnbench.check.stats import suspect
from attnbench.check.suite import Settings, SuiteEntry
from attnbench.check.verdict import OutputCheck, Row


AB_REPEATS = 15      # recorded repetitions per configuration, split over AB_ROUNDS pairs of processes
AB_ROUNDS = 3
AB_PARTS = 7         # alternating head/base runs per repetition; the fastest of each side counts
AB_BLOCK_MS = 14.0   # milliseconds per side and repetition, split over the parts


def ab_settings(s: Settings, repeats: int | None) -> Settings:
    """The baseline's suite settings (shapes, dtype, seed, threads) with the A/B timing settings."""
    return replace(s, repeats=repeats or AB_REPEATS, processes=AB_ROUNDS, parts=AB_PARTS, block_ms=AB_BLOCK_MS)


def rounds_and_reps(s: Settings) -> tuple[int, int]:
    """Pairs of fresh processes, and recorded repetitions in each: ``s.repeats`` split over up to
    ``s.processes`` pairs, at least three repetitions in each."""
    rounds = max(1, min(s.processes, s.repeats // 3))
    return rounds, math.ceil(s.repeats / rounds)


def shared_states(entries: list[SuiteEntry], s: Settings, wls: dict) -> dict[str, dict]:
    """The state both sides load, per key: built here (this tree, its plugins) and fitted once."""
    states = {}
    for e in entries:
        it = prepare(e, s, wls[e.n])
        if it.state is not None:
            states[e.key] = it.state
    return states


def compare_ab(entries: list[SuiteEntry], s: Settings, tolerance: float, roots: dict[str, Path],
               plugins: tuple[str, ...], oc: OutputCheck) -> list[Row]:
    """One row per entry: WRONG/ERROR/skipped/new from the outputs, else the speed verdict of
    time(head) / time(base). A configuration that looks slower is measured again in one more
    fresh pair with all ``s.repeats`` repetitions, and that measurement decides."""
    with tempfile.TemporaryDirectory(prefix="attnbench-ab-") as name:
        tmp = Path(name)
        wls = workloads_for(entries, s)
        save_inputs(wls, shared_states(entries, s, wls), tmp / "inputs.pt")
        first = start_pair(roots, entries, s, tmp, plugins, 0)
        try:
            rows, timed, errs = correctness(entries, first[1], tmp, wls, oc)
        except Exception:
            close(first[0])
            raise
        if not timed:
            close(first[0])
            return [rows[e.key] for e in entries]
        rounds, reps = rounds_and_reps(s)
        samples = measure_rounds(roots, timed, s, tmp, plugins, rounds, reps, first)
        rows.update({e.key: speed_row(e.key, samples[e.key], tolerance, errs[e.key]) for e in timed})
        again = [e for e in timed if suspect(rows[e.key].ratio, rows[e.key].lo, tolerance)]
        if again:
            fresh = measure_rounds(roots, again, s, tmp, plugins, 1, s.repeats)
            for e in again:
                rows[e.key] = speed_row(e.key, fresh[e.key], tolerance, errs[e.key])
                rows[e.key].note += "; measured again in a fresh pair of processes"
    return [rows[e.key] for e in entries]
