"""Shared primitives: similarity, grouping of merge edges, and merging by groups.

Every method builds on these; none of them knows about a model or a method. All are vectorized torch and
work on any float dtype on CPU and CUDA. Similarities are computed in float32 (float64 for float64 input), as
the official codes do after up-casting from the model dtype.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype similarities and sums are computed in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit vectors along the last dim, as ``torch.nn.functional.cosine_similarity`` forms them (norm clamped
    at ``eps``), so that ``(normalize(a) * normalize(b)).sum(-1)`` equals it bit for bit."""
    x = x.to(compute_dtype(x.dtype))
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def normalize_shifted(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit vectors as ``x / (||x|| + eps)``: the form the official STTM temporal step uses (spec sttm §2.5.2)."""
    x = x.to(compute_dtype(x.dtype))
    return x / (x.norm(dim=-1, keepdim=True) + eps)


def pair_dot(a: torch.Tensor, b: torch.Tensor, pairs: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``(a[pairs[:, 0]] * b[pairs[:, 1]]).sum(-1)`` for [L, 2] index pairs, gathered in chunks so that
    memory stays at ``chunk`` rows whatever L is."""
    out = a.new_empty(pairs.shape[0])
    for s in range(0, pairs.shape[0], chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = (a[p[:, 0]] * b[p[:, 1]]).sum(-1)
    return out


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
        m = torch.minimum(label[u], label[v])
        label.scatter_reduce_(0, u, m, reduce="amin")
        label.scatter_reduce_(0, v, m, reduce="amin")
        label = label[label]
        if torch.equal(label, label[label]):
            return label


def connected_components(edges: torch.Tensor, n: int) -> torch.Tensor:
    """Exact connected components of ``n`` nodes joined by [L, 2] ``edges``; each label is the smallest index
    in its component. Min-label propagation with full pointer jumping, O(log n) passes on chains."""
    label = torch.arange(n, device=edges.device)
    u, v = edges[:, 0].long(), edges[:, 1].long()
    while True:
        m = torch.minimum(label[u], label[v])
        label.scatter_reduce_(0, u, m, reduce="amin")
        label.scatter_reduce_(0, v, m, reduce="amin")
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


def group_mean(x: torch.Tensor, group: torch.Tensor, n_groups: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the rows of ``x`` [M, C] in each of ``n_groups`` groups (``group`` [M] in [0, n_groups)),
    weighted by ``weight`` [M] if given. Accumulated in float32 (float64 for float64), returned in x's dtype."""
    cd = compute_dtype(x.dtype)
    w = torch.ones(x.shape[0], dtype=cd, device=x.device) if weight is None else weight.to(cd)
    total = torch.zeros(n_groups, x.shape[1], dtype=cd, device=x.device)
    total.index_add_(0, group, x.to(cd) * w[:, None] if weight is not None else x.to(cd))
    count = torch.zeros(n_groups, dtype=cd, device=x.device).index_add_(0, group, w)
    return (total / count[:, None]).to(x.dtype)
