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

Planted wrong outputs (``--planted N`` runs per kind and mode): a plugin re-registers anchor,
fused-anchor, nystrom and window at once (``planted_plugin``) with their output changed in one
of the ways in PLANTED: scaled by 1.5, 1% relative noise, head 0 zeroed, tokens permuted, k and v
swapped. In A/B mode the plugin is loaded by this tree only (`check --base HEAD --plugin P`), in
stored mode against the stored baseline. Each planted method is judged separately: it is caught
when the run exits 1 and its configurations are named on the FAILED line with "output differs".

The issue's procedure is the default (20 unchanged runs, 10 per change, both modes):

    python scripts/check_sensitivity.py [--mode ab|stored|both] [--unchanged 20] [--slowed 10]
                                        [--double 3] [--wrong 3] [--planted 10] [--busy-threads 1]
                                        [--out FILE]

Each run's command, exit status, seconds, load average and verdict line are printed and, with
--out, appended as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import re
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


PLANTED_METHODS = ("anchor", "fused-anchor", "nystrom", "window")
PLANTED = {
    "scaled": "out * 1.5",
    "noise": "out + 0.01 * out.norm() / out.numel() ** 0.5 * torch.randn_like(out)",
    "zero-head": "torch.cat([torch.zeros_like(out[:, :1]), out[:, 1:]], dim=1)",
    "permuted": "out[:, :, torch.randperm(out.shape[2], generator=torch.Generator().manual_seed(1))]",
    "swapped-kv": None,                  # forward(q, v, k): computed with keys and values swapped
}
PLANTED_PLUGIN = """import torch
import attnbench
from attnbench import registry


def _planted(name):
    info = registry.get_info(name)

    class Planted(info.cls):
        def forward(self, q, k, v, grid=None):
            {body}

    Planted.__name__ = "Planted" + info.cls.__name__
    attnbench.register(name, replace=True, family=info.family, budget=info.budget, needs_grid=info.needs_grid,
                       uses_query=info.uses_query, defaults=info.defaults)(Planted)


for _name in {methods!r}:
    _planted(_name)
"""


def planted_plugin(kind: str, methods: tuple[str, ...] = PLANTED_METHODS) -> str:
    """A plugin's source re-registering ``methods`` with their output changed by ``kind``."""
    expr = PLANTED[kind]
    body = ("return super().forward(q, v, k, grid=grid)" if expr is None else
            f"out = super().forward(q, k, v, grid=grid)  # (B, H, N, d)\n            return {expr}")
    return PLANTED_PLUGIN.format(body=body, methods=tuple(methods))


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


