"""DyCoke (Tao et al., CVPR 2025; specs/baselines.md §5): stage 1, token temporal merging, as the official code
(KD-TAO/DyCoke ``dycole_ttm``) runs it, and stage 2, decode-time pruning of the visual KV cache
(:func:`prune_decode_keys`, for a model's decode steps).

Stage 1, frame by frame (n = H*W tokens a frame):

- pairs (i, i+1), i even: frame i whole; frame i+1 keeps the int((1 - K) * n) tokens least cosine-similar to
  the same position of frame i;
- windows of four starting at i in ``range(0, T - 4, 4)``: frame i+2 is cut the same way against frame i. The
  range stops one window early, so when T is a multiple of 4 (or T - 1, T - 2, T - 3 is) the third frame of the
  last window stays whole (T = 32: frame 30 keeps all 196);
- odd T: the pair loop never reaches the last frame, which is dropped (T = 7: frame 6 keeps nothing).

Despite the name it drops, never averages. The official code crashes for T < 5 (an empty window loop, then
``torch.stack([])``) and for T = 1; here the same rules simply run without the missing windows (T = 1: the frame
is kept whole). A pruned frame's tokens come out in (t, y, x) order, not the official ``topk`` order (least
similar first): framepress places each token at its own position in the sequence, so its RoPE position keeps
the grid order; the official order carries no position information of its own (the same tokens, permuted
inside their frame's span).

Budgets. With a retention r, ``allocation="official"`` (default) runs the official rule at the K the paper's
ratio (1 + 3 (1 - K)) / 4 = r gives: each pruned frame keeps floor((4B - N) n / 3N) (integers, B the budget, N =
T*H*W); r < 25% is an error. The count then misses the budget: 32x14x14 at 25% gives 1764 for 1568 (+12.5%,
frame 30 whole), at 10% it is an error (below the 25% floor); K = 0.7 (47.5%) gives 3098 for 2979 (+4.0%).
``allocation="exact"`` returns exactly B: the frames the official code keeps whole stay whole and the rest of
the budget is split evenly over the pruned frames (earlier frames first for the remainder). When B is below the
whole frames, the last window's third frame (whole only because the official loop stops early) is cut too,
against its window's first frame as the paper describes; when B exceeds what the official code can keep (odd T),
the dropped last frame takes the rest, cut against frame T-2. Below every fourth frame (25% when T % 4 = 0) no
exact budget exists: an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checks, ops
from ..registry import register
from ..tokens import Tokens

ALLOCATIONS = ("official", "exact")

# frame roles of the official loops
WHOLE, PAIR, WINDOW, LATE, DROPPED = range(5)


def roles(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T] role of each frame (WHOLE, PAIR: cut against t-1, WINDOW: cut against t-2, LATE: the third frame of a
    window the official loop skipped, kept whole, DROPPED: the odd last frame) and [T] the frame it is compared
    with (-1 for whole frames; LATE: its window's first frame; DROPPED: frame T-2)."""
    t = torch.arange(frames)
    role = torch.full((frames,), WHOLE)
    role[t % 2 == 1] = PAIR
    role[(t % 4 == 2) & (t < frames - 2)] = WINDOW
    role[(t % 4 == 2) & (t >= frames - 2)] = LATE
    if frames % 2 == 1 and frames > 1:
        role[-1] = DROPPED
    ref = torch.where((role == PAIR) | (role == DROPPED), t - 1, torch.where(role == WHOLE, -1, t - 2))
    return role, ref


def even_split(total: int, parts: int, cap: int) -> torch.Tensor:
    """[parts] counts summing to ``total`` (<= parts * cap), as even as integers allow, the earlier parts larger."""
    base, extra = divmod(total, max(parts, 1))
    return (base + (torch.arange(parts) < extra).long()).clamp_(max=cap)


