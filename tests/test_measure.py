import numpy as np
import pytest
import torch

from attnbench.measure.error import error_metrics, exact_reference
from attnbench.measure.memory import peak_from_events
from attnbench.measure.timing import TimingConfig, summarize_ms, time_fn
from attnbench.methods.base import near_square_grid
from attnbench.spec import SpecError, parse_m_spec, parse_n_spec, parse_params


def test_error_metrics_on_known_perturbation():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 2, 10, 4, generator=gen, dtype=torch.float64)
    m = error_metrics((ref * 1.01).float(), ref)
    assert m["err_rel_fro"] == pytest.approx(0.01, rel=1e-4)
    assert m["err_cos_mean"] == pytest.approx(1.0, abs=1e-6)
    assert m["err_max_abs"] == pytest.approx(float((ref * 0.01).abs().max()), rel=1e-4)
    flipped = error_metrics(-ref, ref)
    assert flipped["err_rel_fro"] == pytest.approx(2.0) and flipped["err_cos_mean"] == pytest.approx(-1.0)


def test_exact_reference_entropy_extremes():
    n = 50
    k = torch.randn(1, 1, n, 8)
    v = torch.randn(1, 1, n, 8)
    uniform = exact_reference(torch.zeros(1, 1, n, 8), k, v, block=7)
    assert uniform.entropy_ratio == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(uniform.out, v.double().mean(-2, keepdim=True).expand(1, 1, n, 8))
    peaked = exact_reference(k * 100, k, v)  # each query matches its own key far best
    assert peaked.entropy_ratio < 0.05


def test_peak_from_events_running_total():
    assert peak_from_events([(2, -10), (0, 10), (1, 20), (3, 5)]) == 30
    assert peak_from_events([]) == 0


def test_summarize_ms_percentiles():
    s = summarize_ms(list(range(1, 101)))
    assert s["latency_ms"] == pytest.approx(50.5)
    assert s["latency_p20_ms"] == pytest.approx(np.percentile(range(1, 101), 20))
    assert s["latency_iqr_rel"] == pytest.approx(49.5 / 50.5)


def test_cpu_timing_states_units_and_orders_work():
    small = torch.randn(64, 64)
    big = torch.randn(384, 384)
    cfg = TimingConfig(cpu_min_run_time_s=0.05)
    t_small = time_fn(lambda: small @ small, "cpu", cfg)
    t_big = time_fn(lambda: big @ big, "cpu", cfg)
    assert t_small["timing"]["unit"] == "ms" and t_small["timing"]["min_run_time_s"] == 0.05
    assert t_big["latency_ms"] > t_small["latency_ms"]  # 216x the multiply-adds


@pytest.mark.parametrize("spec,expected", [
    ("196..16384", [196, 256, 512, 1024, 2048, 4096, 8192, 16384]),
    ("196,1024", [196, 1024]),
    ("64..64", [64]),
    ("100..300", [100, 128, 256, 300]),
    ("128..512", [128, 256, 512]),
    ("7, 196..256", [7, 196, 256]),
])
def test_parse_n_spec(spec, expected):
    assert parse_n_spec(spec) == expected


@pytest.mark.parametrize("spec", ["abc", "196..", "..5", "0..16", "16..8", "1.5", "-4", "1..2..3"])
def test_parse_n_spec_rejects(spec):
    with pytest.raises(SpecError):
        parse_n_spec(spec)


def test_parse_m_and_params():
    assert parse_m_spec("30,10,10") == [10, 30]
    with pytest.raises(SpecError):
        parse_m_spec("0,10")
    with pytest.raises(SpecError):
        parse_m_spec("ten")
    assert parse_params(["anchor.shared=true", "anchor-select.select=random", "x.y=0.5"]) == {
        "anchor": {"shared": True}, "anchor-select": {"select": "random"}, "x": {"y": 0.5}}
    with pytest.raises(SpecError):
        parse_params(["noequals"])


@pytest.mark.parametrize("n,expected", [(1, (1, 1)), (7, (1, 7)), (196, (14, 14)), (197, (1, 197)),
                                        (200, (10, 20)), (1000, (25, 40)), (4096, (64, 64))])
def test_near_square_grid(n, expected):
    assert near_square_grid(n) == expected


def test_near_square_grid_is_the_largest_divisor_up_to_the_root():
    """Brute force over divisors: the most square H x W with H <= W and H * W == n."""
    for n in range(1, 600):
        h = max(d for d in range(1, n + 1) if n % d == 0 and d * d <= n)
        assert near_square_grid(n) == (h, n // h), n
