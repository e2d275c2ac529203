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


def split(total: int, weights: torch.Tensor, caps: torch.Tensor) -> list[int]:
    """Share ``total`` tokens among windows in proportion to ``weights`` (> 0), each between 1 and its ``caps``
    (its token count): proportional water-filling, then a largest-remainder rounding (ties to the earlier
    window), so the shares sum to ``total`` exactly when ``len(weights) <= total <= caps.sum()``. Below that
    every window gets 1 (a method keeps at least one token); above it every window its cap."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    cap = torch.as_tensor(caps, dtype=torch.float64)
    k = w.numel()
    if total <= k:
        return [1] * k
    if total >= int(cap.sum()):
        return cap.long().tolist()
    q = torch.zeros(k, dtype=torch.float64)
    fixed = torch.zeros(k, dtype=torch.bool)
    for _ in range(k):  # each round fixes at least one window at a bound
        free = ~fixed
        q[free] = (total - q[fixed].sum()) * w[free] / w[free].sum()
        over = free & (q > cap)
        under = free & (q < 1)
        if bool(over.any()):  # the caps first: fixing them only raises the others
            q[over], fixed = cap[over], fixed | over
        elif bool(under.any()):
            q[under], fixed = 1.0, fixed | under
        else:
            break
    base = q.floor().clamp(min=1).minimum(cap)
    short = total - int(base.sum())
    room = base < cap
    order = torch.sort(-(q - base).masked_fill(~room, -torch.inf), stable=True).indices
    base[order[:short]] += 1
    return base.long().tolist()


def cumulative(retention: float, counts: list[int]) -> list[int]:
    """Window budgets that need no look-ahead (streaming): window w keeps ``P_w - P_(w-1)`` with
    ``P_w = floor(retention * C_w + 1/2)``, ``C_w`` the tokens of windows 1..w, so every prefix of the video
    keeps its share rounded half up; at least 1 a window (then the total exceeds it)."""
    ends = torch.tensor(counts, dtype=torch.float64).cumsum(0)
    prefix = torch.floor(retention * ends + 0.5).long()
    return torch.diff(prefix, prepend=prefix.new_zeros(1)).clamp_min(1).tolist()
