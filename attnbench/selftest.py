"""``bench.py selftest``: the one command that validates a machine, GPU or CPU.

Every step is a separate ``python bench.py ...`` (or pytest) process, so a crash or a failed step
is recorded and the next step still runs; the exit status is 1 when any step failed. The
summary page (``OUT/summary.md``) lists the steps and the fused-anchor table: latency, fraction
of measured copy bandwidth and speed ratios to the other anchor and exact-attention methods.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

COMPARED = ("anchor", "anchor-compiled", "vanilla-sdpa", "vanilla-xformers")
PACKAGES = ("xformers", "fvcore")


@dataclass(frozen=True)
class Shapes:
    """The sizes of one device's selftest."""

    ns: str
    batch: int
    heads: int
    head_dim: int
    m: int
    dtype: str
    profile_n: int
    min_run_time: float
    timeout_s: float


SHAPES = {
    # the README's fused-anchor table on a GPU; on CPU the cheapest settings that still run every step
    "cuda": Shapes("1024,4096,16384", 16, 6, 64, 30, "bfloat16", 16384, 0.2, 120.0),
    "cpu": Shapes("196", 1, 2, 64, 30, "float32", 196, 0.02, 60.0),
}


@dataclass
class Step:
    name: str
    argv: list[str]
    rc: int | None = None
    seconds: float = 0.0
    tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0


def bench(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve().parent.parent / "bench.py"), *args]


def run_step(step: Step, log_dir: Path, echo: Callable[[str], None], timeout_s: float = 900) -> Step:
    """Run one step's process; its output goes to ``log_dir/<name>.log``."""
    echo(f"[selftest] {step.name}: {' '.join(step.argv[1:])}")
    start = time.perf_counter()
    try:
        proc = subprocess.run(step.argv, capture_output=True, text=True, timeout=timeout_s)
        step.rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        step.rc, out = 124, f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout_s:.0f} s"
    step.seconds = time.perf_counter() - start
    (log_dir / f"{step.name}.log").write_text(out if isinstance(out, str) else out.decode(errors="replace"))
    lines = [ln for ln in str(out).strip().splitlines() if ln.strip()]
    step.tail = lines[-1][:200] if lines else ""
    echo(f"[selftest] {step.name}: {'ok' if step.ok else f'FAILED (exit {step.rc})'} in {step.seconds:.0f} s")
    return step


def test_argv(device: str) -> list[str]:
    """pytest of the CUDA-marked tests. On CPU only the GPU-only files (they skip): the fused-anchor
    tests, which run under the Triton interpreter there, are part of the regular test run."""
    tests = Path(__file__).resolve().parent.parent / "tests"
    files = [str(tests)] if device == "cuda" else [str(tests / "test_profile.py"), str(tests / "test_telemetry.py")]
    return [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]


def method_names(device: str, log_dir: Path, echo: Callable[[str], None]) -> tuple[Step, list[str]]:
    """Every registered method (available or not: unavailable ones become rows saying why); on CPU
    those of the default sweep (the compiled FlexAttention members, about a minute of compiling each
    on 2 cores, are left to the test suite there)."""
    step = run_step(Step("list", bench("list", "--json", "--device", device)), log_dir, echo)
    if not step.ok:
        return step, []
    text = (log_dir / "list.log").read_text()
    listed = json.loads(text[text.index("["):text.rindex("]") + 1])
    return step, [m["name"] for m in listed if device == "cuda" or m.get("default_sweep", True)]


def check_steps(device: str, log_dir: Path, echo: Callable[[str], None]) -> list[Step]:
    """``check``; when the baseline is missing (exit 2 naming it), ``check --update`` then ``check``."""
    first = run_step(Step("check", bench("check", "--device", device)), log_dir, echo)
    if first.rc != 2 or "missing" not in first.tail:
        return [first]
    update = run_step(Step("check-update", bench("check", "--device", device, "--update")), log_dir, echo)
    again = run_step(Step("check-new-baseline", bench("check", "--device", device)), log_dir, echo)
    first.rc, first.extra["note"] = 0, "baseline missing: created"
    return [first, update, again]


