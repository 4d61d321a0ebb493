"""Ahead-of-time audit of every Triton kernel: compile for GPUs this machine need not have.

For each declared kernel (``AOT_KERNELS`` of every module in ``attnbench.kernels``) × each
configuration its autotuner may pick × representative shapes and dtypes × target architecture,
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` produces PTX and a cubin
(ptxas ships with the triton wheel). From the compile we read:

* registers a thread, spill stores and loads (bytes) and the stack frame: ptxas's ``-v`` log;
* shared memory as Triton allocates it (dynamic, ``metadata.shared``), against the
  architecture's per-block limit;
* the occupancy bound these imply: resident warps an SM, from registers and shared memory;
* tensor-core instructions in the SASS (``cuobjdump -sass``): HMMA (sm_80), HGMMA (wgmma,
  sm_90), UTC*MMA (tcgen05, sm_100).

Compiles run in worker processes with ``TRITON_INTERPRET`` unset (the interpreter also narrows
the autotune configurations) and a fresh Triton cache, so every figure comes from a real ptxas run.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import math
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from attnbench.kernels import aot


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of one GPU architecture (CUDA programming guide, compute capabilities)."""

    cap: int
    smem_block: int    # bytes of shared memory one block may use (opt-in maximum)
    smem_sm: int       # bytes of shared memory an SM has for blocks
    regs_sm: int = 65536
    max_warps: int = 64
    max_blocks: int = 32
    tensor_ops: str = r"HMMA"


ARCHS = {
    "sm_80": Arch(80, 166912, 167936, tensor_ops=r"\bHMMA\b"),
    "sm_90": Arch(90, 232448, 233472, tensor_ops=r"\bHGMMA\b|\bHMMA\b"),
    "sm_100": Arch(100, 232448, 233472, tensor_ops=r"\bUTC\w*MMA\b|\bHMMA\b"),
}
SMEM_RESERVED = 1024  # bytes the driver reserves a block on sm_80 and later
M_VALUES = (10, 30, 100)
HEAD_DIMS = (32, 64, 128)
DTYPES = ("float32", "float16", "bfloat16")
FAST = {"dtypes": ("bfloat16",), "shapes": ((30, 64), (10, 128), (100, 64))}  # the benchmark shape; the widest head
# at few anchors; m = 100 (M_PAD 128), where pass 1 and the backward split the anchor axis


@dataclass(frozen=True)
class Task:
    """One compile: a declared kernel at one shape, dtype, configuration and architecture."""

    module: str
    kernel: str
    dtype: str
    m: int
    head_dim: int
    config: aot.TuneConfig
    arch: str


# ---------------------------------------------------------------- declared kernels


def kernel_modules() -> list[str]:
    """Every module of ``attnbench.kernels`` (the audit's own and the spec module excepted)."""
    import attnbench.kernels as pkg

    skip = {"aot", "audit"}
    return [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if m.name not in skip]


def load_module(name: str):
    """A module by dotted name or by file path (extra kernels, e.g. planted faults in tests)."""
    if name.endswith(".py"):
        path = Path(name).resolve()
        mod_name = f"_aot_{path.stem}"
        if mod_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = mod
            spec.loader.exec_module(mod)
        return sys.modules[mod_name]
    return importlib.import_module(name)


def declared(modules: Iterable[str]) -> list[tuple[str, aot.KernelSpec]]:
    """(module, spec) for every kernel the modules declare in ``AOT_KERNELS``."""
    return [(mod, spec) for mod in modules for spec in getattr(load_module(mod), "AOT_KERNELS", ())]


def pad_pow2(x: int, least: int = 16) -> int:
    return max(least, 1 << max(0, int(x) - 1).bit_length())


def plan(modules: Iterable[str], archs: Iterable[str], dtypes: Iterable[str], shapes: Iterable[tuple[int, int]],
         kernels: Iterable[str] | None = None, include_pruned: bool = False) -> list[Task]:
    """Every (kernel, shape, dtype, configuration, arch) to compile. Runs in a process where
    ``TRITON_INTERPRET`` is unset, so the autotune configurations are the GPU ones."""
    wanted = set(kernels or ())
    tasks = []
    for mod, spec in declared(modules):
        if wanted and spec.name not in wanted:
            continue
        for dtype in dtypes:
            for m, d in shapes:
                for cfg in aot.configs_for(spec, pad_pow2(m), pad_pow2(d), dtype, include_pruned):
                    tasks += [Task(mod, spec.name, dtype, m, d, cfg, arch) for arch in archs]
    return tasks


