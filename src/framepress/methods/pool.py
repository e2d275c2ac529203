"""Uniform spatial pooling of every frame, as LLaVA-OneVision and LLaVA-Video do it (specs/baselines.md,
"pooling"): the floor that every smarter method must beat.

LLaVA-OneVision's and LLaVA-Video's own video path is ``bilinear`` to ``ceil(H/2) x ceil(W/2)`` (27x27 -> 14x14);
their ``average`` mode is ``avg_pool2d`` with kernel = stride, which drops the last row/column of an odd grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import checks, ops
from ..registry import register
from ..tokens import Tokens

MODES = ("bilinear", "average")


def _target_for_budget(T: int, H: int, W: int, budget: int) -> tuple[int, int]:
    """The largest grid (h, w) within the budget (T*h*w <= budget), as close to the input's aspect ratio as
    whole cells allow: each side length paired with its proportional other side."""
    candidates = {(h, min(W, max(1, round(h * W / H)))) for h in range(1, H + 1)}
    candidates |= {(min(H, max(1, round(w * H / W))), w) for w in range(1, W + 1)}
    fits = [(h * w, h, w) for h, w in candidates if T * h * w <= budget]
    if not fits:
        raise ValueError(
            f"retention asks for {budget} tokens, but pool keeps at least one token per frame ({T} frames)"
        )
    _, h, w = max(fits)
    return h, w


def _windows(n: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output index of each of n inputs, and each output's input window [start, end), for n -> m cells."""
    i = torch.arange(m, device=device)
    owner = torch.arange(n, device=device) * m // n
    return owner, (i * n) // m, -((-(i + 1) * n) // m)


def check(p: dict) -> dict:
    """Pooling's parameter values (run at apply and at every call); ``size`` against the grid is checked in
    :func:`pool`."""
    p["mode"] = checks.choice("mode", p["mode"], MODES)
    if p["stride"] is not None and p["size"] is not None:
        raise ValueError("pool: give one of retention, stride or size")
    p["stride"] = checks.optional(checks.integer, "stride", p["stride"], 1)
    if p["size"] is not None:
        if not (isinstance(p["size"], (tuple, list)) and len(p["size"]) == 2):
            raise TypeError(f"size must be a pair (h, w), got {p['size']!r}")
        p["size"] = tuple(checks.integer(f"size[{i}]", v, 1) for i, v in enumerate(p["size"]))
    return p


@register(
    "pool",
    paper="LLaVA-OneVision / LLaVA-Video spatial pooling (Li et al. 2024; Zhang et al. 2024)",
    budget="steps",
    check=check,
    shown={"stride": "2"},
    scale_invariant=True,
)
def pool(
    x: torch.Tensor,
    budget: int | None,
    *,
    mode: str = "bilinear",
    stride: int | None = None,
    size: tuple[int, int] | None = None,
) -> Tokens:
    """Uniform spatial pooling of each frame to a smaller grid (bilinear or average).

    Args:
        mode: "bilinear" (F.interpolate, align_corners=False: the LLaVA video default) or "average".
        stride: pool by this factor: bilinear to ceil(H/stride) x ceil(W/stride); average with kernel = stride,
            dropping the rows and columns past floor(H/stride)*stride as LLaVA's avg_pool2d does. Default 2.
        size: the target grid (h, w) instead of a stride (average then uses adaptive average pooling).

    With a budget, the largest grid of the input's aspect ratio within it. Boxes are the input window of each
    cell; each input token belongs to the cell whose window starts at or before it.
    """
    T, H, W, C = x.shape
    if sum(v is not None for v in (budget, stride, size)) > 1:
        raise ValueError("pool: give one of retention, stride or size")
    if size is not None:
        h, w = (checks.integer(f"size[{i}]", v, 1, n) for i, (v, n) in enumerate(zip(size, (H, W))))
        adaptive = True
    elif budget is not None:
        h, w = _target_for_budget(T, H, W, budget)
        adaptive = True
    else:
        stride = 2 if stride is None else stride
        adaptive = mode == "bilinear"
        if mode == "bilinear":
            h, w = -(-H // stride), -(-W // stride)
        else:
            h, w = H // stride, W // stride
            if h == 0 or w == 0:
                raise ValueError(f"stride={stride} is larger than the {H}x{W} grid")

    frames = x.permute(0, 3, 1, 2).to(ops.compute_dtype(x.dtype))
    if mode == "bilinear":
        pooled = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False)
    elif adaptive:
        pooled = F.adaptive_avg_pool2d(frames, (h, w))
    else:
        pooled = F.avg_pool2d(frames, stride)
    features = pooled.permute(0, 2, 3, 1).reshape(-1, C).to(x.dtype)

    dev = x.device
    if adaptive:
        row_of, y0, y1 = _windows(H, h, dev)
        col_of, x0, x1 = _windows(W, w, dev)
    else:  # kernel = stride: inputs past the last whole window are dropped
        row_of = torch.where(torch.arange(H, device=dev) < h * stride, torch.arange(H, device=dev) // stride, -1)
        col_of = torch.where(torch.arange(W, device=dev) < w * stride, torch.arange(W, device=dev) // stride, -1)
        y0, x0 = torch.arange(h, device=dev) * stride, torch.arange(w, device=dev) * stride
        y1, x1 = y0 + stride, x0 + stride
    t = torch.arange(T, device=dev)[:, None, None]
    source = t * (h * w) + row_of[None, :, None] * w + col_of[None, None, :]
    source = torch.where((row_of[None, :, None] >= 0) & (col_of[None, None, :] >= 0), source, -1)
    boxes = torch.stack(
        [
            t.expand(T, h, w),
            y0[None, :, None].expand(T, h, w),
            x0[None, None, :].expand(T, h, w),
            y1[None, :, None].expand(T, h, w),
            x1[None, None, :].expand(T, h, w),
        ],
        -1,
    ).reshape(-1, 5)
    return Tokens.from_source(features, boxes, source.reshape(-1), (T, H, W), {"grid": (h, w), "mode": mode})
