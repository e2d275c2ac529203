"""VisionZip (Yang et al., CVPR 2025; specs/baselines.md §2), per frame as its LLaVA-OneVision / LLaVA-Video port
runs it: in each frame keep the dominant tokens (most attention received in the vision encoder) and condense the
rest into a few contextual tokens.

Contextual tokens: among the frame's remaining tokens, targets at a uniform stride in token order; every other
remaining token joins its most cosine-similar target. The official code sets a contextual token to the target
*plus* the mean of the tokens assigned to it (a sum, not a re-average): ``contextual="sum"`` replicates that,
``"mean"`` averages the target with them.

Faithful to the official port (cokeshao/HoliTom visionzip/llava_arch.py; golden/visionzip/README.md): each
frame's S tokens split into int(S * dominant_share) dominant and the rest contextual (lines 63-66: floor, so
S = 20 is 16 + 4); the assignment to targets uses ``metric`` (the official: SigLIP's last-layer keys, pooled like
the features; standalone default: the features). Output order is the official LLaVA-OneVision one: per frame the
dominant tokens in position order, then the contextual ones in target order. The official budget is exact (S a
frame), so there is no other allocation. Official issues not copied: ``dominant_share=1`` divides by zero there
(here: no contextual token); a zero metric vector gives NaN cosines there (here: the norm is clamped at 1e-8);
in grid mode the official sort puts dominant content at other tokens' positions (README fact 4; here every token
stands at its own position).
"""

from __future__ import annotations

import torch

from .. import checks, ops
from ..registry import register
from ..tokens import Tokens
from .unified import contribution

CONTEXTUAL = ("sum", "mean")


