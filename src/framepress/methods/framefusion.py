"""FrameFusion: similarity merging, then importance pruning (Fu et al., ICCV 2025; specs/baselines.md §7), as its
official code (thu-nics/FrameFusion, ``framefusion/main.py``) runs it: output-equal on the golden vectors
(golden/framefusion/README.md, tests/data/framefusion).

Two stages, as the official Qwen2 path places them (``models/qwen2/modeling_qwen2.py``: merging on the hidden
states entering layer 0, pruning after layer 0's attention):

1. ``framefusion`` (pre-LLM, on the embeddings, so every layer sees the merged count): a token whose cosine with
   the same grid position of the previous frame is >= ``similarity`` merges into it; a run of such merges along
   time collapses into its earliest token, the mean of the run (cascaded). If the share merged reaches the sparsity
   the compute budget allows (1 - cost), only the int((1 - cost) n) most similar merge and nothing is pruned.
2. ``framefusion_prune`` (in-LLM, layer 1): the merged tokens the last query attends to most in layer 0 (mean over
   heads; the official ``scaled_dot_product_attention(num=1)``; its Qwen2-VL path uses the last 4 queries,
   ``queries=4``) are kept. Pruning after layer 0's MLP instead of before it keeps the same tokens with the same
   hidden states (the MLP acts token by token).

Counts. ``cost`` (the default, 0.3) is the official compute budget, the average share of visual tokens over
``layers`` = 28 layers (hard-coded in the official code): with merged share s, the prune keeps
round(M (28 cost - (1 - s)) / (27 (1 - s))) of the M merged tokens (``_compute_pruning_ratio``), a count the merge
stage hands to the prune stage. A retention r instead bounds the merge at r n tokens and the prune keeps exactly
r n, so in a model a retention is met exactly. Standalone, ``framefusion`` alone keeps at least the budget
("official"); ``allocation="exact"`` keeps exactly it: the n - budget most similar same-position pairs merge
(whatever their cosine, the official budget-bound rule), and if merging cannot get there (one frame, or one token
per position left) evenly spaced tokens are kept, framepress's choice (there is no attention before the LLM).

The cosines and means use the official formulas in the input's dtype (bit-equal on the golden vectors); a zero
vector's cosine, NaN there, counts as -2 here (never similar). The official code keeps each merged token's original
position, and so does framepress in a model by default (``positions="original"``, registered; a pre-LLM stage
otherwise reassigns them).

Difference, documented: the official code repeats the merging after each layer's attention while at least
``ratio_lower_bound`` (0.1) of the tokens merge, pruning only after the last merge. framepress merges once, before
layer 0, and prunes after layer 0: the official outputs whenever its merging stops after the first step (less
than 10% merged, or the budget bound it); the repeated steps merge hidden states framepress's stages never see.
"""

from __future__ import annotations

import torch

from .. import checks, ops
from ..layer import LayerInputs
from ..registry import register
from ..tokens import Tokens

ALLOCATIONS = ("official", "exact")


def run_starts(merge: torch.Tensor) -> torch.Tensor:
    """[T, P]: for each token, the frame where its run of merges along time starts (``merge[t, p]``: frame t
    merges into frame t-1 at position p; ``merge[0]`` is False)."""
    T = merge.shape[0]
    frame = torch.arange(T, device=merge.device)[:, None].expand_as(merge)
    return torch.where(merge, 0, frame).cummax(0).values


def pruning_ratio(shares: list[float], cost: float, layers: int = 28) -> float:
    """The sparsity the next layer needs for an average visual share ``cost`` over ``layers`` layers after the
    merged shares ``shares`` (the official ``_compute_pruning_ratio``, the same float operations)."""
    s, total = 1.0, 0.0
    for share in shares:
        s *= 1 - share
        total += s
    remain = layers * cost - total
    if remain < 0:
        raise ValueError(f"cost={cost}: the layers already merged hold more than that share of the visual tokens")
    left = remain / ((layers - len(shares)) * s)
    return 0.0 if left > 1 else 1 - left


