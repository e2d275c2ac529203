"""FastVID: dynamic density pruning (Shen et al., NeurIPS 2025; specs/baselines.md §3), after its official code
(LunarShen/FastVID, ``modeling_qwen2.py``).

1. DySeg: t_i = cosine of the global features of frames i and i+1; the video is cut at the ``min_segments - 1``
   lowest transitions and at every transition below ``tau``, into contiguous segments.
2. STPrune, per segment: its share of the budget by frame count, ``context_share`` of that for context tokens
   (DTM), the rest for salient tokens (ATS).
   - ATS: the salient tokens are spread evenly over the segment's frames; each frame keeps its tokens of highest
     vision-encoder saliency.
   - DTM: the context slots are spread over the anchor frames, every ``anchor_stride``-th frame counted from the
     segment's end. In each anchor frame DPC-KNN (ops.dpc_knn, distances ||xi - xj|| / sqrt(C), k = 4) over its
     non-salient tokens picks the anchors. Every non-salient token of the segment, in any of its frames, joins
     its most cosine-similar anchor of the segment, and each anchor becomes beta' * anchor + (1 - beta') *
     mean(members), beta' = max(beta, 1 / (n + 1)).
   Salient tokens are kept as they are and anchors sit at their own position: output in (t, y, x) order.

Deviations from the official code, each for the library's contracts or its inputs:

- Global feature: the official code re-attaches SigLIP's attention-pooling (MAP) head, which the HF LLaVA
  checkpoints do not ship; here a frame's global feature is the mean of its tokens.
- Exact budget: the official code floors per frame (floor(r * H*W) a frame, floor(d * that) of it context, the
  context slots floored per anchor frame) and lands under r * T*H*W. Here segment [a, b) gets
  floor(B*b/T) - floor(B*a/T) tokens (by frame count, summing to B), floor(context_share * that) of them
  context; salient and context slots are spread evenly (the extra ones to later frames). Anchor frames hold at
  most their non-salient tokens: the context slots they cannot hold (from about 45% retention with the
  defaults, where the official code fails) go to the segment's other frames, latest first.
- One output per input token: the official code assigns each token of a segment once per anchor frame (to the
  nearest anchor of each), so one token feeds several anchors; here it joins its single most similar anchor of
  the segment, as the spec describes. An anchor's members include the anchor itself (its own most
  similar anchor, as in the official code), so n >= 1 and an anchor nothing else joined stays itself. With
  ``anchor_stride=1`` the official code merges within each frame only; here the rule above still holds.
- Ties go to the lower index (salient top-k, DPC-KNN density, lowest transitions, most similar anchor) instead
  of ``torch.topk`` order and the official 1e-6 random noise, so the output is deterministic.
"""

from __future__ import annotations

import math

import torch

from .. import checks, ops
from ..registry import register
from ..tokens import Tokens
from .unified import contribution


def frame_features(x: torch.Tensor) -> torch.Tensor:
    """[T, C] global feature of each frame: the mean of its tokens (stand-in for SigLIP's MAP head), computed a
    chunk of frames at a time in the compute dtype."""
    T, H, W, C = x.shape
    cd = ops.compute_dtype(x.dtype)
    g = torch.empty(T, C, dtype=cd, device=x.device)
    for part in ops.frame_chunks(x):
        g[part] = ops.safe_mean(x[part].reshape(-1, H * W, C).to(cd), 1)
    return g


