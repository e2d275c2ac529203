"""Argument checks that turn bad input into a clear error naming the argument.

Every public entry point calls these before any torch work, so a user never sees a deep torch traceback or a
silently wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def features(x: Any, name: str = "x") -> torch.Tensor:
    """A finite floating [T, H, W, C] tensor with no empty dimension."""
    return features_and_peak(x, name)[0]


#: The floating dtypes methods compute with; float8 kinds (scaled storage formats) are refused by name.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def plain_tensor(x: torch.Tensor, name: str) -> None:
    """Refuse tensor kinds that would reach torch internals: sparse or other non-strided layouts, meta tensors
    (shape only, no values), quantized tensors and float8 dtypes."""
    if x.layout != torch.strided:
        kind = "sparse" if x.is_sparse or x.layout in _SPARSE else str(x.layout).replace("torch.", "")
        raise TypeError(f"{name}: {kind} tensors are not supported; pass a dense tensor (x.to_dense())")
    if x.is_meta:
        raise ValueError(f"{name}: meta tensors hold no values; pass a tensor on a real device (cpu, cuda, ...)")
    if x.is_quantized:
        raise TypeError(f"{name}: quantized tensors are not supported; pass x.dequantize()")
    if x.is_floating_point() and x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: {str(x.dtype).replace('torch.', '')} is not supported; use float16, bfloat16, float32 or "
            f"float64 (e.g. x.to(torch.bfloat16))"
        )


_SPARSE = tuple(getattr(torch, k) for k in ("sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc"))


def features_and_peak(x: Any, name: str = "x") -> tuple[torch.Tensor, float]:
    """:func:`features`, and the largest magnitude in ``x`` (one pass over the data for both)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [T, H, W, C], got {type(x).__name__}")
    plain_tensor(x, name)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [T, H, W, C] (4 dims), got {x.ndim} dims {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32, float64), got {x.dtype}")
    lo, hi = (float(v) for v in torch.aminmax(x))  # NaN and inf show in the extremes
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf values")
    return x, max(-lo, hi)


def retention(r: Any) -> float | None:
    """None, or a number in (0, 1]."""
    if r is None:
        return None
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        raise TypeError(f"retention must be a number in (0, 1], got {type(r).__name__}")
    r = float(r)
    if not (0.0 < r <= 1.0):
        raise ValueError(f"retention must be in (0, 1], got {r}")
    return r


def number(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite real number in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not (lo <= value <= hi):
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value}")
    return value


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An int (not a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def flag(name: str, value: Any) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def optional(check, name: str, value: Any, *args: Any) -> Any:
    """None, or ``check(name, value, *args)``: for parameters whose None means a derived default or "off"."""
    return None if value is None else check(name, value, *args)


def integers(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> tuple[int, ...]:
    """A non-empty tuple or list of ints in [lo, hi], returned as a tuple."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must hold at least one int, got {value!r}")
    return tuple(integer(f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value))


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    """One of a fixed set of names."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def retention_pair(r: Any) -> tuple[float | None, float | None]:
    """A model's retention: a number, "A%", or "A%/B%" (A% of the visual tokens enter the LLM, B% go on after
    the in-LLM stage). Returns (A, B) as shares; B is None unless given."""
    if isinstance(r, str):
        parts = r.replace(" ", "").split("/")
        if len(parts) > 2 or not all(p.endswith("%") for p in parts):
            raise ValueError(f'retention must be a number in (0, 1], "A%" or "A%/B%", got {r!r}')
        try:
            shares = [float(p[:-1]) / 100 for p in parts]
        except ValueError:
            raise ValueError(f'retention must be a number in (0, 1], "A%" or "A%/B%", got {r!r}') from None
        first = retention(shares[0])
        second = retention(shares[1]) if len(shares) == 2 else None
        if second is not None and second > first:
            raise ValueError(f"retention {r!r}: B% after the in-LLM stage cannot exceed the A% that enter the LLM")
        return first, second
    return retention(r), None
