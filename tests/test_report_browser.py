"""report.html as headless Chromium renders it: figures load, the verdict fills the first
screen at 1280x800, verdict links reach their rows, and a header click sorts its table."""
import pytest

from attnbench.cli import main
from attnbench.report import browser as B
from test_report import synthetic_rows, write_run

_, _, WHY = B.chromium_paths()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no headless browser: {WHY}")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    run = write_run(base / "run", synthetic_rows())
    assert main(["report", "--run", str(run), "--out", str(base / "out")]) == 0
    html = base / "out" / "report.html"
    with B.headless() as driver:
        B.open_page(driver, html)
        yield driver, base / "out"


def test_every_figure_loaded(page):
    driver, out = page
    shown = B.images(driver)
    assert len(shown) == len(list((out / "figures").glob("*.png"))) > 0
    assert all(done and w > 0 and h > 0 for done, w, h in shown), shown


def test_verdict_is_on_the_first_screen(page):
    driver, _ = page
    for selector in ("div.verdict", "div.crossover"):
        got = B.box(driver, selector)
        assert got is not None, selector
        assert (got["width"], got["height"]) == B.VIEWPORT
        assert got["scroll_y"] == 0 and 0 <= got["top"] < got["bottom"] <= got["height"], (selector, got)
        assert got["right"] <= got["width"], (selector, got)


def test_verdict_link_reaches_its_row(page):
    from selenium.webdriver.common.by import By

    driver, _ = page
    link = driver.find_elements(By.CSS_SELECTOR, "div.verdict a")[0]
    target = link.get_attribute("href").split("#", 1)[1]
    link.click()
    assert driver.execute_script("return location.hash;") == f"#{target}"
    row = driver.find_element(By.ID, target)
    assert row.tag_name == "tr" and row.find_element(By.XPATH, "ancestor::table").get_attribute("data-name") == "measurements"
    assert -1 <= B.box(driver, f"#{target}")["top"] < B.VIEWPORT[1]  # scrolled to the row
    driver.execute_script("window.scrollTo(0, 0);")


def test_clicking_a_header_sorts_the_table(page):
    driver, _ = page
    table = "table[data-name='measurements']"
    col = B.click_header(driver, table, "latency_ms")
    up = [float(x) for x in B.column(driver, table, col)]
    assert up == sorted(up) and up != [float(x) for x in reversed(up)]
    B.click_header(driver, table, "latency_ms")
    assert [float(x) for x in B.column(driver, table, col)] == sorted(up, reverse=True)
    col = B.click_header(driver, table, "series")
    names = B.column(driver, table, col)
    assert names == sorted(names)
    driver.execute_script("window.scrollTo(0, 0);")


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory):
    """compare.html of two hand-made runs: B is twice as fast except window at its largest n."""
    import copy

    base = tmp_path_factory.mktemp("browser-compare")
    a = [r for r in synthetic_rows() if r.get("kind") != "model" and r["status"] == "ok"]
    b = copy.deepcopy(a)
    for r in b:
        f = 2.0 if r["method"] == "anchor" and r["n"] == max(x["n"] for x in a) else 0.5
        r.update(dtype="bfloat16", latency_ms=r["latency_ms"] * f, latency_p20_ms=r["latency_p20_ms"] * f,
                 latency_p80_ms=r["latency_p80_ms"] * f)
    assert main(["compare", str(write_run(base / "a", a)), str(write_run(base / "b", b)), "--out",
                 str(base / "out")]) == 0
    with B.headless() as driver:
        B.open_page(driver, base / "out" / "compare.html")
        yield driver, base / "out"


def test_compare_page_figures_load_and_verdict_opens_it(compare_page):
    driver, out = compare_page
    shown = B.images(driver)
    assert len(shown) == len(list((out / "figures").glob("*.png"))) > 0
    assert all(done and w > 0 and h > 0 for done, w, h in shown), shown
    assert "faster on" in driver.find_element("css selector", "h2#verdict + p").text
    got = B.box(driver, "div.verdict")
    assert got is not None and got["scroll_y"] == 0 and 0 <= got["top"] < got["bottom"] <= got["height"], got


def test_compare_pairs_table_sorts_by_ratio(compare_page):
    driver, _ = compare_page
    table = "table[data-name='pairs']"
    col = B.click_header(driver, table, "B/A")
    up = [float(x) for x in B.column(driver, table, col)]
    assert up == sorted(up) and up[0] < 1 < up[-1]
    driver.execute_script("window.scrollTo(0, 0);")


def _train_rows():
    from attnbench.train.loop import TrainConfig, TrainPoint, base_row

    cfg = TrainConfig(tasks=("recall", "grid"), methods=(), ns={"recall": (64, 256), "grid": (64, 256)})
    out = []
    for task in ("recall", "grid"):
        for n in (64, 256):
            for i, (name, m) in enumerate((("vanilla-sdpa", None), ("anchor", 16), ("uniform", None))):
                acc = {0: 1.0, 1: 0.99 if n == 64 else 0.5, 2: 0.2}[i]
                out.append({**base_row(cfg, TrainPoint(task, name, {}, m, n)), "status": "ok", "accuracy": acc,
                            "chance": 0.125, "final_loss": 1.0, "steps_done": 10, "step_ms": 5.0 - i + n / 64,
                            "wall_s": 1.0, "run_id": "run-1", "timestamp": "2026-01-01T00:00:00+00:00"})
    return out


def test_a_train_only_report_renders_with_its_figures(tmp_path):
    run = write_run(tmp_path / "run", _train_rows())
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Trained quality (tasks: grid, recall)" in md and "falls off from n=256" in md
    with B.headless() as driver:
        B.open_page(driver, tmp_path / "out" / "report.html")
        shown = B.images(driver)
    assert len(shown) == len(list((tmp_path / "out" / "figures").glob("*.png"))) == 4
    assert all(done and w > 0 and h > 0 for done, w, h in shown), shown
