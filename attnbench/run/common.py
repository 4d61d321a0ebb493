"""What every executor shares: the progress line, point labels and the row of a lost point."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from attnbench.point import base_row
from attnbench.settings import Point, SweepConfig

OnRow = Callable[[Point, dict], None]


@dataclass
class Progress:
    """What is in flight where: ``shown`` is called with one line each time it changes."""

    shown: Callable[[str], None] = lambda line: None
    inflight: dict[str, str] = field(default_factory=dict)

    def start(self, worker: str, p: Point) -> None:
        self.inflight[worker] = point_label(p)
        self.shown(self.line())

    def stop(self, worker: str) -> None:
        self.inflight.pop(worker, None)
        self.shown(self.line())

    def line(self) -> str:
        return " | ".join(f"{w}: {label}" for w, label in sorted(self.inflight.items())) or "idle"


def point_label(p: Point) -> str:
    return f"{p.method} n={p.n}" + (f" m={p.m}" if p.m is not None else "")


def failure_row(cfg: SweepConfig, p: Point, status: str, message: str, where: dict[str, Any]) -> dict[str, Any]:
    """The row of a point whose worker died or passed a time limit."""
    return {**base_row(cfg, p), "status": status, "message": message, **where}
