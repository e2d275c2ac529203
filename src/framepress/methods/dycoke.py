"""DyCoke stage 1, token temporal merging (Tao et al., CVPR 2025; specs/baselines.md §5), as the official code
runs it: in windows of 4 frames f0..f3, f0 is kept whole; f1 and f2 keep their tokens least similar to f0 at
the same position, f3 those least similar to f2 (f2's full tokens). Despite the name it drops, not averages.

Stage 2 of the paper (decode-time pruning of the visual KV cache) saves time only while decoding and changes no
prefill; it is not part of this pre-LLM method.
"""

from __future__ import annotations

import torch

from .. import checks, ops
from ..registry import register
from ..tokens import Tokens
from .holitom import largest_remainder


def references(frames: int, window: int = 4) -> torch.Tensor:
    """[T]: the frame each frame is compared with (-1 for each window's first frame): f1, f2 -> f0; f3 -> f2."""
    t = torch.arange(frames)
    pos = t % window
    ref = torch.where(pos == 3, t - 1, t - pos)
    return torch.where(pos == 0, -1, ref)


@register(
    "dycoke",
    paper="Tao et al., DyCoke: Dynamic Compression of Tokens for Fast Video LLMs, CVPR 2025",
    budget="exact",
    check=lambda p: {"prune": checks.number("prune", p["prune"], 0.0, 1.0)},
    scale_invariant=True,
)
def dycoke(x: torch.Tensor, budget: int | None, *, prune: float = 0.7) -> Tokens:
    """Keep each 4-frame window's first frame; from the others, their tokens least similar to their reference
    frame at the same position.

    Args:
        prune: the share K of each non-first frame dropped when no retention is given (0.7: a (1 + 3*0.3)/4 =
            47.5% pre-LLM ratio).

    With a retention the first frames stay whole and the rest of the budget is spread over the other frames by
    largest remainder (exact); a budget below the first frames' tokens (about 25%) is a clear error.
    """
    T, H, W, C = x.shape
    n = H * W
    ref = references(T).to(x.device)
    first = ref < 0
    others = int((~first).sum())
    if budget is None:
        keep = torch.full((others,), round((1 - prune) * n), dtype=torch.long)
    else:
        floor = int(first.sum()) * n
        if budget < floor:
            raise ValueError(
                f"retention asks for {budget} tokens, but dycoke keeps the first frame of every 4-frame window "
                f"({floor} tokens)"
            )
        rest = budget - floor
        keep = largest_remainder(torch.full((others,), rest / max(others, 1), dtype=torch.float64), torch.full((others,), n), rest)
    grid = x.reshape(T, n, C)
    unit = ops.normalize(grid)
    similarity = (unit[~first] * unit[ref[~first]]).sum(-1)  # [others, n] same-position cosine
    rank = torch.empty_like(similarity, dtype=torch.long)
    order = torch.sort(similarity, dim=1, stable=True).indices  # least similar first
    rank.scatter_(1, order, torch.arange(n, device=x.device).expand(others, n))
    kept = torch.ones(T, n, dtype=torch.bool, device=x.device)
    kept[~first] = rank < keep.to(x.device)[:, None]
    index = torch.nonzero(kept.reshape(-1)).squeeze(1)
    return Tokens.select(x, index, {"kept_per_frame": kept.sum(1).tolist()})
