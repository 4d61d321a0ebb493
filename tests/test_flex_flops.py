"""FLOP counting of the compiled FlexAttention members: counted on an uncompiled copy (flex_attention
from its block mask), so the compiled member still measures its error afterwards; a harness step
that breaks the module is a harness_error naming that step."""
import pytest
import torch

import attnbench
from attnbench.measure.error import exact_reference
from attnbench.measure.timing import TimingConfig
from attnbench.methods._flex import FLEX_BLOCK, block_mask_macs, cpu_compile_reason
from attnbench.point import measure_point, point_data
from attnbench.settings import Point, SweepConfig
from attnbench.workloads import make_workload

needs_compile = pytest.mark.skipif(cpu_compile_reason() is not None, reason=str(cpu_compile_reason()))


def _cfg(tmp_path, count_flops=True, workload="gaussian"):
    return SweepConfig(ns=(64,), methods=("vanilla-math",), heads=2, head_dim=16, out=tmp_path, workload=workload,
                       timing=TimingConfig(cpu_min_run_time_s=0.01), count_flops=count_flops)


def _row(cfg, method, n, grid=None, params=None):
    wl = make_workload(cfg.workload, cfg.batch, cfg.heads, n, cfg.head_dim, dtype=torch.float32, device="cpu",
                       seed=cfg.seed)
    if grid is not None:
        wl.grid = grid
    ref = lambda: exact_reference(wl.q, wl.k, wl.v)  # noqa: E731
    return measure_point(cfg, Point(method, params or {}, n, None), wl, ref, point_data(cfg, wl, n, ref))


def _same_error(a, b):
    """Errors of a flex member and its reference on the same inputs: equal up to float32 rounding."""
    assert a == pytest.approx(b, rel=1e-3, abs=1e-5), (a, b)


@needs_compile
def test_compiled_vanilla_flex_with_flop_counting_is_ok_and_matches_its_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNBENCH_STRICT", "1")          # a harness failure raises here
    cfg = _cfg(tmp_path)
    row = _row(cfg, "vanilla-flex", 196)   # (n = 200 gave a NaN output from the compiled kernel: see NOTES-flex.md)
    assert row["status"] == "ok", row["message"]
    assert row["impl"]["compiled"] is True                 # its error came from the compiled kernel
    ref = _row(cfg, "vanilla-math", 196)
    _same_error(row["err_rel_fro"], ref["err_rel_fro"])
    dense = cfg.batch * cfg.heads * 196 * 196 * 2 * cfg.head_dim   # q kᵀ and P v, every block computed
    assert row["macs_analytic"] == dense == ref["macs_fvcore"]
    assert row["macs_fvcore"] == dense and row["flops_torch"] == 2 * dense
    assert "block mask" in row["flops_scope"] and "uncompiled copy" in row["flop_notes"]


def test_a_harness_step_that_breaks_the_module_is_a_harness_error(tmp_path, monkeypatch):
    import attnbench.point as point

    def breaks_it(module, wl):          # a planted counting step that leaves the module unusable
        def gone(*a, **k):
            raise RuntimeError("forward taken away")
        module.forward = gone
        return {}

    monkeypatch.setattr(point, "_count_flops", breaks_it)
    monkeypatch.setenv("ATTNBENCH_STRICT", "0")
    row = _row(_cfg(tmp_path), "vanilla-math", 64)
    assert row["status"] == "harness_error", row
    assert row["message"].startswith("harness error in flop counting") and "forward taken away" in row["message"]


def test_a_forward_that_fails_on_its_own_after_counting_stays_the_methods_error(tmp_path, scratch_registry):
    """The timed closure still runs after flop counting, so the failing forward is the method's."""
    from attnbench.methods.vanilla import VanillaMath

    @scratch_registry.register("vanilla-own-bug", family="vanilla")
    class OwnBug(VanillaMath):
        def bench_fn(self, q, k, v, grid=None):
            return lambda: VanillaMath.forward(self, q, k, v)

        def forward(self, q, k, v, grid=None):
            raise RuntimeError("own bug")

    row = _row(_cfg(tmp_path), "vanilla-own-bug", 64)
    assert row["status"] == "error" and row["message"] == "RuntimeError: own bug"


def test_flop_counters_run_on_a_copy(tmp_path, monkeypatch):
    """A counter that wrecks the module it is handed leaves the measured module as it was."""
    import attnbench.point as point

    real = point.fvcore_macs

    def wrecking(module, q, k, v, grid=None):
        out = real(module, q, k, v, grid)
        module.forward = None                  # what a tracer that leaves state behind does
        return out

    monkeypatch.setattr(point, "fvcore_macs", wrecking)
    monkeypatch.setenv("ATTNBENCH_STRICT", "1")
    row = _row(_cfg(tmp_path), "vanilla-math", 64)
    assert row["status"] == "ok" and row["macs_fvcore"] == row["macs_analytic"]


@pytest.mark.parametrize("n,grid,name", [(200, (10, 20), "neighborhood-flex"), (300, (15, 20), "window-flex"),
                                         (130, (10, 13), "window-flex")])
def test_block_mask_macs_equal_brute_force_over_the_computed_blocks(n, grid, name):
    mod = attnbench.create(name, heads=2, head_dim=8)
    b = 3
    q = torch.zeros(b, 2, n, 8)
    mod.prepare(b, n, grid, q.device)
    if name == "window-flex":
        g = mod.geometry(n, grid)
        block_mask = mod._pattern(g, q.device)[0]
    else:
        block_mask = mod._pattern(n, grid, q.device)
    dense = block_mask.to_dense()[0, 0].bool()                     # (nq, nk) computed blocks
    lq, lk = block_mask.seq_lengths
    area = sum(min(FLEX_BLOCK, lq - i * FLEX_BLOCK) * min(FLEX_BLOCK, lk - j * FLEX_BLOCK)
               for i in range(dense.shape[0]) for j in range(dense.shape[1]) if dense[i, j])
    assert block_mask_macs(block_mask, b, 2, 8, 8) == b * 2 * area * 16
    assert block_mask_macs(block_mask, b, 2, 8, 8) == mod.macs(b, n, grid)   # the member's formula agrees


# (flex member, its reference): every member against the plain module it accelerates
MEMBERS = [("vanilla-flex", "vanilla-math"), ("window-flex", "window"), ("neighborhood-flex", "neighborhood"),
           ("biformer-flex", "biformer"), ("sparsifiner-flex", "sparsifiner")]


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize("n", [196, 1024])
@pytest.mark.parametrize("name,ref_name", MEMBERS, ids=[m for m, _ in MEMBERS])
def test_every_flex_member_with_flop_counting_is_ok_and_matches_its_reference(name, ref_name, n, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNBENCH_STRICT", "1")
    cfg = _cfg(tmp_path, workload="image")
    row, ref = _row(cfg, name, n), _row(cfg, ref_name, n)
    assert row["status"] == "ok", row["message"]
    assert ref["status"] == "ok", ref["message"]
    assert row["impl"]["compiled"] is True
    _same_error(row["err_rel_fro"], ref["err_rel_fro"])
    assert row["flops_torch"] is not None and "block mask" in row["flops_scope"]
