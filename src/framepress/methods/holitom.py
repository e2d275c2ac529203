"""HoliTom: holistic token merging (Shao et al., NeurIPS 2025; specs/baselines.md §4), as its official code runs it.

Pre-LLM (``holitom``):
1. Temporal: the cosine of each grid position between consecutive frames; a dynamic program splits the video
   into windows that maximize the tokens saved, a window saving (window length - 1) tokens for every position
   similar (> tau) across all of it. In a window those "static" positions become one time-averaged token each.
2. Spatial: the retention is raised to r' = budget / (tokens left after step 1). Each frame keeps its dynamic
   tokens with the most vision attention; each window's static tokens are clustered by DPC-KNN (k = 7) and every
   cluster merged into its center, beta * center + (1 - beta) * mean of the others (beta = 0.6).

In-LLM (``holitom_merge``, layer 18): keep the visual tokens the last token attends to most in layer 17 and
average every other one into its most similar kept token.

Counts (``allocation``; golden/holitom/README.md facts 2-4): "official" (the default) is the official rule: r' =
min(r * M / (M - saved), 1), each window's static tokens become round(n_static * r') clusters and each frame keeps
ceil(n_dynamic * r') tokens, so the total overshoots the budget (a 32x14x14 clip, budgets 627 and 125: +1.4 to
+2.7% at 10% and +10 to +13% at 2% on the golden static clip and framepress.features.synthetic; with nothing static
640 and 128 tokens, +2.1% and +2.4%), and once r' reaches 1 every token left after temporal merging is kept (below
the budget). "exact" returns exactly the budget: the same shares
split by largest remainder, and the windows are dropped when averaging over time alone would go below the budget.

Output order: the official LLaVA-OneVision (``one_token``) order, per window its static tokens (by center position),
then each frame's dynamic tokens in position order. A static token stands at its center in the window's first frame.
"""

from __future__ import annotations

import math

import torch

from .. import checks, ops
from ..layer import LayerInputs
from ..registry import register
from ..tokens import Tokens
from .unified import contribution, merge_into_kept

ALLOCATIONS = ("official", "exact")


