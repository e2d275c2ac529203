"""STTM: multi-granular spatio-temporal token merging (Hyun et al., ICCV 2025; specs/sttm.md).

Step 1, spatial (spec §2.2-2.4): each frame is a quadtree over a 2x2-average pyramid. A node stops (becomes one
token) when its cosine to each of its four child slots is >= ``tau_s``; otherwise its children are searched one
level finer; leaves always stop. Step 2, temporal (§2.5): nodes of consecutive frames whose boxes nest merge
when their cosine is >= ``tau_t``; each group becomes the mean of its members, placed at its earliest,
top-left-most member.

Here the whole pyramid is scored densely, level by level: a node is emitted exactly when its own min-slot
cosine reaches ``tau_s`` and no ancestor's does. So the spatial tokens of any ``tau_s`` are one mask, which the
budget search exploits. The default output equals the official code's token for token, quirks included
(§2.3.2 missing child slots, §2.5.3 the early-stopping grouping loop).
"""

from __future__ import annotations

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

#: Without user thresholds the budget search walks the diagonal tau_t = tau_s - TAU_GAP: the paper's tuned
#: pairs (0.85/0.65, 0.80/0.60, 0.90/0.65, ...) sit near it. The search keeps tau_t >= 0 (negative means off).
TAU_GAP = 0.2
DEFAULT_TAU_S, DEFAULT_TAU_T = 0.8, 0.6


