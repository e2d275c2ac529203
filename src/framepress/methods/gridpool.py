"""ST-GridPool: pyramid temporal gridding + norm-based spatial pooling (Luo et al., ICLR 2026; specs/gridpool.md),
as the official code runs it. It takes the *unpooled* grid (LLaVA's 27x27 projector output; it replaces the
model's own 2x2 pooling) or any other grid.

PTG (§2.3): level by level (temporal strides 2, 4, 8), in place: take the end-aligned stride-s frames, chunk them
in groups of 4, tile each group into a 2x2 mosaic of area-downsampled frames, crop it to the frame size, and
write it over the group's last frame. The token count does not change; later levels tile earlier mosaics.
NSP (§2.4): 2x2 windows, stride 2, no padding: each window's tokens weighted by a softmax of beta times their RMS
norm (||t||_p / d^(1/p)), summed.

Where paper and code differ the code is followed (it produced the reported numbers), each noted in the spec:
end-aligned frame indices computed in float32 and rounded half to even, area-resized tiles then a crop (not a
bilinear resize of the mosaic), only whole groups (a partial tail is ignored), levels cascading in place,
the norm divided by d^(1/p), zero padding taking part in the softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import checks, ops
from ..registry import register
from ..tokens import Tokens

#: Native settings: NSP kernel (= stride) per mode; "4:1" is the official 2x2 (4.31:1 from 27x27), "8:1" the
#: spec's recommended 3x3 (9.0:1).
SETTINGS = {"4:1": 2, "8:1": 3}


def level_indices(n: int, stride: int) -> torch.Tensor:
    """End-aligned frame indices of a PTG level, exactly as the official code rounds them:
    round(linspace(0, N, S + 1)[1:] - 1) in float32, half to even, S = N // stride."""
    count = n // stride
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.round(torch.linspace(0, n, count + 1, dtype=torch.float32)[1:] - 1).long()


def best_grid(size: int) -> tuple[int, int]:
    """The official find_best_grid: the factor pair of ``size`` closest to square, rows >= cols."""
    cols = max(c for c in range(1, math.isqrt(size) + 1) if size % c == 0)
    return size // cols, cols


