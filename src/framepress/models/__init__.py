"""Model family adapters, chosen by the model's class name (one table, no if-chains)."""

from __future__ import annotations

import torch

from .base import Adapter, VideoBlock
from .llava_onevision import LlavaOnevision
from .qwen_vl import Qwen2_5_VL, Qwen3VL

ADAPTERS: dict[str, type[Adapter]] = {
    "LlavaOnevisionForConditionalGeneration": LlavaOnevision,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VL,
    "Qwen3VLForConditionalGeneration": Qwen3VL,
}


def adapter_for(model: torch.nn.Module) -> Adapter:
    """The adapter of ``model``'s family; an unsupported model raises listing the supported ones."""
    name = type(model).__name__
    if name not in ADAPTERS:
        raise TypeError(f"{name} is not supported; framepress supports: {', '.join(ADAPTERS)}")
    return ADAPTERS[name](model)


__all__ = ["ADAPTERS", "Adapter", "VideoBlock", "adapter_for"]