def frame_budgets(budget: int, frames: int, per_frame: int) -> torch.Tensor:
    """An exact total spread over frames: budget // T each, one more for the first budget % T frames."""
    if budget > frames * per_frame:
        raise ValueError(f"budget {budget} exceeds the {frames * per_frame} tokens")
    base = torch.full((frames,), budget // frames, dtype=torch.long)
    base[: budget % frames] += 1
    return base


def check(p: dict) -> dict:
    """VisionZip's parameter values (run at apply and at every call)."""
    p["dominant_share"] = checks.number("dominant_share", p["dominant_share"], 0.0, 1.0)
    p["contextual"] = checks.choice("contextual", p["contextual"], CONTEXTUAL)
    if p["metric"] is not None and not isinstance(p["metric"], torch.Tensor):
        raise TypeError(f"metric must be a [T, H, W, D] tensor (e.g. SigLIP keys) or None, got {type(p['metric']).__name__}")
    return p


def similarity_metric(metric, x: torch.Tensor) -> torch.Tensor:
    """[T, n, D] unit vectors of the metric the contextual assignment compares (x's own features if None)."""
    T, H, W, _ = x.shape
    if metric is None:
        return ops.normalize(x.reshape(T, H * W, -1))
    checks.plain_tensor(metric, "metric")
    if metric.ndim != 4 or tuple(metric.shape[:3]) != (T, H, W) or metric.shape[3] == 0:
        raise ValueError(f"metric must have shape [T, H, W, D] = [{T}, {H}, {W}, D], got {list(metric.shape)}")
    if not metric.is_floating_point() or not bool(torch.isfinite(metric).all()):
        raise ValueError("metric must be finite floating-point values")
    return ops.normalize(metric.to(x.device).reshape(T, H * W, -1))


@register(
    "visionzip",
    paper="Yang et al., VisionZip, CVPR 2025 (arXiv 2412.04467)",
    budget="exact",
    check=check,
    shown={"dominant_share": "54/64"},
    scale_invariant=True,
    signals={"scores": "scores", "metric": "keys"},  # in LLaVA-OV: the official port's SigLIP keys
)
def visionzip(
    x: torch.Tensor,
    budget: int | None,
    *,
    scores,
    dominant_share: float = 54 / 64,
    contextual: str = "sum",
    metric: torch.Tensor | None = None,
) -> Tokens:
    """Per frame: the dominant tokens by vision attention, plus contextual tokens condensing the rest.

    Args:
        scores: [T, H, W] attention each token receives in the vision encoder (inside a model: supplied), or
            "norm".
        dominant_share: share of each frame's budget for dominant tokens (54/64, the paper's 54+10 split).
        contextual: "sum" (official: target + mean of its assigned tokens) or "mean".
        metric: [T, H, W, D] vectors whose cosine assigns the remaining tokens to contextual targets (official:
            SigLIP last-layer keys, mean over heads, pooled like the features); None: the features themselves.
            Inside LLaVA-OneVision framepress computes the official keys (of the layer feeding the projector);
            in Qwen-VL, which the official port does not cover, the features.

    The budget is exact: budget // T tokens a frame, one more for the first budget % T frames (a frame with no
    budget is dropped), split int(S * dominant_share) dominant + the rest contextual as the official code does
    (equal to it on every golden case, both metrics). A "sum" can exceed x's range (float16 features near 40000): the sums are formed in
    float32 (float64 for float64), and where one would overflow x's dtype all features are returned in that
    wider dtype.
    """
    if budget is None:
        raise ValueError("visionzip needs a retention (its budget)")
    T, H, W, C = x.shape
    n = H * W
    score = contribution(x, scores).reshape(T, n)
    dev = x.device
    per_frame = frame_budgets(budget, T, n).to(dev)
    n_dom = (per_frame.double() * dominant_share).floor().long()  # int(S * dominant_ratio), llava_arch.py:65
    n_ctx = per_frame - n_dom
    unit = similarity_metric(metric, x)
    rank_of = torch.empty(T, n, dtype=torch.long, device=dev)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank_of.scatter_(1, order, torch.arange(n, device=dev).expand(T, n))
    dominant = rank_of < n_dom[:, None]
    rest = ~dominant
    rest_rank = torch.cumsum(rest, 1) - 1  # order among the frame's remaining tokens
    n_rest = rest.sum(1)
    stride = torch.clamp(n_rest // n_ctx.clamp_min(1), min=1)
    target = rest & (rest_rank % stride[:, None] == 0) & (rest_rank // stride[:, None] < n_ctx[:, None])
    cos = unit @ unit.transpose(1, 2)  # [T, n, n]
    nearest = cos.masked_fill(~target[:, None, :], -torch.inf).argmax(2)  # each token's most similar target
    flat = torch.arange(T * n, device=dev).reshape(T, n)
    owner = torch.full((T, n), -1, dtype=torch.long, device=dev)
    owner[dominant] = flat[dominant]
    owner[target] = flat[target]
    assigned = rest & ~target & (n_ctx[:, None] > 0)
    owner[assigned] = torch.gather(flat, 1, nearest)[assigned]
    kept = torch.nonzero((dominant | target).reshape(-1)).squeeze(1)
    kept = kept[torch.argsort(kept // n * 2 + target.reshape(-1)[kept], stable=True)]  # frame, dominant first
    slot = torch.full((T * n,), -1, dtype=torch.long, device=dev)
    slot[kept] = torch.arange(kept.numel(), device=dev)
    source = torch.where(owner.reshape(-1) >= 0, slot[owner.reshape(-1).clamp_min(0)], -1)
    feats = x.reshape(T * n, C)
    out = feats[kept].clone()
    is_target = target.reshape(-1)[kept]
    if bool(assigned.any()):
        members = torch.nonzero(assigned.reshape(-1)).squeeze(1)
        mean = ops.group_mean(feats[members], source[members], kept.numel())
        has = torch.bincount(source[members], minlength=kept.numel()) > 0
        if contextual == "sum":
            cd = ops.compute_dtype(x.dtype)
            total = feats[kept][has].to(cd) + mean[has].to(cd)
            if bool(torch.isfinite(total.to(x.dtype)).all()):
                out[has] = total.to(x.dtype)
            else:  # the sums leave x's range: return every feature in the wider dtype
                out = out.to(cd)
                out[has] = total
        else:
            both = torch.cat([members, kept[is_target]])
            out = torch.where(is_target[:, None], ops.group_mean(feats[both], source[both], kept.numel()), out)
    t, rem = kept // n, kept % n
    y, xx = rem // W, rem % W
    boxes = torch.stack([t, y, xx, y + 1, xx + 1], 1)
    return Tokens.from_source(out, boxes, source, (T, H, W), {"dominant": int(dominant.sum()), "contextual": int(target.sum())})
