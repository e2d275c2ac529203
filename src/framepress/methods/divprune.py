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

    One symmetric cosine matrix serves the whole greedy: the first pick reads each row's largest off-diagonal
    cosine, every later pick one column. Ties go to the lower index.
    """
    if budget is None:
        raise ValueError("divprune needs a retention (its budget)")
    T, H, W, C = x.shape
    n = T * H * W
    if budget >= n:
        return Tokens.select(x, torch.arange(n, device=x.device))
    cos = ops.gram(ops.normalize(x.reshape(-1, C)))
    cos.fill_diagonal_(-torch.inf)
    first = torch.argmin(cos.amax(1)) if n > 1 else torch.tensor(0, device=x.device)
    cos.fill_diagonal_(1.0)
    chosen = torch.empty(budget, dtype=torch.long, device=x.device)
    chosen[0] = first
    closest = cos[first].clone()  # each token's largest cosine to the chosen set (= smallest distance)
    closest[first] = torch.inf
    for i in range(1, budget):  # the greedy itself is sequential; each step reads one column
        pick = torch.argmin(closest)
        chosen[i] = pick
        closest = torch.maximum(closest, cos[pick])
        closest[pick] = torch.inf
    return Tokens.select(x, chosen.sort().values, {"first": int(first)})
