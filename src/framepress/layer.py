"""What an in-LLM method sees at decoder layer K (one sample): the hidden states of the visual tokens and of the
text after them, and the attention signals it may ask for, computed on demand (:mod:`framepress.signals`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


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
    """

    visual: torch.Tensor
    text: torch.Tensor
    grid: tuple[int, int, int] | None
    layer: int
    _last_attention: Callable[[], torch.Tensor] = field(repr=False, default=None)
    _text_attention: Callable[[], torch.Tensor] = field(repr=False, default=None)

    def last_attention(self) -> torch.Tensor:
        """[N]: the attention the last prompt token pays each visual token at layer K-1, mean over heads
        (FastV's signal)."""
        return self._last_attention()

    def text_attention(self) -> torch.Tensor:
        """[M, N]: the attention each text token pays each visual token at layer K-1, mean over heads."""
        return self._text_attention()
