"""Screenshots of a report.html as headless Chromium shows it at 1280x800: the first screen
(the verdict) and one figure, as small palette PNGs.

    PYTHONPATH=. python scripts/report_screenshots.py REPORT_DIR OUT_DIR [FIGURE_NAME]

FIGURE_NAME is a figure's file stem (default: pareto). Writes OUT_DIR/screenshot-verdict.png and
OUT_DIR/screenshot-figure.png.
"""
import io
import sys
from pathlib import Path

from PIL import Image

from attnbench.report import browser as B


def small_png(data: bytes, path: Path) -> None:
    """Reduce to a 256-colour palette (no dithering) so the committed file stays small."""
    with Image.open(io.BytesIO(data)) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                    dither=Image.Dither.NONE).save(path, optimize=True)


def main(report: Path, out: Path, figure: str = "pareto") -> None:
    out.mkdir(parents=True, exist_ok=True)
    with B.headless() as driver:
        B.open_page(driver, report / "report.html")
        tmp = out / "screenshot-verdict.png"
        B.screenshot_first_screen(driver, tmp)
        small_png(tmp.read_bytes(), tmp)
        tmp = out / "screenshot-figure.png"
        B.screenshot_element(driver, f"#fig-{figure}", tmp)
        small_png(tmp.read_bytes(), tmp)
    for name in ("screenshot-verdict.png", "screenshot-figure.png"):
        print(f"{out / name}: {(out / name).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
