"""Ahead-of-time audit of the Triton kernels: compiled for sm_80 / sm_90 in worker processes
without TRITON_INTERPRET (this suite interprets kernels, which also narrows the configurations)."""
import csv
import io
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from attnbench.kernels import aot, audit

ROOT = Path(__file__).resolve().parent.parent
PLANTED = str(Path(__file__).resolve().parent / "aot_planted.py")


def clean_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_fast_subset_compiles_clean_for_ampere_and_hopper():
    """Every kept configuration of every declared kernel compiles, fits shared memory, does not
    spill and runs 16-bit dots on tensor cores (exit 0 of `bench.py kernels`)."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "kernels", "--arch", "sm_80,sm_90", "--format", "csv"],
                          capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    kernels = {r["kernel"] for r in rows}
    assert {"_anchor_pass1", "_anchor_reduce", "_anchor_pass2", "_anchor_bwd"} <= kernels
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    assert all(r["status"] == "ok" and r["triton"] for r in rows)
    # the 16-bit dots of the three tiled kernels are tensor-core instructions at both architectures
    assert all(r["tensor_cores"] == "yes" for r in rows if r["kernel"] != "_anchor_reduce")


def test_planted_spill_compile_error_and_scalar_dot_are_caught():
    rows = audit.audit(["sm_90"], ["float16"], [(16, 16)], modules=[PLANTED], jobs=2)
    found = audit.problems(rows)
    by = {r["kernel"]: r for r in rows}
    assert by["_planted_error"]["status"] == "error"
    assert by["_planted_spill"]["spill_stores"] > 0 and by["_planted_spill"]["regs"] == 255
    assert by["_planted_no_tc"]["tensor_cores"] == "no"
    assert any("_planted_error" in p and "error" in p for p in found)
    assert any("_planted_spill" in p and "spills" in p for p in found)
    assert any("_planted_no_tc" in p and "tensor cores" in p for p in found)


def test_kernels_command_exits_1_on_a_planted_fault():
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "kernels", "--arch", "sm_80", "--module", PLANTED,
                           "--kernels", "_planted_error", "--format", "csv"],
                          capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 1 and "problem: _planted_error" in proc.stderr


@pytest.mark.parametrize("args", [["--arch", "sm_75"], ["--dtype", "float64"], ["--format", "xml"]])
def test_kernels_bad_input_is_one_line(args):
    proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "kernels", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_ptxas_log_parsed():
    log = ("ptxas info    : Function properties for k\n    56 bytes stack frame, 68 bytes spill stores, "
           "52 bytes spill loads\nptxas info    : Used 255 registers, used 1 barriers\n")
    assert audit.parse_ptxas_log(log) == {"regs": 255, "spill_stores": 68, "spill_loads": 52, "stack": 56}
    assert audit.parse_ptxas_log("nothing")["regs"] is None


def test_occupancy_bound_from_registers_and_shared_memory():
    hopper = audit.ARCHS["sm_90"]
    # 128 registers x 32 threads = 4096 a warp; 65536 / (4 warps x 4096) = 4 blocks = 16 warps
    assert audit.warps_per_sm(hopper, 128, 0, 4) == (16, "regs")
    # 90112 B + 1 KiB reserved: 233472 // 91136 = 2 blocks of 4 warps
    assert audit.warps_per_sm(hopper, 64, 90112, 4) == (8, "smem")
    # 24 registers: 21 blocks of 4 warps by registers, but at most 64 warps an SM
    assert audit.warps_per_sm(hopper, 24, 0, 4) == (64, "warps")
    # 129 registers round up to 136 (units of 8 a thread): 65536 // (136*32*4) = 3 blocks
    assert audit.warps_per_sm(hopper, 129, 0, 4) == (12, "regs")


def gpu_configs():
    """The GPU configuration list (the interpreter narrows it to one)."""
    import triton
    return [triton.Config({"BLOCK_N": 32}, num_warps=w, num_stages=2) for w in (4, 8)] + [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s) for bn in (64, 128) for w in (4, 8) for s in (2, 3)]


@pytest.mark.parametrize("prune", ["_prune", "_prune_pass2", "_prune_bwd"])
def test_every_shape_keeps_a_configuration(prune):
    from attnbench.kernels import anchor_triton as at

    configs = gpu_configs()
    for m_pad in (16, 32, 64, 128):
        for d_pad in (16, 32, 64, 128):
            kept = getattr(at, prune)(configs, {}, M_PAD=m_pad, D_PAD=d_pad)
            assert kept and all(c in configs for c in kept)


def test_prune_drops_the_configurations_seen_to_spill():
    """Configurations whose compiles spilled (bench.py kernels --all --pruned, sm_80 or sm_90, bfloat16)."""
    from attnbench.kernels import anchor_triton as at

    def cfg(bn, w):
        return types.SimpleNamespace(kwargs={"BLOCK_N": bn}, num_warps=w, num_stages=2)
    assert not at._fits(cfg(128, 4), 32, 64, "bwd")     # 255 registers, 292 B spilled at sm_90
    assert not at._fits(cfg(128, 8), 32, 64, "bwd")     # 1208 B spilled at sm_80
    assert not at._fits(cfg(64, 8), 16, 128, "bwd")     # 892 B spilled at sm_80
    assert not at._fits(cfg(64, 4), 128, 64, "pass1")   # 60 B spilled at sm_90
    assert not at._fits(cfg(128, 4), 16, 128, "pass2")
    assert not at._fits(cfg(32, 4), 16, 128, "pass2")    # 64 registers and 4 B spilled at sm_90
    assert at._fits(cfg(64, 4), 32, 64, "bwd")          # 244 / 184 registers, no spill
    assert at._fits(cfg(64, 4), 32, 64, "pass1")        # 127 registers at sm_90


def test_signature_types_a_launch():
    from attnbench.kernels import anchor_triton as at

    spec = next(s for s in at.AOT_KERNELS if s.name == "_anchor_pass2")
    sig, consts, attrs = aot.signature(spec, 32, 64, "bfloat16", aot.TuneConfig((("BLOCK_N", 64),), 4, 2))
    assert sig["k_ptr"] == "*bf16" and sig["m2_ptr"] == "*fp32" and sig["qk_scale"] == "fp32"
    assert consts["s_kd"] == 1 and consts["BLOCK_N"] == 64 and consts["PRECISION"] == "tf32"
    assert sig["N"] == "i32" and (spec.jit_fn.arg_names.index("N"),) not in attrs
    assert (spec.jit_fn.arg_names.index("s_kn"),) in attrs