def frame_counts(role: torch.Tensor, n: int, budget: int | None, prune: float, allocation: str) -> torch.Tensor:
    """[T] tokens kept per frame (see the module notes)."""
    T = role.numel()
    N = T * n
    counts = torch.zeros(T, dtype=torch.long)
    counts[(role == WHOLE) | (role == LATE)] = n
    cut = (role == PAIR) | (role == WINDOW)
    if budget is None:
        counts[cut] = int((1 - prune) * n)  # the official int(), not round
        return counts
    if allocation == "official":
        if 4 * budget < N:
            raise ValueError(
                f"retention asks for {budget} of {N} tokens, below DyCoke's 25% floor (K = 1: every fourth frame)"
            )
        counts[cut] = min(n, (4 * budget - N) * n // (3 * N))
        return counts
    rest = budget - int(counts.sum())
    if rest < 0:  # the skipped windows' third frames are cut too
        counts[role == LATE] = 0
        cut = cut | (role == LATE)
        rest = budget - int(counts.sum())
        if rest < 0:
            raise ValueError(
                f"retention asks for {budget} tokens, but dycoke keeps the first frame of every 4-frame window "
                f"({int(counts.sum())} tokens)"
            )
    counts[cut] = even_split(rest, int(cut.sum()), n)
    counts[role == DROPPED] = rest - int(counts[cut].sum())
    return counts


def check(p: dict) -> dict:
    """DyCoke's parameter values (run at apply and at every call)."""
    p["prune"] = checks.number("prune", p["prune"], 0.0, 1.0)
    p["allocation"] = checks.choice("allocation", p["allocation"], ALLOCATIONS)
    return p


def _similarity(grid: torch.Tensor, role: torch.Tensor, ref: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """[len(cut), n] cosine of each token of the frames ``cut`` to the same position of its reference frame, frame
    by frame as the official loops run (on [n, C] slices: no copy of the video, and 3x faster than one batched
    call here). The official pair loop normalizes before its cosine, the window loop does not: the same up to
    rounding, which decides among near-identical tokens, so each loop's arithmetic is kept."""
    cd = ops.compute_dtype(grid.dtype)
    cos, unit = torch.nn.functional.cosine_similarity, torch.nn.functional.normalize
    pairs = ((role[cut] == PAIR) | (role[cut] == DROPPED)).tolist()
    rows = []
    for t, r, pair in zip(cut.tolist(), ref[cut].tolist(), pairs):
        a, b = grid[t].to(cd), grid[r].to(cd)
        rows.append(cos(unit(a, dim=-1), unit(b, dim=-1), dim=-1) if pair else cos(a, b, dim=-1))
    return torch.stack(rows) if rows else grid.new_zeros(0, grid.shape[1], dtype=cd)


@register(
    "dycoke",
    paper="Tao et al., DyCoke: Dynamic Compression of Tokens for Fast Video LLMs, CVPR 2025",
    budget="official",
    check=check,
    scale_invariant=True,
    decode="dycoke_decode",
)
def dycoke(x: torch.Tensor, budget: int | None, *, prune: float = 0.7, allocation: str = "official") -> Tokens:
    """Keep each pair's first frame; from the second (and each 4-frame window's third frame) the tokens least
    similar to their reference frame at the same position (the official stage 1, quirks included).

    Args:
        prune: the share K of each cut frame dropped when no retention is given (0.7: int(0.3 * 196) = 58 kept).
        allocation: with a retention, "official" (the official rule at the K the retention implies, a count near
            it) or "exact" (exactly the budget; module notes). Without a retention it needs none.
    """
    if allocation == "exact" and budget is None:
        raise ValueError('allocation="exact" needs a retention (without one, prune sets the official counts)')
    T, H, W, C = x.shape
    n = H * W
    role, ref = roles(T)
    counts = frame_counts(role, n, budget, prune, allocation).to(x.device)
    role, ref = role.to(x.device), ref.to(x.device)
    grid = x.reshape(T, n, C)
    cut = torch.nonzero(ref >= 0).squeeze(1)
    similarity = _similarity(grid, role, ref, cut)
    order = torch.sort(similarity, dim=1, stable=True).indices  # least similar first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=x.device).expand(cut.numel(), n))
    kept = torch.ones(T, n, dtype=torch.bool, device=x.device)
    kept[cut] = rank < counts[cut][:, None]
    index = torch.nonzero(kept.reshape(-1)).squeeze(1)
    return Tokens.select(x, index, {"kept_per_frame": kept.sum(1).tolist()})


#: Stage 2's defaults (the official lmms-eval arguments dycoke_l=3, dycoke_p=0.7) and its refresh threshold.
DECODE_LAYER, DECODE_PRUNE, REFRESH = 3, 0.7, 0.9


@dataclass
class DecodeState:
    """One sample's stage-2 memory across decode steps: the previous step's visual attention (None before the
    first decode step). A new prompt (prefill) starts a new state."""

    previous: torch.Tensor | None = None


def prune_decode_keys(
    attention: torch.Tensor, state: DecodeState, *, prune: float = DECODE_PRUNE, refresh: float = REFRESH
) -> torch.Tensor | None:
    """DyCoke stage 2 for one decode step of one sample, as the official code runs it: which visual KV entries
    the layers >= L (3) attend to.

    ``attention`` [N] is the new token's attention to each of the N visual KV entries at layer L-1, mean over
    heads. Its cosine with the previous step's (0 at the first decode step) decides: below ``refresh`` (0.9)
    the step keeps the int((1 - prune) * N) entries with the most attention (returned ascending; ties: the
    earlier entry); otherwise it returns None and the step attends to the whole cache. That is the official
    rule: its index list is cleared before layer L on every step, so "attention unchanged" means no pruning at
    all on that step, not a reuse of the previous selection. Layers < L always see every entry; the full cache
    stays in memory (the selection is a gather, never a deletion), so only decode-time attention is saved.
    """
    prune = checks.number("prune", prune, 0.0, 1.0)
    refresh = checks.number("refresh", refresh, -1.0, 1.0)
    current = attention.detach().float()
    similarity = (
        float(torch.nn.functional.cosine_similarity(current, state.previous, dim=0))
        if state.previous is not None and state.previous.shape == current.shape
        else 0.0
    )
    state.previous = current
    if similarity >= refresh:
        return None
    return ops.top_indices(current, int((1 - prune) * current.numel()))


@register(
    "dycoke_decode",
    paper="DyCoke (CVPR 2025) stage 2: dynamic KV-cache pruning at every decode step",
    budget="exact",
    stage="decode",
    layer=DECODE_LAYER,
    check=lambda p: {"decode_prune": checks.number("decode_prune", p["decode_prune"], 0.0, 1.0),
                     "refresh": checks.number("refresh", p["refresh"], -1.0, 1.0)},
)
def dycoke_decode(
    attention: torch.Tensor, memory: dict, *, decode_prune: float = DECODE_PRUNE, refresh: float = REFRESH
) -> torch.Tensor | None:
    """Stage 2 as a model runs it after ``dycoke``: :func:`prune_decode_keys` with its parameters named apart from
    stage 1's ``prune`` (``framepress.apply(model, "dycoke", ..., decode_prune=0.7, refresh=0.9)``). ``memory`` is
    the sample's dict the model keeps across its decode steps (emptied at each prefill)."""
    return prune_decode_keys(attention, memory.setdefault("state", DecodeState()), prune=decode_prune, refresh=refresh)