def run_check(clone: Path, args: list[str], key: str | tuple[str, ...]) -> dict:
    """One `bench.py check` in the clone: exit status, whether ``key`` is named as failed (a tuple
    of keys: which of them are named with an output difference), timing."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "bench.py", "check", *args], cwd=clone, capture_output=True, text=True)
    failed = [ln for ln in done.stdout.splitlines() if ln.startswith("check FAILED")]
    return {"args": args, "rc": done.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "load1_before": load0, "load1_after": os.getloadavg()[0],
            "named": (bool(failed) and key in failed[0]) if isinstance(key, str) else
                     {k: bool(failed) and named_with_output(failed[0], k) for k in key},
            "verdict": (failed or [ln for ln in done.stdout.splitlines() if ln.startswith("check passed")]
                        or [done.stderr.strip()[-200:]])[0],
            "needed": next((ln for ln in done.stdout.splitlines() if ln.startswith("would pass")), "")}


def named_with_output(failed: str, key: str) -> bool:
    """Whether the FAILED line names ``key`` as WRONG with an output difference."""
    return re.search(rf"(: |; ){re.escape(key)} WRONG \(output differs from ", failed) is not None


def planted_keys(ns: tuple[int, ...], m: int) -> dict[str, tuple[str, ...]]:
    """method -> its suite keys (window has no budget)."""
    return {meth: tuple(f"{meth} n={n}" + ("" if meth == "window" else f" m={m}") for n in ns)
            for meth in PLANTED_METHODS}


def cases(mode: str, clone: Path, tmp: Path, base: str, shas: dict[str, str], n: int, counts: dict[str, int]):
    """(case, checkout sha, check arguments, runs) for one mode."""
    if mode == "ab":
        yield "unchanged", base, ["--base", "HEAD"], counts["unchanged"]
        for kind in ("slowed", "double", "wrong"):
            yield kind, shas[kind], ["--base", base], counts[kind]
        for kind in PLANTED:
            yield kind, base, ["--base", "HEAD", "--plugin", str(planted_file(tmp, kind))], counts["planted"]
        return
    stored = tmp / "stored.json"
    sh(clone, "git", "checkout", "--quiet", "--detach", base)    # the baseline of the unchanged tree
    subprocess.run([sys.executable, "bench.py", "check", "--update", "--baseline", str(stored)], cwd=clone,
                   check=True, capture_output=True)
    yield "unchanged", base, ["--baseline", str(stored)], counts["unchanged"]
    for kind in ("slowed", "double", "wrong"):
        yield kind, base, ["--baseline", str(stored), "--plugin", str(plugin_file(tmp, kind, n))], counts[kind]
    for kind in PLANTED:
        yield kind, base, ["--baseline", str(stored), "--plugin", str(planted_file(tmp, kind))], counts["planted"]


def planted_file(tmp: Path, kind: str) -> Path:
    path = tmp / f"planted_{kind.replace('-', '_')}.py"
    path.write_text(planted_plugin(kind))
    return path


def summary_lines(mode: str, case: str, results: list[dict], pkeys: dict[str, tuple[str, ...]]) -> list[str]:
    """One line per case (per planted method for a planted kind): passed/caught x/runs, seconds."""
    runs = len(results)
    secs = f"seconds {min(r['seconds'] for r in results) if results else 0}-" \
           f"{max(r['seconds'] for r in results) if results else 0}"
    if case not in PLANTED:
        good = sum((r["rc"] == 0) if case == "unchanged" else (r["rc"] == 1 and r["named"]) for r in results)
        return [f"{mode:6} {case:10} {'passed' if case == 'unchanged' else 'caught'} {good}/{runs}, {secs}"]
    return [f"{mode:6} {case:10} {meth:12} caught {sum(r['rc'] == 1 and all(r['named'][k] for k in keys) for r in results)}"
            f"/{runs}, {secs}" for meth, keys in pkeys.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("ab", "stored", "both"), default="both")
    ap.add_argument("--unchanged", type=int, default=20)
    ap.add_argument("--slowed", type=int, default=10)
    ap.add_argument("--double", type=int, default=3)
    ap.add_argument("--wrong", type=int, default=3)
    ap.add_argument("--planted", type=int, default=10, help="runs per planted wrong output (PLANTED) and mode")
    ap.add_argument("--target-n", type=int, default=196)
    ap.add_argument("--busy-threads", type=int, default=1, help="threads of the competing matmul loop (0: none)")
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per run here")
    a = ap.parse_args()
    counts = {"unchanged": a.unchanged, "slowed": a.slowed, "double": a.double, "wrong": a.wrong,
              "planted": a.planted}
    key = f"{TARGET} n={a.target_n}"
    pkeys = planted_keys((196, 576), 30)
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
                        keys = sum(pkeys.values(), ()) if case in PLANTED else key
                        results.append({"mode": mode, "case": case, **run_check(clone, args, keys)})
                        print(json.dumps(results[-1]), flush=True)
                        if a.out:
                            with open(a.out, "a") as f:
                                f.write(json.dumps(results[-1]) + "\n")
                    summary += summary_lines(mode, case, results, pkeys)
    finally:
        if busy:
            busy.kill()
    print("\n".join(summary))


if __name__ == "__main__":
    main()
