"""Comma lists in --param expand the sweep into one series per value; kernel efficiency in the
report's tables from synthetic rows."""
import math

import pandas as pd
import pytest

from attnbench.report import tables as T
from attnbench.report.load import normalise
from attnbench.spec import SpecError, param_variants, parse_params
from attnbench.sweep import SweepConfig, expand_grid


def test_comma_list_is_a_list_of_variants_and_plain_values_are_unchanged():
    parsed = parse_params(["vanilla-sdpa.backend=flash,efficient,cudnn", "window.window=7", "window.shift=true"])
    assert parsed == {"vanilla-sdpa": {"backend": ["flash", "efficient", "cudnn"]},
                      "window": {"window": 7, "shift": True}}
    assert parse_params(["window.window=3,5"]) == {"window": {"window": [3, 5]}}
    with pytest.raises(SpecError):
        parse_params(["window.window=3,"])


def test_param_variants_take_every_combination():
    combos = param_variants({"a": [1, 2], "b": "x", "c": [True, False]})
    assert combos == [{"a": 1, "b": "x", "c": True}, {"a": 1, "b": "x", "c": False},
                      {"a": 2, "b": "x", "c": True}, {"a": 2, "b": "x", "c": False}]
    assert param_variants({"a": 1}) == [{"a": 1}]


def test_sweep_grid_has_one_point_per_backend():
    cfg = SweepConfig(ns=(64, 128), methods=("vanilla-sdpa", "window"),
                      params=parse_params(["vanilla-sdpa.backend=flash,math"]))
    points = expand_grid(cfg)
    sdpa = [(p.n, p.params["backend"]) for p in points if p.method == "vanilla-sdpa"]
    assert sdpa == [(64, "flash"), (64, "math"), (128, "flash"), (128, "math")]
    assert [p.params for p in points if p.method == "window"] == [{"window": 7, "shift": False, "rel_pos_bias": False,
                                                                   "shift_rule": "official"}] * 2


def _row(method, n, latency, macs, params=None, device="cuda", impl=None):
    return {"method": method, "family": "x", "params": params or {}, "n": n, "m": None, "batch": 1, "heads": 6,
            "head_dim": 64, "dtype": "bfloat16", "device": device, "mode": "fwd", "workload": "gaussian",
            "seed": 0, "status": "ok", "latency_ms": latency, "macs_analytic": macs, "impl": impl or {},
            "env": {"device_name": "GPU"}, "source": "run", "timestamp": "t"}


def _ok(rows):
    return T.ok_attention(normalise(pd.DataFrame(rows)))


def test_backends_are_separate_series():
    ok = _ok([_row("vanilla-sdpa", 1024, 1.0, 10, {"backend": b}) for b in ("flash", "math")])
    assert sorted(ok["series"]) == ['vanilla-sdpa {"backend": "flash"}', 'vanilla-sdpa {"backend": "math"}']


def test_kernel_efficiency_is_needed_rate_over_flash_rate_at_the_same_n():
    rows = [_row("vanilla-sdpa", 1024, 2.0, 1000, {"backend": "flash"}),
            _row("vanilla-sdpa", 1024, 1.0, 1000, {"backend": "math"}),
            _row("vanilla-sdpa", 4096, 8.0, 16000, {"backend": "flash"}),
            _row("window-flex", 1024, 0.5, 400, impl={"macs_needed_pairs": 100}),
            _row("window-flex", 4096, 1.0, 1600, impl={"macs_needed_pairs": 400}),
            _row("window-flex", 2048, 1.0, 1600, impl={"macs_needed_pairs": 400}),      # no flash row at 2048
            _row("window-flex", 1024, 0.5, 400, device="cpu", impl={"macs_needed_pairs": 100})]
    ok = _ok(rows).set_index(["series", "n", "device"])["kernel_efficiency"]
    # (100 / 0.5) / (1000 / 2.0) = 0.4 ; (400 / 1.0) / (16000 / 8.0) = 0.2
    assert ok[("window-flex", 1024, "cuda")] == pytest.approx(0.4)
    assert ok[("window-flex", 4096, "cuda")] == pytest.approx(0.2)
    for key in [("window-flex", 2048, "cuda"), ("window-flex", 1024, "cpu"),
                ('vanilla-sdpa {"backend": "math"}', 1024, "cuda")]:
        assert math.isnan(ok[key])
