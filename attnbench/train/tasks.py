"""Generated tasks for ``bench.py train``: each makes token batches from a seed, states its minimum
n, its chance level and the token grid grid methods get.

A batch is ``(x, y)``: ``x`` (B, N, C) integer tokens whose C channels' embeddings are summed into
one token; ``y`` (B, N) per-token labels with -100 where there is nothing to predict (``recall``)
or (B,) sequence labels (``listops``, ``grid``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

IGNORE = -100


@dataclass(frozen=True)
class Task:
    """One generated task: its vocabulary, classes, minimum n and how to make a batch."""

    name: str
    min_n: int
    doc: str
    vocab: Callable[[int], int]                 # n -> embedding table size
    classes: Callable[[int], int]               # n -> output classes
    per_token: bool                             # labels per token (recall) or per sequence
    make: Callable[[int, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    square: bool = False                        # n must be a perfect square

    def n_problem(self, n: int) -> str | None:
        """None when the task can be made at n tokens, else a sentence saying why not."""
        if n < self.min_n:
            return f"task {self.name} needs n >= {self.min_n}, got {n}"
        if self.square and math.isqrt(n) ** 2 != n:
            return f"task {self.name} needs a square n (a sqrt(n) x sqrt(n) grid), got {n}"
        return None

    def grid(self, n: int) -> tuple[int, int] | None:
        """The token grid given to grid methods (None: their near-square factorisation of n)."""
        return (math.isqrt(n),) * 2 if self.square else None

    def batch(self, n: int, count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.make(n, count, rng)
        return torch.from_numpy(x).long(), torch.from_numpy(y).long()


# -- recall -----------------------------------------------------------------------------------------

def recall_pairs(n: int) -> int:
    """Key-value pairs at n tokens: n / 8 (8 at n = 64, 32 at n = 256); the rest are queries."""
    return max(2, n // 8)


def _recall_vocab(n: int) -> int:
    return max(16, 2 * recall_pairs(n))      # keys and values each drawn from this many symbols


def make_recall(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Multi-query associative recall, one token per pair.

    Tokens 0..P-1 are pairs (channel 0: a key, channel 1: its value), tokens P..N-1 are queries
    (channel 0: one of the P keys, channel 1: the query marker); each query's label is its key's
    value. Keys and values are distinct within a sequence, so knowing which values occur but not
    which key holds which gives 1 / P.
    Token ids: keys 0..V-1, values V..2V-1, the marker 2V.
    """
    pairs, v = recall_pairs(n), _recall_vocab(n)
    keys = np.argsort(rng.random((count, v)), axis=1)[:, :pairs]          # (B, P) distinct keys
    vals = np.argsort(rng.random((count, v)), axis=1)[:, :pairs]          # (B, P) distinct values
    pick = rng.integers(0, pairs, size=(count, n - pairs))               # (B, Q) which pair each query asks
    x = np.empty((count, n, 2), dtype=np.int64)
    x[:, :pairs, 0], x[:, :pairs, 1] = keys, v + vals
    x[:, pairs:, 0] = np.take_along_axis(keys, pick, axis=1)
    x[:, pairs:, 1] = 2 * v
    y = np.full((count, n), IGNORE, dtype=np.int64)
    y[:, pairs:] = np.take_along_axis(vals, pick, axis=1)
    return x, y


# -- listops ------------------------------------------------------------------------------------------

LISTOPS_OPS = ("MAX", "MIN", "MED", "SM")          # SM: sum modulo 10
_PAD, _CLOSE, _OP0 = 0, 1, 2                       # token ids; digits are 6..15
_DIGIT0 = _OP0 + len(LISTOPS_OPS)


