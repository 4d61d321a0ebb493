"""``bench.py selftest``: the one command that validates a machine, GPU or CPU, within a budget.

``--budget SECONDS`` is a hard deadline for the whole run. The steps run in order of value, each a
separate ``python bench.py ...`` (or pytest) process in its own process group, given its share of
the time that is left (weights in ``plan``) and killed with its children when the share is spent;
a step that the budget cannot reach is named in the summary as not reached. The steps:

a. environment, and one short call of every device code path against a plain reference
   (``python -m attnbench.cudapaths``);
b. the fused-anchor table: fused-anchor, vanilla-sdpa (flash, efficient, cudnn), anchor and
   anchor-compiled, forward then forward + backward;
c. the CUDA-marked tests;
d. every other method at one n (a point that cannot fit the device's memory is an ``oom`` row);
e. ``check --update`` when no baseline exists for this device class, then ``check``;
f. ``kernels``, compiled with this machine's Triton;
g. two profiles (fused-anchor and vanilla-sdpa).

Everything is worked on in a scratch folder; ``OUT`` only ever holds what the GPU lease's terms
bring back (at most 8 files): ``summary.md`` (rewritten after every step, so a kill at any moment
leaves a true page), ``rows.jsonl``, ``kernels.md``, a new baseline when one was made, and
``logs.tar.gz`` (every step's log, the profiles' tables and traces, trimmed to fit 16 MiB).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

COMPARED = ("anchor", "anchor-compiled", "vanilla-sdpa", "vanilla-xformers")
FUSED_METHODS = ("fused-anchor", "vanilla-sdpa", "anchor", "anchor-compiled")  # cheap first within each n
PACKAGES = ("xformers", "fvcore", "triton")
FILE_LIMIT = 16 * 2**20      # one returned file
RESERVE_S = 3.0              # kept back for packing the outputs at the end
MIN_STEP_S = 2.0             # a step whose share is less than this is not started


@dataclass(frozen=True)
class Shapes:
    """The sizes of one device's selftest."""

    ns: str
    batch: int
    heads: int
    head_dim: int
    m: str
    dtype: str
    other_n: int
    profile_n: int
    min_run_time: float
    timeout_s: float
    weights: tuple[float, ...]  # seconds each step is expected to take, in plan order




SHAPES = {
    # the README's fused-anchor table on a GPU; on CPU the cheapest settings that still run every step
    "cuda": Shapes("1024,4096,16384", 16, 6, 64, "10,30,100", "bfloat16", 4096, 16384, 0.2, 60.0,
                   (10, 60, 45, 20, 45, 30, 40, 15, 15)),
    "cpu": Shapes("196", 1, 2, 64, "30", "float32", 196, 196, 0.02, 20.0,
                  (8, 14, 12, 10, 25, 18, 10, 8, 8)),
}


@dataclass
class Step:
    name: str
    argv: list[str] | Callable[[float], list[str] | str]  # a callable gets the share; a str return: skipped, why
    weight: float = 1.0
    what: str = ""
    rc: int | None = None
    seconds: float = 0.0
    share_s: float | None = None
    tail: str = ""
    state: str = "not reached"   # not reached | ran | timed out | skipped
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def result(self) -> str:
        if self.state == "ran":
            text = "ok" if self.ok else f"FAILED (exit {self.rc})"
        elif self.state == "timed out":
            text = f"TIMED OUT (its share, {self.share_s:.0f} s, was spent)"
        else:
            text = self.state
        return text + (f"; {self.extra['note']}" if self.extra.get("note") else "")


