"""FastVID: dynamic density pruning (Shen et al., NeurIPS 2025; specs/baselines.md §3), after its official code
(LunarShen/FastVID at a40a109, ``Qwen2Model.forward`` in ``LLaVA-NeXT/llava/model/language_model/
modeling_qwen2.py`` of the ``fastvid_llavaonevision`` fork, lines 902-1068, and of the ``fastvid_llavavideo``
fork, lines 894-1085). By default the output equals the official code's, token for token (tests/data/fastvid).

1. DySeg: t_i = cosine of the global features of frames i and i+1; the video is cut at the ``min_segments - 1``
   lowest transitions and at every transition below ``tau``, into contiguous segments. The global feature is
   SigLIP's attention-pooling (MAP) head output when given (``frame_features``), else the frame's mean token.
2. STPrune. Each frame keeps R = int(r * H*W) tokens' worth of slots; ``context_share`` d of them are context
   (anchor) slots, pooled per segment onto its anchor frames (every ``anchor_stride``-th frame counted back from
   the segment's last frame), the rest are salient slots.
   - ATS: each frame keeps its salient tokens of highest vision-encoder saliency (``scores``).
   - DTM: in each anchor frame DPC-KNN (distances ||xi - xj|| / sqrt(C), density from the k = 4 nearest) over
     its non-salient tokens picks the anchors. For each anchor frame, every non-salient token of the segment
     joins that frame's most cosine-similar anchor, so with several anchor frames a token feeds one anchor in
     each; an anchor becomes w * anchor + (1 - w) * mean(members), w = max(1 / (members + 1), beta).
   Salient tokens are kept as they are; every token sits at its own position: output in (t, y, x) order.

The two forks (``fork``) differ in the counts and in who merges:

- ``"onevision"`` (the generic code): every frame has S = R - int(R * d) salient slots; a segment of L frames
  with A anchor frames gives each of them (X * L) // A anchors, X = R - S. Frames holding exactly X anchors (a
  one-frame segment, every frame when ``anchor_stride=1``, or (X * L) // A = X by chance) merge only their own
  tokens; an anchor is one of its own members.
- ``"llavavideo"`` (hard-coded there to 64 frames of 13 x 13 with row newlines; here any grid, no newlines): a
  segment has int(R * L * d) anchors and R * L - that salient tokens, both spread over its frames with remainders
  (salient: the first frames one more; anchors: the anchor frames, the last ones one more); for each anchor frame
  the segment's tokens that are neither salient nor that frame's anchors join its anchors, so an anchor is not
  in its own mean.

Budget (``allocation``): ``"official"`` keeps the official count, at most the budget B = round(r * T*H*W):
it floors R per frame and the anchors per segment. R is read off the budget as B // T, which is int(r * H*W)
unless r * H*W lies within 0.5 / T below an integer (the method sees B, not r). Measured with the default
parameters (golden inputs and synthetic clips), never over: 32x14x14 at 10% keeps 603-608 of 627 (-3.0% to
-3.8%); at 2% 91-96 of 125 (-23% to -27%: R = 3); 64x13x13 at 10% 1019-1024 of 1082 (-5.4% to -5.8%). The
LLaVA-Video fork always keeps T * R (608, 96, 1024). ``"exact"`` returns exactly B: frame t gets
R_t = floor(B (t+1) / T) - floor(B t / T) (R or R + 1), each fork's rule forms the salient and anchor counts from
those (its anchors spread over the anchor frames with remainders instead of floored), and the rest (segments,
merge rules, which frames merge alone) is the official algorithm.

Where the official code raises, a sensible result instead (documented, not official):

- fewer frames than ``min_segments`` (``torch.topk`` of c - 1 of T - 1 transitions): every transition is cut;
- no anchor slot (OneVision: int(R * d) = 0, e.g. R <= 2 at d = 0.4, argmax over no anchor; LLaVA-Video: a
  segment with no anchor or no salient slot, ``torch.cat`` of nothing): the rules run on what there is (with no
  anchor, the tokens that would merge are dropped);
- more anchors than an anchor frame's non-salient tokens (from about r = 0.45 with 4-frame segments,
  ``torch.topk`` out of range): the extra anchors are spread over the segment's other frames (the extra ones
  to the latest);
- R = 0 (r * H*W < 1: the official code would keep no token): the ``"exact"`` split;
- every token asked for (r = 1): the input, unchanged (the official code raises for any multi-frame segment).

Ties go to the lower index (salient top-k, DPC-KNN density, lowest transitions, most similar anchor) instead of
``torch.topk`` order and the official 1e-6 density noise, so the output is deterministic. Bookkeeping: a token
feeding several anchors has one ``source``, its most similar anchor of those.
"""

