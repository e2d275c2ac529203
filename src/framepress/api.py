"""The one entry point: ``compress(x, method, retention=None, **params)``."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import budget as _budget
from . import checks, registry
from .tokens import Tokens

#: Methods sum features in float32; beyond this magnitude such sums could overflow, so they run in float64.
FLOAT32_SAFE_PEAK = 1e30


def compress(x: torch.Tensor, method: str, retention: float | None = None, **params: Any) -> Tokens:
    """Compress visual features ``x`` [T, H, W, C] (frames x grid x channels) with a registered method.

    Args:
        x: floating-point features, e.g. the projector output of a Video-LLM for T sampled frames.
        method: a name from :func:`methods`.
        retention: share of the T*H*W input tokens to keep, in (0, 1]: a budget of
            ``max(1, round(retention * T*H*W))`` tokens. None runs the method's own default setting.
        **params: the method's parameters (see ``framepress methods``).

    Returns:
        :class:`~framepress.Tokens`; ``info`` says what the method chose.
    """
    spec = registry.get(method)
    if spec.stage != "pre-llm":
        raise ValueError(f"{method} runs inside the LLM on hidden states; use framepress.apply(model, {method!r}, ...)")
    x, peak = checks.features_and_peak(x)
    retention = checks.retention(retention)
    params = spec.bind(params)
    T, H, W, _ = x.shape
    budget = None if retention is None else _budget.tokens_for(retention, T * H * W)
    with torch.inference_mode():
        if x.dtype == torch.float64 or peak <= FLOAT32_SAFE_PEAK:
            return spec.fn(x, budget, **params)
        # sums of such values overflow in float32: run in float64, return the input's dtype
        out = spec.fn(x.double(), budget, **params)
        return dataclasses.replace(out, features=out.features.to(x.dtype))


def methods(stage: str | None = None) -> list[str]:
    """The names of the registered methods; ``stage`` ("pre-llm" or "in-llm") keeps those of one stage."""
    return registry.names(stage)
