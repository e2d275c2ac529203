"""The one entry point: ``compress(x, method, retention=None, **params)``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from . import budget as _budget
from . import checks, registry
from .tokens import Tokens

#: Methods sum features in float32; beyond this magnitude such sums could overflow, so they run in float64.
FLOAT32_SAFE_PEAK = 1e30

#: A scale-invariant method whose input's largest magnitude lies outside this range runs on x * 2**-e, its peak
#: in [1, 2): tiny norms would meet the cosines' 1e-8 clamp, huge ones overflow squares and sums. A power of
#: two scales exactly, so the tokens are those of the rescaled input and the features are scaled back exactly.
SCALE_FREE_RANGE = (2.0**-16, 2.0**48)

#: The dtype a method's output is returned in when it would overflow the input's (VisionZip's contextual sums).
WIDER = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float64}


def compress(
    x: torch.Tensor,
    method: str,
    retention: float | None = None,
    *,
    window: int | None = None,
    max_tokens: int | None = None,
    split: str | None = None,
    **params: Any,
) -> Tokens:
    """Compress visual features ``x`` [T, H, W, C] (frames x grid x channels) with a registered method.

    Args:
        x: floating-point features, e.g. the projector output of a Video-LLM for T sampled frames.
        method: a name from :func:`methods`.
        retention: share of the T*H*W input tokens to keep, in (0, 1]: a budget of
            ``max(1, round(retention * T*H*W))`` tokens. None runs the method's own default setting.
        window: compress ``window`` frames at a time, the budget shared across windows (see
            :mod:`framepress.stream`); one :class:`Tokens` over the whole grid comes back.
        max_tokens: for the global methods (divprune, unified): above this many input tokens they run in two
            levels, within windows then across the windows' survivors (default
            ``framepress.stream.DEFAULT_MAX_TOKENS`` when ``window`` is given).
        split: how windows share the budget: "novelty" (default; in proportion to each window's frame-to-frame
            novelty, exactly the total) or "even" (each prefix of the video its own share, as
            :class:`~framepress.Stream` does).
        **params: the method's parameters (see ``framepress methods``).

    Returns:
        :class:`~framepress.Tokens`; ``info`` says what the method chose. Features are in x's dtype, or in a
        wider one (float32 for 16-bit input, float64 for float32) where a method's output would overflow it.
    """
    spec = registry.get(method)
    if spec.stage != "pre-llm":
        raise ValueError(f"{method} runs inside the LLM on hidden states; use framepress.apply(model, {method!r}, ...)")
    if window is not None or max_tokens is not None:
        from . import stream

        return stream.windowed(x, spec, retention, window, max_tokens, split, params)
    if split is not None:
        raise ValueError(f"split={split!r} shares a budget across windows; give window= too")
    x, peak = checks.features_and_peak(x)
    retention = checks.retention(retention)
    params = spec.bind(params)
    T, H, W, _ = x.shape
    budget = None if retention is None else _budget.tokens_for(retention, T * H * W)
    return run(spec, x, peak, budget, params)


def run(spec: registry.Method, x: torch.Tensor, peak: float, budget: int | None, params: dict[str, Any]) -> Tokens:
    """One call of a pre-LLM method on checked features ``x`` (largest magnitude ``peak``) for ``budget`` tokens,
    rescaled or widened where the magnitude asks for it (see :func:`compress`)."""
    method = spec.name
    with torch.inference_mode():
        lo, hi = SCALE_FREE_RANGE
        if spec.scale_invariant and peak > 0 and not lo <= peak <= hi:
            e = math.frexp(peak)[1] - 1  # peak * 2**-e in [1, 2)
            out = spec.fn(_times_power_of_two(x, -e), budget, **params)
            return _features_back(out, e, x.dtype, method)
        if x.dtype == torch.float64 or peak <= FLOAT32_SAFE_PEAK:
            return spec.fn(x, budget, **params)
        # sums of such values overflow in float32: run in float64, return the input's dtype
        return _features_back(spec.fn(x.double(), budget, **params), 0, x.dtype, method)


def _times_power_of_two(x: torch.Tensor, e: int) -> torch.Tensor:
    """x * 2**e, exactly (in two steps, so that no factor leaves the normal range of the dtype's arithmetic)."""
    half = e // 2
    return x * 2.0**half * 2.0 ** (e - half)


def _features_back(out: Tokens, e: int, dtype: torch.dtype, method: str) -> Tokens:
    """The method's features times 2**e in ``dtype``, or in a wider dtype where they would overflow it."""
    features = _times_power_of_two(out.features, e) if e else out.features
    back = features.to(dtype)
    while not bool(torch.isfinite(back).all()):
        if back.dtype not in WIDER:
            raise ValueError(
                f"{method}: its output features exceed the float64 range (x's magnitude is near the float64 "
                "maximum); scale x down"
            )
        back = _times_power_of_two(out.features.to(WIDER[back.dtype]), e)
    return dataclasses.replace(out, features=back)


def methods(stage: str | None = None) -> list[str]:
    """The names of the registered methods; ``stage`` ("pre-llm" or "in-llm") keeps those of one stage."""
    return registry.names(stage)