from __future__ import annotations

import math

import torch

from .. import checks, ops
from ..registry import register
from ..tokens import Tokens
from .unified import contribution

FORKS = ("onevision", "llavavideo")
ALLOCATIONS = ("official", "exact")


def frame_features(x: torch.Tensor) -> torch.Tensor:
    """[T, C] global feature of each frame: the mean of its tokens (the stand-in for SigLIP's MAP head), computed
    a chunk of frames at a time in the compute dtype."""
    T, H, W, C = x.shape
    cd = ops.compute_dtype(x.dtype)
    g = torch.empty(T, C, dtype=cd, device=x.device)
    for part in ops.frame_chunks(x):
        g[part] = ops.safe_mean(x[part].reshape(-1, H * W, C).to(cd), 1)
    return g


def segment_lengths(global_features: torch.Tensor, min_segments: int, tau: float) -> list[int]:
    """DySeg: the lengths of the contiguous segments cut at the ``min_segments - 1`` lowest transition cosines
    (ties: the earlier transition; all of them when there are fewer) and at every transition cosine below
    ``tau``."""
    T = global_features.shape[0]
    if T == 1:
        return [1]
    unit = ops.normalize(global_features)
    similarity = (unit[:-1] * unit[1:]).sum(-1)
    cut = similarity < tau
    cut[ops.top_indices(-similarity, min_segments - 1)] = True
    bounds = [0, *(torch.nonzero(cut).squeeze(1) + 1).tolist(), T]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def spread(total: int, parts: int, extra_last: bool) -> list[int]:
    """``total`` over ``parts`` as the official code splits with remainders: quotient each, one more for the
    first (or, ``extra_last``, the last) ``total % parts``."""
    q, rem = divmod(total, parts)
    extra = [1] * rem + [0] * (parts - rem)
    return [q + e for e in (extra[::-1] if extra_last else extra)]


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


def anchor_offsets(length: int, stride: int) -> list[int]:
    """The anchor frames of a segment (offsets, ascending): its last frame and every ``stride``-th before it."""
    return list(range(length - 1, -1, -stride))[::-1]


