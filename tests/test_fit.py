"""Fitting: the Eq. 5-6 fixed point, closed-form anchors, distillation, and the sweep's --fit."""
import math

import pytest
import torch

import attnbench
from attnbench.fit import fit_module
from attnbench.methods._cluster import kmeans_pp_init
from attnbench.methods.anchor_fit import anchor_fixed_point, anchor_probs, eq5_objective, eq6_step
from attnbench.workloads import make_workload


def clustered_keys(n_clusters, per, d, spread=0.05, seed=0):
    """(n_clusters·per, d) keys around well-separated centres of norm ~√d."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, d, generator=gen)
    return (centres.repeat_interleave(per, 0) + spread * torch.randn(n_clusters * per, d, generator=gen)).double()


def image_keys(n=256, head=0):
    wl = make_workload("image", 1, 2, n, 16, dtype=torch.float32, device="cpu", split="fit")
    return wl.k[0, head]


def test_eq6_is_the_stationary_point_of_eq5_for_fixed_p():
    """Eq. 6 zeroes the gradient of Σ_ij p_ij ‖u_j − k_i‖² in u when p is held fixed."""
    keys = clustered_keys(3, 17, 5, spread=0.5)
    u0 = keys[[0, 20, 40, 7]].clone()
    p = anchor_probs(u0, keys, 1 / math.sqrt(5)).detach()
    u1 = eq6_step(u0, keys, 1 / math.sqrt(5)).requires_grad_(True)
    j = (p * ((keys[:, None, :] - u1[None]) ** 2).sum(-1)).sum()
    (grad,) = torch.autograd.grad(j, u1)
    assert float(grad.abs().max()) < 1e-9 * float(keys.abs().max())


def test_kmeanspp_picks_distinct_keys():
    keys = clustered_keys(5, 20, 6)
    u = kmeans_pp_init(keys[None], 5, torch.Generator().manual_seed(0))[0]
    assert all(any(torch.equal(row, k) for k in keys) for row in u)
    assert len({tuple(r.tolist()) for r in u}) == 5


def test_fixed_point_lowers_eq5_from_kmeanspp_and_converges(record_property):
    keys = image_keys()
    u, hist = anchor_fixed_point(keys, 10, iters=60)
    obj, upd = hist["objective"], hist["update_rel"]
    record_property("monotone", hist["monotone"])          # recorded, not asserted: not a descent method
    assert obj[-1] < obj[0]
    assert obj[-1] == pytest.approx(eq5_objective(u, keys.double(), 1 / math.sqrt(keys.shape[1])), rel=1e-9)
    assert upd[-1] < 0.01 * upd[0]                          # the update shrinks towards zero


def test_fixed_point_converges_on_clustered_keys(record_property):
    """On tight clusters the iteration converges too; whether J ends below its start is recorded:
    p is a softmax of inner products, so cluster mass is shared between anchors and J may rise."""
    keys = clustered_keys(4, 30, 8)
    _, hist = anchor_fixed_point(keys, 4, iters=100)
    record_property("monotone", hist["monotone"])
    record_property("objective_lowered", hist["objective"][-1] < hist["objective"][0])
    assert hist["update_rel"][-1] < 1e-8


@pytest.mark.parametrize("shared", [False, True], ids=["per-head", "shared"])
def test_closed_fit_is_a_fixed_point(shared):
    heads, d, m = 2, 6, 3
    keys = torch.stack([clustered_keys(m, 25, d, seed=h) for h in range(heads)]).float()[None]  # (1, H, N, d)
    mod = attnbench.create("anchor", heads=heads, head_dim=d, m=m, shared=shared)
    info = mod.fit_closed(keys, keys, keys, iters=200)
    assert info["iters"] == 200 and info["last_update_rel"] < 1e-5
    pooled = [keys[0].reshape(-1, d).double()] if shared else [keys[0, h].double() for h in range(heads)]
    anchors = [mod.anchors.detach().double()] if shared else list(mod.anchors.detach().double())
    for u, k in zip(anchors, pooled):
        moved = float((eq6_step(u, k, 1 / math.sqrt(d)) - u).norm(dim=-1).max()) / float(k.norm(dim=-1).max())
        assert moved < 1e-5   # float32 storage of the anchors perturbs them by ~1e-7 relative


def test_distill_lowers_its_own_training_loss():
    wl = make_workload("image", 1, 2, 64, 12, dtype=torch.float32, device="cpu", split="fit")
    exact = torch.softmax(wl.q.double() @ wl.k.double().transpose(-1, -2) / math.sqrt(12), -1) @ wl.v.double()
    mod = attnbench.create("anchor", heads=2, head_dim=12, m=5)
    with torch.no_grad():
        before = float(((mod(wl.q, wl.k, wl.v) - exact) ** 2).mean())
    row = fit_module("distill", mod, lambda: wl, lambda: exact, steps=20, lr=0.05)
    with torch.no_grad():
        after = float(((mod(wl.q, wl.k, wl.v) - exact) ** 2).mean())
    assert row["fit_info"]["applied"] == "distill"
    assert row["fit_info"]["loss_start"] == pytest.approx(before, rel=1e-5)
    assert after < before


@pytest.mark.parametrize("mode,name", [("closed", "vanilla-math"), ("closed", "anchor-select"), ("distill", "uniform")])
def test_methods_without_fit_fall_back_to_none(mode, name):
    mod = attnbench.create(name, heads=2, head_dim=8)
    row = fit_module(mode, mod, lambda: pytest.fail("no data needed"), lambda: pytest.fail("no data needed"))
    assert row["fit_info"]["applied"] == "none" and row["fit_info"]["reason"]


def test_sweep_fit_is_recorded_and_outside_latency(tmp_path):
    from attnbench.measure.timing import TimingConfig
    from attnbench.sweep import SweepConfig, run_sweep
    from attnbench.results import read_rows

    for fit in ("none", "closed", "distill"):
        cfg = SweepConfig(ns=(64,), ms=(4,), methods=("anchor", "vanilla-math"), heads=2, head_dim=8,
                          workload="image", out=tmp_path, count_flops=False, fit=fit, fit_steps=5, executor="inline",
                          timing=TimingConfig(cpu_min_run_time_s=0.01))
        run_sweep(cfg, progress=False)
    rows = read_rows(tmp_path / "rows.jsonl")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    anchor = {r["fit"]: r for r in rows if r["method"] == "anchor"}
    assert anchor["none"]["fit_info"] == {"applied": "none"} and anchor["none"]["fit_time_s"] == 0
    assert anchor["closed"]["fit_info"]["applied"] == "closed" and anchor["closed"]["fit_time_s"] > 0
    assert anchor["distill"]["fit_info"]["applied"] == "distill" and anchor["distill"]["fit_info"]["steps"] == 5
    assert len({r["err_rel_fro"] for r in anchor.values()}) == 3
    assert all(r["fit_info"]["applied"] == "none" for r in rows if r["method"] == "vanilla-math" and r["fit"] != "none")


def test_adam_update_matches_torch_adam():
    from attnbench.fit import adam_update

    gen = torch.Generator().manual_seed(3)
    a = torch.randn(5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([b], lr=0.1)
    state = [(torch.zeros_like(a), torch.zeros_like(a))]
    target = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    for t in range(1, 6):
        adam_update([a], torch.autograd.grad(((a - target) ** 3).sum(), [a]), state, t, 0.1)
        opt.zero_grad()
        ((b - target) ** 3).sum().backward()
        opt.step()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