def ptg_frames(x: torch.Tensor, group_sizes: tuple[int, ...], strides: tuple[int, ...]) -> tuple[dict[int, torch.Tensor], list[int]]:
    """PTG on [T, H, W, C]: the frames it overwrites ({frame: [H, W, C] mosaic}) and the order of the writes.
    Only those frames are new; every other frame stays the input's (no copy of the video)."""
    T, H, W, C = x.shape
    replaced: dict[int, torch.Tensor] = {}
    written = []
    for size, stride in zip(group_sizes, strides):
        index = level_indices(T, stride)
        groups = index[: (index.numel() // size) * size].reshape(-1, size)
        if groups.numel() == 0:
            continue
        rows, cols = best_grid(size)
        th, tw = -(-H // rows), -(-W // cols)
        snapshot = torch.stack([replaced.get(t, x[t]) for t in groups.reshape(-1).tolist()])  # read before writing
        snapshot = snapshot.permute(0, 3, 1, 2).to(ops.compute_dtype(x.dtype))
        tiles = F.adaptive_avg_pool2d(snapshot, (th, tw)).reshape(groups.shape[0], rows, cols, C, th, tw)
        canvas = tiles.permute(0, 3, 1, 4, 2, 5).reshape(groups.shape[0], C, rows * th, cols * tw)
        for last, mosaic in zip(groups[:, -1].tolist(), canvas[:, :, :H, :W].permute(0, 2, 3, 1).to(x.dtype)):
            replaced[last] = mosaic
            written.append(last)
    return replaced, written


def mosaics(x: torch.Tensor, group_sizes: tuple[int, ...], strides: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """PTG as a whole gridded video [T, H, W, C] (a copy), and the frames it wrote, in order."""
    replaced, written = ptg_frames(x, group_sizes, strides)
    out = x.clone()
    for t, mosaic in replaced.items():
        out[t] = mosaic
    return out, written


def norm_pool(x: torch.Tensor, kernel: int, padding: int = 0, temp: float = 1.0, p: float = 2.0) -> torch.Tensor:
    """NSP on [T, H, W, C] -> [T, Ho, Wo, C]: per window (kernel x kernel, stride = kernel, zero padding), the
    softmax of temp * ||t||_p / d^(1/p) over the window weighs its tokens. Computed in float32 (float64 for
    float64); where |t|^p would overflow or underflow, the norms are formed from t / s and the softmax from
    differences to each window's largest norm (s a power of two near the largest |t|): the same weights."""
    T, H, W, C = x.shape
    cd = ops.compute_dtype(x.dtype)
    frames = x.permute(0, 3, 1, 2).to(cd)
    windows = F.unfold(frames, kernel, padding=padding, stride=kernel)  # [T, C*k*k, L]
    s = _norm_scale(frames, p, C)
    if s is None:  # the official formula, bit for bit
        norm = frames.abs().pow(p).sum(1, keepdim=True).pow(1 / p) / C ** (1 / p)
        weights = F.unfold(norm, kernel, padding=padding, stride=kernel).mul(temp).softmax(1)  # [T, k*k, L]
    else:
        norm = frames.div(s).abs().pow(p).mean(1, keepdim=True).pow(1 / p)  # ||t||_p / d^(1/p) / s, at most 2
        logits = F.unfold(norm, kernel, padding=padding, stride=kernel)
        weights = (logits - logits.amax(1, keepdim=True)).mul(temp).mul(s).softmax(1)
    pooled = (windows.view(T, C, kernel * kernel, -1) * weights[:, None]).sum(2)
    ho, wo = (H + 2 * padding - kernel) // kernel + 1, (W + 2 * padding - kernel) // kernel + 1
    return pooled.view(T, C, ho, wo).permute(0, 2, 3, 1).to(x.dtype)


def _norm_scale(frames: torch.Tensor, p: float, C: int) -> float | None:
    """None when sum |t|^p is safe in the compute dtype (no overflow, the largest term not below the smallest
    normal), else a power of two near the largest |t| to divide by first."""
    peak = float(frames.abs().amax()) if frames.numel() else 0.0
    if peak == 0:
        return None
    info = torch.finfo(frames.dtype)
    log_term = p * math.log2(peak)  # log2 of the largest |t|^p
    if math.log2(info.tiny) < log_term and log_term + math.log2(C) < math.log2(info.max) - 1:
        return None
    return ops.power_of_two(peak)


def check(params: dict) -> dict:
    """ST-GridPool's parameter values, without the input (run at apply and at every call); the kernel and
    padding against the grid are checked in :func:`gridpool`."""
    params["setting"] = checks.choice("setting", params["setting"], tuple(SETTINGS))
    params["ptg"] = checks.flag("ptg", params["ptg"])
    params["nsp"] = checks.flag("nsp", params["nsp"])
    params["kernel"] = checks.optional(checks.integer, "kernel", params["kernel"], 1)
    params["padding"] = checks.integer("padding", params["padding"], 0)
    if params["kernel"] is not None:
        _check_padding(params["kernel"], params["padding"])
    params["temp"] = checks.number("temp", params["temp"], 0.0, 1e4)
    params["p"] = checks.number("p", params["p"], 0.5, 16.0)
    params["group_sizes"] = checks.integers("group_sizes", params["group_sizes"], 1, MAX_GROUP)
    params["strides"] = checks.integers("strides", params["strides"], 1)
    if len(params["group_sizes"]) != len(params["strides"]):
        raise ValueError(
            f"group_sizes and strides must pair up per level, got {params['group_sizes']} and {params['strides']}"
        )
    return params


#: The most frames one PTG mosaic tiles (a group of 64 is an 8x8 mosaic of 1/8-size tiles).
MAX_GROUP = 64


def _check_padding(kernel: int, padding: int) -> None:
    """Zero padding of at most half the window (as torch's pooling requires): every window then holds a cell of
    the grid, so no token has an empty box."""
    if padding > kernel // 2:
        raise ValueError(f"padding must be at most half the kernel (kernel={kernel}: at most {kernel // 2}), got {padding}")


@register(
    "gridpool",
    paper="Luo et al., ST-GridPool (PTG + NSP), ICLR 2026 (arXiv 2605.22078)",
    budget="exact",
    grid="unpooled",
    check=check,
    shown={"kernel": "2 for 4:1, 3 for 8:1"},
)
def gridpool(
    x: torch.Tensor,
    budget: int | None,
    *,
    setting: str = "4:1",
    ptg: bool = True,
    nsp: bool = True,
    kernel: int | None = None,
    padding: int = 0,
    temp: float = 1.0,
    p: float = 2.0,
    group_sizes: tuple[int, ...] = (4, 4, 4),
    strides: tuple[int, ...] = (2, 4, 8),
) -> Tokens:
    """Pyramid temporal gridding, then norm-weighted spatial pooling.

    Args:
        setting: "4:1" (the official 2x2 windows: 27x27 -> 13x13) or "8:1" (3x3 windows: 9x9), when no kernel
            or retention is given (on a grid smaller than the window, the largest window that fits).
        ptg, nsp: run either part (ptg=False is NSP alone, nsp=False PTG alone).
        kernel: NSP window = stride; padding: zero padding; temp: beta; p: the norm's order.
        group_sizes, strides: PTG frames per mosaic and temporal stride per level.

    With a retention: the finest window (from kernel 1, no pooling, up) whose output still holds the budget, then
    its tokens of highest RMS norm (NSP's own saliency signal) in order: exactly the budget. Rows and columns no
    window reaches (row 26 of a 27x27 grid with 2x2 windows) are dropped, as in the official code.
    """
    if budget is not None and kernel is not None:
        raise ValueError("gridpool: give retention or kernel, not both")
    T, H, W, C = x.shape
    if padding > max(H, W) // 2:  # before any work: PTG and the window search are bounded by the grid
        raise ValueError(f"padding must be at most half the {H}x{W} grid's larger side ({max(H, W) // 2}), got {padding}")
    if not nsp:
        kernel = 1
    elif kernel is None:  # a grid smaller than the native window gets the largest window that fits
        kernel = _kernel_for(budget, T, H, W, padding) if budget is not None else min(SETTINGS[setting], H + 2 * padding, W + 2 * padding)
    if kernel > max(H, W) or (H + 2 * padding) < kernel or (W + 2 * padding) < kernel:
        raise ValueError(f"kernel={kernel} with padding={padding} does not fit the {H}x{W} grid")
    _check_padding(kernel, padding)
    replaced, written = ptg_frames(x, group_sizes, strides) if ptg else ({}, [])
    ho, wo = (H + 2 * padding - kernel) // kernel + 1, (W + 2 * padding - kernel) // kernel + 1
    pooled = x.new_empty(T, ho, wo, C)
    for frames in ops.frame_chunks(x):  # a few frames at a time, PTG's mosaics swapped in
        chunk = x[frames]
        mine = [t for t in replaced if frames.start <= t < frames.stop]
        if mine:
            chunk = chunk.clone()
            for t in mine:
                chunk[t - frames.start] = replaced[t]
        pooled[frames] = norm_pool(chunk, kernel, padding, temp, p) if kernel > 1 else chunk
    dev = x.device
    # window (i, j) covers input rows i*k - pad .. i*k - pad + k - 1 (clipped): each input token belongs to the
    # window whose stride cell holds it; rows and columns no window reaches are dropped
    row_of = (torch.arange(H, device=dev) + padding) // kernel
    col_of = (torch.arange(W, device=dev) + padding) // kernel
    row_of = torch.where(row_of < ho, row_of, -1)
    col_of = torch.where(col_of < wo, col_of, -1)
    t = torch.arange(T, device=dev)[:, None, None]
    source = t * (ho * wo) + row_of[None, :, None] * wo + col_of[None, None, :]
    source = torch.where((row_of[None, :, None] >= 0) & (col_of[None, None, :] >= 0), source, -1).reshape(-1)
    y0 = (torch.arange(ho, device=dev) * kernel - padding).clamp_min(0)
    x0 = (torch.arange(wo, device=dev) * kernel - padding).clamp_min(0)
    y1 = (torch.arange(ho, device=dev) * kernel - padding + kernel).clamp_max(H)
    x1 = (torch.arange(wo, device=dev) * kernel - padding + kernel).clamp_max(W)
    rows, cols = (lambda v: v[None, :, None].expand(T, ho, wo)), (lambda v: v[None, None, :].expand(T, ho, wo))
    boxes = torch.stack([t.expand(T, ho, wo), rows(y0), cols(x0), rows(y1), cols(x1)], -1).reshape(-1, 5)
    features = pooled.reshape(-1, C)
    info = {"kernel": kernel, "grid": (ho, wo), "ptg_written": written}
    if budget is not None and features.shape[0] > budget:
        keep = ops.top_indices(ops.row_norms(features), budget)  # the order of RMS norms
        remap = torch.full((features.shape[0],), -1, dtype=torch.long, device=dev)
        remap[keep] = torch.arange(budget, device=dev)
        source = torch.where(source >= 0, remap[source.clamp_min(0)], -1)
        features, boxes = features[keep], boxes[keep]
    return Tokens.from_source(features, boxes, source, (T, H, W), info)


def _kernel_for(budget: int, T: int, H: int, W: int, padding: int) -> int:
    """The finest NSP window (kernel 1 = no pooling) whose output still holds ``budget`` tokens, among the
    windows that fit the grid with this padding (at most half the window)."""
    best = None
    for k in range(max(1, 2 * padding), max(H, W) + 1):
        count = T * ((H + 2 * padding - k) // k + 1) * ((W + 2 * padding - k) // k + 1)
        if k <= min(H, W) + 2 * padding and count >= budget:
            best = k
    if best is None:
        raise ValueError(f"retention asks for {budget} tokens, more than gridpool can give with padding={padding}")
    return best
