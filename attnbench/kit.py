"""``bench.py kit``: a folder that makes a GPU run work on an offline machine.

The folder holds, at its top level, a wheel of every package that ``selftest`` needs beyond a
Python holding only torch, numpy, pandas, seaborn, click, scipy, matplotlib, pillow, scikit-image,
safetensors, nvidia-ml-py and tqdm (fvcore and iopath are built from their sdists; PyYAML, the only
compiled one, for both CPython 3.11 and 3.12), ``SHA256SUMS`` and ``run.sh``, which installs the
checkout from the folder alone and runs ``selftest`` within a budget. Versions are pinned and
built wheels carry fixed timestamps, so building twice into one folder gives the same folder.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

# Pure-Python wheels: fvcore's and iopath's needs, pytest for the tests step, the build backend
# for ``pip install --no-build-isolation``.
PURE = ("yacs==0.1.8", "termcolor==3.3.0", "tabulate==0.10.0", "portalocker==4.4.2", "typing_extensions==4.16.0",
        "setuptools==84.2.1", "wheel==0.45.1", "pytest==9.2.0", "iniconfig==2.3.1", "pluggy==1.7.0",
        "packaging==26.4", "pygments==2.21.0")
BINARY = ("pyyaml==6.0.4",)
PYTHONS = ("3.11", "3.12")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64")
SDISTS = ("fvcore==0.1.5.post20221221", "iopath==0.1.10")
MAX_BYTES = 48 * 2**20
SOURCE_DATE_EPOCH = "1700000000"  # fixed timestamps inside the wheels built here
OWN_FILES = ("run.sh", "SHA256SUMS")


class KitError(Exception):
    """The kit cannot be built; the message is one line."""


def parse_budget(text: str, error: type[Exception]) -> float:
    """A positive, finite number of seconds; ``error`` with one line otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise error(f"--budget must be a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise error(f"--budget must be a number of seconds > 0, got {text!r}")
    return value


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise KitError(f"pip {args[0]} {' '.join(a for a in args if '==' in a)} failed: "
                       f"{lines[-1] if lines else proc.returncode}")


def wheel_name(spec: str) -> str:
    """'fvcore==0.1.5' -> 'fvcore-0.1.5-py3-none-any.whl' (the name setuptools gives a pure wheel)."""
    name, _, ver = spec.partition("==")
    return f"{name.replace('-', '_')}-{ver}-py3-none-any.whl"


def download(stage: Path) -> None:
    pip("download", "--no-deps", "--only-binary", ":all:", "-d", str(stage), *PURE)
    for py in PYTHONS:
        plats = [a for p in PLATFORMS for a in ("--platform", p)]
        pip("download", "--no-deps", "--only-binary", ":all:", "--implementation", "cp", "--python-version", py,
            *plats, "-d", str(stage), *BINARY)
    impure = [p.name for p in stage.glob("*.whl") if not p.name.endswith("-none-any.whl")
              and not p.name.lower().startswith("pyyaml")]
    if impure:
        raise KitError(f"expected pure-Python wheels, got {', '.join(impure)}")


def build_sdists(stage: Path, old: Path) -> None:
    """fvcore and iopath from their sdists; a wheel of the same name already in the kit is kept."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
    for spec in SDISTS:
        name = wheel_name(spec)
        if (old / name).is_file():
            shutil.copy2(old / name, stage / name)
            continue
        pip("wheel", "--no-deps", "--no-binary", spec.partition("==")[0], "-w", str(stage), spec, env=env)
        if not (stage / name).is_file():
            raise KitError(f"building {spec} did not give {name}")


def sync(stage: Path, out: Path) -> list[str]:
    """Make ``out``'s wheels those of ``stage``: identical files stay, stale ones go. Returns the names."""
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in stage.glob("*.whl"))
    for name in names:
        target = out / name
        if not (target.is_file() and sha256(target) == sha256(stage / name)):
            shutil.copyfile(stage / name, target)
    for stale in out.glob("*.whl"):
        if stale.name not in names:
            stale.unlink()
    return names


def write_own_files(out: Path, names: list[str]) -> None:
    script = (Path(__file__).with_name("kit_run.sh")).read_text()
    sums = "".join(f"{sha256(out / n)}  {n}\n" for n in names)
    for name, text in (("run.sh", script), ("SHA256SUMS", sums)):
        if not (out / name).is_file() or (out / name).read_text() != text:
            (out / name).write_text(text)
    os.chmod(out / "run.sh", 0o755)


def build_kit(out: Path, echo: Callable[[str], None]) -> None:
    """Download and build every wheel into ``out``, then run.sh and SHA256SUMS; KitError when one fails."""
    if out.exists() and not out.is_dir():
        raise KitError(f"--out {out} is a file, not a folder")
    strays = [p.name for p in out.iterdir() if not (p.suffix == ".whl" or p.name in OWN_FILES)] if out.is_dir() else []
    if strays:
        raise KitError(f"--out {out} holds files that are not the kit's ({', '.join(sorted(strays)[:3])}); "
                       "give an empty or kit folder")
    with tempfile.TemporaryDirectory(prefix="attnbench-kit-") as tmp:
        stage = Path(tmp)
        download(stage)
        build_sdists(stage, out)
        names = sync(stage, out)
    write_own_files(out, names)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    if size > MAX_BYTES:
        raise KitError(f"the kit is {size / 2**20:.1f} MiB, over its {MAX_BYTES / 2**20:.0f} MiB limit")
    echo(f"kit: {len(names)} wheels, {size / 2**20:.1f} MiB in {out}; run `bash {out}/run.sh` from a checkout")


# What a GPU lease brings back from $OUT (the device tool's terms).
OUT_FILES, OUT_FILE_BYTES, OUT_TOTAL_BYTES, OUT_DEPTH = 8, 16 * 2**20, 64 * 2**20, 2
SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def out_problems(out: Path, steps: list[str]) -> list[str]:
    """Why ``out`` would not come back whole from a lease, or does not name every step; [] when fine."""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    found = []
    if len(files) > OUT_FILES:
        found.append(f"{len(files)} files, over {OUT_FILES}")
    found += [f"{p.relative_to(out)}: {p.stat().st_size} bytes, over {OUT_FILE_BYTES}"
              for p in files if p.stat().st_size > OUT_FILE_BYTES]
    total = sum(p.stat().st_size for p in files)
    if total > OUT_TOTAL_BYTES:
        found.append(f"{total} bytes in all, over {OUT_TOTAL_BYTES}")
    for p in out.rglob("*"):
        rel = p.relative_to(out)
        if len(rel.parts) > OUT_DEPTH + 1 or not SAFE_NAME.match(p.name) or p.is_symlink():
            found.append(f"{rel}: too deep, a link or an unsafe name")
    summary = out / "summary.md"
    if not summary.is_file():
        return found + ["no summary.md"]
    text = summary.read_text()
    found += [f"summary.md does not name step {s}" for s in steps if f"| {s} |" not in text]
    return found
