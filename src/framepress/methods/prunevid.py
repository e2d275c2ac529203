"""PruneVid: visual token pruning for video LLMs (Huang et al., ACL 2025 Findings; specs/baselines.md §6), after
its official code (Visual-AI/PruneVid, PLLaVA: ``modeling_pllava.py`` ``merge_frames_dynamic``, ``llama.py`` and
``elastic_cache.py`` ``VTPWindowCache``).

Pre-LLM (``prunevid``), query-agnostic:

1. Temporal segmentation. DPC-KNN (``ops.dpc_knn``, distances ||xi - xj|| / sqrt(C), k = 7) over the frames'
   mean features, into max(1, int(T * temporal_segment_ratio)) clusters. The labels are refined as the official
   ``refine_clusters`` does: for each label only its longest run(s) of consecutive frames keep it (every run of
   the maximal length, and none when that length is 1); each run of frames left without a label, left to right,
   takes the label of the longer of its two neighbouring runs as they stand then (a tie: the left one; no
   neighbour at all: label 0). The segments are the runs of equal refined labels (the official
   ``segment_lengths``: a cut wherever the label changes). The official ``smooth_labels`` is defined but never
   called, so it is not used here.
2. Per segment of W frames: per grid position the mean cosine over the W * (W - 1) ordered pairs of distinct
   frames. Positions whose mean is above ``tau`` (0.8) are static: each becomes the mean of its W tokens. A
   one-frame segment has no static position (the official 0 / 0 is NaN, never above tau).
3. The segment's static set and each of its frames' dynamic set (the other positions) are clustered
   separately by DPC-KNN (k = 7); a cluster becomes the plain mean of its members (the center included), which
   for a static cluster is the time mean then the cluster mean. Without a retention a set of more than 14
   tokens gets int(n * cluster_ratio) clusters (cluster_ratio 0.5; at least 1) and a smaller set is kept as it
   is, as in the official code.

In-LLM (``prunevid_prune``, cutting from layer 11 after reading layer 10's attention, as the official code's
selected layer 10 does), query-aware: the attention of every text token after the video to each visual token at
layer K-1, max over heads then max over those queries; within each block (a segment's static tokens, a frame's
dynamic tokens) the tokens with the most are kept (the rest dropped, not merged).

Deviations from the official code, each for the library's contracts or what framepress can see:

- Exact budget. The official token count is data-dependent (about 16-17% of the input with the defaults). With
  a retention the budget B is split over the sets (each segment's static set, then each of its frames' dynamic
  set, in order) in proportion to their sizes by largest remainder in exact integer arithmetic (ties: the
  earlier set), and each set is clustered into its share: a share equal to the set's size keeps it whole, a
  share of 0 drops it. ``cluster_ratio`` and the 14-token rule are not used then. A budget smaller than the
  number of non-empty sets therefore drops whole sets (the largest remainders, i.e. the larger sets and then
  the earlier ones, get the tokens); the total is still exactly B.
- Budgets above what temporal merging leaves. When B exceeds the tokens left after step 2, static positions are
  given back to their frames, the least similar first (a stable sort by mean cosine, descending; the longest
  prefix whose saved tokens fit is kept static): this is tau raised just enough for the budget. At retention 1
  nothing is static and every token is kept as it is.
- Output order and positions. The official code emits per segment its static clusters, then each frame's
  dynamic clusters, in cluster order, and drops positions (PLLaVA has none to keep). Here each output token
  sits at its cluster center's position (a static one in its segment's first frame) and the output is in
  (t, y, x) order, so the M-RoPE and 1-D position rules of framepress apply.
- Numerics and ties. Similarities and means are computed in float32 (float64 for float64 input) and the output
  cast back, where the official code works in the model dtype. The DPC-KNN distances (frames and sets) are
  computed in float64: a float32 Gram matrix rounds differently with the number of threads, which flipped a
  near-tie between densities, while the official ``torch.cdist`` gives the float64 answer there; float64 makes
  the output independent of the thread count (a test) and equal to the official one; the mean pairwise cosine is formed as
  (||sum of unit vectors||^2 - sum of their squared norms) / (W (W - 1)), equal to the pairwise mean, clamped to
  [-1, 1] so tau = 1 switches static merging off (the official subtracts 1 per frame for the self-similarity,
  which differs only for all-zero tokens). DPC-KNN breaks density ties by index instead of 1e-6 random noise,
  so the output is deterministic; k is clamped to the set size (the official ``topk`` would fail below k).
  temporal_segment_ratio * T < 1 gives one cluster (the official ``topk(0)`` fails).
- In-LLM blocks. The official code keeps int(alpha * size) tokens within each static block and each dynamic
  frame separately (:func:`prunevid_prune`, ``allocation="official"``, the default). The blocks are not in
  :class:`~framepress.layer.LayerInputs`; the method takes them as ``blocks`` (:func:`blocks` reads them off a
  ``prunevid`` output, :func:`official_blocks` builds them for the official sequence order); without them the
  whole visual block is one block (the official rule for one block: the global top). The per-block floors
  undershoot a budget: on 32x14x14 (synthetic clips, seeds 0-2, 28-36 blocks) "25%/10%" keeps 615-617 of 627
  tokens (-1.6% to -1.9%), "50%/10%" 607-611 (-2.6% to -3.2%), "50%/25%" 1561-1565 of 1568 (-0.2% to -0.5%),
  and alpha = 0.4 after the default pre-LLM step 0.7%-2.4% under int(0.4 N). ``allocation="exact"`` gives
  exactly the budget, split over the blocks by largest remainder. Ties go to the earlier token.
- Official crashes. The temporal DPC-KNN's ``topk(k = 7)`` fails for fewer than 7 frames (and any set under k
  tokens); here k is clamped to the set size, so T < 7 gives valid tokens by the same rules.
- In-LLM layer and cache. The official code reads the attention of its selected layer 10 itself and cuts from
  layer 11 on, and also slices the KV cache of layers 0-10, so decoding attends only to the kept tokens in
  every layer. framepress's in-LLM stage at layer K reads layer K-1's attention and cuts layers >= K and their
  cache only; layers before K keep every visual token in their cache. K = 11 is registered, so the attention read
  (layer 10) and the first cut layer (11) are the official ones.
"""