# ---------------------------------------------------------------- one compile (worker side)


def parse_ptxas_log(log: str) -> dict[str, int | None]:
    """Registers, spill bytes and stack frame from ptxas ``-v`` output (None where absent)."""
    def grab(pattern):
        hit = re.search(pattern, log)
        return int(hit.group(1)) if hit else None
    return {"regs": grab(r"Used (\d+) registers"), "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"), "stack": grab(r"(\d+) bytes stack frame")}


def sass_counts(cubin: bytes, arch: Arch) -> dict[str, int]:
    """Tensor-core instructions and local-memory stores/loads in the cubin's SASS."""
    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        sass = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-sass", f.name], check=True,
                              capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return {"mma_ops": len(re.findall(arch.tensor_ops, sass)), "stl_ops": len(re.findall(r"\bSTL\b", sass)),
            "ldl_ops": len(re.findall(r"\bLDL\b", sass))}


def warps_per_sm(arch: Arch, regs: int, smem: int, num_warps: int) -> tuple[int, str]:
    """Resident warps an SM allows a kernel (registers allocated per warp in units of 256),
    and what limits it: 'regs', 'smem' or 'warps'."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    bounds = {"regs": arch.regs_sm // (per_warp * num_warps),
              "smem": arch.smem_sm // (smem + SMEM_RESERVED),
              "warps": min(arch.max_warps // num_warps, arch.max_blocks)}
    limiter = min(bounds, key=bounds.get)
    return bounds[limiter] * num_warps, limiter


def compile_task(task: Task) -> dict[str, Any]:
    """Compile one task and measure it; a compile failure becomes a row with status 'error'."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from attnbench.spec import one_line

    spec = next(s for _, s in declared([task.module]) if s.name == task.kernel)
    arch = ARCHS[task.arch]
    row = row_base(task)
    sig, consts, attrs = aot.signature(spec, pad_pow2(task.m), pad_pow2(task.head_dim), task.dtype, task.config)
    triton.knobs.nvidia.dump_ptxas_log = True
    log, start = io.StringIO(), time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(spec.jit_fn, sig, consts, attrs),
                                    target=GPUTarget("cuda", arch.cap, 32),
                                    options={"num_warps": task.config.num_warps, "num_stages": task.config.num_stages})
    except Exception as exc:  # noqa: BLE001 - any compile failure is this row's result
        return {**row, "status": "error", "message": one_line(exc), "compile_s": round(time.perf_counter() - start, 2)}
    res = parse_ptxas_log(log.getvalue())
    smem = int(kernel.metadata.shared)
    warps, limiter = warps_per_sm(arch, res["regs"] or 255, smem, task.config.num_warps)
    sass = sass_counts(kernel.asm["cubin"], arch)
    return {**row, "status": "ok", **res, "smem": smem, "smem_limit": arch.smem_block,
            "warps_per_sm": warps, "limiter": limiter, **sass,
            "tensor_cores": tensor_core_verdict(spec, task.dtype, sass["mma_ops"]),
            "compile_s": round(time.perf_counter() - start, 2)}


def tensor_core_verdict(spec: aot.KernelSpec, dtype: str, mma_ops: int) -> str:
    """'yes' / 'no' for kernels with 16-bit dots; 'n/a' without dots or for float32 (IEEE products)."""
    if not spec.dots or dtype == "float32":
        return "n/a" if mma_ops == 0 else "yes"
    return "yes" if mma_ops else "no"