def _check(p: dict) -> dict:
    p["similarity"] = checks.number("similarity", p["similarity"], -1.0, 1.0)
    p["cost"] = checks.optional(checks.number, "cost", p["cost"], 0.0, 1.0)
    p["layers"] = checks.integer("layers", p["layers"], 2)
    p["allocation"] = checks.choice("allocation", p["allocation"], ALLOCATIONS)
    return p


@register(
    "framefusion",
    paper="Fu et al., FrameFusion: Combining Similarity and Importance for Video Token Reduction, ICCV 2025",
    budget="official",
    inner=("framefusion_prune", 1.0),
    check=_check,
    shown={"cost": "0.3 (without a retention)"},
    scale_invariant=True,
    handoff=lambda tokens: {"quota": torch.full((len(tokens),), tokens.info["keep"], dtype=torch.long)},
    positions="original",
)
def framefusion(
    x: torch.Tensor,
    budget: int | None,
    *,
    similarity: float = 0.6,
    cost: float | None = None,
    layers: int = 28,
    allocation: str = "official",
) -> Tokens:
    """Merge same-position tokens of consecutive frames whose cosine is >= ``similarity``, cascading along time,
    within the compute budget; ``info["keep"]`` is how many the in-LLM prune keeps.

    Args:
        similarity: S_th, ``similarity_lower_bound`` (0.6).
        cost: the official compute budget, the average share of visual tokens over ``layers`` layers (0.3 when no
            retention is given); give a retention or a cost, not both.
        layers: the layer count the budget averages over (the official 28, Qwen2-7B's).
        allocation: with a retention, "official" (merge within it, at least the budget) or "exact".
    """
    if cost is not None and budget is not None:
        raise ValueError("framefusion: give retention or cost, not both")
    if allocation == "exact" and budget is None:
        raise ValueError("allocation='exact' needs a retention (the cost rule gives its own count)")
    T, H, W, C = x.shape
    n, P = T * H * W, H * W
    v = x.reshape(T, P, C)  # the official formula, in the input's dtype as the official code computes it
    pairs = (v[1:] * v[:-1]).sum(-1) / (v[1:].norm(dim=-1) * v[:-1].norm(dim=-1))
    pairs = torch.nan_to_num(pairs, nan=-2.0)  # a zero vector (NaN there): never similar, merged last
    cos = torch.cat([torch.full((1, P), -torch.inf, device=x.device, dtype=x.dtype), pairs]).reshape(-1)
    similar = int((cos >= similarity).sum())
    if budget is None:  # the official bound: the sparsity the cost allows this first step
        cost = 0.3 if cost is None else cost
        sparsity = pruning_ratio([], cost, layers)
        limit = int(sparsity * n) if similar / n >= sparsity else None
    elif allocation == "exact":
        limit = min(n - budget, n - P)
    else:
        limit = n - budget if similar > n - budget else None
    if limit is None:
        merge = cos >= similarity
    else:
        merge = torch.zeros(n, dtype=torch.bool, device=x.device)
        merge[ops.top_indices(cos, limit)] = True
    merge = merge.reshape(T, P)
    position = torch.arange(P, device=x.device)[None].expand(T, P)
    owner = (run_starts(merge) * P + position).reshape(-1)  # each token's run representative
    reps = torch.unique(owner)
    group = torch.searchsorted(reps, owner)
    flat, merged_in = x.reshape(n, C), owner != torch.arange(n, device=x.device)
    # the official arithmetic: members added into the run's first token in the input's dtype, then divided
    features = flat.clone().index_add_(0, owner[merged_in], flat[merged_in])[reps]
    features = features / torch.bincount(group, minlength=reps.numel())[:, None]
    merged = n - reps.numel()
    if allocation == "exact" and reps.numel() > budget:  # merging cannot reach it: evenly spaced ones
        keep = torch.arange(budget, device=x.device) * reps.numel() // budget
        slot = torch.full((reps.numel(),), -1, dtype=torch.long, device=x.device)
        slot[keep] = torch.arange(budget, device=x.device)
        group, reps, features = slot[group], reps[keep], features[keep]
    if budget is not None:
        keep_count = min(budget, reps.numel())
    elif limit is not None:  # the budget bound the merge: the official code prunes nothing
        keep_count = reps.numel()
    else:
        keep_count = max(1, round(reps.numel() * (1 - pruning_ratio([merged / n], cost, layers))))
    t, rest = reps // P, reps % P
    y, w = rest // W, rest % W
    boxes = torch.stack([t, y, w, y + 1, w + 1], 1)
    bound = limit is not None and allocation == "official"
    info = {"merged": merged, "budget_bound": bound, "keep": keep_count, "allocation": allocation}
    return Tokens.from_source(features, boxes, group, (T, H, W), info)


