"""DivPrune: max-min diversity selection (Alvar et al., CVPR 2025; specs/baselines.md §9).

Over the cosine distances D = 1 - cos of all the video's tokens (one global set), greedily: first the token
whose nearest neighbour is farthest, then again and again the token whose distance to the nearest selected
token is largest, until the budget. Query-agnostic, pre-LLM, exactly the budget.
"""

from __future__ import annotations

import torch

from .. import ops
from ..registry import register
from ..tokens import Tokens


@register(
    "divprune",
    paper="Alvar et al., DivPrune: Diversity-based Visual Token Pruning, CVPR 2025",
    budget="exact",
    scale_invariant=True,
)
def divprune(x: torch.Tensor, budget: int | None) -> Tokens:
    """Greedy max-min diversity: keep the tokens farthest (in cosine distance) from those already kept.

    The first pick needs each token's largest off-diagonal cosine: one pass of symmetric strips of the cosine
    matrix (:func:`ops.symmetric_strips`, one strip alive at a time). Each later pick is the token with the
    smallest largest-cosine to the picks: every token keeps a lower bound of it, raised by the picks BATCH at
    a time in one product (not a pass over all tokens per pick); between, the few tokens with the smallest
    bounds are made exact, which settles the pick exactly (else the pending picks are applied first). Memory
    stays linear in N. Ties go to the lower index.
    """
    if budget is None:
        raise ValueError("divprune needs a retention (its budget)")
    T, H, W, C = x.shape
    n = T * H * W
    if budget >= n:
        return Tokens.select(x, torch.arange(n, device=x.device))
    unit = ops.normalize(x.reshape(-1, C))
    nearest = torch.full((n,), -torch.inf, dtype=unit.dtype, device=x.device)  # largest off-diagonal cosine
    for start, strip in ops.symmetric_strips(unit):
        r = strip.shape[0]
        strip[:, :r].fill_diagonal_(-torch.inf)
        nearest[start : start + r] = torch.maximum(nearest[start : start + r], strip.amax(1))
        if start + r < n:
            nearest[start + r :] = torch.maximum(nearest[start + r :], strip[:, r:].amax(0))
    first = torch.argmin(nearest) if n > 1 else torch.tensor(0, device=x.device)
    chosen = torch.empty(budget, dtype=torch.long, device=x.device)
    chosen[0] = first
    closest = unit @ unit[first]  # each token's largest cosine to the picks applied so far (a lower bound)
    closest[first] = torch.inf
    pending = chosen[:0]  # picks not yet applied to closest
    for i in range(1, budget):  # the greedy itself is sequential
        pick = None
        if pending.numel():  # the SHORTLIST smallest bounds, made exact; the pick if below every other bound
            bound, near = closest.topk(min(SHORTLIST + 1, n), largest=False)
            exact = torch.maximum(bound[:-1], (unit[near[:-1]] @ unit[pending].T).amax(1))
            low = exact.min()
            if low < bound[-1]:
                pick = near[:-1][exact == low].min()
        if pick is None:
            closest = apply(closest, unit, pending)
            pick, pending = torch.argmin(closest), pending[:0]
        chosen[i] = pick
        closest[pick] = torch.inf
        pending = torch.cat([pending, pick[None]])
        if pending.numel() == BATCH:
            closest, pending = apply(closest, unit, pending), pending[:0]
    return Tokens.select(x, chosen.sort().values, {"first": int(first)})


#: Picks applied to every token's bound together (one [N, BATCH] product), and the tokens whose bounds are made
#: exact for each pick: the pick is the smallest exact value when that is below every bound left out.
BATCH, SHORTLIST = 64, 64


def apply(closest: torch.Tensor, unit: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """closest raised to each token's largest cosine to ``picks`` (the picks themselves stay at inf)."""
    if not picks.numel():
        return closest
    return torch.maximum(closest, (unit @ unit[picks].T).amax(1))