from __future__ import annotations

import itertools
import math

import torch

from .. import checks, ops
from ..layer import LayerInputs
from ..registry import register
from ..tokens import Tokens
from .fastvid import frame_features

#: Without a retention, a set of more than this many tokens is clustered (the official ``> 14``).
CLUSTER_ABOVE = 14

#: How ``prunevid_prune`` splits its budget over the blocks: the official per-block floors, or exactly.
ALLOCATIONS = ("official", "exact")


def refine_clusters(labels: list[int]) -> list[int]:
    """The official ``refine_clusters`` on one video's frame labels: each label keeps only its longest run(s)
    (none when the longest is one frame); each unlabelled run, left to right, joins the longer neighbouring run
    as it stands then (a tie: the left; no neighbour: label 0)."""
    n = len(labels)
    out = list(labels)
    for label in sorted(set(labels)):
        runs, start = [], None
        for i, v in enumerate(labels + [None]):
            if v == label and start is None:
                start = i
            elif v != label and start is not None:
                runs.append((start, i - 1))
                start = None
        longest = max(e - s + 1 for s, e in runs)
        for s, e in runs:
            if longest == 1 or e - s + 1 != longest:
                out[s : e + 1] = [-1] * (e - s + 1)
    i = 0
    while i < n:
        if out[i] != -1:
            i += 1
            continue
        start = i
        while i < n and out[i] == -1:
            i += 1
        end = i - 1
        left = right = None
        left_len = right_len = 0
        if start > 0:
            left, j = out[start - 1], start - 1
            while j >= 0 and out[j] == left:
                j -= 1
            left_len = start - j - 1
        if end < n - 1:
            right, j = out[end + 1], end + 1
            while j < n and out[j] == right:
                j += 1
            right_len = j - end - 1
        if left_len > right_len:
            new = left
        elif right_len > left_len:
            new = right
        else:
            new = left if left is not None else right
        out[start : end + 1] = [0 if new is None else new] * (end - start + 1)
    return out


def runs(labels: list[int]) -> list[int]:
    """Lengths of the runs of equal consecutive labels (the official ``segment_lengths``)."""
    lengths = [1]
    for a, b in itertools.pairwise(labels):
        if a == b:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


def temporal_segments(frames: torch.Tensor, ratio: float, k: int) -> list[int]:
    """Step 1: the lengths of the contiguous segments of T frames from their [T, C] global features."""
    T, C = frames.shape
    if T == 1:
        return [1]
    _, labels = ops.dpc_knn(frames.double(), max(1, int(T * ratio)), k, scale=1 / math.sqrt(C))  # float64: module notes
    return runs(refine_clusters(labels.tolist()))


