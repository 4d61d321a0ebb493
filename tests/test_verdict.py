"""The report's verdict on hand-made rows: picks per n, skill bars, memory, crossovers."""
import pandas as pd
import pytest

from attnbench.report import verdict as V

NS = (256, 512, 1024, 2048)


def row(method, family, n, latency, skill=None, mib=1.0, m=None, err=None, **extra):
    series = method + (f" m={m}" if m else "")
    return {"method": method, "family": family, "series": series, "n": n, "m": m, "latency_ms": latency,
            "peak_mem_mib": mib, "err_skill": skill, "err_rel_fro": err, "workload": "image", **extra}


def hand_rows():
    """sdpa 1e-5 n²; anchor 0.01 n (skill 0.6, least memory); window 0.02 n (skill 0.95);
    agent 1e-3 n, always fastest but skill 0.3; uniform fastest of all, skill 0."""
    rows = []
    for n in NS:
        rows += [row("vanilla-sdpa", "vanilla", n, 1e-5 * n * n, skill=1.0, mib=n / 100),
                 row("vanilla-math", "vanilla", n, 2e-5 * n * n, skill=1.0, mib=n / 10),
                 row("uniform", "null", n, 1e-6, skill=0.0, mib=0.0),
                 row("anchor", "anchor", n, 0.01 * n, skill=0.6, mib=0.5, m=10),
                 row("window", "window", n, 0.02 * n, skill=0.95, mib=2.0),
                 row("agent", "agent", n, 1e-3 * n, skill=0.3, mib=0.1, m=10)]
    return pd.DataFrame(rows)


def test_fastest_per_bar_skips_methods_below_the_bar_and_the_null_model():
    got = {v.n: v for v in V.verdict(hand_rows())}
    assert sorted(got) == list(NS)
    for n in NS:
        v = got[n]
        assert v.exact.series == "vanilla-sdpa" and v.exact.latency_ms == pytest.approx(1e-5 * n * n)
        assert v.fastest[0.5].series == "anchor m=10"       # agent is faster but below 0.5
        assert v.fastest[0.9].series == "window"
        assert v.smallest.series == "anchor m=10"           # agent and uniform are smaller, below 0.5


def test_no_method_reaching_a_bar_gives_none():
    rows = hand_rows()
    rows = rows[rows["method"] != "window"]
    v = V.verdict(rows)[0]
    assert v.fastest[0.9] is None and v.fastest[0.5].series == "anchor m=10"


def test_crossovers_are_bracketed_by_the_measured_n():
    got = {c.family: c for c in V.crossovers(hand_rows())}
    assert set(got) == {"anchor", "window", "agent"}
    # anchor 0.01 n = 1e-5 n² at n = 1000; window 0.02 n at n = 2000 (log-log exact for power laws)
    assert (got["anchor"].kind, got["anchor"].low, got["anchor"].high) == ("between", 512, 1024)
    assert got["anchor"].estimate == pytest.approx(1000, rel=1e-9)
    assert (got["window"].kind, got["window"].low, got["window"].high) == ("between", 1024, 2048)
    assert got["window"].estimate == pytest.approx(2000, rel=1e-9)
    assert (got["agent"].kind, got["agent"].high) == ("below", 256)   # 1e-3 n < 1e-5 n² from n = 100


def test_a_family_slower_at_the_largest_n_never_crosses_and_a_dip_does_not_count():
    rows = hand_rows()
    slow = pd.DataFrame([row("pvt", "pvt", n, 1e-4 * n * n) for n in NS])
    # faster at 256, slower at 512, faster from 1024: the crossover is the last one
    dip = pd.DataFrame([row("linear", "linear", n, lat) for n, lat in zip(NS, (0.1, 5.0, 1.0, 1.0))])
    got = {c.family: c for c in V.crossovers(pd.concat([rows, slow, dip]))}
    assert (got["pvt"].kind, got["pvt"].low) == ("beyond", 2048)
    assert (got["linear"].kind, got["linear"].low, got["linear"].high) == ("between", 512, 1024)
    assert "beyond n=2048" in V.crossover_text(got["pvt"])
    assert V.crossover_text(got["linear"]).startswith("between n=512 and n=1024")


def test_skill_is_derived_from_uniform_rows_where_missing():
    rows = pd.DataFrame([row("uniform", "null", 256, 1.0, err=0.5), row("x", "x", 256, 1.0, err=0.125),
                         row("y", "y", 256, 1.0, err=0.4, skill=0.9),
                         row("z", "z", 512, 1.0, err=0.3, err_uniform_rel_fro=0.6)])
    assert list(V.skill(rows)) == pytest.approx([0.0, 0.75, 0.9, 0.5])


def test_baseline_without_sdpa_is_the_exact_series_measured_at_most_n():
    rows = pd.DataFrame([row("vanilla-math", "vanilla", n, 1.0) for n in NS]
                        + [row("vanilla-flex", "vanilla", 256, 0.1)])
    assert V.baseline_series(V.with_derived(rows)) == "vanilla-math"
    assert V.crossovers(pd.DataFrame([row("anchor", "anchor", 256, 1.0, m=10)])) == []


def test_gaussian_note_names_the_measured_entropy():
    rows = hand_rows().assign(workload="gaussian", attn_entropy_ratio=0.54)
    assert "0.54" in V.gaussian_note(rows)
    assert V.gaussian_note(hand_rows()) is None


def test_row_anchor_is_a_plain_fragment():
    assert V.row_anchor("-g2", "anchor {\"shared\": true} m=30", 1024) == "row-g2-anchor-shared-true-m-30-n1024"