def _listops_tree(rng: np.random.Generator, budget: int, depth: int) -> tuple[list[int], int]:
    """Tokens and value of one random expression of at most ``budget`` tokens."""
    if budget < 4 or depth == 0 or rng.random() < 0.25:
        d = int(rng.integers(0, 10))
        return [_DIGIT0 + d], d
    op = int(rng.integers(0, len(LISTOPS_OPS)))
    tokens, values, left = [_OP0 + op], [], budget - 2           # the operator and its closing bracket
    for i in range(int(rng.integers(2, 6))):
        if left < 1:
            break
        sub, val = _listops_tree(rng, min(left, max(1, budget // 2)), depth - 1)
        tokens += sub
        values.append(val)
        left -= len(sub)
    return tokens + [_CLOSE], _listops_value(op, values)


def _listops_value(op: int, values: list[int]) -> int:
    name = LISTOPS_OPS[op]
    if name == "MAX":
        return max(values)
    if name == "MIN":
        return min(values)
    if name == "MED":
        return int(np.median(values))                # LRA: the lower-rounded median of the arguments
    return sum(values) % 10


def make_listops(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """ListOps (LRA): nested MAX, MIN, MED, SM (sum mod 10) over digits, padded to n; label 0..9.

    Each expression is drawn to fill between half and all of the n tokens, nesting at most
    ``log2(n)`` deep; brackets are implicit in the operator token and one closing token.
    """
    x = np.full((count, n, 1), _PAD, dtype=np.int64)
    y = np.empty(count, dtype=np.int64)
    depth = max(2, int(math.log2(n)) - 2)
    for i in range(count):
        tokens, value = [], 0
        while len(tokens) < max(3, n // 2):
            tokens, value = _listops_tree(rng, n, depth)
        x[i, :len(tokens), 0], y[i] = tokens, value
    return x, y


# -- grid ---------------------------------------------------------------------------------------------

_EMPTY, _PATH, _MARK = 0, 1, 2


def _walk(rng: np.random.Generator, side: int, taken: np.ndarray, length: int) -> list[tuple[int, int]] | None:
    """A self-avoiding random walk of ``length`` cells on free cells not touching ``taken``."""
    free = np.argwhere(~_dilate(taken))
    if len(free) == 0:
        return None
    cells = [tuple(free[rng.integers(len(free))])]
    seen, blocked = set(cells), _dilate(taken)
    while len(cells) < length:
        r, c = cells[-1]
        steps = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))]
        steps = [(a, b) for a, b in steps if 0 <= a < side and 0 <= b < side and (a, b) not in seen
                 and not blocked[a, b] and sum((a + u, b + w) in seen for u, w in ((0, 1), (1, 0), (0, -1), (-1, 0))) == 1]
        if not steps:
            break
        cells.append(steps[rng.integers(len(steps))])
        seen.add(cells[-1])
    return cells if len(cells) >= 3 else None


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def connected(cells: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether a and b are joined by 4-neighbour steps through non-empty cells (breadth-first)."""
    side = cells.shape[0]
    todo, seen = [a], {a}
    while todo:
        r, c = todo.pop()
        if (r, c) == b:
            return True
        for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= rr < side and 0 <= cc < side and cells[rr, cc] != _EMPTY and (rr, cc) not in seen:
                seen.add((rr, cc))
                todo.append((rr, cc))
    return False


def _grid_example(side: int, positive: bool, rng: np.random.Generator) -> np.ndarray | None:
    taken = np.zeros((side, side), dtype=bool)
    paths = []
    for _ in range(2):
        path = _walk(rng, side, taken, int(rng.integers(side, 2 * side + 1)))
        if path is None:
            return None
        paths.append(path)
        for cell in path:
            taken[cell] = True
    cells = np.where(taken, _PATH, _EMPTY)
    a, b = (paths[0][0], paths[0][-1]) if positive else (paths[0][0], paths[1][-1])
    cells[a], cells[b] = _MARK, _MARK
    return cells if connected(cells, a, b) == positive else None


def make_pathfinder(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pathfinder-like: two non-touching random curves on a sqrt(n) x sqrt(n) grid and two marked
    cells; label 1 when the marks are joined by a path (the two ends of one curve), else 0.
    Half of each batch is positive; every label is checked by a breadth-first search."""
    side = math.isqrt(n)
    x = np.empty((count, n, 1), dtype=np.int64)
    y = (np.arange(count) % 2).astype(np.int64)
    rng.shuffle(y)
    for i in range(count):
        cells = None
        while cells is None:
            cells = _grid_example(side, bool(y[i]), rng)
        x[i, :, 0] = cells.reshape(-1)
    return x, y



GRID_COLOURS = 4


def grid_far(side: int, a: int, b: int) -> bool:
    """Whether cells a and b (flat indices) are at least side // 2 apart in rows or columns."""
    return max(abs(a // side - b // side), abs(a % side - b % side)) >= side // 2


def make_grid(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Far colour match on a sqrt(n) x sqrt(n) grid: every cell has one of ``GRID_COLOURS`` colours
    (channel 0); two cells are marked (channel 1), at least sqrt(n) / 2 rows or columns apart; label 1
    when the two marked cells have the same colour. Half of each batch is positive.
    Token ids: colours 0..C-1, unmarked C, marked C+1.
    """
    side, c = math.isqrt(n), GRID_COLOURS
    colour = rng.integers(0, c, size=(count, n))
    mark = np.full((count, n), c, dtype=np.int64)
    y = (np.arange(count) % 2).astype(np.int64)
    rng.shuffle(y)
    for i in range(count):
        a, b = rng.choice(n, size=2, replace=False)
        while not grid_far(side, int(a), int(b)):
            a, b = rng.choice(n, size=2, replace=False)
        colour[i, b] = colour[i, a] if y[i] else (colour[i, a] + rng.integers(1, c)) % c
        mark[i, a] = mark[i, b] = c + 1
    return np.stack([colour, mark], axis=2).astype(np.int64), y


TASKS: dict[str, Task] = {
    "recall": Task("recall", 16, "multi-query associative recall, one token per key-value pair",
                   lambda n: 2 * _recall_vocab(n) + 1, _recall_vocab, True, make_recall),
    "listops": Task("listops", 16, "ListOps (LRA): nested MAX/MIN/MED/SUM_MOD over digits, 10 classes",
                    lambda n: _DIGIT0 + 10, lambda n: 10, False, make_listops),
    "grid": Task("grid", 16, "far colour match: do two marked cells, sqrt(n)/2 or more apart on a sqrt(n) x "
                 "sqrt(n) grid, have the same colour", lambda n: GRID_COLOURS + 2, lambda n: 2, False, make_grid,
                 square=True),
    "pathfinder": Task("pathfinder", 16, "Pathfinder-like: are the two marked cells of a sqrt(n) x sqrt(n) grid "
                       "joined by a path", lambda n: 3, lambda n: 2, False, make_pathfinder, square=True),
}


def chance(task: Task, n: int, y: torch.Tensor) -> float:
    """The stated chance level: recall 1 / pairs; the others the share of the most common label in
    the held-out labels ``y`` (what a constant answer gets)."""
    if task.name == "recall":
        return 1.0 / recall_pairs(n)
    counts = torch.bincount(y.reshape(-1)[y.reshape(-1) >= 0])
    return float(counts.max()) / float(counts.sum())
