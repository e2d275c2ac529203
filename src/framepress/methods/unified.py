"""Unified spatiotemporal token compression (arXiv 2603.21957, CVPR 2026; specs/unified.md).

Pre-LLM (``unified``, §3.2-3.3): one global pool over all frames. Candidates are visited in descending
contribution score (the vision encoder's attention, pooled to the LLM grid); a candidate joins the kept pool
unless its cosine to a kept token reaches ``tau``. The rest form a recycle pool, clustered by DPC-KNN into the
cluster share of the budget; each cluster becomes the mean of its members at its center's position. Kept and
merged tokens come out in spatiotemporal order: exactly the budget.

In-LLM (``unified_merge``, §3.4): at layer K (18) keep R of the visual tokens by text-aware importance,
(1 - lambda) * normalized max text-to-visual attention + lambda * normalized max cosine to the text tokens, and
merge every other visual token into its most similar kept one. Inside a model ``framepress.apply(model,
"unified", retention="2%/1%")`` runs both ("A%/B%": A% enter the LLM, B% go on after layer K).
"""

from __future__ import annotations

import math

import torch

from .. import checks, ops
from ..layer import LayerInputs
from ..registry import register
from ..tokens import Tokens

MERGES = ("mean", "center")


def contribution(x: torch.Tensor, scores) -> torch.Tensor:
    """[T*H*W] scores: the vision encoder's ([T, H, W] tensor), or "norm", each feature's L2 norm (a documented
    stand-in when no encoder attention is at hand; never chosen silently)."""
    T, H, W, _ = x.shape
    if isinstance(scores, str):
        checks.choice("scores", scores, ("norm",))
        norm = x.float().norm(dim=-1).reshape(-1)
        if not bool(torch.isfinite(norm).all()):  # beyond float32: the same order from x / 2**k
            norm = ops.row_norms(x.reshape(-1, x.shape[-1]) / ops.power_of_two_above(x)).float()
        return norm
    if not isinstance(scores, torch.Tensor):
        raise TypeError(
            "scores must be the [T, H, W] contribution scores of the vision encoder (inside a model framepress "
            "computes them; standalone, pass them) or the string 'norm'"
        )
    if tuple(scores.shape) != (T, H, W):
        raise ValueError(f"scores must have shape [T, H, W] = {[T, H, W]}, got {list(scores.shape)}")
    checks.plain_tensor(scores, "scores")
    if not scores.is_floating_point() or not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite floating-point values")
    if scores.dtype == torch.float64 and float(scores.abs().amax()) > torch.finfo(torch.float32).max:
        scores = scores / ops.power_of_two_above(scores)  # the same order, within float32
    return scores.to(x.device, torch.float32).reshape(-1)


def select_diverse(unit: torch.Tensor, order: torch.Tensor, tau: float, limit: int) -> torch.Tensor:
    """The greedy pass of Eq. 2: walk ``order`` and keep a token unless its cosine to a kept one is >= tau, until
    ``limit`` are kept. ``unit`` [N, C] are the tokens' unit vectors. Exact, in rounds: every unvisited candidate
    carries its largest cosine to the kept pool (the spec's running s_max, updated with each round's new tokens
    by one blocked product); a round takes the next free candidates (s_max < tau) and settles them among
    themselves with :func:`ops.first_fit`. Only cosines to kept tokens and within a round are formed, about
    N x kept x C flops in all. Returns the kept token indices in visiting order."""
    kept, rest = order[:0], order
    s_max = torch.full((order.numel(),), -torch.inf, dtype=unit.dtype, device=unit.device)
    while kept.numel() < limit:
        free = s_max < tau
        rest, s_max = rest[free], s_max[free]
        if not rest.numel():
            break
        block = min(rest.numel(), max(64, min(2 * (limit - kept.numel()), ROUND)))
        c = unit[rest[:block]]
        taken = ops.first_fit(c @ c.T >= tau, torch.ones(block, dtype=torch.bool, device=unit.device))
        new = rest[:block][taken][: limit - kept.numel()]
        kept, rest, s_max = torch.cat([kept, new]), rest[block:], s_max[block:]
        if kept.numel() < limit:
            step = ops.block_rows(new.numel() + unit.shape[1], unit.dtype, unit.device)
            for start in range(0, rest.numel(), step):
                part = slice(start, start + step)
                s_max[part] = torch.maximum(s_max[part], (unit[rest[part]] @ unit[new].T).amax(1))
    return kept


#: Candidates settled together per round of :func:`select_diverse` (their cosines: ROUND^2 x C flops).
ROUND = 256


def check(p: dict) -> dict:
    """The unified method's parameter values (run at apply and at every call)."""
    p["tau"] = checks.number("tau", p["tau"], -1.0, 1.0)
    p["cluster_ratio"] = checks.number("cluster_ratio", p["cluster_ratio"], 0.0, 1.0)
    p["k"] = checks.integer("k", p["k"], 1)
    p["merge"] = checks.choice("merge", p["merge"], MERGES)
    p["beta"] = checks.number("beta", p["beta"], 0.0, 1.0)
    return p


