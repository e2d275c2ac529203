"""Analytical prefill FLOPs of the language model (the FastV formula; specs/unified.md §5).

A decoder layer over n tokens costs f(n) = 4*n*d^2 + 2*n^2*d + 2*n*d*m (attention projections, attention, MLP;
d the hidden size, m the MLP width). A run costs the sum over layers, each with the tokens it holds: all of
them before an in-LLM stage, fewer after. It is the count the papers report, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LLM:
    """The dimensions the formula needs."""

    layers: int
    hidden: int
    ffn: int

    @classmethod
    def from_config(cls, config: Any) -> LLM:
        """From a Hugging Face text config (or a multimodal config with a ``text_config``)."""
        text = getattr(config, "text_config", config)
        return cls(text.num_hidden_layers, text.hidden_size, text.intermediate_size)


#: Dimensions of the LLMs the papers report on (Qwen2-7B in LLaVA-OV-7B / LLaVA-Video-7B, Qwen2-0.5B in
#: LLaVA-OV-0.5B, the Qwen2.5-VL-7B LLM).
PRESETS = {
    "llava-ov-7b": LLM(28, 3584, 18944),
    "llava-ov-0.5b": LLM(24, 896, 4864),
    "qwen2.5-vl-7b": LLM(28, 3584, 18944),
}


def layer_flops(n: int, llm: LLM) -> float:
    d, m = llm.hidden, llm.ffn
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def prefill_flops(tokens_per_layer: list[int], llm: LLM) -> float:
    """Sum of :func:`layer_flops` over layers holding the given numbers of tokens."""
    if len(tokens_per_layer) != llm.layers:
        raise ValueError(f"tokens_per_layer has {len(tokens_per_layer)} entries for a {llm.layers}-layer model")
    return float(sum(layer_flops(n, llm) for n in tokens_per_layer))


def run_flops(llm: LLM, visual: int, text: int = 100, inner: tuple[int, int] | None = None) -> float:
    """FLOPs of a prefill with ``visual`` visual tokens entering the LLM and ``text`` text tokens; ``inner`` =
    (layer K, visual tokens from layer K on) for an in-LLM stage."""
    counts = [visual + text] * llm.layers
    if inner is not None:
        layer, after = inner
        counts[layer:] = [after + text] * (llm.layers - layer)
    return prefill_flops(counts, llm)


def retention_flops(llm: LLM, grid_tokens: int, a: float, b: float | None = None, layer: int = 18, text: int = 100) -> float:
    """FLOPs of the paper's "A%/B%" setting: round(a*M) visual tokens enter, ceil of half of them (b) go on
    from ``layer`` (specs/unified.md §5)."""
    entering = max(1, round(a * grid_tokens))
    inner = None
    if b is not None:
        inner = (layer, math.ceil(entering * b / a))
    return run_flops(llm, entering, text, inner)