def allocate(
    retain: list[int], lengths: list[int], n: int, context_share: float, anchor_stride: int, fork: str, official: bool
) -> tuple[list[int], list[int]]:
    """Salient and anchor slots of each frame from each frame's retained count ``retain`` (official: R for all),
    by the fork's rule (module notes). Anchors an anchor frame cannot hold (more than its non-salient tokens)
    are spread over the segment's other frames (the extra ones to the latest)."""
    salient, anchors, start = [], [0] * len(retain), 0
    for length in lengths:
        seg = retain[start : start + length]
        if fork == "onevision":
            sal = [r - int(r * context_share) for r in seg]
            context = sum(seg) - sum(sal)
        else:
            context = int(sum(seg) * context_share)
            sal = spread(sum(seg) - context, length, extra_last=False)
        frames = anchor_offsets(length, anchor_stride)
        if official and fork == "onevision":
            per = [context // len(frames)] * len(frames)
        else:
            per = spread(context, len(frames), extra_last=True)
        ctx = [0] * length
        for f, a in zip(frames, per):
            ctx[f] = min(a, n - sal[f])
        excess = sum(per) - sum(ctx)
        if excess:
            order = list(range(length - 1, -1, -1))
            got, _ = fill(excess, [n - sal[f] - ctx[f] for f in order])
            for f, g in zip(order, got):
                ctx[f] += g
        salient += sal
        anchors[start : start + length] = ctx
        start += length
    return salient, anchors


def merges_alone(lengths: list[int], per_frame: int, context_share: float, anchor_stride: int) -> list[bool]:
    """OneVision fork, per segment: whether its frames merge only their own tokens (the official single-frame
    path, taken by frames whose anchor count equals X = int(R * d): one-frame segments, ``anchor_stride=1``, and
    segments where (X * L) // A happens to equal X)."""
    X = int(per_frame * context_share)
    return [
        anchor_stride == 1 or (X > 0 and X * L // len(anchor_offsets(L, anchor_stride)) == X) for L in lengths
    ]


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


def blend(rows: torch.Tensor, group: torch.Tensor, anchors: torch.Tensor, beta: float) -> torch.Tensor:
    """[A, C] the merged anchors: w * anchor + (1 - w) * mean of the rows [M, C] in its group (``group`` [M] in
    [0, A], A = none), w = max(1 / (members + 1), beta); an anchor with no member stays itself."""
    A = anchors.shape[0]
    sums = group_sums(rows, group, A)
    count = torch.bincount(group, minlength=A + 1)[:A].to(sums.dtype)[:, None]
    w = (1 / (count + 1)).clamp_min(beta)
    a = anchors.to(sums.dtype)
    if bool(torch.isfinite(sums).all()):
        return w * a + (1 - w) * sums / count.clamp_min(1)
    k = 2.0 ** math.frexp(rows.shape[0])[1]  # the sums overflowed: sum x / 2**k and blend in that scale
    return (w * (a / k) + (1 - w) * group_sums(rows, group, A, k) / count.clamp_min(1)) * k


def check(p: dict) -> dict:
    """FastVID's parameter values (run at apply and at every call); ``frame_features``' shape is checked
    against the input in the method."""
    p["min_segments"] = checks.integer("min_segments", p["min_segments"], 1)
    p["tau"] = checks.number("tau", p["tau"], -1.0, 1.0)
    p["context_share"] = checks.number("context_share", p["context_share"], 0.0, 1.0)
    p["anchor_stride"] = checks.integer("anchor_stride", p["anchor_stride"], 1)
    p["beta"] = checks.number("beta", p["beta"], 0.0, 1.0)
    p["k"] = checks.integer("k", p["k"], 1)
    p["fork"] = checks.choice("fork", p["fork"], FORKS)
    p["allocation"] = checks.choice("allocation", p["allocation"], ALLOCATIONS)
    g = p["frame_features"]
    if g is not None:
        if not isinstance(g, torch.Tensor):
            raise TypeError(
                "frame_features must be a [T, D] tensor (SigLIP's MAP-head output per frame) or None (the mean "
                f"token of each frame), got {type(g).__name__}"
            )
        checks.plain_tensor(g, "frame_features")
    return p


def global_features(x: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
    """DySeg's [T, D] frame features: the given MAP-head features (checked against x), else the frame means."""
    if given is None:
        return frame_features(x)
    T = x.shape[0]
    if given.ndim != 2 or given.shape[0] != T or given.shape[1] == 0:
        raise ValueError(f"frame_features must have shape [T, D] = [{T}, D], got {list(given.shape)}")
    if not given.is_floating_point() or not bool(torch.isfinite(given).all()):
        raise ValueError("frame_features must be finite floating-point values")
    return given.to(x.device, ops.compute_dtype(given.dtype))


@register(
    "fastvid",
    paper="Shen et al., FastVID: Dynamic Density Pruning for Fast Video Large Language Models, NeurIPS 2025 (arXiv 2503.11187)",
    budget="official",
    check=check,
    signals={"scores": "head_attention", "frame_features": "head"},  # SigLIP's MAP head, where the model has one
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
    fork: str = "onevision",
    allocation: str = "official",
    frame_features: torch.Tensor | None = None,
) -> Tokens:
    """Dynamic segments, then per segment the most salient tokens of each frame plus density-picked anchors that
    absorb the rest.

    Args:
        scores: [T, H, W] saliency of each token in the vision encoder: FastVID's is the probe attention of
            SigLIP's MAP head, pooled like the features; or pass "norm". Inside LLaVA-OneVision framepress
            computes it with the head ``apply(..., siglip_head=...)`` names (without one: the SigLIP attention
            each token receives, a stand-in, with a warning); in Qwen-VL the pseudo-CLS score, as the official
            Qwen2.5-VL fork does.
        min_segments: DySeg c (8): the c - 1 lowest transitions are always cut.
        tau: DySeg tau (0.9): every transition whose cosine is below it is cut too.
        context_share: STPrune d (0.4), the share of the retained slots that are anchors.
        anchor_stride: DTM p (4): every p-th frame from a segment's end is an anchor frame.
        beta: DTM beta (0.6), the least weight of an anchor in its merged feature.
        k: neighbours of the DPC-KNN density (4, the point itself included).
        fork: "onevision" (the official generic code, default) or "llavavideo" (the LLaVA-Video fork's counts
            and merge); a model adapter cannot tell LLaVA-Video-hf from LLaVA-OneVision, so pass it there too.
        allocation: "official" (the official counts, at most the budget: 3-4% under at 10% of 32x14x14, 23-27%
            at 2%, 5.4-5.8% at 10% of 64x13x13) or "exact" (exactly the budget, the official algorithm otherwise).
        frame_features: [T, D] each frame's global feature for DySeg, FastVID's SigLIP MAP-head output; None:
            the frame's mean token (the HF LLaVA checkpoints drop the head; the official Qwen2.5-VL fork's own
            choice). Inside LLaVA-OneVision with ``siglip_head``: the head's output, computed per frame.

    ``info``: the segment lengths, R (the official per-frame count) and the numbers of salient and context
    (anchor) tokens.
    """
    if budget is None:
        raise ValueError("fastvid needs a retention (its budget)")
    T, H, W, C = x.shape
    n = H * W
    budget = checks.integer("budget", budget, 1, T * n)
    score = contribution(x, scores).reshape(T, n)
    lengths = segment_lengths(global_features(x, frame_features), min_segments, tau)
    if budget == T * n:
        info = {"segments": lengths, "per_frame": n, "salient": T * n, "context": 0}
        return Tokens.select(x, torch.arange(T * n, device=x.device), info)
    per_frame = budget // T
    official = allocation == "official" and per_frame > 0
    retain = [per_frame] * T if official else [budget * (t + 1) // T - budget * t // T for t in range(T)]
    n_salient, n_anchors = allocate(retain, lengths, n, context_share, anchor_stride, fork, official)
    if fork == "onevision":
        alone = merges_alone(lengths, per_frame, context_share, anchor_stride)
    else:
        alone = [False] * len(lengths)
    dev = x.device
    flat = x.reshape(T * n, C)

    # ATS: each frame's top tokens by saliency (ties: the lower index)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=dev).expand(T, n))
    salient = (rank < torch.tensor(n_salient, device=dev)[:, None]).reshape(-1)  # [T*n]

    # DTM anchors: DPC-KNN among each anchor frame's non-salient tokens (ascending positions)
    frame_anchors = {}
    for t in (t for t in range(T) if n_anchors[t]):
        local = torch.nonzero(~salient[t * n : (t + 1) * n]).squeeze(1)
        centers, _ = ops.dpc_knn(flat[t * n + local], n_anchors[t], k, scale=1 / math.sqrt(C))
        frame_anchors[t] = t * n + local[centers]

    owner = torch.full((T * n,), -1, dtype=torch.long, device=dev)
    owner[salient] = torch.nonzero(salient).squeeze(1)
    merged = {}
    start = 0
    for length, own in zip(lengths, alone):
        frames = [t for t in range(start, start + length) if t in frame_anchors]
        # (first frame, end frame) of the tokens that merge into frame t's anchors
        spans = {t: (t, t + 1) if own else (start, start + length) for t in frames}
        for t, (lo, hi) in spans.items():
            rows, targets = flat[lo * n : hi * n], frame_anchors[t]
            nearest = nearest_anchor(rows, flat[targets])
            joins = ~salient[lo * n : hi * n]
            if fork == "llavavideo":
                joins[targets - lo * n] = False
            merged[t] = blend(rows, torch.where(joins, nearest, targets.numel()), flat[targets], beta)
            if own or len(frames) == 1:  # bookkeeping: the anchor each merged token went into
                owner[lo * n : hi * n] = torch.where(salient[lo * n : hi * n], owner[lo * n : hi * n], targets[nearest])
        if not own and len(frames) > 1:  # a token feeds an anchor of each frame: its source is the most similar
            pool = torch.cat([frame_anchors[t] for t in frames])
            lo, hi = start * n, (start + length) * n
            near = pool[nearest_anchor(flat[lo:hi], flat[pool])]
            owner[lo:hi] = torch.where(salient[lo:hi], owner[lo:hi], near)
        start += length
    anchors = torch.cat(list(frame_anchors.values())) if frame_anchors else owner[:0]
    owner[anchors] = anchors

    kept = torch.nonzero(owner == torch.arange(T * n, device=dev)).squeeze(1)
    slot = torch.full((T * n,), -1, dtype=torch.long, device=dev)
    slot[kept] = torch.arange(kept.numel(), device=dev)
    source = torch.where(owner >= 0, slot[owner.clamp_min(0)], -1)
    out = flat[kept].clone()
    if merged:
        out[slot[anchors]] = torch.cat(list(merged.values())).to(x.dtype)
    info = {"segments": lengths, "per_frame": per_frame, "salient": int(salient.sum()), "context": int(anchors.numel())}
    return Tokens.at_representatives(x, out, kept, source, info)
