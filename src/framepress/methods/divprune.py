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
    matrix (:func:`ops.symmetric_strips`, one strip alive at a time). Each later pick needs one row of it, the
    pick's cosines to all tokens, formed when it is picked: memory stays linear in N. Ties go to the lower index.
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
    closest = unit @ unit[first]  # each token's largest cosine to the chosen set (= smallest distance)
    closest[first] = torch.inf
    for i in range(1, budget):  # the greedy itself is sequential; each step forms one row
        pick = torch.argmin(closest)
        chosen[i] = pick
        closest = torch.maximum(closest, unit @ unit[pick])
        closest[pick] = torch.inf
    return Tokens.select(x, chosen.sort().values, {"first": int(first)})
