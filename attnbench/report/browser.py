"""report.html in headless Chromium (through selenium and chromedriver): what a reader sees.

Used by the browser test and by scripts/report_screenshots.py; needs the ``selenium`` package
and Debian's ``chromium`` and ``chromium-driver`` (``chromium_paths`` says what is missing).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VIEWPORT = (1280, 800)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def chromium_paths() -> tuple[str | None, str | None, str | None]:
    """(chromium, chromedriver, why not): the binaries, or a sentence naming what is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return browser, driver, "the selenium package is not installed (pip install selenium)"
    if not browser or not driver:
        missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
        return browser, driver, (f"{' and '.join(missing)} not found on PATH "
                                 "(Debian: apt-get install -y chromium chromium-driver)")
    return browser, driver, None


@contextmanager
def headless(viewport: tuple[int, int] = VIEWPORT) -> Iterator[object]:
    """A selenium Chrome driver on a fresh profile, its viewport exactly ``viewport`` CSS pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path, why = chromium_paths()
    if why:
        raise RuntimeError(why)
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers online
    profile = tempfile.mkdtemp(prefix="attnbench-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}", f"--window-size={viewport[0]},{viewport[1]}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": viewport[0], "height": viewport[1], "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, html: Path) -> None:
    driver.get(Path(html).resolve().as_uri())


IMAGES_JS = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);"
BOX_JS = ("var e = document.querySelector(arguments[0]); if (!e) return null; var r = e.getBoundingClientRect();"
          "return [r.top, r.bottom, r.left, r.right, window.innerWidth, window.innerHeight, window.scrollY];")
COLUMN_JS = ("var t = document.querySelector(arguments[0]); var i = arguments[1];"
             "return Array.from(t.tBodies[0].rows).map(r => r.cells[i].textContent.trim());")


def images(driver) -> list[tuple[bool, int, int]]:
    """(loaded, naturalWidth, naturalHeight) of every <img> on the page."""
    return [tuple(x) for x in driver.execute_script(IMAGES_JS)]


def box(driver, selector: str) -> dict | None:
    """The viewport box of the first element matching ``selector``, with the viewport size."""
    got = driver.execute_script(BOX_JS, selector)
    if got is None:
        return None
    keys = ("top", "bottom", "left", "right", "width", "height", "scroll_y")
    return dict(zip(keys, got))


def column(driver, table: str, index: int) -> list[str]:
    """Texts of column ``index`` of the table matching ``table``, in the order shown."""
    return driver.execute_script(COLUMN_JS, table, index)


def click_header(driver, table: str, name: str) -> int:
    """Click the header cell ``name`` of ``table``; returns its column index."""
    from selenium.webdriver.common.by import By

    heads = driver.find_elements(By.CSS_SELECTOR, f"{table} thead th")
    index = [h.text.strip().rstrip(" ▲▼") for h in heads].index(name)
    driver.execute_script("arguments[0].scrollIntoView();", heads[index])
    heads[index].click()
    return index


def screenshot_first_screen(driver, path: Path) -> None:
    """The viewport as the page opens (scrolled to the top), as a PNG."""
    driver.execute_script("window.scrollTo(0, 0);")
    Path(path).write_bytes(driver.get_screenshot_as_png())


def screenshot_element(driver, selector: str, path: Path) -> None:
    """One element (e.g. a figure) as a PNG."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.CSS_SELECTOR, selector)
    driver.execute_script("arguments[0].scrollIntoView();", element)
    Path(path).write_bytes(element.screenshot_as_png)