def segment_statistics(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``frames`` [W, n, C] (W >= 2): [n] per position the mean cosine over the ordered pairs of distinct
    frames, clamped to [-1, 1], and [n, C] the time mean, in the compute dtype. Sum over pairs = ||sum of unit
    vectors||^2 - sum of their squared norms; the unit vectors are never formed, and both sums take one pass
    over the frames, a frame at a time. Frames of a magnitude whose squares or sum would overflow are divided by
    a power of two first."""
    W = frames.shape[0]
    cd = ops.compute_dtype(frames.dtype)
    norm = torch.linalg.vector_norm(frames, dim=-1, dtype=cd)  # [W, n]
    inverse = 1 / norm.clamp_min(1e-8)  # as ops.normalize: a zero vector stays zero
    unit_sum = torch.zeros(frames.shape[1:], dtype=cd, device=frames.device)
    total = torch.zeros_like(unit_sum)
    for w in range(W):
        frame = frames[w].to(cd)
        unit_sum.addcmul_(frame, inverse[w, :, None])
        total += frame
    if not (bool(torch.isfinite(norm).all()) and bool(torch.isfinite(total).all())):
        # squares or the time sum overflowed: the statistics of frames / s (the cosines are the same), mean * s
        s = ops.power_of_two_above(frames)
        similarity, mean = segment_statistics(frames.to(cd) / s)
        return similarity, mean.mul_(s)
    pairs = (unit_sum * unit_sum).sum(-1) - ((norm * inverse) ** 2).sum(0)
    return (pairs / (W * (W - 1))).clamp_(-1.0, 1.0), total.div_(W)


def shares(sizes: list[int], budget: int) -> list[int]:
    """``budget`` over sets of ``sizes`` in proportion to their sizes, by largest remainder in exact integers
    (ties: the earlier set). Each share is at most its size when budget <= sum(sizes); they sum to budget."""
    total = sum(sizes)
    counts = [s * budget // total for s in sizes]
    remainders = [s * budget % total for s in sizes]
    order = sorted(range(len(sizes)), key=lambda i: -remainders[i])  # sorted() is stable
    for i in order[: budget - sum(counts)]:
        counts[i] += 1
    return counts


def check(p: dict) -> dict:
    """PruneVid's parameter values (run at apply and at every call)."""
    p["tau"] = checks.number("tau", p["tau"], -1.0, 1.0)
    for name in ("temporal_segment_ratio", "cluster_ratio"):
        p[name] = checks.number(name, p[name], 0.0, 1.0)
        if p[name] <= 0:
            raise ValueError(f"{name} must be in (0, 1], got {p[name]}")
    p["k"] = checks.integer("k", p["k"], 1)
    return p


def check_prune(p: dict) -> dict:
    """PruneVid's in-LLM parameters: alpha in (0, 1], the allocation, and the blocks (integer labels, one per
    visual token; their count is checked against the input)."""
    p["alpha"] = checks.number("alpha", p["alpha"], 0.0, 1.0)
    if p["alpha"] <= 0:
        raise ValueError(f"alpha must be in (0, 1], got {p['alpha']}")
    p["allocation"] = checks.choice("allocation", p["allocation"], ALLOCATIONS)
    if p["blocks"] is not None:
        blocks = torch.as_tensor(p["blocks"])
        if blocks.ndim != 1 or blocks.dtype.is_floating_point or blocks.dtype == torch.bool or blocks.is_complex():
            raise TypeError(f"blocks must be a 1-D sequence of integer block labels, one per visual token; got {p['blocks']!r:.80}")
        if blocks.numel() and int(blocks.min()) < 0:
            raise ValueError("blocks: block labels must be >= 0")
        p["blocks"] = blocks.long()
    return p


def blocks(tokens: Tokens) -> torch.Tensor:
    """[N] the in-LLM block of each token of a ``prunevid`` output (in its output order): the official blocks,
    numbered in the official order (per segment its static block, then each of its frames' dynamic block).
    A static token is one whose members span its segment's frames. What ``prunevid_prune`` takes as ``blocks``
    when it follows ``prunevid``."""
    T, H, W = tokens.grid
    lengths = tokens.info["segments"]
    dev = tokens.source.device
    kept = torch.nonzero(tokens.source >= 0).squeeze(1)
    frame, token = kept // (H * W), tokens.source[kept]
    first = torch.full((len(tokens),), T, dtype=torch.long, device=dev).scatter_reduce(0, token, frame, "amin")
    last = torch.full((len(tokens),), -1, dtype=torch.long, device=dev).scatter_reduce(0, token, frame, "amax")
    ends = torch.tensor(lengths, device=dev).cumsum(0)
    segment = torch.searchsorted(ends, first, right=True)
    start = ends[segment] - torch.tensor(lengths, device=dev)[segment]
    static_block = start + segment  # per segment: 1 static block, then one per frame
    return torch.where(last > first, static_block, static_block + 1 + first - start)


def official_blocks(static_sizes, dynamic_sizes, window_sizes) -> torch.Tensor:
    """[N] block labels of a visual block in the official order (per segment: its static tokens, then its
    frames' dynamic tokens, frame by frame), from the official per-segment sizes (``static_sizes``,
    ``dynamic_sizes`` summed over the segment's ``window_sizes`` frames)."""
    sizes = []
    for static, dynamic, frames in zip(static_sizes, dynamic_sizes, window_sizes):
        if int(dynamic) % int(frames):
            raise ValueError(f"dynamic_sizes: {dynamic} tokens do not split over {frames} frames")
        sizes += [int(static)] + [int(dynamic) // int(frames)] * int(frames)
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))


