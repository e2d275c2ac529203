"""Token budgets: from a retention ratio to a token count, and a batched search for threshold methods.

A retention ``r`` in (0, 1] asks for ``max(1, round(r * T*H*W))`` tokens (Python's round, half to even).
Selection methods return exactly that many; step methods the largest setting within it; threshold methods
search their thresholds (:func:`search_threshold`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: A threshold search succeeds when it keeps at least this share of the budget.
BUDGET_FLOOR = 0.98


def tokens_for(retention: float, n_tokens: int) -> int:
    """The budget, in tokens, for ``retention`` of ``n_tokens`` input tokens."""
    return max(1, round(retention * n_tokens))


@dataclass(frozen=True)
class SearchResult:
    value: float  # the threshold chosen: its count is <= budget
    count: int
    above: float | None  # the smallest evaluated threshold above ``value`` whose count exceeds the budget
    evaluations: int


def search_threshold(
    count_at: Callable[[float], int],
    lo: float,
    hi: float,
    budget: int,
    *,
    points: int = 17,
    passes: int = 4,
) -> SearchResult | None:
    """Find ``v`` in [lo, hi] with ``count_at(v) <= budget``, as close to it as a few passes get.

    ``count_at`` must be (close to) nondecreasing in ``v``: a higher threshold merges less. Each pass evaluates
    ``points`` values spread over the current bracket and narrows it to the step where the count crosses the
    budget, so four passes resolve the threshold to (hi - lo) / 16**4 with 68 evaluations in all, whatever the
    number of distinct thresholds. Only evaluated values are returned, so the count never exceeds the budget.
    Returns None when even ``count_at(lo)`` exceeds the budget.
    """
    best: tuple[int, float] | None = None
    above: float | None = None
    evaluations = 0
    for _ in range(passes):
        values = torch.linspace(lo, hi, points, dtype=torch.float64).tolist()
        counts = [count_at(v) for v in values]
        evaluations += len(values)
        for v, c in zip(values, counts):
            if c <= budget and (best is None or c > best[0]):
                best = (c, v)
        if best is not None:
            over = [v for v, c in zip(values, counts) if c > budget and v > best[1]]
            above = min(over) if over else above
        if best is None or best[0] >= BUDGET_FLOOR * budget:
            break
        crossings = [i for i in range(points - 1) if counts[i] <= budget < counts[i + 1]]
        if not crossings:
            break
        i = max(crossings, key=lambda j: counts[j])
        lo, hi = values[i], values[i + 1]
    if best is None:
        return None
    return SearchResult(value=best[1], count=best[0], above=above, evaluations=evaluations)
