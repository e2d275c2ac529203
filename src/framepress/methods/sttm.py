"""STTM: multi-granular spatio-temporal token merging (Hyun et al., ICCV 2025; specs/sttm.md).

Step 1 (spatial, spec §2.2-2.4): each frame is a quadtree over a 2x2-average pyramid. A node stops (becomes one
token) when its cosine to each of its four child slots is >= ``tau_s``; otherwise its children are searched one
level finer; leaves always stop. Step 2 (temporal, §2.5): nodes of consecutive frames whose boxes nest are
merged when their cosine is >= ``tau_t``; each group becomes the mean of its members, placed at its earliest,
top-left-most member.

The whole pyramid is evaluated densely, level by level (no loop over tokens or nodes): a node is emitted
exactly when its own min-slot cosine reaches ``tau_s`` and no ancestor's does. That makes the token count of any
``tau_s`` a cheap mask, which is what the budget search (:func:`sttm` with ``budget``) exploits. The default
output equals the official code's token for token, including its two quirks (§2.3.2, §2.5.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .. import checks, ops
from ..budget import BUDGET_FLOOR, search_threshold
from ..registry import register
from ..tokens import Tokens

VARIANTS = ("fast", "slow", "best")
GROUPINGS = ("official", "exact")
INVALID_SLOTS = ("top_left", "ignore")
_GROUP = {"official": ops.min_label_official, "exact": ops.connected_components}

#: Budget mode without user thresholds searches the diagonal tau_t = tau_s - TAU_GAP (the paper's tuned pairs,
#: e.g. 0.85/0.65 and 0.80/0.60, sit near it); tau_t never goes below 0, where negative means "off".
TAU_GAP = 0.2


def level_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """The pyramid's (h, w) per level, coarsest first (spec §2.2): halve with ceil until a side is 2.

    The official loop never ends on a 1x1 grid; here it stops there too.
    """
    sizes = [(h, w)]
    while h != 2 and w != 2 and (h, w) != (1, 1):
        h, w = -(-h // 2), -(-w // 2)
        sizes.insert(0, (h, w))
    return sizes


@dataclass(frozen=True)
class _Axis:
    """One spatial axis through the used pyramid levels, root first (spec §2.2, odd sides keep index 0 single).

    For a non-leaf level l: ``first[l]`` / ``second[l]`` give each index's children at level l+1 (``second`` is 0
    where there is only one, and ``has_second`` says which), ``up[l]`` the parent of each index of level l+1.
    For every level: ``start``/``end`` the leaf interval of each index, ``of_leaf`` the index holding each leaf.
    """

    lengths: tuple[int, ...]
    first: tuple[torch.Tensor, ...]
    second: tuple[torch.Tensor, ...]
    has_second: tuple[torch.Tensor, ...]
    up: tuple[torch.Tensor, ...]
    start: tuple[torch.Tensor, ...]
    end: tuple[torch.Tensor, ...]
    of_leaf: tuple[torch.Tensor, ...]

    @classmethod
    def build(cls, lengths: list[int], device: torch.device) -> _Axis:
        first, second, has_second, up = [], [], [], []
        for m, n in zip(lengths[:-1], lengths[1:]):
            i = torch.arange(m, device=device)
            r = torch.arange(n, device=device)
            if n % 2:  # index 0 alone, then pairs (1, 2), (3, 4), ...
                first.append(torch.where(i == 0, 0, 2 * i - 1))
                has_second.append(i > 0)
                second.append(torch.where(i == 0, 0, 2 * i))
                up.append((r + 1) // 2)
            else:
                first.append(2 * i)
                has_second.append(torch.ones(m, dtype=torch.bool, device=device))
                second.append(2 * i + 1)
                up.append(r // 2)
        leaf = torch.arange(lengths[-1], device=device)
        start, end, of_leaf = [leaf], [leaf + 1], [leaf]
        for f, s, u in zip(reversed(first), reversed(second), reversed(up)):
            start.insert(0, start[0][f])
            end.insert(0, end[0][s])
            of_leaf.insert(0, u[of_leaf[0]])
        return cls(tuple(lengths), *map(tuple, (first, second, has_second, up, start, end, of_leaf)))

    def take(self, t: torch.Tensor, dim: int, level: int, which: str) -> torch.Tensor:
        """Children (``which`` = first/second) of every index of ``level``, taken along ``dim`` of ``t``."""
        if self.lengths[level + 1] % 2 == 0:  # a strided view, no copy
            sl = [slice(None)] * t.ndim
            sl[dim] = slice(0 if which == "first" else 1, None, 2)
            return t[tuple(sl)]
        return t.index_select(dim, getattr(self, which)[level])


class _Quadtree:
    """The dense quadtree of one video: pyramid values, every node's min-slot cosine, and node geometry.

    Nodes of all levels share one id space, level by level (root level first), row-major over (t, i, j)
    within a level. A node's key ``t*H*W + y0*W + x0`` (its top-left leaf) orders the output (spec §2.4).
    """

    def __init__(self, x: torch.Tensor, root_level: int, invalid_slots: str):
        T, H, W, _ = x.shape
        sizes = level_sizes(H, W)
        root = root_level if root_level >= 0 else len(sizes) + root_level
        sizes = sizes[min(root, len(sizes) - 1) :]
        dev = x.device
        self.x, self.grid = x, (T, H, W)
        self.rows = _Axis.build([h for h, _ in sizes], dev)
        self.cols = _Axis.build([w for _, w in sizes], dev)
        self.n_levels = len(sizes)
        self.levels, self.min_sim = self._pyramid(x, invalid_slots)
        counts = [T * h * w for h, w in sizes]
        self.offsets = [sum(counts[:lvl]) for lvl in range(self.n_levels)]
        self.n_nodes = sum(counts)

    def _pyramid(self, x: torch.Tensor, invalid_slots: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Pool level by level (spec §2.2) and score every parent against its 4 child slots (§2.3)."""
        rows, cols, L = self.rows, self.cols, self.n_levels - 1
        cd = ops.compute_dtype(x.dtype)
        levels: list[torch.Tensor] = [x]
        min_sim: list[torch.Tensor] = []
        child_hat = ops.normalize(x) if L else None
        for lvl in reversed(range(L)):
            child = levels[0]
            row_second = rows.has_second[lvl].to(cd)[:, None, None]
            col_second = cols.has_second[lvl].to(cd)[None, :, None]
            slots, slot_hats = [], []
            for r in ("first", "second"):
                for c in ("first", "second"):
                    slots.append(cols.take(rows.take(child, 1, lvl, r), 2, lvl, c))
                    slot_hats.append(cols.take(rows.take(child_hat, 1, lvl, r), 2, lvl, c))
            # the official order of the sum (top-left, top-right, bottom-left, bottom-right) keeps it bit-exact
            total = slots[0].to(cd) + slots[1] * col_second
            total = total + slots[2] * row_second
            total = total + slots[3] * (row_second * col_second)
            parent = (total / ((1 + row_second) * (1 + col_second))).to(x.dtype)
            parent_hat = ops.normalize(parent)
            sims = torch.stack([(parent_hat * h).sum(-1) for h in slot_hats], -1)  # [T, h, w, 4]
            shape = parent.shape[1:3]
            rs = rows.has_second[lvl][:, None].expand(shape)
            cs = cols.has_second[lvl][None, :].expand(shape)
            missing = torch.stack([torch.zeros_like(rs), ~cs, ~rs, ~(rs & cs)], -1)  # slots with no child
            if bool(missing.any()):
                if invalid_slots == "ignore":
                    fill = torch.full_like(sims[..., 0], torch.inf)
                else:  # the official code compares a missing slot with the frame's top-left child (§2.3.2)
                    fill = (parent_hat * child_hat[:, :1, :1]).sum(-1)
                sims = torch.where(missing, fill[..., None], sims)
            levels.insert(0, parent)
            min_sim.insert(0, sims.amin(-1))
            child_hat = parent_hat
        return levels, min_sim

    @cached_property
    def ancestor_max(self) -> list[torch.Tensor]:
        """Per level, the largest min-slot cosine among a node's ancestors (-inf at the root)."""
        out = [torch.full_like(self.min_sim[0], -torch.inf)] if self.min_sim else [None]
        for lvl in range(self.n_levels - 1):
            m = torch.maximum(out[lvl], self.min_sim[lvl])
            out.append(m[:, self.rows.up[lvl]][:, :, self.cols.up[lvl]])
        return out

    def emitted(self, tau_s: float) -> list[torch.Tensor]:
        """Per level, [T, h, w] bool: the nodes that become tokens at ``tau_s``."""
        if self.n_levels == 1:
            return [torch.ones(self.grid, dtype=torch.bool, device=self.x.device)]
        anc = self.ancestor_max
        out = [(anc[lvl] < tau_s) & (self.min_sim[lvl] >= tau_s) for lvl in range(self.n_levels - 1)]
        return out + [anc[-1] < tau_s]

    def level_keys(self, lvl: int) -> torch.Tensor:
        """[T, h, w] key of every node of a level."""
        T, H, W = self.grid
        t = torch.arange(T, device=self.x.device)[:, None, None] * (H * W)
        return t + self.rows.start[lvl][None, :, None] * W + self.cols.start[lvl][None, None, :]

    def leaf_ids(self) -> torch.Tensor:
        """[L, T, H, W]: the id of the node of each level that holds each leaf."""
        T, H, W = self.grid
        out = []
        for lvl in range(self.n_levels):
            h, w = self.rows.lengths[lvl], self.cols.lengths[lvl]
            t = torch.arange(T, device=self.x.device)[:, None, None] * (h * w)
            local = self.rows.of_leaf[lvl][None, :, None] * w + self.cols.of_leaf[lvl][None, None, :]
            out.append(self.offsets[lvl] + t + local)
        return torch.stack(out)

    def flat(self, per_level: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate a per-level [T, h, w, ...] table into the shared node-id space."""
        return torch.cat([p.reshape(-1, *p.shape[3:]) for p in per_level])

    @cached_property
    def keys(self) -> torch.Tensor:
        return self.flat([self.level_keys(lvl) for lvl in range(self.n_levels)])

    @cached_property
    def boxes(self) -> torch.Tensor:
        T = self.grid[0]
        per_level = []
        for lvl in range(self.n_levels):
            h, w = self.rows.lengths[lvl], self.cols.lengths[lvl]
            t = torch.arange(T, device=self.x.device)[:, None, None].expand(T, h, w)
            y0, y1 = (v[None, :, None].expand(T, h, w) for v in (self.rows.start[lvl], self.rows.end[lvl]))
            x0, x1 = (v[None, None, :].expand(T, h, w) for v in (self.cols.start[lvl], self.cols.end[lvl]))
            per_level.append(torch.stack([t, y0, x0, y1, x1], -1))
        return self.flat(per_level)

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """[len(ids), C] pyramid values of the nodes ``ids``."""
        C = self.x.shape[-1]
        out = self.x.new_empty(ids.numel(), C)
        for lvl in range(self.n_levels):
            lo, hi = self.offsets[lvl], self.offsets[lvl + 1] if lvl + 1 < self.n_levels else self.n_nodes
            sel = (ids >= lo) & (ids < hi)
            if bool(sel.any()):
                out[sel] = self.levels[lvl].reshape(-1, C)[ids[sel] - lo]
        return out

    @cached_property
    def all_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every nesting pair of nodes of consecutive frames, over all levels, and its temporal cosine.

        Used by the budget search: whatever ``tau_s`` emits, its temporal candidates are a subset of these.
        """
        ids = self.leaf_ids()  # [L, T, H, W]
        L = ids.shape[0]
        earlier = ids[:, None, :-1].expand(L, L, -1, -1, -1).reshape(-1)
        later = ids[None, :, 1:].expand(L, L, -1, -1, -1).reshape(-1)
        pairs = torch.unique(torch.stack([earlier, later], 1), dim=0)
        hat = ops.normalize_shifted(self.flat(self.levels))
        return pairs, ops.pair_dot(hat, hat, pairs)


def _merge_pairs(
    pairs: torch.Tensor, sims: torch.Tensor, tau_t: float, variant: str, frame_of: torch.Tensor
) -> torch.Tensor:
    """Kept temporal pairs (earlier, later), ascending: those with cosine >= tau_t, thinned by the variant.

    "slow" replicates the official slow path (spec §2.6, pinned by the golden vectors): per pair of frames, the
    passing pairs are sorted by descending cosine and a pair is dropped when the pair before it has the same
    later node; so a later node keeps its best match and any others that are not adjacent to it in that order.
    "best" keeps exactly each later node's most similar earlier node (ties: the smaller earlier index).
    """
    keep = sims >= tau_t
    pairs, sims = pairs[keep], sims[keep]
    if variant == "fast" or not pairs.numel():
        return pairs
    later = pairs[:, 1]
    if variant == "slow":
        order = torch.sort(-sims, stable=True).indices
        order = order[torch.sort(frame_of[later[order]], stable=True).indices]
        later_sorted, frame_sorted = later[order], frame_of[later[order]]
        drop = torch.zeros_like(later_sorted, dtype=torch.bool)
        drop[1:] = (later_sorted[1:] == later_sorted[:-1]) & (frame_sorted[1:] == frame_sorted[:-1])
        return pairs[order[~drop]]
    n = int(later.max()) + 1
    best = torch.full((n,), -torch.inf, dtype=sims.dtype, device=sims.device)
    best = best.scatter_reduce(0, later, sims, reduce="amax")
    is_best = sims == best[later]
    first = torch.full((n,), n, dtype=pairs.dtype, device=pairs.device)
    first = first.scatter_reduce(0, later, torch.where(is_best, pairs[:, 0], n), reduce="amin")
    return pairs[is_best & (pairs[:, 0] == first[later])]


class _Merge:
    """One (tau_s, tau_t) applied to a quadtree: the spatial tokens, then their temporal groups."""

    def __init__(self, tree: _Quadtree, tau_s: float):
        self.tree = tree
        emitted = tree.emitted(tau_s)
        self.mask = tree.flat(emitted)  # [n_nodes] bool
        ids = torch.nonzero(self.mask).squeeze(1)
        self.ids = ids[torch.argsort(tree.keys[ids])]  # spatial tokens in output order (§2.4)
        self.n = self.ids.numel()
        self.frame = tree.boxes[self.ids, 0]
        rank = torch.full((tree.n_nodes,), -1, dtype=torch.long, device=ids.device)
        rank[self.ids] = torch.arange(self.n, device=ids.device)
        self.rank = rank  # node id -> position among the spatial tokens
        leaf_ids = tree.leaf_ids()
        held = self.mask[leaf_ids]  # exactly one level holds each leaf
        self.leaf_token = rank[(leaf_ids * held).sum(0)]  # [T, H, W]

    def partition_pairs(self) -> torch.Tensor:
        """Spatial tokens of consecutive frames whose boxes nest, as (earlier, later) positions (§2.5.1).

        Partitions of one quadtree nest wherever they overlap, so the pairs are the distinct
        (token at t, token at t+1) over the leaves."""
        a, b = self.leaf_token[:-1].reshape(-1), self.leaf_token[1:].reshape(-1)
        return torch.unique(torch.stack([a, b], 1), dim=0)

    def edges_from(self, all_pairs: tuple[torch.Tensor, torch.Tensor], tau_t: float, variant: str) -> torch.Tensor:
        pairs, sims = all_pairs
        inside = self.mask[pairs[:, 0]] & self.mask[pairs[:, 1]]
        return _merge_pairs(self.rank[pairs[inside]], sims[inside], tau_t, variant, self.frame)

    def edges(self, tau_t: float, variant: str) -> torch.Tensor:
        pairs = self.partition_pairs()
        hat = ops.normalize_shifted(self.tree.features(self.ids))
        return _merge_pairs(pairs, ops.pair_dot(hat, hat, pairs), tau_t, variant, self.frame)

    def count(self, edges: torch.Tensor | None, grouping: str) -> int:
        if edges is None or not edges.numel():
            return self.n
        label = _GROUP[grouping](edges, self.n)
        return int((label == torch.arange(self.n, device=label.device)).sum())

    def tokens(self, edges: torch.Tensor | None, grouping: str, info: dict) -> Tokens:
        tree = self.tree
        feats = tree.features(self.ids)
        boxes = tree.boxes[self.ids]
        source = self.leaf_token.reshape(-1)
        if edges is not None and edges.numel():
            out_of, roots = ops.dense_labels(_GROUP[grouping](edges, self.n))
            feats = ops.group_mean(feats, out_of, roots.numel())  # unweighted mean of members (§2.5.4)
            boxes = boxes[roots]
            source = out_of[source]
        return Tokens.from_source(feats, boxes, source, tree.grid, info)


@register("sttm", paper="Hyun et al., STTM, ICCV 2025 (arXiv 2507.07990)", budget="search")
def sttm(
    x: torch.Tensor,
    budget: int | None,
    *,
    tau_s: float | None = None,
    tau_t: float | None = None,
    root_level: int = 1,
    variant: str = "fast",
    grouping: str = "official",
    invalid_slots: str = "top_left",
) -> Tokens:
    """Quadtree spatial merging, then temporal merging of nested nodes; query-agnostic.

    Args:
        tau_s: spatial threshold; a node stops when its cosine to every child slot is >= tau_s. Values above 1
            switch spatial merging off. Default 0.8 (the paper's 30% setting for LLaVA-Video).
        tau_t: temporal threshold; nested nodes of consecutive frames merge when their cosine is >= tau_t.
            A negative value switches temporal merging off. Default 0.6.
        root_level: index of the root grid in the pyramid's level list, coarsest first (1: 4x4 roots on a 14x14
            grid, as in every official run; 0: 2x2; -1: the leaf grid, no spatial merging). Indices past the
            leaf mean the leaf.
        variant: "fast" merges each later node with every passing nested node (the official default, "top-left"
            in the paper's Table 7); "slow" is the official slow path ("optimal"), which means to keep each later
            node's best match but drops only duplicates adjacent in similarity order; "best" keeps exactly each
            later node's most similar earlier node, as the paper describes "optimal".
        grouping: "official" replicates the official early-stopping grouping loop (spec §2.5.3); "exact" joins
            full connected components of the kept pairs.
        invalid_slots: "top_left" compares the missing child slots of odd-edge nodes with the frame's top-left
            child, as the official code does (spec §2.3.2); "ignore" tests only real children.

    With a budget, the thresholds not given are searched (both on the diagonal tau_t = tau_s - 0.2, tau_t >= 0)
    so that the output has at most ``budget`` and at least 98% of it; ``info`` reports what was chosen.
    """
    root_level = checks.integer("root_level", root_level)
    variant = checks.choice("variant", variant, VARIANTS)
    grouping = checks.choice("grouping", grouping, GROUPINGS)
    invalid_slots = checks.choice("invalid_slots", invalid_slots, INVALID_SLOTS)
    if tau_s is not None:
        tau_s = checks.number("tau_s", tau_s, -1.0, 2.0)
    if tau_t is not None:
        tau_t = checks.number("tau_t", tau_t, -2.0, 2.0)
    n_sizes = len(level_sizes(*x.shape[1:3]))
    if root_level < -n_sizes:
        raise ValueError(f"root_level must be >= {-n_sizes} for a {x.shape[1]}x{x.shape[2]} grid, got {root_level}")
    tree = _Quadtree(x, root_level, invalid_slots)
    temporal = x.shape[0] > 1

    if budget is None or (tau_s is not None and tau_t is not None):
        if budget is not None:
            raise ValueError("sttm: give either retention or both tau_s and tau_t, not all three")
        tau_s = 0.8 if tau_s is None else tau_s
        tau_t = 0.6 if tau_t is None else tau_t
        merge = _Merge(tree, tau_s)
        edges = merge.edges(tau_t, variant) if temporal and tau_t >= 0 else None
        return merge.tokens(edges, grouping, {"tau_s": tau_s, "tau_t": tau_t})

    fixed_s, fixed_t = tau_s, tau_t

    def thresholds(v: float) -> tuple[float, float]:
        if fixed_s is not None:
            return fixed_s, v
        if fixed_t is not None:
            return v, fixed_t
        return v, max(v - TAU_GAP, 0.0)

    merges: dict[float, _Merge] = {}

    def merge_at(s: float) -> _Merge:
        if s not in merges:
            merges[s] = _Merge(tree, s)
        return merges[s]

    def edges_at(v: float) -> tuple[_Merge, torch.Tensor | None]:
        s, t = thresholds(v)
        m = merge_at(s)
        if not temporal or t < 0:
            return m, None
        return m, m.edges_from(tree.all_pairs, t, variant)

    def count_at(v: float) -> int:
        m, e = edges_at(v)
        return m.count(e, grouping)

    lo, hi = (0.0, 1.01) if fixed_s is not None else (-1.0, 1.01 + (TAU_GAP if fixed_t is None else 0.0))
    found = search_threshold(count_at, lo, hi, budget)
    if found is None:
        floor = count_at(lo)
        raise ValueError(
            f"retention asks for {budget} tokens, but sttm keeps at least {floor} on this "
            f"{'x'.join(map(str, tree.grid))} grid with root_level={root_level}"
            + (f" and tau_s={fixed_s}" if fixed_s is not None else "")
            + (f" and tau_t={fixed_t}" if fixed_t is not None else "")
            + "; raise retention or lower root_level"
        )
    count, (s, t) = found.count, thresholds(found.value)
    evaluations = found.evaluations
    if count < BUDGET_FLOOR * budget and temporal and fixed_t is None:
        # thresholds jump in steps; with tau_s fixed, tau_t can be set between any two pair cosines
        spatial = {s} if found.above is None else {s, thresholds(found.above)[0]}
        for s_try in sorted(spatial, reverse=True):
            m = merge_at(s_try)
            inside = m.mask[tree.all_pairs[0][:, 0]] & m.mask[tree.all_pairs[0][:, 1]]
            cosines = tree.all_pairs[1][inside]
            c_try, t_try, n_eval = _bisect_tau_t(lambda v: m.count(m.edges_from(tree.all_pairs, v, variant), grouping), cosines, budget)
            evaluations += n_eval
            if t_try is not None and c_try > count:
                count, s, t = c_try, s_try, t_try
            if count >= BUDGET_FLOOR * budget:
                break
    m = merge_at(s)
    edges = m.edges_from(tree.all_pairs, t, variant) if temporal and t >= 0 else None
    info = {"tau_s": s, "tau_t": t, "budget": budget, "search_evaluations": evaluations}
    return m.tokens(edges, grouping, info)


def _bisect_tau_t(count_at, cosines: torch.Tensor, budget: int) -> tuple[int, float | None, int]:
    """The largest count <= budget over tau_t in the given pair cosines (the only values where the count
    changes), by bisection: the count is (close to) nondecreasing in tau_t."""
    cand = torch.unique(cosines[cosines >= 0]).tolist()  # ascending
    lo, hi = -1, len(cand)  # count(cand[lo]) <= budget < count(cand[hi]), unknown at the ends
    best: tuple[int, float | None] = (-1, None)
    evaluations = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = count_at(cand[mid])
        evaluations += 1
        if c <= budget:
            lo = mid
            best = max(best, (c, cand[mid]), key=lambda b: b[0])
        else:
            hi = mid
    return best[0], best[1], evaluations