@register(
    "unified",
    paper="Unified Spatiotemporal Token Compression for Video-LLMs at Ultra-Low Retention (arXiv 2603.21957, CVPR 2026)",
    budget="exact",
    inner=("unified_merge", 0.5),
    check=check,
)
def unified(
    x: torch.Tensor,
    budget: int | None,
    *,
    scores,
    tau: float = 0.7,
    cluster_ratio: float = 0.3,
    k: int = 7,
    merge: str = "mean",
    beta: float = 0.6,
) -> Tokens:
    """Global attention-ordered selection with a redundancy test, then DPC-KNN clustering of the rest.

    Args:
        scores: [T, H, W] contribution scores of the vision encoder (inside a model: supplied), or "norm".
        tau: cosine at or above which a candidate is redundant with the kept pool (0.7).
        cluster_ratio: share of the budget that comes from clustering the recycle pool (0.3); the rest from
            selection. Selection slots left when candidates run out go to clustering.
        k: neighbours of the DPC-KNN density (7).
        merge: "mean" of each cluster's members, center included (the paper's "averaged"), or "center":
            beta * center + (1 - beta) * mean of the others (HoliTom's variant).
        beta: the center's weight for merge="center" (0.6).
    """
    if budget is None:
        raise ValueError("unified needs a retention (its budget)")
    T, H, W, C = x.shape
    n = T * H * W
    flat = x.reshape(n, C)
    score = contribution(x, scores)
    order = torch.sort(-score, stable=True).indices
    n_select = budget - round(cluster_ratio * budget)
    kept = select_diverse(ops.normalize(flat), order, tau, n_select).sort().values
    recycle = torch.ones(n, dtype=torch.bool, device=x.device)
    recycle[kept] = False
    pool = torch.nonzero(recycle).squeeze(1)
    n_clusters = min(budget - kept.numel(), pool.numel())
    source = torch.full((n,), -1, dtype=torch.long, device=x.device)
    if n_clusters:
        centers, cluster = ops.dpc_knn(flat[pool], n_clusters, k, scale=1 / math.sqrt(C))
        weight = None
        if merge == "center":
            size = torch.bincount(cluster, minlength=n_clusters).to(torch.float32)
            others = (size - 1).clamp_min(1)[cluster]
            is_center = torch.zeros_like(cluster, dtype=torch.bool)
            is_center[centers] = True
            weight = torch.where(is_center, torch.tensor(beta), (1 - beta) / others)
            weight = torch.where(is_center & (size[cluster] == 1), torch.tensor(1.0), weight)
        merged = ops.group_mean(flat[pool], cluster, n_clusters, weight)
        reps = pool[centers]
    else:
        merged, reps, cluster = flat[:0], kept[:0], kept[:0]
    source[kept] = torch.arange(kept.numel(), device=x.device)
    if n_clusters:
        source[pool] = kept.numel() + cluster
    info = {"selected": int(kept.numel()), "clusters": int(n_clusters)}
    return Tokens.at_representatives(x, torch.cat([flat[kept], merged]), torch.cat([kept, reps]), source, info)


@register(
    "unified_merge",
    paper="Unified Spatiotemporal Token Compression (arXiv 2603.21957), text-aware merging inside the LLM",
    budget="exact",
    stage="in-llm",
    query_aware=True,
    layer=18,
    check=lambda p: {"lam": checks.number("lam", p["lam"], 0.0, 1.0)},
)
def unified_merge(inputs: LayerInputs, budget: int | None, *, lam: float = 0.5) -> Tokens:
    """Keep the visual tokens with the highest text-aware importance; merge each other one into its most similar
    kept token (a batched mean of the kept token and everything merged into it).

    Importance = (1 - lam) * minmax(max over text tokens of their attention to the token, at layer K-1, mean over
    heads) + lam * minmax(max cosine to the text tokens' hidden states at layer K). Without a retention it keeps
    half (the paper's R = 50%).
    """
    visual, text = inputs.visual, inputs.text
    n, c = visual.shape
    keep = math.ceil(n / 2) if budget is None else min(budget, n)
    if text.shape[0] == 0 or keep >= n:
        return Tokens.select(visual.reshape(1, 1, n, c), torch.arange(keep, device=visual.device))
    attention = inputs.text_attention().amax(0) if lam < 1 else torch.zeros(n, device=visual.device)
    similarity = (ops.normalize(visual) @ ops.normalize(text).T).amax(1) if lam > 0 else torch.zeros_like(attention)
    importance = (1 - lam) * _minmax(attention) + lam * _minmax(similarity)
    return merge_into_kept(visual, ops.top_indices(importance, keep), {"layer": inputs.layer})


def merge_into_kept(visual: torch.Tensor, kept: torch.Tensor, info: dict) -> Tokens:
    """Tokens over N visual tokens (a (1, 1, N) grid): the ``kept`` ones, each the mean of itself and every
    dropped token whose most similar kept token it is (a batched mean, not a sequence of pairwise averages)."""
    n = visual.shape[0]
    target = ops.nearest_kept(visual, kept)
    boxes = torch.stack([torch.zeros_like(kept), torch.zeros_like(kept), kept, torch.ones_like(kept), kept + 1], 1)
    return Tokens.from_source(ops.group_mean(visual, target, kept.numel()), boxes, target, (1, 1, n), info)


def _minmax(v: torch.Tensor) -> torch.Tensor:
    v = v.float()
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)
