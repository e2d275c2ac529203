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


def nearest_cosine(unit: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """[N]: each row's largest cosine to another row, a block of rows at a time (no N x N matrix held)."""
    n = unit.shape[0]
    out = torch.empty(n, dtype=unit.dtype, device=unit.device)
    for s in range(0, n, block):
        cos = unit[s : s + block] @ unit.T
        cos[torch.arange(cos.shape[0], device=unit.device), torch.arange(s, s + cos.shape[0], device=unit.device)] = -torch.inf
        out[s : s + block] = cos.amax(1)
    return out


@register("divprune", paper="Alvar et al., DivPrune: Diversity-based Visual Token Pruning, CVPR 2025", budget="exact")
def divprune(x: torch.Tensor, budget: int | None) -> Tokens:
    """Greedy max-min diversity: keep the tokens farthest (in cosine distance) from those already kept.

    The first pick needs every token's nearest neighbour (N^2 cosines, in row blocks); each later pick one
    matrix-vector product, as the official greedy. Ties go to the lower index.
    """
    if budget is None:
        raise ValueError("divprune needs a retention (its budget)")
    T, H, W, C = x.shape
    unit = ops.normalize(x.reshape(-1, C))
    n = unit.shape[0]
    if budget >= n:
        return Tokens.select(x, torch.arange(n, device=x.device))
    first = torch.argmin(nearest_cosine(unit)) if n > 1 else torch.tensor(0, device=x.device)
    chosen = torch.empty(budget, dtype=torch.long, device=x.device)
    chosen[0] = first
    closest = unit @ unit[first]  # each token's largest cosine to the chosen set (= smallest distance)
    closest[first] = torch.inf
    for i in range(1, budget):  # the greedy itself is sequential; each step is one product over all tokens
        pick = torch.argmin(closest)
        chosen[i] = pick
        closest = torch.maximum(closest, unit @ unit[pick])
        closest[pick] = torch.inf
    return Tokens.select(x, chosen.sort().values, {"first": int(first)})