def run_selftest(device: str, out: Path, echo: Callable[[str], None]) -> int:
    """All steps, then ``out/summary.md``; 0 when every step passed, else 1."""
    shp = SHAPES[device]
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    steps = [run_step(Step("gpu-tests", test_argv(device)), logs, echo)]
    if device == "cuda":  # compile here too: this machine's triton may differ from the CI's
        steps.append(run_step(Step("kernels", bench("kernels", "--arch", "sm_80,sm_90", "--jobs", "8",
                                                    "--out", str(out / "kernels.md"))), logs, echo))
    listed, names = method_names(device, logs, echo)
    steps.append(listed)
    sweep_dir = out / "sweep"
    steps.append(run_step(Step("sweep", bench(
        "sweep", "--device", device, "--dtype", shp.dtype, "--batch", str(shp.batch), "--heads", str(shp.heads),
        "--head-dim", str(shp.head_dim), "--n", shp.ns, "--m", str(shp.m), "--methods", ",".join(names),
        "--min-run-time", str(shp.min_run_time), "--timeout", str(shp.timeout_s), "--quiet",
        *(["--no-flops"] if device == "cuda" else []), "--out", str(sweep_dir))), logs, echo))
    steps += check_steps(device, logs, echo)
    for method in ("fused-anchor", "vanilla-sdpa"):
        steps.append(run_step(Step(f"profile-{method}", bench(
            "profile", "--method", method, "--n", str(shp.profile_n),
            *(["--m", str(shp.m)] if method == "fused-anchor" else []), "--device", device,
            "--dtype", shp.dtype, "--batch", str(shp.batch), "--heads", str(shp.heads),
            "--head-dim", str(shp.head_dim), "--out", str(out / f"profile-{method}"))), logs, echo))
    page = summary_page(device, shp, steps, read_rows(sweep_dir / "rows.jsonl"))
    (out / "summary.md").write_text(page)
    echo(f"[selftest] summary: {out / 'summary.md'}")
    return 0 if all(s.ok for s in steps) else 1


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
    latency over fused-anchor's (> 1: fused-anchor is faster); a method without an ok row says why."""
    by = {(r["method"], r["n"]): r for r in rows}
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


def summary_page(device: str, shp: Shapes, steps: list[Step], rows: list[dict[str, Any]]) -> str:
    env = rows[0].get("env", {}) if rows else {}
    verdict = "PASSED" if all(s.ok for s in steps) else "FAILED"
    lines = [f"# selftest on {device}: {verdict}", "",
             f"Device: {env.get('device_name', '?')}; torch {env.get('torch', '?')}; "
             f"sweep at n = {shp.ns}, {shp.dtype}, batch {shp.batch}, heads {shp.heads}, "
             f"head_dim {shp.head_dim}, m = {shp.m}; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             "", "## Steps", "", "| step | result | seconds | last line of its output |", "|---|---|---|---|"]
    for s in steps:
        result = "ok" if s.ok else f"FAILED (exit {s.rc})"
        if s.extra.get("note"):
            result += f"; {s.extra['note']}"
        lines.append(f"| {s.name} | {result} | {s.seconds:.0f} | {s.tail.replace('|', '/')} |")
    lines += ["", "Each step's full output is in `logs/<step>.log`.", "",
              "## fused-anchor", "", f"Sweep rows: {status_counts(rows)}.", ""] + fused_table(rows)
    lines += ["", "## Optional packages", ""] + package_lines()
    unsupported = sorted({f"{r['method']}: {r.get('message')}" for r in rows if r.get("status") != "ok"})
    if unsupported:
        lines += ["", "## Rows that are not ok", ""] + [f"- {u}" for u in unsupported]
    return "\n".join(lines) + "\n"