@register(
    "prunevid",
    paper="Huang et al., PruneVid: Visual Token Pruning for Efficient Video Large Language Models, ACL 2025 Findings (arXiv 2412.16117)",
    budget="exact",
    inner=("prunevid_prune", 0.4),
    check=check,
    handoff=lambda tokens: {"blocks": blocks(tokens)},
)
def prunevid(
    x: torch.Tensor,
    budget: int | None,
    *,
    tau: float = 0.8,
    temporal_segment_ratio: float = 0.25,
    cluster_ratio: float = 0.5,
    k: int = 7,
) -> Tokens:
    """Scene segments by DPC-KNN over frames, static positions merged over time, then DPC-KNN clusters of each
    segment's static set and each frame's dynamic set.

    Args:
        tau: mean pairwise cosine over a segment's frames above which a position is static (0.8).
        temporal_segment_ratio: temporal clusters per frame (0.25): max(1, int(T * ratio)) clusters.
        cluster_ratio: without a retention, a set of more than 14 tokens keeps int(n * ratio) clusters (0.5).
        k: DPC-KNN neighbours, for the frames and the sets (7, the point itself included).

    With a retention the output is exactly the budget, split over the sets by size (see the module notes);
    without one it is data-dependent, as in the paper. ``info``: the segment lengths and the static positions
    of each segment.
    """
    T, H, W, C = x.shape
    n, M, dev = H * W, T * H * W, x.device
    if budget is not None:
        budget = checks.integer("budget", budget, 1, M)
    grid = x.reshape(T, n, C)
    cd = ops.compute_dtype(x.dtype)

    lengths = temporal_segments(frame_features(x), temporal_segment_ratio, k)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    similarity = torch.full((len(lengths), n), -math.inf, dtype=cd, device=dev)
    time_means = []  # [n, C] per segment of more than one frame
    for s, (a, w) in enumerate(zip(starts, lengths)):
        if w > 1:
            similarity[s], mean = segment_statistics(grid[a : a + w])
            time_means.append(mean)
        else:
            time_means.append(None)
    static = similarity > tau  # [segments, n]
    saving = torch.tensor(lengths, device=dev)[:, None] - 1  # tokens a static position saves
    if budget is not None and M - int((static * saving).sum()) < budget:
        # give static positions back, the least similar first, until the budget fits
        candidates = torch.nonzero(static.reshape(-1)).squeeze(1)
        order = candidates[torch.sort(-similarity.reshape(-1)[candidates], stable=True).indices]
        fits = int((torch.cumsum(saving.expand(-1, n).reshape(-1)[order], 0) <= M - budget).sum())
        static = torch.zeros_like(static).reshape(-1)
        static[order[:fits]] = True
        static = static.reshape(len(lengths), n)

    # the sets: (segment, frame or None for the static set, positions)
    sets = []
    for s, (a, w) in enumerate(zip(starts, lengths)):
        sets.append((s, None, torch.nonzero(static[s]).squeeze(1)))
        dynamic = torch.nonzero(~static[s]).squeeze(1)
        sets += [(s, t, dynamic) for t in range(a, a + w)]
    sizes = [int(p.numel()) for _, _, p in sets]
    if budget is None:
        counts = [m if m <= CLUSTER_ABOVE else max(1, int(m * cluster_ratio)) for m in sizes]
    else:
        counts = shares(sizes, budget)

    source = torch.full((T, n), -1, dtype=torch.long, device=dev)
    reps, feats, made = [], [], 0
    for (s, t, positions), size, count in zip(sets, sizes, counts):
        if count == 0:
            continue
        a, w = starts[s], lengths[s]
        rows = time_means[s][positions] if t is None else grid[t] if size == n else grid[t, positions]
        if count < size:
            centers, cluster = ops.dpc_knn(rows.double(), count, k, scale=1 / math.sqrt(C))
            rows = ops.group_mean(rows, cluster, count)
        else:
            centers = cluster = torch.arange(size, device=dev)
        feats.append(rows.to(x.dtype))
        if t is None:
            source[a : a + w, positions] = made + cluster
        else:
            source[t, positions] = made + cluster
        reps.append((a if t is None else t) * n + positions[centers])
        made += count
    info = {"segments": lengths, "static": static.sum(1).tolist()}
    return Tokens.at_representatives(x, torch.cat(feats), torch.cat(reps), source.reshape(-1), info)


