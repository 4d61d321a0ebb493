"""Model inputs for capture and drift: text cut into n-token sequences, and images.

Text: the whole text is tokenised once (no truncation) and cut into consecutive windows of
n − 2 word pieces, each wrapped as [CLS] … [SEP]: every sequence holds exactly n real tokens,
so nothing is padded and no attention mask is needed. The last windows form the fitting
split, the first ones the evaluation split; they never overlap.

Images: the files of a folder (sorted by name; even positions evaluate, odd ones fit), or the
photographs bundled with scikit-image (workloads.EVAL_IMAGES / FIT_IMAGES).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from attnbench.capture.errors import CaptureError

DEFAULT_TEXT = "declaration.txt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Inputs:
    """One split of model inputs and how they were made (stored as capture metadata)."""

    tensors: dict[str, torch.Tensor]     # text: input_ids (B, n); images: pixel_values (B, 3, H, W)
    describe: dict[str, Any]


def default_text_path() -> str:
    """The public-domain text shipped with the package (Declaration of Independence, Gettysburg Address)."""
    return str(resources.files("attnbench.capture") / "data" / DEFAULT_TEXT)


def read_text(path: str | None) -> tuple[str, str]:
    """(text, source name) of ``path``, or of the shipped text when ``path`` is None."""
    path = path or default_text_path()
    if not Path(path).is_file():
        raise CaptureError(f"text file {path!r} does not exist")
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptureError(f"cannot read text file {path!r}: {type(exc).__name__}") from None


def text_splits(tokenizer: Any, text: str, source: str, n: int, batch: int | None,
                fit_batch: int) -> tuple[Inputs, Inputs]:
    """(eval, fit) splits of n-token sequences: ``batch`` from the start (None: every window not
    used for fitting), ``fit_batch`` from the end."""
    if n < 3:
        raise CaptureError(f"--n must be at least 3 for text ([CLS], one word piece, [SEP]), got {n}")
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    body = n - 2
    windows = len(ids) // body
    want = 1 if batch is None else batch
    if windows < want + fit_batch:
        raise CaptureError(f"text {source!r} has {len(ids)} word pieces: {want} evaluation and {fit_batch} "
                           f"fitting sequences of n={n} tokens need {(want + fit_batch) * body}")
    batch = windows - fit_batch if batch is None else batch
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    seqs = [[cls] + ids[i * body:(i + 1) * body] + [sep] for i in range(windows)]
    picks = {"eval": list(range(batch)), "fit": list(range(windows - fit_batch, windows))}
    out = []
    for split, idx in picks.items():
        tensor = torch.tensor([seqs[i] for i in idx], dtype=torch.long)          # (B, n)
        out.append(Inputs({"input_ids": tensor}, {"source": source, "split": split, "windows": idx,
                                                  "tokens_per_window": n, "word_pieces": len(ids)}))
    return out[0], out[1]


def image_files(folder: str) -> list[Path]:
    """The image files of ``folder``, sorted by name; CaptureError if there are none."""
    path = Path(folder)
    if not path.is_dir():
        raise CaptureError(f"image folder {folder!r} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CaptureError(f"image folder {folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) float image in [0, 1] from a file (any mode PIL reads, converted to RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
            w, h = img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise CaptureError(f"cannot read image {str(path)!r}: {type(exc).__name__}") from None
    return arr.reshape(h, w, 3).permute(2, 0, 1).float() / 255.0


def image_splits(folder: str | None, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                 batch: int, fit_batch: int) -> tuple[Inputs, Inputs]:
    """(eval, fit) splits of pixel_values (B, 3, H, W), normalised with the model's mean and std."""
    from attnbench.workloads import EVAL_IMAGES, FIT_IMAGES, crop_resize, load_sample_image

    if folder is None:
        names = {"eval": list(EVAL_IMAGES), "fit": list(FIT_IMAGES)}
        loaders = {"eval": [load_sample_image(x) for x in EVAL_IMAGES], "fit": [load_sample_image(x) for x in FIT_IMAGES]}
    else:
        files = image_files(folder)
        if len(files) < 2:
            raise CaptureError(f"image folder {folder!r} holds one image; evaluation and fitting need one each")
        names = {"eval": [f.name for f in files[0::2]], "fit": [f.name for f in files[1::2]]}
        loaders = {"eval": [load_image(f) for f in files[0::2]], "fit": [load_image(f) for f in files[1::2]]}
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    out = []
    for split, count in (("eval", batch), ("fit", fit_batch)):
        imgs = [crop_resize(loaders[split][i % len(loaders[split])], *size) for i in range(count)]
        pixels = (torch.stack(imgs) - m) / s                                      # (B, 3, H, W)
        used = [names[split][i % len(names[split])] for i in range(count)]
        out.append(Inputs({"pixel_values": pixels}, {"source": folder or "scikit-image", "split": split,
                                                      "images": used, "size": list(size)}))
    return out[0], out[1]
