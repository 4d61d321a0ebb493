"""The settings of ``bench.py train`` that its options and rows carry, without torch (so that
parsing the command line imports no torch)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TASK_NAMES = ("recall", "listops", "grid", "pathfinder")   # the keys of attnbench.train.tasks.TASKS (tested)
DEFAULT_TASKS = ("recall", "listops", "grid")            # pathfinder: exact attention does not learn it in a CPU budget
DEFAULT_STEPS = {"recall": 200, "listops": 150, "grid": 400, "pathfinder": 1000}
# recall at n = 256 (32 pairs) is not learned by exact attention in this budget (0.015 after 400 steps
# of 16 sequences, and after 250 of 64): its second n is 128 (16 pairs), learned to 1.000 in 200 steps
DEFAULT_N = {"recall": (64, 128), "listops": (64, 256), "grid": (64, 256), "pathfinder": (64, 256)}
DEFAULT_M = 16


def default_workers(device: str, threads: int) -> int:
    """Workers of ``--executor process`` when not given: on CPU the cores over the threads each
    worker uses (at most 8); on CUDA one, the GPU's timings not shared with another point."""
    import os

    if device != "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 1) // max(1, threads)))


@dataclass(frozen=True)
class ModelSettings:
    """The model and optimiser settings a train row's identity carries."""

    layers: int = 2
    width: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    batch: int | None = None          # sequences per step; None: tokens // n
    tokens: int = 4096                # tokens per step when batch is None
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 20                  # linear learning-rate warm-up steps, then cosine to 0.1 lr

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
