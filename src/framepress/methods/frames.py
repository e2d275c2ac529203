"""Uniform frame subsampling: keep whole frames evenly spread over the clip (a floor baseline)."""

from __future__ import annotations

import torch

from .. import checks
from ..registry import register
from ..tokens import Tokens


def uniform_indices(total: int, n: int, device: torch.device | None = None) -> torch.Tensor:
    """``n`` indices spread evenly over ``range(total)``: floor(linspace(0, total-1, n)), the rule the
    LLaVA video samplers use (``np.linspace(0, total - 1, n, dtype=int)``)."""
    return torch.linspace(0, total - 1, n, dtype=torch.float64, device=device).floor().long()


@register(
    "frames",
    paper="uniform frame subsampling",
    budget="steps",
    check=lambda p: {"num_frames": checks.optional(checks.integer, "num_frames", p["num_frames"], 1)},
    shown={"num_frames": "T//2"},
    scale_invariant=True,
)
def frames(x: torch.Tensor, budget: int | None, *, num_frames: int | None = None) -> Tokens:
    """Keep ``num_frames`` whole frames, evenly spread; drop the others.

    Args:
        num_frames: frames to keep (default half of them, at least one). With a budget, as many whole frames
            as fit: budget // (H*W).
    """
    T, H, W, _ = x.shape
    if budget is not None and num_frames is not None:
        raise ValueError("frames: give retention or num_frames, not both")
    if budget is not None:
        num_frames = budget // (H * W)
        if num_frames == 0:
            raise ValueError(f"retention asks for {budget} tokens, less than one {H}x{W} frame ({H * W} tokens)")
    elif num_frames is None:
        num_frames = max(1, T // 2)
    num_frames = checks.integer("num_frames", num_frames, 1, T)
    kept = uniform_indices(T, num_frames, x.device)
    index = (kept[:, None] * (H * W) + torch.arange(H * W, device=x.device)).reshape(-1)
    return Tokens.select(x, index, {"frames": kept.tolist()})
