"""bench.py selftest: steps recorded as they end, the summary page from the sweep's rows."""
import sys

from attnbench import selftest
from attnbench.cli import main


def row(method, n, ms, status="ok", frac=None, message=None):
    return {"method": method, "n": n, "latency_ms": ms, "status": status, "frac_copy_bw": frac, "message": message}


def test_fused_table_ratios_and_missing_methods():
    rows = [row("fused-anchor", 1024, 2.0, frac=0.61), row("anchor", 1024, 5.0), row("anchor-compiled", 1024, 3.0),
            row("vanilla-sdpa", 1024, 1.0),
            row("vanilla-xformers", 1024, None, "unsupported", message="xformers is not importable")]
    lines = selftest.fused_table(rows)
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:3] == ["1024", "2", "0.610"]
    assert cells[3:6] == ["2.50", "1.50", "0.50"]        # 5/2, 3/2, 1/2
    assert cells[6].startswith("unsupported: xformers")


def test_fused_table_says_why_fused_has_no_time():
    lines = selftest.fused_table([row("fused-anchor", 196, None, "error", message="boom")])
    assert "error: boom" in lines[2]


def test_failing_step_is_recorded_and_fails_the_page(tmp_path):
    bad = selftest.run_step(selftest.Step("bad", [sys.executable, "-c", "import sys; print('last words'); sys.exit(3)"]),
                            tmp_path, lambda s: None)
    good = selftest.run_step(selftest.Step("good", [sys.executable, "-c", "print('fine')"]), tmp_path, lambda s: None)
    slow = selftest.run_step(selftest.Step("slow", [sys.executable, "-c", "import time; time.sleep(30)"]), tmp_path,
                             lambda s: None, timeout_s=1.0)
    assert (slow.state, slow.rc, slow.ok) == ("timed out", 124, False) and slow.seconds < 10
    assert (bad.rc, bad.tail, bad.ok) == (3, "last words", False) and good.ok
    assert (tmp_path / "bad.log").read_text().strip() == "last words"
    page = selftest.summary_page("cpu", selftest.SHAPES["cpu"], [bad, good], [])
    assert page.startswith("# selftest on cpu: FAILED") and "| bad |  | FAILED (exit 3)" in page
    assert selftest.summary_page("cpu", selftest.SHAPES["cpu"], [good], []).startswith("# selftest on cpu: PASSED")


def test_selftest_bad_device_is_one_line(capsys):
    assert main(["selftest", "--device", "tpu"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_fused_table_takes_forward_rows_at_m30_and_the_fastest_backend():
    rows = [dict(row("fused-anchor", 1024, 2.0), m=30, mode="fwd"), dict(row("fused-anchor", 1024, 1.0), m=10, mode="fwd"),
            dict(row("fused-anchor", 1024, 9.0), m=30, mode="fwdbwd"),
            dict(row("vanilla-sdpa", 1024, 4.0), mode="fwd"), dict(row("vanilla-sdpa", 1024, 3.0), mode="fwd"),
            dict(row("vanilla-sdpa", 1024, None, "error", message="no kernel"), mode="fwd")]
    cells = [c.strip() for c in selftest.fused_table(rows)[2].strip("|").split("|")]
    assert cells[1] == "2" and cells[5] == "1.50"      # fused at m=30 fwd; sdpa's fastest ok backend 3/2
