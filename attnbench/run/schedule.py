"""Which point a free worker measures next: the next point of the n it holds, else an n nobody
holds, else a point taken from the n with the most points left (so no worker idles)."""
from __future__ import annotations

from collections import OrderedDict, deque

from attnbench.settings import Point


class Schedule:
    """Points grouped by n, handed out one at a time with n affinity."""

    def __init__(self, points: list[Point]) -> None:
        self.groups: OrderedDict[int, deque[Point]] = OrderedDict()
        for p in sorted(points, key=lambda p: p.n):
            self.groups.setdefault(p.n, deque()).append(p)
        self.holders: dict[int, set[str]] = {}

    def __bool__(self) -> bool:
        return any(self.groups.values())

    def next_for(self, worker: str, held_n: int | None) -> Point | None:
        """The next point for ``worker``, whose inputs are those of ``held_n`` (None: none yet)."""
        n = self._pick(held_n)
        if n is None:
            return None
        for holders in self.holders.values():
            holders.discard(worker)
        self.holders.setdefault(n, set()).add(worker)
        p = self.groups[n].popleft()
        if not self.groups[n]:
            del self.groups[n]
        return p

    def _pick(self, held_n: int | None) -> int | None:
        if held_n in self.groups:
            return held_n
        free = [n for n in self.groups if not self.holders.get(n)]
        if free:
            return free[0]
        return max(self.groups, key=lambda n: len(self.groups[n]), default=None)

    def forget(self, worker: str) -> None:
        """A worker that died or was replaced holds nothing."""
        for holders in self.holders.values():
            holders.discard(worker)

    def requeue(self, p: Point) -> None:
        """Put back a point whose worker was lost through no fault of its own (a node went away)."""
        self.groups.setdefault(p.n, deque()).appendleft(p)
