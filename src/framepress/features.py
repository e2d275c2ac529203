"""Visual features on disk and synthetic ones: load a [T, H, W, C] array, save compressed tokens atomically,
and generate smooth synthetic features with scene cuts for demos and benchmarks (never a model's output)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from . import checks
from .files import atomic
from .tokens import Tokens


def load(path: str | os.PathLike, key: str | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Load features from ``.npy`` or ``.safetensors`` as a [T, H, W, C] tensor.

    A [T, N, C] array is reshaped with ``grid`` = (H, W), or as a square grid when N is a perfect square.
    A safetensors file with several tensors needs ``key``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    x = load_array(path, key)
    if x.ndim == 3:
        T, N, C = x.shape
        if grid is None:
            side = math.isqrt(N)
            if side * side != N:
                raise ValueError(f"features are [T, N, C] with N={N}, not a square; give grid=(H, W)")
            grid = (side, side)
        if grid[0] * grid[1] != N:
            raise ValueError(f"grid {grid[0]}x{grid[1]} does not hold N={N} tokens")
        x = x.reshape(T, grid[0], grid[1], C)
    return checks.features(x, name=f"features in {path.name}")


def load_array(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """One array from ``.npy`` or ``.safetensors`` (``key`` picks one of several tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError, TypeError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from None
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise ValueError(f"cannot read {path} as safetensors: {exc}") from None
        if key is None:
            if len(tensors) != 1:
                raise ValueError(f"{path} holds {sorted(tensors)}; choose one with key")
            key = next(iter(tensors))
        if key not in tensors:
            raise ValueError(f"key {key!r} not in {path}; it holds {sorted(tensors)}")
        x = tensors[key]
    else:
        raise ValueError(f"file must be .npy or .safetensors, got {path.name}")
    return x


def save_tokens(path: str | os.PathLike, tokens: Tokens) -> None:
    """Write tokens (features, boxes, sizes, source, grid) to ``.safetensors``, atomically: a reader sees the
    old file or the whole new one, never a part."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"output must be a .safetensors file, got {path.name}")
    tensors = {
        "features": tokens.features.contiguous().cpu(),
        "boxes": tokens.boxes.cpu(),
        "sizes": tokens.sizes.cpu(),
        "source": tokens.source.cpu(),
        "grid": torch.tensor(tokens.grid),
    }
    with atomic(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in tokens.info.items()})


def synthetic(
    T: int, H: int, W: int, C: int, *, seed: int = 0, cuts: tuple[float, ...] = (1 / 3, 2 / 3), noise: float = 0.35
) -> torch.Tensor:
    """Smooth random features with scene cuts: per scene a 4x4 random field per channel, upsampled
    bilinearly to HxW, plus a slow per-channel drift and iid noise. Spatially and temporally redundant like
    real video features, so merging methods behave as they would; it is not a model's output."""
    g = torch.Generator().manual_seed(seed)
    starts = sorted({0, *(int(c * T) for c in cuts if 0 < int(c * T) < T)})
    scene = torch.bucketize(torch.arange(T), torch.tensor(starts), right=True) - 1
    low = torch.randn(len(starts), C, 4, 4, generator=g)
    fields = torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    drift = 0.05 * torch.arange(T)[:, None, None, None] * torch.randn(1, C, 1, 1, generator=g)
    x = fields[scene] + drift + noise * torch.randn(T, C, H, W, generator=g)
    return x.permute(0, 2, 3, 1).contiguous()
