"""False alarms and detections of `bench.py check`, measured beside a busy thread.

Clones the repository's committed HEAD into a temporary folder and, there, commits changes to
one suite configuration (vanilla-math at --target-n): 1.25x its own work (an extra forward over a
quarter of the queries: attention work is proportional to the number of queries), 2x (one extra
full forward) and a wrong result (output scaled by 1 + 1e-3). A competing process runs a
1-thread float32 matmul loop throughout. Then, with the default check settings:

* A/B mode: `bench.py check --base <parent>` with each change committed on top of the parent,
  and the unchanged tree against itself (`--base HEAD`);
* stored mode: a baseline made here with `check --update`, then the unchanged tree and the same
  changes as plugins (`--plugin`).

A run "detects" a change when it exits 1 and names the changed configuration on its FAILED line.
The issue's procedure is the default (20 unchanged runs, 10 per change, both modes):

    python scripts/check_sensitivity.py [--mode ab|stored|both] [--unchanged 20] [--slowed 10]
                                        [--double 3] [--wrong 3] [--busy-threads 1] [--out FILE]

Each run's command, exit status, seconds, load average and verdict line are printed and, with
--out, appended as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "vanilla-math"
BUSY = ("import torch\ntorch.set_num_threads({threads})\na = torch.randn(1024, 1024)\n"
        "while True:\n    a @ a\n")

# Appended to attnbench/methods/vanilla.py (A/B commits) or wrapped in a plugin (stored mode).
CHANGE = """
def _changed_forward(plain, kind, target_n):
    def forward(self, q, k, v, grid=None):
        out = plain(self, q, k, v, grid=grid)                      # (B, H, N, d)
        if q.shape[-2] != target_n:
            return out
        if kind == "wrong":
            return out * (1 + 1e-3)
        rows = q.shape[-2] if kind == "double" else -(-q.shape[-2] // 4)
        plain(self, q[..., :rows, :], k, v, grid=None)                # extra work: 1/4 or 1 of its own
        return out
    return forward
"""
COMMIT_TAIL = "\nVanillaMath.forward = _changed_forward(VanillaMath.forward, {kind!r}, {n})\n"
PLUGIN = """import attnbench
from attnbench.methods.vanilla import VanillaMath
{change}

@attnbench.register("vanilla-math", family="vanilla", replace=True)
class ChangedMath(VanillaMath):
    forward = _changed_forward(VanillaMath.forward, {kind!r}, {n})
"""


def sh(cwd: Path, *cmd: str) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_clone(tmp: Path, n: int) -> tuple[Path, str, dict[str, str]]:
    """The clone, its base commit, and one commit per change (kind -> sha) on top of the base."""
    clone = tmp / "clone"
    sh(ROOT, "git", "clone", "--quiet", str(ROOT), str(clone))
    base = sh(clone, "git", "rev-parse", "HEAD")
    shas = {}
    for kind in ("slowed", "double", "wrong"):
        sh(clone, "git", "checkout", "--quiet", "--detach", base)
        with open(clone / "attnbench" / "methods" / "vanilla.py", "a") as f:
            f.write(CHANGE + COMMIT_TAIL.format(kind=kind, n=n))
        sh(clone, "git", "-c", "user.name=s", "-c", "user.email=s@s", "commit", "--quiet", "-am", f"{kind} {TARGET}")
        shas[kind] = sh(clone, "git", "rev-parse", "HEAD")
    sh(clone, "git", "checkout", "--quiet", "--detach", base)
    return clone, base, shas


def plugin_file(tmp: Path, kind: str, n: int) -> Path:
    path = tmp / f"{kind}_plugin.py"
    path.write_text(PLUGIN.format(change=CHANGE, kind=kind, n=n))
    return path


def run_check(clone: Path, args: list[str], key: str) -> dict:
    """One `bench.py check` in the clone: exit status, whether ``key`` is named as failed, timing."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "bench.py", "check", *args], cwd=clone, capture_output=True, text=True)
    failed = [ln for ln in done.stdout.splitlines() if ln.startswith("check FAILED")]
    return {"args": args, "rc": done.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "load1_before": load0, "load1_after": os.getloadavg()[0],
            "named": bool(failed) and key in failed[0],
            "verdict": (failed or [ln for ln in done.stdout.splitlines() if ln.startswith("check passed")]
                        or [done.stderr.strip()[-200:]])[0],
            "needed": next((ln for ln in done.stdout.splitlines() if ln.startswith("would pass")), "")}


def cases(mode: str, clone: Path, tmp: Path, base: str, shas: dict[str, str], n: int, counts: dict[str, int]):
    """(case, checkout sha, check arguments, runs) for one mode."""
    if mode == "ab":
        yield "unchanged", base, ["--base", "HEAD"], counts["unchanged"]
        for kind in ("slowed", "double", "wrong"):
            yield kind, shas[kind], ["--base", base], counts[kind]
        return
    stored = tmp / "stored.json"
    sh(clone, "git", "checkout", "--quiet", "--detach", base)    # the baseline of the unchanged tree
    subprocess.run([sys.executable, "bench.py", "check", "--update", "--baseline", str(stored)], cwd=clone,
                   check=True, capture_output=True)
    yield "unchanged", base, ["--baseline", str(stored)], counts["unchanged"]
    for kind in ("slowed", "double", "wrong"):
        yield kind, base, ["--baseline", str(stored), "--plugin", str(plugin_file(tmp, kind, n))], counts[kind]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("ab", "stored", "both"), default="both")
    ap.add_argument("--unchanged", type=int, default=20)
    ap.add_argument("--slowed", type=int, default=10)
    ap.add_argument("--double", type=int, default=3)
    ap.add_argument("--wrong", type=int, default=3)
    ap.add_argument("--target-n", type=int, default=196)
    ap.add_argument("--busy-threads", type=int, default=1, help="threads of the competing matmul loop (0: none)")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per run here")
    a = ap.parse_args()
    counts = {"unchanged": a.unchanged, "slowed": a.slowed, "double": a.double, "wrong": a.wrong}
    key = f"{TARGET} n={a.target_n}"
    busy = (subprocess.Popen([sys.executable, "-c", BUSY.format(threads=a.busy_threads)])
            if a.busy_threads else None)
    summary = []
    try:
        with tempfile.TemporaryDirectory(prefix="attnbench-sensitivity-") as name:
            tmp = Path(name)
            clone, base, shas = make_clone(tmp, a.target_n)
            for mode in (("ab", "stored") if a.mode == "both" else (a.mode,)):
                for case, sha, args, runs in cases(mode, clone, tmp, base, shas, a.target_n, counts):
                    sh(clone, "git", "checkout", "--quiet", "--detach", sha)
                    results = []
                    for _ in range(runs):
                        results.append({"mode": mode, "case": case, **run_check(clone, args, key)})
                        print(json.dumps(results[-1]), flush=True)
                        if a.out:
                            with open(a.out, "a") as f:
                                f.write(json.dumps(results[-1]) + "\n")
                    good = sum((r["rc"] == 0) if case == "unchanged" else (r["rc"] == 1 and r["named"])
                               for r in results)
                    summary.append(f"{mode:6} {case:9} {'passed' if case == 'unchanged' else 'caught'} "
                                   f"{good}/{runs}, seconds {min(r['seconds'] for r in results) if results else 0}-"
                                   f"{max(r['seconds'] for r in results) if results else 0}")
    finally:
        if busy:
            busy.kill()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