def level_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """The pyramid's (h, w) per level, coarsest first (spec §2.2): halve with ceil until a side is 2.

    The official loop never ends on a 1x1 grid; here it stops there too.
    """
    sizes = [(h, w)]
    while h != 2 and w != 2 and (h, w) != (1, 1):
        h, w = -(-h // 2), -(-w // 2)
        sizes.insert(0, (h, w))
    return sizes


def _blocks(n: int) -> list[tuple[slice, slice, slice | None]]:
    """How a side of length n pools to ceil(n/2) (spec §2.2): (parent range, first children, second children).

    An odd side keeps index 0 single (no second child) and pairs (1, 2), (3, 4), ...; every range is a strided
    slice, so pooling and scoring read views, never copies."""
    m = (n + 1) // 2
    if n % 2 == 0:
        return [(slice(0, m), slice(0, n, 2), slice(1, n, 2))]
    return [(slice(0, 1), slice(0, 1), None)] + ([(slice(1, m), slice(1, n, 2), slice(2, n, 2))] if m > 1 else [])


class _Axis:
    """One spatial axis through the used pyramid levels, root first.

    ``start[l]``/``end[l]``: the leaf interval of each index of level l; ``of_leaf[l]``: the level-l index
    holding each leaf; ``blocks[l]`` (non-leaf levels): how level l+1 pools into level l."""

    def __init__(self, lengths: list[int], device: torch.device):
        self.lengths = lengths
        self.blocks = [_blocks(n) for n in lengths[1:]]
        leaf = torch.arange(lengths[-1], device=device)
        self.of_leaf = [leaf]
        for n in reversed(lengths[1:]):
            up = (torch.arange(n, device=device) + n % 2) // 2  # parent of each child index
            self.of_leaf.insert(0, up[self.of_leaf[0]])
        self.start, self.end = [], []
        for m, owner in zip(lengths, self.of_leaf):
            self.start.append(torch.full((m,), lengths[-1], device=device).scatter_reduce(0, owner, leaf, "amin"))
            self.end.append(torch.zeros(m, dtype=torch.long, device=device).scatter_reduce(0, owner, leaf + 1, "amax"))

    def down(self, coarse: int, fine: int) -> torch.Tensor:
        """For each index of level ``fine``, the index of level ``coarse`` that holds it."""
        return self.of_leaf[coarse][self.start[fine]]


class _Quadtree:
    """The dense quadtree of one video: pyramid values, every node's min-slot cosine, node geometry.

    Nodes of all levels share one id space, level by level from the root, row-major over (t, i, j) within a
    level. A node's key ``t*H*W + y0*W + x0`` (its top-left leaf) orders the output (spec §2.4).
    """

    def __init__(self, x: torch.Tensor, root_level: int, invalid_slots: str):
        T, H, W, C = x.shape
        sizes = level_sizes(H, W)
        root = root_level if root_level >= 0 else len(sizes) + root_level
        sizes = sizes[min(root, len(sizes) - 1) :]
        self.x, self.grid, self.sizes = x, (T, H, W), sizes
        self.rows = _Axis([h for h, _ in sizes], x.device)
        self.cols = _Axis([w for _, w in sizes], x.device)
        self.n_levels = len(sizes)
        self.cd = ops.compute_dtype(x.dtype)
        self.levels = [x.new_empty(T, h, w, C) for h, w in sizes[:-1]] + [x]
        self.min_sim = [torch.empty(T, h, w, dtype=self.cd, device=x.device) for h, w in sizes[:-1]]
        for frames in ops.frame_chunks(x):
            self._score(frames, invalid_slots)
        counts = [T * h * w for h, w in sizes]
        self.offsets = [sum(counts[:lvl]) for lvl in range(self.n_levels + 1)]

    @property
    def n_nodes(self) -> int:
        return self.offsets[-1]

    def _score(self, frames: slice, invalid_slots: str) -> None:
        """Pool the frames level by level (spec §2.2) and score each parent against its 4 child slots (§2.3)."""
        child = self.x[frames]
        child_hat = ops.normalize(child)
        for lvl in reversed(range(self.n_levels - 1)):
            parent = self.levels[lvl][frames]
            parent_hat = torch.empty(parent.shape, dtype=self.cd, device=parent.device)
            sims = self.min_sim[lvl][frames]
            for pr, r0, r1 in self.rows.blocks[lvl]:
                for pc, c0, c1 in self.cols.blocks[lvl]:
                    slots = [(r0, c0), (r0, c1), (r1, c0), (r1, c1)]  # top-left, top-right, bottom-left, bottom-right
                    present = [child[:, r, c] for r, c in slots if r is not None and c is not None]
                    total = present[0].to(self.cd)
                    for part in present[1:]:  # the official order of the sum keeps it bit-exact
                        total = total + part
                    block = (total / len(present)).to(parent.dtype)
                    block_hat = ops.normalize(block)
                    parent[:, pr, pc] = block
                    parent_hat[:, pr, pc] = block_hat
                    slot_sims = []
                    for r, c in slots:
                        if r is not None and c is not None:
                            slot_sims.append((block_hat * child_hat[:, r, c]).sum(-1))
                        elif invalid_slots == "top_left":  # the official code compares the frame's top-left child
                            slot_sims.append((block_hat * child_hat[:, :1, :1]).sum(-1))
                    sims[:, pr, pc] = torch.stack(slot_sims, -1).amin(-1)
            child, child_hat = parent, parent_hat

    @cached_property
    def ancestor_max(self) -> list[torch.Tensor]:
        """Per level, the largest min-slot cosine among a node's ancestors (-inf at the root)."""
        out = [torch.full_like(self.min_sim[0], -torch.inf)]
        for lvl in range(self.n_levels - 1):
            m = torch.maximum(out[lvl], self.min_sim[lvl])
            fine = lvl + 1
            out.append(m[:, self.rows.down(lvl, fine)][:, :, self.cols.down(lvl, fine)])
        return out

    def emitted(self, tau_s: float) -> torch.Tensor:
        """[n_nodes] bool: the nodes that become spatial tokens at ``tau_s``."""
        if self.n_levels == 1 or tau_s > 1:  # a cosine never exceeds 1 (compared here unrounded): leaves only
            mask = torch.zeros(self.n_nodes, dtype=torch.bool, device=self.x.device)
            mask[self.offsets[-2] :] = True
            return mask
        anc = self.ancestor_max
        per_level = [(anc[lvl] < tau_s) & (self.min_sim[lvl] >= tau_s) for lvl in range(self.n_levels - 1)]
        return self.flat(per_level + [anc[-1] < tau_s])

    def flat(self, per_level: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate a per-level [T, h, w, ...] table into the shared node-id space."""
        return torch.cat([p.reshape(-1, *p.shape[3:]) for p in per_level])

    def _per_level(self, fn) -> torch.Tensor:
        T = self.grid[0]
        t = torch.arange(T, device=self.x.device)[:, None, None]
        return self.flat([fn(lvl, t, h, w) for lvl, (h, w) in enumerate(self.sizes)])

    @cached_property
    def keys(self) -> torch.Tensor:
        _, H, W = self.grid
        return self._per_level(
            lambda lvl, t, h, w: t * (H * W) + self.rows.start[lvl][None, :, None] * W + self.cols.start[lvl][None, None, :]
        )

    @cached_property
    def boxes(self) -> torch.Tensor:
        def level_boxes(lvl, t, h, w):
            T = t.shape[0]
            y0, y1 = (v[None, :, None].expand(T, h, w) for v in (self.rows.start[lvl], self.rows.end[lvl]))
            x0, x1 = (v[None, None, :].expand(T, h, w) for v in (self.cols.start[lvl], self.cols.end[lvl]))
            return torch.stack([t.expand(T, h, w), y0, x0, y1, x1], -1)

        return self._per_level(level_boxes)

    def leaf_ids(self) -> torch.Tensor:
        """[L, T, H, W]: the id of the node of each level that holds each leaf."""
        T = self.grid[0]
        t = torch.arange(T, device=self.x.device)[:, None, None]
        return torch.stack(
            [
                self.offsets[lvl] + t * (h * w) + self.rows.of_leaf[lvl][None, :, None] * w + self.cols.of_leaf[lvl][None, None, :]
                for lvl, (h, w) in enumerate(self.sizes)
            ]
        )

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """[len(ids), C] pyramid values of the nodes ``ids``."""
        C = self.x.shape[-1]
        out = self.x.new_empty(ids.numel(), C)
        for lvl, level in enumerate(self.levels):
            pos = torch.nonzero((ids >= self.offsets[lvl]) & (ids < self.offsets[lvl + 1])).squeeze(1)
            local = ids[pos] - self.offsets[lvl]
            for rows in ops.chunks(pos.numel(), C * self.x.element_size(), self.x.device):
                out.index_copy_(0, pos[rows], level.reshape(-1, C).index_select(0, local[rows]))
        return out

    @cached_property
    def all_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every nesting pair (earlier, later) of nodes of consecutive frames, over all levels, and its temporal
        cosine. Whatever ``tau_s`` emits, its temporal candidates are among these: the budget search's table.

        A pair is a node and the node of a coarser (or the same) level holding it, one frame later or earlier,
        so each level pair is the coarser level gathered onto the finer grid; every level is normalized once."""
        T, dev = self.grid[0], self.x.device
        if T < 2:
            return torch.empty(0, 2, dtype=torch.long, device=dev), torch.empty(0, dtype=self.cd, device=dev)
        t = torch.arange(T, device=dev)[:, None, None]
        ids, sims, combos = [], [], []
        for coarse in range(self.n_levels):
            for fine in range(coarse, self.n_levels):
                rows, cols = self.rows.down(coarse, fine), self.cols.down(coarse, fine)
                (h, w), (hc, wc) = self.sizes[fine], self.sizes[coarse]
                fine_id = self.offsets[fine] + torch.arange(T * h * w, device=dev).reshape(T, h, w)
                coarse_id = self.offsets[coarse] + t * (hc * wc) + rows[None, :, None] * wc + cols[None, None, :]
                combos.append((coarse, fine, rows, cols))
                ids.append(torch.stack([coarse_id[:-1].reshape(-1), fine_id[1:].reshape(-1)], 1))
                if fine != coarse:
                    ids.append(torch.stack([fine_id[:-1].reshape(-1), coarse_id[1:].reshape(-1)], 1))
        for frames in ops.frame_chunks(self.x[1:]):
            window = slice(frames.start, frames.stop + 1)  # the chunk's frame pairs need one frame more
            hats = [ops.normalize_shifted(level[window]) for level in self.levels]
            for coarse, fine, rows, cols in combos:
                # the coarse node over each fine node
                held = hats[fine] if coarse == fine else hats[coarse][:, rows][:, :, cols]
                sims.append(((coarse, fine, False), (held[:-1] * hats[fine][1:]).sum(-1)))
                if fine != coarse:
                    sims.append(((coarse, fine, True), (hats[fine][:-1] * held[1:]).sum(-1)))
        order = list(dict.fromkeys(key for key, _ in sims))
        per_combo = {key: torch.cat([v for k, v in sims if k == key]).reshape(-1) for key in order}
        return torch.cat(ids), torch.cat([per_combo[key] for key in order])

def _merge_pairs(
    pairs: torch.Tensor, sims: torch.Tensor, tau_t: float, variant: str, frame_of: torch.Tensor
) -> torch.Tensor:
    """Kept temporal pairs (earlier, later): those with cosine >= tau_t, thinned by the variant.

    "slow" replicates the official slow path (spec §2.6, pinned by the golden vectors): per pair of frames the
    passing pairs are sorted by descending cosine and a pair is dropped when the pair before it has the same
    later node; so a later node keeps its best match and any others not adjacent to it in that order.
    "best" keeps exactly each later node's most similar earlier node (ties: the smaller earlier index).
    """
    keep = sims >= tau_t if tau_t <= 1 else torch.zeros_like(sims, dtype=torch.bool)
    pairs, sims = pairs[keep], sims[keep]
    if variant == "fast" or not pairs.numel():
        return pairs
    canonical = torch.argsort(pairs[:, 0] * (int(pairs.max()) + 1) + pairs[:, 1])  # ties resolve by (earlier, later)
    pairs, sims = pairs[canonical], sims[canonical]
    later = pairs[:, 1]
    if variant == "slow":
        order = torch.sort(-sims, stable=True).indices
        order = order[torch.sort(frame_of[later[order]], stable=True).indices]
        later_sorted = later[order]
        drop = torch.zeros_like(later_sorted, dtype=torch.bool)
        drop[1:] = later_sorted[1:] == later_sorted[:-1]  # one later node never spans two frame pairs
        return pairs[order[~drop]]
    n = int(later.max()) + 1
    best = torch.full((n,), -torch.inf, dtype=sims.dtype, device=sims.device).scatter_reduce(0, later, sims, "amax")
    is_best = sims == best[later]
    first = torch.full((n,), n, dtype=pairs.dtype, device=pairs.device)
    first = first.scatter_reduce(0, later, torch.where(is_best, pairs[:, 0], n), "amin")
    return pairs[is_best & (pairs[:, 0] == first[later])]


class _Merge:
    """The spatial tokens of one ``tau_s``, and their temporal groups for a ``tau_t``."""

    def __init__(self, tree: _Quadtree, tau_s: float):
        self.tree = tree
        self.mask = tree.emitted(tau_s)
        ids = torch.nonzero(self.mask).squeeze(1)
        self.ids = ids[torch.argsort(tree.keys[ids])]  # spatial tokens in output order (§2.4)
        self.n = self.ids.numel()
        self.frame = tree.boxes[self.ids, 0]
        self.rank = torch.full((tree.n_nodes,), -1, dtype=torch.long, device=ids.device)
        self.rank[self.ids] = torch.arange(self.n, device=ids.device)  # node id -> spatial token index

    @cached_property
    def leaf_token(self) -> torch.Tensor:
        """[T, H, W]: the spatial token holding each leaf (exactly one level holds it)."""
        leaf_ids = self.tree.leaf_ids()
        return self.rank[(leaf_ids * self.mask[leaf_ids]).sum(0)]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Features of the spatial tokens ``index`` (gathered from the pyramid on demand)."""
        return self.tree.features(self.ids[index])

    def edges(self, tau_t: float, variant: str) -> torch.Tensor:
        """Merge edges among the spatial tokens: nested tokens of consecutive frames (§2.5.1) that pass tau_t.

        Partitions of one quadtree nest wherever they overlap, so the candidates are the distinct
        (token at t, token at t+1) over the leaves."""
        a, b = self.leaf_token[:-1].reshape(-1), self.leaf_token[1:].reshape(-1)
        code = torch.unique(a * self.n + b)
        pairs = torch.stack([code // self.n, code % self.n], 1)
        sims = ops.pair_cosine(self.rows, pairs, ops.normalize_shifted)
        return _merge_pairs(pairs, sims, tau_t, variant, self.frame)

    def edges_from_table(self, tau_t: float, variant: str) -> torch.Tensor:
        """The same edges, read off the quadtree's table of all nesting pairs (budget search)."""
        pairs, sims = self.tree.all_pairs
        inside = self.mask[pairs[:, 0]] & self.mask[pairs[:, 1]]
        return _merge_pairs(self.rank[pairs[inside]], sims[inside], tau_t, variant, self.frame)

    def count(self, edges: torch.Tensor | None, grouping: str) -> int:
        if edges is None or not edges.numel():
            return self.n
        label = _GROUP[grouping](edges, self.n)
        return int((label == torch.arange(self.n, device=label.device)).sum())

    def tokens(self, edges: torch.Tensor | None, grouping: str, info: dict) -> Tokens:
        boxes, source = self.tree.boxes[self.ids], self.leaf_token.reshape(-1)
        if edges is not None and edges.numel():
            out_of, roots = ops.dense_labels(_GROUP[grouping](edges, self.n))
            feats = ops.group_mean(self.rows, out_of, roots.numel())  # unweighted mean of members (§2.5.4)
            boxes, source = boxes[roots], out_of[source]
        else:
            feats = self.tree.features(self.ids)
        return Tokens.from_source(feats, boxes, source, self.tree.grid, info)


def check(p: dict) -> dict:
    """STTM's parameter values (run at apply and at every call; the grid-dependent root_level bound is checked
    in :func:`sttm`)."""
    p["tau_s"] = checks.optional(checks.number, "tau_s", p["tau_s"], -1.0, 2.0)
    p["tau_t"] = checks.optional(checks.number, "tau_t", p["tau_t"], -2.0, 2.0)
    p["root_level"] = checks.optional(checks.integer, "root_level", p["root_level"])
    p["variant"] = checks.choice("variant", p["variant"], VARIANTS)
    p["grouping"] = checks.choice("grouping", p["grouping"], GROUPINGS)
    p["invalid_slots"] = checks.choice("invalid_slots", p["invalid_slots"], INVALID_SLOTS)
    return p


@register(
    "sttm",
    paper="Hyun et al., STTM, ICCV 2025 (arXiv 2507.07990)",
    budget="search",
    check=check,
    shown={"tau_s": f"{DEFAULT_TAU_S} (searched with a retention)", "tau_t": f"{DEFAULT_TAU_T} (searched with a retention)", "root_level": "1 (0 if a retention needs it)"},
    scale_invariant=True,
)
def sttm(
    x: torch.Tensor,
    budget: int | None,
    *,
    tau_s: float | None = None,
    tau_t: float | None = None,
    root_level: int | None = None,
    variant: str = "fast",
    grouping: str = "official",
    invalid_slots: str = "top_left",
) -> Tokens:
    """Quadtree spatial merging, then temporal merging of nested nodes; query-agnostic.

    Args:
        tau_s: spatial threshold: a node stops when its cosine to every child slot is >= tau_s; above 1 switches
            spatial merging off. Default 0.8 (the paper's 30% setting for LLaVA-Video).
        tau_t: temporal threshold: nested nodes of consecutive frames merge when their cosine is >= tau_t; a
            negative value switches temporal merging off. Default 0.6.
        root_level: index of the root grid in the pyramid's level list, coarsest first (1: 4x4 roots on a 14x14
            grid, as in every official run; 0: 2x2; -1: the leaf grid, no spatial merging). Indices past the
            leaf mean the leaf, so small grids work. Default 1; with a budget that root level cannot reach, the
            default falls back to 0 (coarser roots) before giving up.
        variant: "fast" merges a later node with every passing nested node (official default, "top-left" in the
            paper's Table 7); "slow" is the official slow path ("optimal"), which means to keep each later node's
            best match but drops only duplicates adjacent in similarity order; "best" keeps exactly each later
            node's most similar earlier node, as the paper describes "optimal".
        grouping: "official" replicates the official early-stopping grouping loop (spec §2.5.3); "exact" joins
            full connected components of the kept pairs.
        invalid_slots: "top_left" compares the missing child slots of odd-edge nodes with the frame's top-left
            child, as the official code does (spec §2.3.2); "ignore" tests only real children.

    With a budget, the thresholds not given are searched (on the diagonal tau_t = tau_s - 0.2, tau_t >= 0, when
    neither is given) so that the output has at most ``budget`` tokens and, where the thresholds allow it, at
    least 98% of it. ``info`` reports the thresholds (passing them back reproduces the output exactly) and, under
    "off", a merging step a threshold switched off (tau_s > 1; tau_t < 0 or > 1).
    """
    roots = [1, 0] if root_level is None else [root_level]
    n_sizes = len(level_sizes(*x.shape[1:3]))
    if roots[0] < -n_sizes:
        raise ValueError(f"root_level must be >= {-n_sizes} for a {x.shape[1]}x{x.shape[2]} grid, got {roots[0]}")
    if budget is not None and tau_s is not None and tau_t is not None:
        raise ValueError("sttm: give retention or both tau_s and tau_t, not all three")
    temporal = x.shape[0] > 1

    if budget is None:
        tree = _Quadtree(x, roots[0], invalid_slots)
        tau_s = DEFAULT_TAU_S if tau_s is None else tau_s
        tau_t = DEFAULT_TAU_T if tau_t is None else tau_t
        merge = _Merge(tree, tau_s)
        edges = merge.edges(tau_t, variant) if temporal and tau_t >= 0 else None
        return merge.tokens(edges, grouping, _info(tau_s, tau_t))
    for attempt, root in enumerate(roots):
        try:
            out = _fit_budget(_Quadtree(x, root, invalid_slots), budget, tau_s, tau_t, variant, grouping, temporal)
        except ValueError:
            if attempt + 1 == len(roots):
                raise
            continue
        out.info["root_level"] = root
        return out


def _fit_budget(tree, budget, fixed_s, fixed_t, variant, grouping, temporal) -> Tokens:
    """Search the thresholds not given for at most ``budget`` tokens and as close to it as they allow.

    Every candidate is scored from the quadtree's tables (one spatial mask, the nesting-pair cosines, the
    grouping loop on integers), never by re-running the method on the features. Three paths, each tried only
    while the count is short of 98% of the budget: the main line (the diagonal, or the free threshold); tau_t
    set between any two pair cosines (or off) at the tau_s found; spatial merging alone."""
    merges: dict[float, _Merge] = {}

    def merge_at(s: float) -> _Merge:
        if s not in merges:
            merges[s] = _Merge(tree, s)
        return merges[s]

    def count(s: float, t: float) -> int:
        m = merge_at(s)
        return m.count(m.edges_from_table(t, variant) if temporal and t >= 0 else None, grouping)

    def thresholds(v: float) -> tuple[float, float]:
        if fixed_s is not None:
            return fixed_s, v
        if fixed_t is not None:
            return v, fixed_t
        return v, max(v - TAU_GAP, 0.0)

    best: tuple[int, float, float] | None = None
    evaluations = 0

    def short() -> bool:
        return best is None or best[0] < BUDGET_FLOOR * budget

    def consider(n: int, s: float, t: float) -> None:
        nonlocal best
        if n <= budget and (best is None or n > best[0]):
            best = (n, s, t)

    lo, hi = (0.0, 1.01) if fixed_s is not None else (-1.0, 1.01 + (TAU_GAP if fixed_t is None else 0.0))
    found = search_threshold(lambda v: count(*thresholds(v)), lo, hi, budget)
    if found is not None:
        evaluations += found.evaluations
        consider(found.count, *thresholds(found.value))
    if short() and temporal and fixed_t is None and found is not None:
        # thresholds move the count in steps; with tau_s fixed, tau_t can sit between any two pair cosines
        for s_try in sorted({thresholds(v)[0] for v in (found.value, found.above) if v is not None}, reverse=True):
            m = merge_at(s_try)
            pairs, sims = tree.all_pairs
            cosines = sims[m.mask[pairs[:, 0]] & m.mask[pairs[:, 1]]]
            n, t_try, n_eval = _bisect(lambda v: count(s_try, v), cosines, budget)
            evaluations += n_eval
            if t_try is not None:
                consider(n, s_try, t_try)
            if not short():
                break
    if short() and temporal and fixed_t is None and fixed_s is None:
        alone = search_threshold(lambda v: count(v, -1.0), -1.0, 1.01, budget)
        if alone is not None:
            evaluations += alone.evaluations
            consider(alone.count, alone.value, -1.0)
    if best is None:
        root_h, root_w = tree.sizes[0]
        raise ValueError(
            f"retention asks for {budget} tokens, but sttm keeps at least {count(*thresholds(lo))} on this "
            f"{'x'.join(map(str, tree.grid))} grid with {root_h}x{root_w} roots"
            + (f", tau_s={fixed_s}" if fixed_s is not None else "")
            + (f", tau_t={fixed_t}" if fixed_t is not None else "")
            + "; raise retention or lower root_level"
        )
    _, s, t = best
    m = merge_at(s)
    edges = m.edges_from_table(t, variant) if temporal and t >= 0 else None
    return m.tokens(edges, grouping, _info(s, t, budget=budget, search_evaluations=evaluations))


def _info(tau_s: float, tau_t: float, **more) -> dict:
    """The thresholds, and under "off" the merging steps they switch off (a cosine never exceeds 1, so a
    threshold above 1 means off; so does a negative tau_t)."""
    off = [f"spatial (tau_s={tau_s} > 1)"] if tau_s > 1 else []
    if tau_t < 0 or tau_t > 1:
        off.append(f"temporal (tau_t={tau_t} {'< 0' if tau_t < 0 else '> 1'})")
    return {"tau_s": tau_s, "tau_t": tau_t, **more, **({"off": off} if off else {})}


def _bisect(count_at, cosines: torch.Tensor, budget: int) -> tuple[int, float | None, int]:
    """The largest count <= budget over tau_t among the given pair cosines (the only values where the count
    changes) and "off" (-1, the most tokens), by bisection, the count being (close to) nondecreasing."""
    cand = torch.unique(cosines[cosines >= 0]).tolist() + [-1.0]  # ascending cosines, then temporal merging off
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