def bench(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve().parent.parent / "bench.py"), *args]


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, log_dir: Path, echo: Callable[[str], None], timeout_s: float = 900) -> Step:
    """Run one step's process group for at most ``timeout_s``; its output goes to ``log_dir/<name>.log``."""
    argv = step.argv(timeout_s) if callable(step.argv) else step.argv
    step.share_s = timeout_s
    if isinstance(argv, str):
        step.state, step.tail = "skipped", argv
        echo(f"[selftest] {step.name}: skipped ({argv})")
        return step
    echo(f"[selftest] {step.name}: {' '.join(argv[1:])}")
    start = time.perf_counter()
    log = log_dir / f"{step.name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)
        try:
            step.rc, step.state = proc.wait(timeout=timeout_s), "ran"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            step.rc, step.state = 124, "timed out"
        except BaseException:
            _kill_group(proc)
            raise
    step.seconds = time.perf_counter() - start
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    step.tail = lines[-1][:200] if lines else ""
    echo(f"[selftest] {step.name}: {step.result()} in {step.seconds:.0f} s")
    return step


def cuda_test_files(device: str) -> list[str]:
    """The test files holding CUDA-marked tests (they skip on CPU)."""
    tests = Path(__file__).resolve().parent.parent / "tests"
    return sorted(str(p) for p in tests.glob("test_*.py") if "mark.cuda" in p.read_text(errors="replace"))


def test_argv(device: str) -> list[str] | str:
    if importlib.util.find_spec("pytest") is None:
        return "pytest is not installed"
    files = cuda_test_files(device)
    return [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files] if files \
        else "no CUDA-marked test files beside this package"