def segment_lengths(global_features: torch.Tensor, min_segments: int, tau: float) -> list[int]:
    """DySeg: the lengths of the contiguous segments cut at the ``min_segments - 1`` lowest transition cosines
    (ties: the earlier transition) and at every transition cosine below ``tau``."""
    T = global_features.shape[0]
    if T == 1:
        return [1]
    unit = ops.normalize(global_features)
    similarity = (unit[:-1] * unit[1:]).sum(-1)
    cut = similarity < tau
    cut[ops.top_indices(-similarity, min_segments - 1)] = True
    bounds = [0, *(torch.nonzero(cut).squeeze(1) + 1).tolist(), T]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def even_split(total: int, parts: int) -> list[int]:
    """``total`` over ``parts`` as evenly as integers allow, the extra ones spread towards the end; sums exactly."""
    return [total * (i + 1) // parts - total * i // parts for i in range(parts)]


def fill(total: int, caps: list[int]) -> tuple[list[int], int]:
    """Water-fill ``total`` slots over buckets of capacity ``caps`` (priority order: extra slots go to the first
    buckets with room). Returns the slots of each bucket and the slots nothing could hold."""
    got = [0] * len(caps)
    while total > 0:
        room = [i for i, c in enumerate(caps) if got[i] < c]
        if not room:
            break
        share = total // len(room)
        if share == 0:
            for i in room[:total]:
                got[i] += 1
            return got, 0
        for i in room:
            take = min(share, caps[i] - got[i])
            got[i] += take
            total -= take
    return got, total


def allocate(
    budget: int, lengths: list[int], per_frame: int, context_share: float, anchor_stride: int
) -> tuple[list[int], list[int]]:
    """Salient and context (anchor) slots of each frame; they sum exactly to ``budget`` and each frame's two
    counts fit its ``per_frame`` tokens."""
    T = sum(lengths)
    salient, anchors = [0] * T, [0] * T
    start = 0
    for length in lengths:
        end = start + length
        seg_budget = budget * end // T - budget * start // T
        n_context = min(seg_budget, math.floor(context_share * seg_budget + 1e-9))
        salient[start:end] = even_split(seg_budget - n_context, length)
        anchor_frames = list(range(end - 1, start - 1, -anchor_stride))
        other_frames = [f for f in range(end - 1, start - 1, -1) if (end - 1 - f) % anchor_stride]
        left = n_context
        for frames in (anchor_frames, other_frames):
            got, left = fill(left, [per_frame - salient[f] for f in frames])
            for f, g in zip(frames, got):
                anchors[f] = g
        assert left == 0, "context slots exceed the segment's non-salient tokens"
        start = end
    return salient, anchors


def nearest_anchor(rows: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """[M]: for each of the M ``rows`` [M, C] (a contiguous block of tokens) the position in ``anchors`` [A, C]
    of its most cosine-similar anchor (ties: the first). A row's own norm does not change which anchor is
    nearest, so only the anchors are normalized and the rows are read in place, a chunk at a time."""
    unit = ops.normalize(anchors)
    target = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
    item = (rows.shape[1] + anchors.shape[0]) * torch.finfo(unit.dtype).bits // 8
    for part in ops.chunks(rows.shape[0], item, rows.device):
        block = rows[part].to(unit.dtype)
        dots = block @ unit.T
        if not bool(torch.isfinite(dots).all()):  # huge rows: the same order from rows / 2**k
            dots = (block / ops.power_of_two_above(block)) @ unit.T
        target[part] = dots.argmax(1)
    return target


def group_sums(rows: torch.Tensor, group: torch.Tensor, n_groups: int, scale: float = 1.0) -> torch.Tensor:
    """[n_groups, C] sums of the rows [M, C] of each group divided by ``scale``, in the compute dtype; rows of
    group ``n_groups`` are left out. Rows are read in place, a contiguous chunk at a time."""
    cd = ops.compute_dtype(rows.dtype)
    total = torch.zeros(n_groups + 1, rows.shape[1], dtype=cd, device=rows.device)
    for part in ops.chunks(rows.shape[0], rows.shape[1] * torch.finfo(cd).bits // 8, rows.device):
        total.index_add_(0, group[part], rows[part].to(cd) if scale == 1 else rows[part].to(cd) / scale)
    return total[:n_groups]


def check(p: dict) -> dict:
    """FastVID's parameter values (run at apply and at every call)."""
    p["min_segments"] = checks.integer("min_segments", p["min_segments"], 1)
    p["tau"] = checks.number("tau", p["tau"], -1.0, 1.0)
    p["context_share"] = checks.number("context_share", p["context_share"], 0.0, 1.0)
    p["anchor_stride"] = checks.integer("anchor_stride", p["anchor_stride"], 1)
    p["beta"] = checks.number("beta", p["beta"], 0.0, 1.0)
    p["k"] = checks.integer("k", p["k"], 1)
    return p


@register(
    "fastvid",
    paper="Shen et al., FastVID: Dynamic Density Pruning for Fast Video Large Language Models, NeurIPS 2025 (arXiv 2503.11187)",
    budget="exact",
    check=check,
)
def fastvid(
    x: torch.Tensor,
    budget: int | None,
    *,
    scores,
    min_segments: int = 8,
    tau: float = 0.9,
    context_share: float = 0.4,
    anchor_stride: int = 4,
    beta: float = 0.6,
    k: int = 4,
) -> Tokens:
    """Dynamic segments, then per segment the most salient tokens of each frame plus density-picked anchors.

    Args:
        scores: [T, H, W] saliency of each token in the vision encoder (inside a model: supplied; FastVID's
            official recipe is SigLIP's MAP-head probe attention, spec unified.md §4.2, or the Qwen-VL
            pseudo-CLS score, §4.4), or "norm".
        min_segments: DySeg c, the least number of segments (8): the c - 1 lowest transitions are always cut.
        tau: DySeg tau (0.9): every transition whose cosine is below it is cut too.
        context_share: STPrune d (0.4), the share of a segment's budget for context tokens (anchors).
        anchor_stride: DTM p (4): every p-th frame from a segment's end is an anchor frame.
        beta: DTM beta (0.6), the least weight of an anchor in its merged feature.
        k: neighbours of the DPC-KNN density (4, the point itself included).

    A frame's global feature (DySeg) is the mean of its tokens: the official SigLIP MAP head is not in the HF
    checkpoints. The budget is exact (see the module notes for how it is split); a frame or a segment with no
    slot keeps nothing, and a segment with no context slot drops its non-salient tokens. ``info``: the segment
    lengths and the numbers of salient and context tokens.
    """
    if budget is None:
        raise ValueError("fastvid needs a retention (its budget)")
    T, H, W, C = x.shape
    n = H * W
    budget = checks.integer("budget", budget, 1, T * n)
    score = contribution(x, scores).reshape(T, n)
    dev = x.device
    flat = x.reshape(T * n, C)
    lengths = segment_lengths(frame_features(x), min_segments, tau)
    n_salient, n_anchors = allocate(budget, lengths, n, context_share, anchor_stride)

    # ATS: each frame's top tokens by saliency (ties: the lower index)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=dev).expand(T, n))
    salient = rank < torch.tensor(n_salient, device=dev)[:, None]  # [T, n]

    # DTM: anchors by DPC-KNN among each anchor frame's non-salient tokens
    anchors = []
    for t in (t for t in range(T) if n_anchors[t]):
        local = torch.nonzero(~salient[t]).squeeze(1)
        distances = ops.pairwise_distances(flat[t * n + local], scale=1 / math.sqrt(C))
        centers, _ = ops.dpc_knn(distances, n_anchors[t], k)
        anchors.append(t * n + local[centers])
    anchors = torch.cat(anchors) if anchors else torch.empty(0, dtype=torch.long, device=dev)

    # every non-salient token of a segment joins its most similar anchor of the segment (an anchor: itself)
    anchors = anchors.sort().values
    owner = torch.full((T * n,), -1, dtype=torch.long, device=dev)
    salient_flat = salient.reshape(-1)
    owner[salient_flat] = torch.nonzero(salient_flat).squeeze(1)
    start = 0
    for length in lengths:
        lo, hi = start * n, (start + length) * n
        seg_anchors = anchors[(anchors >= lo) & (anchors < hi)]
        if seg_anchors.numel():
            nearest = seg_anchors[nearest_anchor(flat[lo:hi], flat[seg_anchors])]
            owner[lo:hi] = torch.where(salient_flat[lo:hi], owner[lo:hi], nearest)
        start += length
    owner[anchors] = anchors

    kept = torch.nonzero(owner == torch.arange(T * n, device=dev)).squeeze(1)
    slot = torch.full((T * n,), -1, dtype=torch.long, device=dev)
    slot[kept] = torch.arange(kept.numel(), device=dev)
    source = torch.where(owner >= 0, slot[owner.clamp_min(0)], -1)
    out = flat[kept].clone()
    if anchors.numel():  # anchor <- beta' a + (1 - beta') mean(members), members include the anchor itself
        A = anchors.numel()
        merged = (owner >= 0) & ~salient_flat
        group = torch.where(merged, torch.searchsorted(anchors, owner), A)
        count = torch.bincount(group, minlength=A + 1)[:A]
        sums = group_sums(flat, group, A)
        count = count.to(sums.dtype)[:, None]
        weight = (1 / (count + 1)).clamp_min(beta)
        grew = count[:, 0] > 1  # an anchor nothing else joined stays exactly itself
        a = flat[anchors[grew]].to(sums.dtype)
        if bool(torch.isfinite(sums).all()):
            blend = weight[grew] * a + (1 - weight[grew]) * sums[grew] / count[grew]
        else:  # the sums overflowed: sum x / 2**k (2**k >= the rows) and blend in that scale
            k = 2.0 ** math.frexp(flat.shape[0])[1]
            sums = group_sums(flat, group, A, k)
            blend = (weight[grew] * (a / k) + (1 - weight[grew]) * sums[grew] / count[grew]) * k
        out[slot[anchors[grew]]] = blend.to(x.dtype)
    info = {"segments": lengths, "salient": int(salient_flat.sum()), "context": int(anchors.numel())}
    return Tokens.at_representatives(x, out, kept, source, info)
