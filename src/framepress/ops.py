"""Shared primitives: similarity, grouping of merge edges, and merging by groups.

Every method builds on these; none of them knows about a model or a method. All are vectorized torch and
work on any float dtype on CPU and CUDA. Similarities are computed in float32 (float64 for float64 input), as
the official codes do after up-casting from the model dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype similarities and sums are computed in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit vectors along the last dim, as ``torch.nn.functional.cosine_similarity`` forms them (norm clamped
    at ``eps``), so that ``(normalize(a) * normalize(b)).sum(-1)`` equals it bit for bit. A row whose norm
    overflows is divided by its largest entry first (:func:`_overflowed`)."""
    x = x.to(compute_dtype(x.dtype))
    norm = x.norm(dim=-1, keepdim=True)
    return _overflowed(x, norm, x / norm.clamp_min(eps))


def normalize_shifted(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit vectors as ``x / (||x|| + eps)``: the form the official STTM temporal step uses (spec sttm §2.5.2)."""
    x = x.to(compute_dtype(x.dtype))
    norm = x.norm(dim=-1, keepdim=True)
    return _overflowed(x, norm, x / (norm + eps))


def _overflowed(x: torch.Tensor, norm: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """``unit``, with the rows whose squared norm overflowed (norm inf, |x| < inf) made exact unit vectors of
    x / max|x| (the eps is negligible there). Ordinary rows keep their bits."""
    big = torch.isinf(norm).squeeze(-1)
    if bool(big.any()):
        rows = x[big] / x[big].abs().amax(-1, keepdim=True)
        unit[big] = rows / rows.norm(dim=-1, keepdim=True)
    return unit


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """[N] L2 norms of the rows of x [N, C] in the compute dtype, in their order even where squares overflow
    (then the norms of x / s, s a power of two near max |x|: the same order, finite)."""
    x = x.to(compute_dtype(x.dtype))
    norm = torch.linalg.vector_norm(x, dim=-1)
    if bool(torch.isinf(norm).any()):
        norm = torch.linalg.vector_norm(x / power_of_two_above(x), dim=-1)
    return norm


def power_of_two_above(x: torch.Tensor) -> float:
    """A power of two near max |x| (1 for an all-zero x): dividing by it is exact and leaves |x| <= 1 (<= 2
    beyond 2**1023, the largest power of two a float holds)."""
    return power_of_two(float(x.abs().amax()) if x.numel() else 0.0)


def power_of_two(peak: float) -> float:
    """The smallest power of two at least ``peak`` (at most 2**1023; 1 for 0)."""
    return 2.0 ** min(math.frexp(peak)[1], 1023) if peak > 0 else 1.0


def safe_mean(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.mean(dim)`` in x's dtype; where the sum overflows, the mean of x / 2**k times 2**k (2**k >= the
    count, so no partial sum exceeds max |x|)."""
    mean = x.mean(dim)
    if not bool(torch.isfinite(mean).all()):
        k = 2.0 ** math.frexp(x.shape[dim])[1]
        mean = (x / k).mean(dim) * k
    return mean


#: Work on CPU in slices of about this many bytes: large temporaries cost page faults, small ones stay cached.
CPU_CHUNK_BYTES = 8 << 20


def chunks(n: int, bytes_per_item: int, device: torch.device) -> list[slice]:
    """Slices of ``range(n)`` of about ``CPU_CHUNK_BYTES`` each on CPU (one slice elsewhere)."""
    step = n if device.type != "cpu" else max(1, CPU_CHUNK_BYTES // max(1, bytes_per_item))
    return [slice(s, min(s + step, n)) for s in range(0, n, max(1, step))]


def frame_chunks(x: torch.Tensor) -> list[slice]:
    """Slices over the first dim of ``x`` (frames), each about ``CPU_CHUNK_BYTES`` in the compute dtype."""
    per_frame = x[0].numel() * torch.finfo(compute_dtype(x.dtype)).bits // 8 if x.shape[0] else 1
    return chunks(x.shape[0], per_frame, x.device)


Rows = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]
"""A [M, C] tensor, or a function from row indices to those rows (to gather lazily from a larger store)."""


def _take(rows: Rows, index: torch.Tensor) -> torch.Tensor:
    return rows(index) if callable(rows) else rows[index]


def _row_chunks(rows: Rows, n: int, index_device: torch.device, per_row_items: int = 1) -> tuple[list[slice], torch.Tensor]:
    """Chunks over n items of ``per_row_items`` rows each, and a sample row (for dtype, size and device)."""
    sample = _take(rows, torch.zeros(1, dtype=torch.long, device=index_device))
    per_item = per_row_items * sample.shape[1] * torch.finfo(compute_dtype(sample.dtype)).bits // 8
    return chunks(n, per_item, sample.device), sample


def pair_cosine(rows: Rows, pairs: torch.Tensor, unit=normalize) -> torch.Tensor:
    """``(unit(rows[i]) * unit(rows[j])).sum(-1)`` for each (i, j) of [L, 2] ``pairs``, a chunk of pairs at a
    time, so memory stays small whatever L is. ``unit`` is the row normalization (it fixes the rounding)."""
    if not pairs.shape[0]:
        return torch.empty(0, device=pairs.device)
    parts, sample = _row_chunks(rows, pairs.shape[0], pairs.device, per_row_items=2)
    out = torch.empty(pairs.shape[0], dtype=compute_dtype(sample.dtype), device=sample.device)
    for part in parts:
        p = pairs[part]
        out[part] = (unit(_take(rows, p[:, 0])) * unit(_take(rows, p[:, 1]))).sum(-1)
    return out


def _pull_min(label: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One step of min-label propagation: both endpoints of every edge take the smaller of their labels (the
    labels read before the step)."""
    m = torch.minimum(label[u], label[v])
    label.scatter_reduce_(0, u, m, reduce="amin")
    return label.scatter_reduce_(0, v, m, reduce="amin")


def min_label_official(edges: torch.Tensor, n: int) -> torch.Tensor:
    """Group labels of ``n`` nodes joined by [L, 2] ``edges``, by the official STTM loop (spec sttm §2.5.3).

    Each pass scatters the smaller endpoint label into both endpoints, then jumps one pointer; it stops as soon
    as every label is a root. That is *not* full connected components: a node pulled towards two roots keeps
    the smaller and the other root may stay apart (the paper's "top-left approximation"). Replicated exactly
    because the published token counts depend on it. Each label is the smallest index of its group's root.
    """
    label = torch.arange(n, device=edges.device)
    u, v = edges[:, 0].long(), edges[:, 1].long()
    while True:
        label = _pull_min(label, u, v)
        label = label[label]
        if torch.equal(label, label[label]):
            return label


def connected_components(edges: torch.Tensor, n: int) -> torch.Tensor:
    """Exact connected components of ``n`` nodes joined by [L, 2] ``edges``; each label is the smallest index
    in its component. Min-label propagation with full pointer jumping, O(log n) passes on chains."""
    label = torch.arange(n, device=edges.device)
    u, v = edges[:, 0].long(), edges[:, 1].long()
    while True:
        label = _pull_min(label, u, v)
        while True:
            jumped = label[label]
            if torch.equal(jumped, label):
                break
            label = jumped
        if torch.equal(label[u], label[v]):
            return label


def dense_labels(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For labels that are member indices of their group's root (``label[root] == root``), return the output
    index of every member (groups numbered in ascending root order) and the roots."""
    is_root = label == torch.arange(label.numel(), device=label.device)
    rank = torch.cumsum(is_root, 0) - 1
    return rank[label], torch.nonzero(is_root).squeeze(1)


def group_mean(rows: Rows, group: torch.Tensor, n_groups: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the M rows in each of ``n_groups`` groups (``group`` [M] in [0, n_groups)), weighted by
    ``weight`` [M] if given. Rows are summed in their order, a chunk at a time, in float32 (float64 for float64),
    and the result is returned in the rows' dtype."""
    parts, sample = _row_chunks(rows, group.numel(), group.device)
    cd = compute_dtype(sample.dtype)

    def sums(scale: float) -> torch.Tensor:
        total = torch.zeros(n_groups, sample.shape[1], dtype=cd, device=sample.device)
        for part in parts:
            x = _take(rows, torch.arange(part.start, part.stop, device=group.device)).to(cd)
            x = x if scale == 1 else x / scale
            total.index_add_(0, group[part], x if weight is None else x * weight[part, None].to(cd))
        return total

    total, scale = sums(1.0), 1.0
    if not bool(torch.isfinite(total).all()):  # the sums overflowed: sum x / 2**k, 2**k >= the rows summed
        scale = 2.0 ** math.frexp(group.numel())[1]
        total = sums(scale)
    w = torch.ones(group.numel(), dtype=cd, device=group.device) if weight is None else weight.to(cd)
    count = torch.zeros(n_groups, dtype=cd, device=group.device).index_add_(0, group, w)
    mean = total.div_(count.clamp_min(torch.finfo(cd).tiny)[:, None])  # an empty group is 0
    return (mean if scale == 1 else mean * scale).to(sample.dtype)


#: All-pairs work (distances, cosines) is done a block of rows at a time, each block about this many bytes on CPU
#: (elsewhere ``DEVICE_BLOCK_BYTES``), so memory grows linearly with the number of tokens, never as N x N.
BLOCK_BYTES = 32 << 20
DEVICE_BLOCK_BYTES = 1 << 30


def block_rows(n_cols: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows per block of an [rows, n_cols] all-pairs block of ``dtype`` within the byte budget (at least 1)."""
    budget = BLOCK_BYTES if device.type == "cpu" else DEVICE_BLOCK_BYTES
    return max(1, budget // max(1, n_cols * torch.finfo(dtype).bits // 8))


#: At most this many rows per strip: with s strips the products are (1 + 1/s) / 2 of the full matrix's.
STRIP_ROWS = 512


def symmetric_strips(x: torch.Tensor):
    """Yield ``(start, strip)``: strip = the dot products of rows start..start+b of x [N, C] with rows start..N,
    [b, N - start], its leading [b, b] square made exactly symmetric (the upper triangle mirrored). Every pair is
    multiplied once (half of the 2*N^2*C flops), so each product has one value wherever it is read, and only one
    strip is alive at a time."""
    n = x.shape[0]
    b = min(block_rows(n, x.dtype, x.device), STRIP_ROWS)
    for start in range(0, n, b):
        strip = x[start : start + b] @ x[start:].T
        r = strip.shape[0]
        square = strip[:, :r]
        square.copy_(square.triu() + square.triu(1).T)
        yield start, strip


def _distance_inputs(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """x in the compute dtype, its squared row norms and the factor distances are multiplied by; where squares
    would overflow, x / s (s a power of two) and a factor scale * s (the distances are then capped)."""
    x = x.to(compute_dtype(x.dtype))
    sq = (x * x).sum(1)
    if not bool((sq <= torch.finfo(x.dtype).max / 4).all()):
        s = power_of_two_above(x)
        x = x / s
        return x, (x * x).sum(1), scale * s
    return x, sq, scale


def _distances(dots: torch.Tensor, sq_rows: torch.Tensor, sq_cols: torch.Tensor, factor: float) -> torch.Tensor:
    """Euclidean distances from dot products, in place: sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)) * factor."""
    d = dots.mul_(-2).add_(sq_rows[:, None]).add_(sq_cols[None, :]).clamp_(min=0).sqrt_().mul_(factor)
    return d.clamp_(max=torch.finfo(d.dtype).max)


def _merge_nearest(best_d: torch.Tensor, best_i: torch.Tensor, rows: slice, d: torch.Tensor, i: torch.Tensor) -> None:
    """Running top-m: rows' m smallest distances (ascending) and their columns, merged with candidates d, i."""
    values, pick = torch.cat([best_d[rows], d], 1).topk(best_d.shape[1], dim=1, largest=False)
    best_i[rows] = torch.cat([best_i[rows], i.expand(d.shape[0], -1)], 1).gather(1, pick)
    best_d[rows] = values


#: Nearest neighbours kept per point by :func:`dpc_knn`: a point with a denser one among them has its delta read
#: from them; only the others (local density peaks, few) get their whole row of distances again.
NEIGHBOURS = 32


def dpc_knn(x: torch.Tensor, n_centers: int, k: int = 7, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with k-nearest-neighbour density (DPC-KNN; specs/unified.md §3.3, the canonical
    implementation shared by Chat-UniVi, PruneVid, HoliTom and FastVID) of the rows of x [N, C], over the
    distances ||xi - xj|| * ``scale`` (canonical: 1 / sqrt(C)), in the compute dtype.

    Density: exp(-mean squared distance to the k nearest, the point itself included); delta: the distance to the
    nearest denser point (the densest point: the largest distance of all); centers: the ``n_centers`` largest
    density x delta. Ties in density are broken by index (lower index counts as denser) instead of the official
    random noise, so the result is deterministic. Returns the centers (ascending) and each point's cluster in
    [0, n_centers): its nearest center (a center is its own).

    Never forms the N x N matrix: one pass of :func:`symmetric_strips` keeps each point's ``NEIGHBOURS`` nearest
    (a running top-k) and the largest distance; the nearest denser point, and the nearest center, are read off
    that list where it holds them, and only for the other points found by blocks of their rows.
    """
    n = x.shape[0]
    n_centers = max(1, min(n_centers, n))
    k = max(1, min(k, n))
    m = min(n, max(k, NEIGHBOURS))
    x, sq, factor = _distance_inputs(x, scale)
    dev, index = x.device, torch.arange(n, device=x.device)
    best_d = torch.full((n, m), torch.inf, dtype=x.dtype, device=dev)
    best_i = torch.zeros(n, m, dtype=torch.long, device=dev)
    far = torch.zeros((), dtype=x.dtype, device=dev)
    for start, strip in symmetric_strips(x):
        r = strip.shape[0]
        d = _distances(strip, sq[start : start + r], sq[start:], factor)
        d[:, :r].fill_diagonal_(0)
        far = torch.maximum(far, d.max())
        _merge_nearest(best_d, best_i, slice(start, start + r), d, index[start:])
        if start + r < n:
            _merge_nearest(best_d, best_i, slice(start + r, n), d[:, r:].T, index[start : start + r])
    density = torch.exp(-(best_d[:, :k] ** 2).mean(1))
    near = density[best_i]
    denser = (near > density[:, None]) | ((near == density[:, None]) & (best_i < index[:, None]))
    found = denser.any(1)
    delta = best_d.gather(1, denser.to(torch.uint8).argmax(1, keepdim=True)).squeeze(1)
    peaks = torch.nonzero(~found).squeeze(1)
    b = block_rows(n, x.dtype, dev)
    for part in range(0, peaks.numel(), b):
        rows = peaks[part : part + b]
        d = _distances(x[rows] @ x.T, sq[rows], sq, factor)
        d[torch.arange(rows.numel(), device=dev), rows] = 0
        mine = density[rows, None]
        above = (density[None, :] > mine) | ((density[None, :] == mine) & (index[None, :] < rows[:, None]))
        nearest = torch.where(above, d, torch.inf).amin(1)
        delta[rows] = torch.where(torch.isinf(nearest), far, nearest)
    centers = top_indices(density * delta, n_centers)
    # nearest center: read off the neighbour list when a center in it is strictly nearer than the list's last
    # entry (then no center outside it can be as near; equal distances go to the lower center, as argmin does)
    rank = torch.full((n,), n_centers, dtype=torch.long, device=dev)
    rank[centers] = torch.arange(n_centers, device=dev)
    listed = rank[best_i] < n_centers
    nearest = torch.where(listed, best_d, torch.inf).amin(1)
    cluster = torch.where(listed & (best_d == nearest[:, None]), rank[best_i], n_centers).amin(1)
    known = (nearest < best_d[:, -1]) | (m == n)
    rest = torch.nonzero(~known).squeeze(1)
    b = block_rows(n_centers, x.dtype, dev)
    for part in range(0, rest.numel(), b):
        rows = rest[part : part + b]
        cluster[rows] = _distances(x[rows] @ x[centers].T, sq[rows], sq[centers], factor).argmin(1)
    cluster[centers] = torch.arange(n_centers, device=dev)
    return centers, cluster


def top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the ``k`` largest values, ascending; ties go to the lower index (the same on every device,
    unlike ``torch.topk``)."""
    return torch.sort(values, descending=True, stable=True).indices[:k].sort().values


def first_fit(conflict: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Greedy selection in priority order, in parallel rounds: item i (priority = index) is taken when
    ``allowed[i]`` and no taken item j < i has ``conflict[i, j]``. Equals the sequential greedy pass exactly (the
    lexicographically first maximal independent set); each round settles every item whose higher-priority
    conflicts are all settled, so the rounds are as many as the longest chain of conflicts."""
    n = conflict.shape[0]
    earlier = torch.ones(n, n, dtype=torch.bool, device=conflict.device).tril(-1)
    conflict = conflict & earlier & allowed[None, :]
    taken = torch.zeros(n, dtype=torch.bool, device=conflict.device)
    open_ = allowed.clone()
    while bool(open_.any()):
        blocked = (conflict & taken[None, :]).any(1)
        waiting = (conflict & open_[None, :]).any(1)
        newly = open_ & ~blocked & ~waiting
        taken |= newly
        open_ &= ~(newly | blocked)
    return taken


def nearest_kept(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """[N]: for each row of x [N, C], the position in ``kept`` of its most cosine-similar kept row (a kept row
    maps to itself): the assignment of "merge every dropped token into its most similar kept token"."""
    target = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dropped = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    dropped[kept] = False
    target[kept] = torch.arange(kept.numel(), device=x.device)
    rows, unit = torch.nonzero(dropped).squeeze(1), normalize(x[kept])
    step = block_rows(kept.numel(), unit.dtype, x.device)  # [rows, kept] cosines a block at a time
    for start in range(0, rows.numel(), step):
        part = rows[start : start + step]
        target[part] = (normalize(x[part]) @ unit.T).argmax(1)
    return target