def other_methods(device: str, list_log: Path) -> list[str]:
    """Every method the ``list`` step printed (available or not: unavailable ones become rows saying
    why), less the fused-anchor table's; on CPU those of the default sweep (the compiled
    FlexAttention members take about a minute of compiling each on 2 cores)."""
    try:
        listed = json.loads(list_log.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [m["name"] for m in listed if m["name"] not in FUSED_METHODS
            and (device == "cuda" or (m.get("default_sweep", True) and m.get("available", True)))]


def sweep_argv(device: str, shp: Shapes, rows: Path, ns: str, methods: list[str], mode: str, share: float,
               extra: tuple[str, ...] = ()) -> list[str]:
    """One sweep into ``rows``; each call may take at most a third of the step's share."""
    timeout = max(1.0, min(shp.timeout_s, share / 3))
    return bench("sweep", "--device", device, "--dtype", shp.dtype, "--batch", str(shp.batch),
                 "--heads", str(shp.heads), "--head-dim", str(shp.head_dim), "--n", ns, "--m", shp.m,
                 "--methods", ",".join(methods), "--mode", mode, "--min-run-time", str(shp.min_run_time),
                 "--timeout", f"{timeout:.0f}", "--quiet", "--no-flops", *extra,
                 *(["--executor", "inline"] if device == "cpu" else []), "--out", str(rows))


def plan(device: str, shp: Shapes, work: Path, out: Path) -> list[Step]:
    """The steps in order of value, each with its weight in the share of the time left."""
    sweep = work / "sweep"
    backends = ("--param", "vanilla-sdpa.backend=flash,efficient,cudnn" if device == "cuda"
                else "vanilla-sdpa.backend=math")
    fused = list(FUSED_METHODS)

    def methods(share: float) -> list[str] | str:
        names = other_methods(device, work / "methods.json")
        return sweep_argv(device, shp, sweep, str(shp.other_n), names, "fwd", share) if names \
            else "the list step gave no methods"

    def kernels(share: float) -> list[str] | str:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device == "cuda":
            return bench("kernels", "--arch", "sm_80,sm_90", "--jobs", str(min(8, os.cpu_count() or 1)),
                         "--out", str(work / "kernels.md"))
        return bench("kernels", "--arch", "sm_90", "--kernels", "_anchor_reduce", "--jobs", "1",
                     "--out", str(work / "kernels.md"))

    def profile(method: str) -> Callable[[float], list[str]]:
        def argv(share: float) -> list[str]:
            return bench("profile", "--method", method, "--n", str(shp.profile_n),
                         *(["--m", "30"] if method == "fused-anchor" else []), "--device", device,
                         "--dtype", shp.dtype, "--batch", str(shp.batch), "--heads", str(shp.heads),
                         "--head-dim", str(shp.head_dim), "--out", str(work / f"profile-{method}"))
        return argv

    w = shp.weights
    return [
        Step("a-env-code-paths", [sys.executable, "-m", "attnbench.cudapaths", "--device", device,
                                  "--list", str(work / "methods.json")], w[0],
             "environment, and one short call of every device code path against its reference"),
        Step("b-fused-fwd", lambda s: sweep_argv(device, shp, sweep, shp.ns, fused, "fwd", s, backends), w[1],
             "fused-anchor table, forward"),
        Step("b-fused-fwdbwd", lambda s: sweep_argv(device, shp, sweep, shp.ns, fused, "fwdbwd", s, backends), w[2],
             "fused-anchor table, forward + backward"),
        Step("c-cuda-tests", lambda s: test_argv(device), w[3], "the CUDA-marked tests"),
        Step("d-methods", methods, w[4], f"every other method at n = {shp.other_n}"),
        Step("e-check", bench("check", "--device", device), w[5], "the gate (check --update first without a baseline)"),
        Step("f-kernels", kernels, w[6], "Triton kernels compiled ahead of time with this machine's triton"),
        Step("g-profile-fused-anchor", profile("fused-anchor"), w[7], "profile of fused-anchor"),
        Step("g-profile-vanilla-sdpa", profile("vanilla-sdpa"), w[8], "profile of vanilla-sdpa"),
    ]


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_step, which kills the running step's group


class Deadline:
    """``budget_s`` seconds from ``started`` (a time.time() value; default now)."""

    def __init__(self, budget_s: float, started: float | None = None) -> None:
        self.end = (started or time.time()) + budget_s

    def left(self) -> float:
        return self.end - time.time()


def share_of(steps: list[Step], i: int, left: float) -> float:
    """Step i's share of ``left``: its weight over the weights of the steps not yet run."""
    return left * steps[i].weight / sum(s.weight for s in steps[i:])


def run_check(step: Step, device: str, work: Path, out: Path, deadline: Deadline, echo) -> None:
    """``check``; when the baseline is missing (exit 2 naming it): ``check --update``, the new baseline
    copied to OUT, then ``check`` again; all within the step's share."""
    share = step.share_s or 60.0
    run_step(step, work / "logs", echo, share)
    if step.rc != 2 or "missing" not in step.tail:
        return
    first = time.time()
    update = run_step(Step("e-check-update", bench("check", "--device", device, "--update")), work / "logs", echo,
                      max(1.0, share - step.seconds) * 0.7)
    made = sorted(Path("baselines/ci").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if update.ok and made:
        shutil.copy2(made[-1], out / f"baseline-{made[-1].name}")
        again = run_step(Step("e-check-again", step.argv), work / "logs", echo,
                         max(1.0, share - step.seconds - (time.time() - first)))
        step.rc, step.state, step.tail = again.rc, again.state, again.tail
        step.extra["note"] = f"baseline missing: created {made[-1]} (copied to baseline-{made[-1].name})"
    else:
        step.rc, step.state, step.tail = update.rc, update.state, update.tail
        step.extra["note"] = "baseline missing; check --update did not finish"
    step.seconds += time.time() - first


def run_selftest(device: str, out: Path, echo: Callable[[str], None], budget_s: float = 300.0,
                 install: tuple[Path, float] | None = None, started: float | None = None) -> int:
    """Every step that the budget reaches; 0 when every step ran and passed, else 1.

    ``install``: (log, seconds) of an install that came first (``run.sh``), recorded as a step;
    ``started``: when the budget began (``run.sh``'s start: the install counts), default now.
    """
    deadline = Deadline(budget_s, started)
    shp = SHAPES[device]
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attnbench-selftest-"))
    (work / "logs").mkdir()
    steps = plan(device, shp, work, out)
    done: list[Step] = []
    if install:
        inst = Step("install", [], 0.0, "pip install from the kit", rc=0, seconds=install[1], state="ran")
        shutil.copy2(install[0], work / "logs" / "install.log")
        done.append(inst)
    echo(f"[selftest] {len(steps)} steps within {budget_s:.0f} s; working in {work}")
    previous = signal.signal(signal.SIGTERM, _terminated)  # a kill by timeout still leaves a final page
    try:
        for i, step in enumerate(steps):
            write_outputs(device, shp, budget_s, done + steps, work, out, final=False)
            left = deadline.left() - RESERVE_S
            share = share_of(steps, i, left) if left > 0 else 0.0
            if share < MIN_STEP_S:
                step.state = (f"not reached (budget spent: {max(0.0, deadline.left()):.0f} s left, "
                              f"a share of {max(0.0, share):.1f} s)")
                echo(f"[selftest] {step.name}: {step.state}")
                continue
            step.share_s = share
            if step.name == "e-check":
                run_check(step, device, work, out, deadline, echo)
            else:
                run_step(step, work / "logs", echo, step.share_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
        write_outputs(device, shp, budget_s, done + steps, work, out, final=True)
        shutil.rmtree(work, ignore_errors=True)
    echo(f"[selftest] summary: {out / 'summary.md'}")
    return 0 if all(s.ok for s in done + steps) else 1


def write_outputs(device: str, shp: Shapes, budget_s: float, steps: list[Step], work: Path, out: Path,
                  final: bool) -> None:
    """OUT's files: rows.jsonl and kernels.md as they are now, logs.tar.gz, then summary.md (atomically)."""
    rows_path = work / "sweep" / "rows.jsonl"
    if rows_path.exists():
        shutil.copy2(rows_path, out / "rows.jsonl")
    if (work / "kernels.md").exists():
        shutil.copy2(work / "kernels.md", out / "kernels.md")
    if final or any(s.state != "not reached" for s in steps):
        pack_logs(work, out / "logs.tar.gz")
    page = summary_page(device, shp, steps, read_rows(rows_path), budget_s=budget_s, final=final)
    tmp = out / ".summary.md.tmp"
    tmp.write_text(page)
    tmp.replace(out / "summary.md")


def pack_logs(work: Path, target: Path, limit: int = FILE_LIMIT) -> None:
    """One tar.gz of the logs, profile tables and traces; the largest traces are left out until it fits."""
    files = sorted(p for p in work.rglob("*") if p.is_file() and p.suffix in (".log", ".csv", ".json", ".md")
                   and p.name != "rows.jsonl")
    traces = sorted((p for p in files if p.name == "trace.json"), key=lambda p: p.stat().st_size)
    keep = [p for p in files if p.name != "trace.json"]
    while True:
        tmp = target.with_name(".logs.tar.gz.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for p in keep + traces:
                tar.add(p, arcname=str(p.relative_to(work)))
        if tmp.stat().st_size <= limit or not traces:
            tmp.replace(target)
            return
        traces.pop()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The sweep's rows, read as plain JSON lines (a torn last line is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def fused_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per n: fused-anchor latency and fraction of copy bandwidth, and each compared method's
    latency over fused-anchor's (> 1: fused-anchor is faster); a method without an ok row says why.
    Forward rows at m = 30 (or no budget); of several rows of one method and n (vanilla-sdpa's
    backends) the fastest ok one."""
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if r.get("mode", "fwd") != "fwd" or r.get("m") not in (None, 30):
            continue
        key, old = (r["method"], r["n"]), by.get((r["method"], r["n"]))
        better = r.get("status") == "ok" and (old is None or old.get("status") != "ok"
                                              or r["latency_ms"] < old["latency_ms"])
        if old is None or better:
            by[key] = r
    ns = sorted({r["n"] for r in rows})
    head = "| n | fused-anchor ms | fraction of copy bandwidth | " + " | ".join(f"{c} / fused" for c in COMPARED) + " |"
    lines = [head, "|" + "---|" * (3 + len(COMPARED))]
    for n in ns:
        fused = by.get(("fused-anchor", n))
        if not fused or fused.get("status") != "ok":
            why = fused.get("message") if fused else "no row"
            lines.append(f"| {n} | {fused.get('status') if fused else '-'}: {why} |" + " |" * (1 + len(COMPARED)))
            continue
        frac = fused.get("frac_copy_bw")
        cells = [str(n), f"{fused['latency_ms']:.4g}", f"{frac:.3f}" if frac is not None else "-"]
        for other in COMPARED:
            r = by.get((other, n))
            if r and r.get("status") == "ok":
                cells.append(f"{r['latency_ms'] / fused['latency_ms']:.2f}")
            else:
                cells.append(f"{r.get('status')}: {str(r.get('message'))[:80]}" if r else "no row")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def detail_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every fused-table row: method, backend, n, m, mode, status and latency."""
    lines = ["| method | params | n | m | mode | status | ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("method") not in FUSED_METHODS:
            continue
        ms = f"{r['latency_ms']:.4g}" if r.get("latency_ms") is not None else str(r.get("message") or "")[:60]
        params = ",".join(f"{k}={v}" for k, v in (r.get("params") or {}).items() if k == "backend")
        lines.append(f"| {r['method']} | {params} | {r['n']} | {r.get('m') or '-'} | {r.get('mode')} | "
                     f"{r.get('status')} | {ms.replace('|', '/')} |")
    return lines


def package_lines() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in PACKAGES:
        try:
            out.append(f"- {name}: {version(name)}")
        except PackageNotFoundError:
            out.append(f"- {name}: not installed (its rows say so)")
    return out


def status_counts(rows: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no rows"


def summary_page(device: str, shp: Shapes, steps: list[Step], rows: list[dict[str, Any]],
                 budget_s: float | None = None, final: bool = True) -> str:
    env = rows[0].get("env", {}) if rows else {}
    if not final:
        verdict = "RUNNING (or killed: the steps below say how far it got)"
    else:
        verdict = "PASSED" if all(s.ok for s in steps) else "FAILED"
    lines = [f"# selftest on {device}: {verdict}", "",
             f"Device: {env.get('device_name', '?')}; torch {env.get('torch', '?')}; "
             f"fused-anchor table at n = {shp.ns}, {shp.dtype}, batch {shp.batch}, heads {shp.heads}, "
             f"head_dim {shp.head_dim}, m = {shp.m}; other methods at n = {shp.other_n}; "
             f"budget {budget_s if budget_s is not None else '-'} s; "
             f"written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.",
             "", "## Steps", "", "| step | what | result | seconds | share s | last line of its output |",
             "|---|---|---|---|---|---|"]
    for s in steps:
        share = f"{s.share_s:.0f}" if s.share_s is not None else "-"
        lines.append(f"| {s.name} | {s.what} | {s.result()} | {s.seconds:.0f} | {share} | "
                     f"{s.tail.replace('|', '/')} |")
    lines += ["", "Each step's full output is `logs/<step>.log` in `logs.tar.gz`.", "",
              "## fused-anchor", "", f"Sweep rows: {status_counts(rows)}.", ""] + fused_table(rows)
    lines += ["", "### Every fused-table row", ""] + detail_table(rows)
    lines += ["", "## Optional packages", ""] + package_lines()
    unsupported = sorted({f"{r['method']}: {r.get('status')}: {r.get('message')}" for r in rows
                          if r.get("status") != "ok"})
    if unsupported:
        lines += ["", "## Rows that are not ok", ""] + [f"- {u}" for u in unsupported]
    return "\n".join(lines) + "\n"
