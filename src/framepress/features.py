"""Visual features on disk and synthetic ones: load a [T, H, W, C] array, save compressed tokens atomically,
and generate smooth synthetic features with scene cuts for demos and benchmarks (never a model's output)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from . import checks
from .files import atomic, regular_file, safetensors_header
from .tokens import Tokens


def load(path: str | os.PathLike, key: str | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Load features from ``.npy`` or ``.safetensors`` as a [T, H, W, C] tensor.

    A [T, N, C] array is reshaped with ``grid`` = (H, W), or as a square grid when N is a perfect square.
    A safetensors file with several tensors needs ``key``.
    """
    path = regular_file(path, "features file not found")
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
    path = regular_file(path, "file not found")  # a FIFO would block the reader
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _check_npy(path)
        try:
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, OSError, TypeError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from None
    elif suffix == ".safetensors":
        from safetensors import safe_open

        header = {k: v for k, v in safetensors_header(path).items() if k != "__metadata__"}
        if key is None:
            if len(header) != 1:
                raise ValueError(f"{path} holds {sorted(header)}; choose one with key")
            key = next(iter(header))
        if key not in header:
            raise ValueError(f"key {key!r} not in {path}; it holds {sorted(header)}")
        offsets = header[key]["data_offsets"]
        check_memory(offsets[1] - offsets[0], f"{path} ({key}: {header[key].get('shape')})")
        try:
            with safe_open(str(path), framework="pt") as handle:  # only the chosen tensor is read
                x = handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise ValueError(f"cannot read {path} as safetensors: {exc}") from None
    else:
        raise ValueError(f"file must be .npy or .safetensors, got {path.name}")
    return x


def _check_npy(path: Path) -> None:
    """Read only the .npy header: a file shorter than its header promises is truncated, and an array larger than
    the memory available is refused before numpy tries to allocate it."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                return  # a newer header version: np.load checks it
        except (ValueError, OSError, TypeError, SyntaxError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from None
        start = handle.tell()
    if dtype.hasobject:
        return  # np.load refuses it (no pickles)
    nbytes = math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size - start < nbytes:
        raise ValueError(f"{path} is truncated: its header promises {list(shape)} {dtype} ({_gb(nbytes)}), the file "
                         f"holds {_gb(size - start)} of data")
    check_memory(nbytes, f"{path} ({list(shape)} {dtype})")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux: MemAvailable), else the physical total, else
    None when the system does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, what: str) -> None:
    """A ``ValueError`` naming ``what`` when ``nbytes`` exceed the memory available (instead of the allocator's
    raw error, or the kernel killing the process)."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise ValueError(f"{what} needs {_gb(nbytes)} of memory; {_gb(free)} is available")


def _gb(nbytes: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{nbytes} bytes"


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
    # the result, the noise and the per-frame fields exist at once: about four float32 copies at the peak
    check_memory(4 * 4 * T * H * W * C, f"synthetic features of {T}x{H}x{W}x{C}")
    g = torch.Generator().manual_seed(seed)
    starts = sorted({0, *(int(c * T) for c in cuts if 0 < int(c * T) < T)})
    scene = torch.bucketize(torch.arange(T), torch.tensor(starts), right=True) - 1
    low = torch.randn(len(starts), C, 4, 4, generator=g)
    fields = torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    drift = 0.05 * torch.arange(T)[:, None, None, None] * torch.randn(1, C, 1, 1, generator=g)
    x = fields[scene] + drift + noise * torch.randn(T, C, H, W, generator=g)
    return x.permute(0, 2, 3, 1).contiguous()
