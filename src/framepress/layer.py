"""What an in-LLM method sees at decoder layer K (one sample): the hidden states of the visual tokens and of the
text after them, and the attention signals it may ask for, computed on demand (:mod:`framepress.signals`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

HEADS = ("mean", "max")


@dataclass
class LayerInputs:
    """The visual block at the input of layer K.

    Attributes:
        visual: [N, C] hidden states of the visual tokens, in sequence order.
        text: [M, C] hidden states of the text tokens after the first visual token (the question and the
            prompt's tail), in sequence order.
        grid: (T, H, W) when the visual tokens are still one video's whole grid (no earlier stage cut it), else
            None; N = T*H*W then.
        layer: K.
        n_layers: the model's decoder layers (for methods that budget compute over layers).
    """

    visual: torch.Tensor
    text: torch.Tensor
    grid: tuple[int, int, int] | None
    layer: int
    n_layers: int | None = None
    _attention: Callable[[str, str], torch.Tensor] = field(repr=False, default=None)

    def last_attention(self, heads: str = "mean") -> torch.Tensor:
        """[N]: the attention the last prompt token pays each visual token at layer K-1, over heads by
        ``heads`` ("mean" or "max"; FastV's signal)."""
        return self._attention("last", heads)[0]

    def text_attention(self, heads: str = "mean") -> torch.Tensor:
        """[M, N]: the attention each text token pays each visual token at layer K-1, over heads by ``heads``."""
        return self._attention("text", heads)

    def received_attention(self) -> torch.Tensor:
        """[N]: the attention each visual token receives at layer K-1, mean over heads and over every query of
        the sequence (FrameFusion's cumulative attention); computed a block of queries at a time."""
        return self._attention("all", "mean")[0]
