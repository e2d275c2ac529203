"""FrameFusion: similarity merging, then importance pruning, inside the LLM (Fu et al., ICCV 2025;
specs/baselines.md §7). Query-agnostic (it reads no question), prefill only.

At layer K (1: after layer 0, where the official code starts): a visual token whose hidden state has cosine >=
``similarity`` with the same grid position in the previous frame merges into it; a run of such merges along time
collapses into the run's earliest token, the mean of the run (cascaded merging). If that leaves more tokens than
the budget, the tokens receiving the least attention at layer K-1 (mean over heads and every query, FrameFusion's
"cumulative attention"; a merged token: the mean of its members) are pruned. If merging alone would go below the
budget, only the most similar merges are made.

Budgets: the paper budgets compute, ``cost`` = the average share of visual tokens over all layers (its 30%);
framepress also takes a token retention (the share that goes on from layer K). Simplification, documented: the
official code repeats the merging in the next shallow layers while at least 10% of tokens merge; here it runs
once, at layer K, and the pruning follows at once.
"""

from __future__ import annotations

import torch

from .. import checks, ops
from ..layer import LayerInputs
from ..registry import register
from ..tokens import Tokens


def run_starts(merge: torch.Tensor) -> torch.Tensor:
    """[T, P]: for each token, the frame where its run of merges along time starts (``merge[t, p]``: frame t
    merges into frame t-1 at position p; ``merge[0]`` is False)."""
    T = merge.shape[0]
    frame = torch.arange(T, device=merge.device)[:, None].expand_as(merge)
    return torch.where(merge, 0, frame).cummax(0).values


@register(
    "framefusion",
    paper="Fu et al., FrameFusion: Combining Similarity and Importance for Video Token Reduction, ICCV 2025",
    budget="exact",
    stage="in-llm",
    layer=1,
    check=lambda p: {
        "similarity": checks.number("similarity", p["similarity"], -1.0, 1.0),
        "cost": checks.optional(checks.number, "cost", p["cost"], 0.0, 1.0),
    },
)
def framefusion(inputs: LayerInputs, budget: int | None, *, similarity: float = 0.6, cost: float | None = None) -> Tokens:
    """Merge same-position tokens of consecutive frames whose cosine is >= ``similarity`` (cascading along time),
    then keep the most attended tokens up to the budget.

    Args:
        similarity: S_th, the merge threshold (0.6).
        cost: the compute budget of the paper: the average share of visual tokens over all layers (layers before
            K hold all of them), instead of a retention. With neither, merging alone decides.
    """
    if cost is not None and budget is not None:
        raise ValueError("framefusion: give retention or cost, not both")
    if inputs.grid is None:
        raise ValueError("framefusion merges tokens of one grid position across frames: it needs the whole grid")
    T, H, W = inputs.grid
    visual = inputs.visual
    n, c = visual.shape
    if cost is not None:
        L, K = inputs.n_layers, inputs.layer
        share = (L * cost - K) / (L - K)
        if share <= 0:
            raise ValueError(f"cost={cost}: layers 0..{K - 1} alone hold more than that share of the visual tokens")
        budget = max(1, round(min(share, 1.0) * n))
    P = H * W
    unit = ops.normalize(visual).reshape(T, P, c)
    cos = torch.cat([torch.full((1, P), -torch.inf, device=visual.device), (unit[1:] * unit[:-1]).sum(-1)])
    merge = cos >= similarity
    if budget is not None and int(merge.sum()) > n - budget:  # merging alone would overshoot: the most similar
        flat = torch.zeros(n, dtype=torch.bool, device=visual.device)
        flat[ops.top_indices(torch.where(merge, cos, -torch.inf).reshape(-1), n - budget)] = True
        merge = flat.reshape(T, P)
    start = run_starts(merge)
    position = torch.arange(P, device=visual.device)[None].expand(T, P)
    owner = (start * P + position).reshape(-1)  # each token's run representative
    reps = torch.unique(owner)
    group = torch.searchsorted(reps, owner)
    features = ops.group_mean(visual, group, reps.numel())
    if budget is not None and reps.numel() > budget:
        received = inputs.received_attention().float()
        importance = torch.zeros(reps.numel(), device=visual.device).index_add_(0, group, received)
        importance = importance / torch.bincount(group, minlength=reps.numel())
        keep = ops.top_indices(importance, budget)
        slot = torch.full((reps.numel(),), -1, dtype=torch.long, device=visual.device)
        slot[keep] = torch.arange(budget, device=visual.device)
        group, reps, features = slot[group], reps[keep], features[keep]
    zeros = torch.zeros_like(reps)
    boxes = torch.stack([zeros, zeros, reps, zeros + 1, reps + 1], 1)
    info = {"merged": int(merge.sum()), "layer": inputs.layer}
    return Tokens.from_source(features, boxes, group, (1, 1, n), info)