@register(
    "prunevid_prune",
    paper="PruneVid (arXiv 2412.16117), question-guided pruning inside the LLM",
    budget="official",
    stage="in-llm",
    query_aware=True,
    layer=11,
    check=check_prune,
)
def prunevid_prune(
    inputs: LayerInputs,
    budget: int | None,
    *,
    alpha: float = 0.4,
    allocation: str = "official",
    blocks: torch.Tensor | None = None,
) -> Tokens:
    """Keep, within each block, the visual tokens that the text after the video attends to most at layer K-1
    (max over heads, then over the text tokens); drop the rest.

    Args:
        alpha: the share kept without a retention (0.4).
        allocation: "official": each block keeps int(share * its size), share = alpha (or budget / N with a
            retention), so the total falls short of the share by up to one token per block; "exact": exactly
            the budget (int(alpha * N) without one) split over the blocks by size (largest remainder).
        blocks: [N] block label of each visual token (the pre-LLM step's static blocks and dynamic frames:
            :func:`blocks` of a ``prunevid`` output, :func:`official_blocks` for the official order); None: one
            block (the top tokens overall, the official rule for a single block).

    Kept tokens stay in sequence order; ties go to the earlier token. With no text after the video there is no
    signal and each block keeps its first tokens. Should no block keep a token (all blocks under 1 / share),
    the single top token is kept, so a non-empty input gives a non-empty output.
    """
    visual = inputs.visual
    n, c = visual.shape
    dev = visual.device
    labels = torch.zeros(n, dtype=torch.long, device=dev) if blocks is None else blocks.to(dev)
    if labels.numel() != n:
        raise ValueError(f"blocks: {labels.numel()} labels for {n} visual tokens")
    sizes = torch.bincount(labels, minlength=1)
    if budget is not None:
        budget = min(budget, n)
    if allocation == "official":
        if budget is None:  # the official int(size * alpha), in floating point as there
            quota = torch.tensor([int(int(m) * alpha) for m in sizes.tolist()], dtype=torch.long, device=dev)
        else:
            quota = sizes * budget // n
    else:
        target = max(1, int(alpha * n)) if budget is None else budget
        quota = torch.tensor(shares(sizes.tolist(), target), dtype=torch.long, device=dev)
    if inputs.text.shape[0] == 0:
        score = torch.zeros(n, device=dev)
    else:
        score = inputs.text_attention(heads="max").amax(0).float()
    by_score = torch.sort(score, descending=True, stable=True).indices  # ties: the earlier token
    order = by_score[torch.sort(labels[by_score], stable=True).indices]  # per block, by score
    start = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty(n, dtype=torch.long, device=dev)
    rank[order] = torch.arange(n, device=dev) - start[labels[order]]
    keep = rank < quota[labels]
    if not bool(keep.any()):
        keep[by_score[0]] = True
    index = torch.nonzero(keep).squeeze(1)
    return Tokens.select(visual.reshape(1, 1, n, c), index, {"layer": inputs.layer})
