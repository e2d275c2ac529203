"""Random token dropping, seeded: the floor every method must beat (specs/baselines.md, "pooling/random")."""

from __future__ import annotations

import torch

from .. import checks
from ..registry import register
from ..tokens import Tokens


@register(
    "random",
    paper="random token selection (floor baseline)",
    budget="exact",
    check=lambda p: {"seed": checks.integer("seed", p["seed"], 0, 2**63 - 1)},
    scale_invariant=True,
)
def random(x: torch.Tensor, budget: int | None, *, seed: int = 0) -> Tokens:
    """Keep a uniformly random subset of exactly ``budget`` tokens, in their original order.

    Args:
        seed: seed of the CPU generator that draws the subset, so the choice is the same on every device.
    """
    if budget is None:
        raise ValueError("random needs a retention (the number of tokens to keep)")
    T, H, W, _ = x.shape
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(T * H * W, generator=generator)[:budget].sort().values
    return Tokens.select(x, index.to(x.device), {"seed": seed})