def quotas(labels: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Each video's prune count from the handed ``quota`` labels [N] (sequence order): a model numbers the labels
    of its videos apart (video v's are its count + the previous video's label + 1), so the runs of equal labels
    are the videos. Returns each token's video and each video's count."""
    values, video = torch.unique_consecutive(labels, return_inverse=True)
    counts = values.clone()
    counts[1:] -= values[:-1] + 1
    return video, counts.tolist()


def _check_prune(p: dict) -> dict:
    p["queries"] = checks.integer("queries", p["queries"], 1)
    if p["quota"] is not None:
        quota = torch.as_tensor(p["quota"])
        if quota.ndim != 1 or quota.dtype.is_floating_point or quota.dtype == torch.bool or quota.is_complex():
            raise TypeError(f"quota must be a 1-D sequence of integer labels, one per visual token; got {p['quota']!r:.80}")
        if quota.numel() and int(quota.min()) < 1:
            raise ValueError("quota: every video keeps at least 1 token")
        p["quota"] = quota.long()
    return p


@register(
    "framefusion_prune",
    paper="FrameFusion (ICCV 2025), importance pruning inside the LLM",
    budget="exact",
    stage="in-llm",
    query_aware=True,
    layer=1,
    check=_check_prune,
    shown={"quota": "framefusion's count"},
)
def framefusion_prune(inputs: LayerInputs, budget: int | None, *, quota=None, queries: int = 1) -> Tokens:
    """Keep the merged visual tokens the last query attends to most at layer K-1 (mean over heads and queries).

    Args:
        quota: [N] integer labels, what ``framefusion`` hands over in a model (its ``info["keep"]`` for every
            token of a video): the official count. A retention keeps exactly the budget instead.
        queries: how many last query rows rank the tokens: 1 (the official Qwen2 / LLaVA-Video path) or 4 (its
            Qwen2-VL path).
    """
    visual = inputs.visual
    n = visual.shape[0]
    if queries == 1:
        importance = inputs.last_attention().float()
    else:
        if inputs.text.shape[0] < queries:
            raise ValueError(f"queries={queries}: only {inputs.text.shape[0]} text tokens follow the video")
        importance = inputs.text_attention()[-queries:].float().mean(0)
    if budget is not None:
        keep = ops.top_indices(importance, min(budget, n))
    elif quota is not None:
        if quota.numel() != n:
            raise ValueError(f"quota: {quota.numel()} labels for {n} visual tokens")
        video, counts = quotas(quota.to(visual.device))
        parts = []
        for v, count in enumerate(counts):  # one ranking per video (a few), as the official one per image block
            members = torch.nonzero(video == v).squeeze(1)
            parts.append(members[ops.top_indices(importance[members], min(count, members.numel()))])
        keep = torch.cat(parts)
    else:
        raise ValueError("framefusion_prune needs a retention, or the quota framefusion's merge hands it in a model")
    return Tokens.select(visual.reshape(1, 1, n, -1), keep, {"layer": inputs.layer, "queries": queries})