def row_base(task: Task) -> dict[str, Any]:
    cfg = task.config
    return {"kernel": task.kernel, "arch": task.arch, "dtype": task.dtype, "m": task.m, "head_dim": task.head_dim,
            "M_PAD": pad_pow2(task.m), "D_PAD": pad_pow2(task.head_dim), "config": cfg.label(),
            "num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "kept": cfg.kept, **dict(cfg.kwargs)}


def worker_main(tasks_path: str, out_path: str) -> None:
    """Compile the tasks in ``tasks_path`` (JSON), appending one JSON row a task to ``out_path``."""
    tasks = [task_from_json(t) for t in json.loads(Path(tasks_path).read_text())]
    with open(out_path, "a") as out:
        for task in tasks:
            out.write(json.dumps(compile_task(task)) + "\n")
            out.flush()


def task_to_json(task: Task) -> dict:
    return {**asdict(task), "config": {**asdict(task.config), "kwargs": [list(kv) for kv in task.config.kwargs]}}


def task_from_json(obj: dict) -> Task:
    cfg = obj["config"]
    return Task(**{**obj, "config": aot.TuneConfig(tuple(tuple(kv) for kv in cfg["kwargs"]), cfg["num_warps"],
                                                   cfg["num_stages"], cfg["kept"])})


# ---------------------------------------------------------------- orchestration (parent side)


def worker_env(cache_dir: str) -> dict[str, str]:
    """The parent's environment without TRITON_INTERPRET, with a fresh Triton cache."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = cache_dir
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the current default, stated (silences a warning)
    return env


def run_tasks(tasks: list[Task], jobs: int = 2, timeout_s: float | None = None) -> list[dict[str, Any]]:
    """Compile the tasks in ``jobs`` worker processes; a task a crashed worker left undone becomes a
    'crashed' row. Rows come back in task order."""
    with tempfile.TemporaryDirectory(prefix="attnbench-aot-") as tmp:
        procs, shares = [], [tasks[i::jobs] for i in range(max(1, jobs))]
        for i, share in enumerate(s for s in shares if s):
            Path(tmp, f"tasks{i}.json").write_text(json.dumps([task_to_json(t) for t in share]))
            cmd = [sys.executable, "-m", "attnbench.kernels.audit", "--worker",
                   str(Path(tmp, f"tasks{i}.json")), str(Path(tmp, f"rows{i}.jsonl"))]
            procs.append((share, Path(tmp, f"rows{i}.jsonl"), subprocess.Popen(
                cmd, env=worker_env(str(Path(tmp, f"cache{i}"))), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)))
        rows = {}
        for share, path, proc in procs:
            try:
                _, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
            for task, row in zip(share, done + [None] * (len(share) - len(done))):
                rows[task] = row or {**row_base(task), "status": "crashed",
                                     "message": ((err or "").strip().splitlines() or ["worker died"])[-1]}
    return [rows[t] for t in tasks]


def problems(rows: list[dict[str, Any]]) -> list[str]:
    """What the CI gate fails on, one sentence a row: a kept configuration that does not compile,
    spills, exceeds the architecture's shared memory, or runs 16-bit dots off the tensor cores."""
    out = []
    for r in rows:
        if not r.get("kept", True):
            continue
        where = f"{r['kernel']} {r['config']} at {r['arch']} {r['dtype']} M_PAD={r['M_PAD']} D_PAD={r['D_PAD']}"
        if r["status"] != "ok":
            out.append(f"{where}: {r['status']}: {r.get('message')}")
            continue
        if (r["spill_stores"] or 0) or (r["spill_loads"] or 0):
            out.append(f"{where}: spills ({r['regs']} registers, {r['spill_stores']} B stored, {r['spill_loads']} B loaded)")
        if r["smem"] > r["smem_limit"]:
            out.append(f"{where}: {r['smem']} B shared memory, over the {r['smem_limit']} B limit")
        if r["tensor_cores"] == "no":
            out.append(f"{where}: 16-bit dots not on tensor cores (no MMA instruction in the SASS)")
    return out


def audit(archs: Iterable[str], dtypes: Iterable[str], shapes: Iterable[tuple[int, int]],
          modules: Iterable[str] | None = None, kernels: Iterable[str] | None = None,
          include_pruned: bool = False, jobs: int = 2) -> list[dict[str, Any]]:
    """Plan (in a clean worker, so the configurations are the GPU ones) and compile everything."""
    modules = list(modules or kernel_modules())
    spec = {"modules": modules, "archs": list(archs), "dtypes": list(dtypes), "shapes": [list(s) for s in shapes],
            "kernels": list(kernels or ()), "include_pruned": include_pruned}
    with tempfile.TemporaryDirectory(prefix="attnbench-aot-plan-") as tmp:
        out = subprocess.run([sys.executable, "-m", "attnbench.kernels.audit", "--plan", json.dumps(spec)],
                             env=worker_env(tmp), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"planning the audit failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    tasks = [task_from_json(t) for t in json.loads(out.stdout)]
    return run_tasks(tasks, jobs)


def plan_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    tasks = plan(spec["modules"], spec["archs"], spec["dtypes"], [tuple(s) for s in spec["shapes"]],
                 spec["kernels"], spec["include_pruned"])
    print(json.dumps([task_to_json(t) for t in tasks]))


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--plan":
        plan_main(sys.argv[2])


# ---------------------------------------------------------------- tables

TABLE_COLUMNS = (("kernel", "kernel"), ("config", "config"), ("M_PAD", "M_PAD"), ("D_PAD", "D_PAD"),
                 ("regs", "regs/thread"), ("spill", "spill st/ld B"), ("smem_kib", "smem KiB"),
                 ("occupancy", "warps/SM (limit)"), ("tensor_cores", "tensor cores"), ("kept", "kept"))
CSV_COLUMNS = ("triton", "arch", "dtype", "kernel", "m", "head_dim", "M_PAD", "D_PAD", "config", "BLOCK_N",
               "num_warps", "num_stages", "kept", "status", "regs", "spill_stores", "spill_loads", "stack",
               "smem", "smem_limit", "warps_per_sm", "limiter", "mma_ops", "stl_ops", "ldl_ops",
               "tensor_cores", "compile_s", "message")


def triton_version() -> str:
    from importlib.metadata import version

    return version("triton")


def table_cells(r: dict[str, Any]) -> dict[str, str]:
    """One markdown row's cells."""
    if r["status"] != "ok":
        return {"kernel": r["kernel"], "config": r["config"], "M_PAD": r["M_PAD"], "D_PAD": r["D_PAD"],
                "regs": f"{r['status']}: {r.get('message')}", "kept": "yes" if r["kept"] else "no"}
    return {"kernel": r["kernel"], "config": r["config"], "M_PAD": r["M_PAD"], "D_PAD": r["D_PAD"],
            "regs": r["regs"], "spill": f"{r['spill_stores']}/{r['spill_loads']}",
            "smem_kib": f"{r['smem'] / 1024:g}", "occupancy": f"{r['warps_per_sm']} ({r['limiter']})",
            "tensor_cores": r["tensor_cores"], "kept": "yes" if r["kept"] else "no"}


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table per (arch, dtype), headed with the triton version the compiles used."""
    parts, version = [], triton_version()
    groups = dict.fromkeys((r["arch"], r["dtype"]) for r in rows)
    for arch, dtype in groups:
        sel = [table_cells(r) for r in rows if (r["arch"], r["dtype"]) == (arch, dtype)]
        lines = [f"### {arch}, {dtype} (triton {version})", "",
                 "| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
        lines += ["| " + " | ".join(str(c.get(k, "")).replace("|", "\\|") for k, _ in TABLE_COLUMNS) + " |" for c in sel]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def csv_text(rows: list[dict[str, Any]]) -> str:
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    version = triton_version()
    for r in rows:
        writer.writerow({**r, "triton": version})
    return buf.getvalue()


def selection(archs: str, dtype: str | None, everything: bool) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """(archs, dtypes, shapes) from the command's options; ValueError names a bad value."""
    arch_list = [a.strip() for a in archs.split(",") if a.strip()]
    bad = [a for a in arch_list if a not in ARCHS]
    if bad or not arch_list:
        raise ValueError(f"unknown --arch {','.join(bad) or archs!r}; choose among {', '.join(ARCHS)}")
    if dtype:
        dtypes = [t.strip() for t in dtype.split(",") if t.strip()]
        if not dtypes or any(t not in DTYPES for t in dtypes):
            raise ValueError(f"unknown --dtype {dtype!r}; choose among {', '.join(DTYPES)}")
    else:
        dtypes = list(DTYPES if everything else FAST["dtypes"])
    shapes = [(m, d) for m in M_VALUES for d in HEAD_DIMS] if everything else list(FAST["shapes"])
    return arch_list, dtypes, shapes