def static_windows(static: torch.Tensor, max_window: int) -> tuple[list[tuple[int, int]], int]:
    """The official dynamic program. ``static`` [T-1, n] bool: position similar between frames t and t+1.
    Returns the windows (first, last frame), covering every frame, and the tokens they save."""
    T = static.shape[0] + 1
    saved = torch.zeros(T, T, dtype=torch.long)
    for start in range(T - 1):
        run = torch.cumprod(static[start:].long(), 0).sum(1).cpu()  # positions static from start to start+1..
        saved[start, start + 1 :] = run * torch.arange(1, T - start)
    best = [0] * T
    first = [0] * T
    for i in range(T):
        best[i], first[i] = (best[i - 1] if i else 0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (best[j] if j >= 0 else 0) + int(saved[j + 1, i])
            if value > best[i]:
                best[i], first[i] = value, j + 1
    windows, i = [], T - 1
    while i >= 0:
        windows.append((first[i], i))
        i = first[i] - 1
    return windows[::-1], best[-1]


def largest_remainder(quotas: torch.Tensor, caps: torch.Tensor, total: int) -> torch.Tensor:
    """Integers near ``quotas`` (each <= its cap) summing exactly to ``total``: floors, then one more for the
    largest fractional parts (ties: the earlier bucket)."""
    counts = torch.minimum(quotas.floor().long(), caps)
    short = total - int(counts.sum())
    room = counts < caps
    order = torch.sort(torch.where(room, quotas - quotas.floor(), -1.0), descending=True, stable=True).indices
    counts[order[: max(0, short)]] += 1
    return counts


def typed_retention(budget: int, total: int) -> float:
    """The retention behind a budget, as a caller types it: the shortest decimal r > 0 with
    max(1, round(r * total)) == budget (0.1 for 627 of 6272). The official code computes its counts from r itself
    and framepress passes only the count, so r is read back this way (budget / total otherwise)."""
    for digits in range(1, 18):
        r = round(budget / total, digits)
        if r > 0 and max(1, round(r * total)) == budget:
            return r
    return budget / total


def official_counts(sizes: list[int], is_static: list[bool], share: float) -> list[int]:
    """The official per-bucket counts: round(n * r') static clusters a window (llava_arch.py:201), ceil(n * r')
    dynamic tokens a frame (line 154). If they come to nothing (a fully static clip at a one-token budget; the
    official code returns no token) the largest bucket keeps one."""
    counts = [round(n * share) if s else math.ceil(n * share) for n, s in zip(sizes, is_static)]
    if sum(counts) == 0:
        counts[max(range(len(sizes)), key=lambda i: sizes[i])] = 1
    return counts


def check(p: dict) -> dict:
    """HoliTom's parameter values (run at apply and at every call)."""
    p["tau"] = checks.number("tau", p["tau"], -1.0, 1.0)
    p["beta"] = checks.number("beta", p["beta"], 0.0, 1.0)
    p["k"] = checks.integer("k", p["k"], 1)
    p["max_window"] = checks.integer("max_window", p["max_window"], 2)
    p["allocation"] = checks.choice("allocation", p["allocation"], ALLOCATIONS)
    return p


@register(
    "holitom",
    paper="Shao et al., HoliTom: Holistic Token Merging for Fast Video LLMs, NeurIPS 2025 (arXiv 2505.21334)",
    budget="official",
    inner=("holitom_merge", 0.5),
    check=check,
)
def holitom(
    x: torch.Tensor,
    budget: int | None,
    *,
    scores,
    tau: float = 0.8,
    beta: float = 0.6,
    k: int = 7,
    max_window: int = 1024,
    allocation: str = "official",
) -> Tokens:
    """Temporal windows of static tokens, then attention selection of dynamic tokens and DPC-KNN merging of static
    ones; the official counts (near the budget), or exactly the budget.

    Args:
        scores: [T, H, W] attention each token receives in the vision encoder (inside a model: supplied), or
            "norm".
        tau: cosine above which a position is static between consecutive frames (0.8; the paper uses 0.65 at 10%).
        beta: a static cluster's center weight (0.6).
        k: DPC-KNN neighbours (7, or fewer when there are fewer clusters).
        max_window: the longest temporal window (1024).
        allocation: "official" (the official per-window and per-frame rounding, above the budget; see the module
            notes) or "exact" (exactly the budget).

    With the default the output equals the official code (golden/holitom/README.md: counts, representatives,
    features to 1e-4, source); the official r is read back from the budget (:func:`typed_retention`).
    """
    if budget is None:
        raise ValueError("holitom needs a retention (its budget)")
    T, H, W, C = x.shape
    n, M, dev = H * W, T * H * W, x.device
    grid = x.reshape(T, n, C)
    score = contribution(x, scores).reshape(T, n)
    hat = ops.normalize(grid)
    similar = (hat[:-1] * hat[1:]).sum(-1) > tau if T > 1 else torch.zeros(0, n, dtype=torch.bool, device=dev)
    windows, reduced = static_windows(similar, max_window)
    if allocation == "exact" and budget > M - reduced:  # time averaging alone goes below it: frames apart
        windows, reduced = [(t, t) for t in range(T)], 0

    static = []
    for first, last in windows:  # positions static across the whole window
        mask = similar[first:last].all(0) if last > first else torch.zeros(n, dtype=torch.bool, device=dev)
        static.append(mask)
    buckets = []  # (window, frame or None for the window's static tokens, size)
    for w, (first, last) in enumerate(windows):
        buckets.append((w, None, int(static[w].sum())))
        buckets += [(w, t, n - int(static[w].sum())) for t in range(first, last + 1)]
    if allocation == "official":  # lines 389-390: r' = min(r / ((M - saved) / M), 1)
        share = min(typed_retention(budget, M) / ((M - reduced) / M), 1)
        counts = official_counts([size for *_, size in buckets], [t is None for _, t, _ in buckets], share)
    else:
        caps = torch.tensor([size for _, _, size in buckets])
        counts = largest_remainder(caps.double() * min(budget / (M - reduced), 1.0), caps, budget).tolist()

    source = torch.full((T, n), -1, dtype=torch.long, device=dev)
    reps, feats, made = [], [], 0
    for (w, t, _), count in zip(buckets, counts):
        if count == 0:
            continue
        first, last = windows[w]
        if t is not None:  # dynamic tokens of frame t: the most attended ones
            dynamic = torch.nonzero(~static[w]).squeeze(1)
            chosen = dynamic[ops.top_indices(score[t, dynamic], count)]
            source[t, chosen] = made + torch.arange(count, device=dev)
            reps.append(t * n + chosen)
            feats.append(grid[t, chosen])
            made += count
            continue
        positions = torch.nonzero(static[w]).squeeze(1)
        averaged = ops.safe_mean(grid[first : last + 1, positions].to(ops.compute_dtype(x.dtype)), 0)
        centers, cluster = ops.dpc_knn(averaged, count, min(k, count), scale=1 / math.sqrt(C))
        is_center = torch.zeros(positions.numel(), dtype=torch.bool, device=dev)
        is_center[centers] = True
        others = torch.bincount(cluster, minlength=count) - 1
        weight = torch.where(is_center, beta, (1 - beta) / others[cluster].clamp_min(1).double()).to(averaged.dtype)
        weight = torch.where(is_center & (others[cluster] == 0), 1.0, weight)
        feats.append(ops.group_mean(averaged, cluster, count, weight).to(x.dtype))
        source[first : last + 1, positions] = made + cluster
        reps.append(first * n + positions[centers])
        made += count
    rep = torch.cat(reps)
    t, y, xx = rep // n, rep % n // W, rep % W
    boxes = torch.stack([t, y, xx, y + 1, xx + 1], 1)
    info = {"windows": windows, "static_saved": reduced, "allocation": allocation}
    return Tokens.from_source(torch.cat(feats), boxes, source.reshape(-1), (T, H, W), info)


@register(
    "holitom_merge",
    paper="HoliTom (arXiv 2505.21334), inner merging inside the LLM",
    budget="exact",
    stage="in-llm",
    query_aware=True,
    layer=18,
)
def holitom_merge(inputs: LayerInputs, budget: int | None) -> Tokens:
    """Keep the visual tokens the last prompt token attends to most at layer K-1 (mean over heads); average each
    other one into its most similar kept token. Without a retention it keeps half (HoliTom's r = 0.5)."""
    n = inputs.visual.shape[0]
    keep = round(n / 2) if budget is None else min(budget, n)
    kept = ops.top_indices(inputs.last_attention().float(), max(keep, 1))
    return merge_into_kept(inputs.visual, kept, {"layer": inputs.layer})
