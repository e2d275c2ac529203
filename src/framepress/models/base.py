"""What a model family adapter knows: where the language model is, where each video's tokens sit in the
sequence, and how the family numbers positions. Everything else (hooks, sequence surgery, caches) is shared in
:mod:`framepress.patch`, so an adapter stays a short description of one family."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@functools.cache
def cache_arg() -> str:
    """The name under which a forward takes and returns the KV cache: transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old keyword still works on the way in, with a deprecation warning)."""
    from transformers import modeling_outputs

    return "cache" if "cache" in modeling_outputs.BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_of(kwargs: dict[str, Any]) -> Any:
    """The KV cache handed to a forward: under either name (a caller may still use the deprecated one), or
    any transformers ``Cache`` among the arguments, so that a future rename cannot make every decode step look
    like a prefill."""
    from transformers.cache_utils import Cache

    for name in ("cache", "past_key_values"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return next((value for value in kwargs.values() if isinstance(value, Cache)), None)


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned, under this transformers' name."""
    return getattr(out, cache_arg())


@dataclass(frozen=True)
class VideoBlock:
    """One video's grid tokens in one sample's sequence.

    ``slots`` are the sequence positions of its T*H*W grid tokens in (t, y, x) row-major order; they need not be
    contiguous (Qwen3-VL puts a timestamp between frames). Tokens of the video that are not grid tokens (the
    LLaVA-OneVision image newline) are not slots and stay untouched.
    """

    slots: torch.Tensor
    grid: tuple[int, int, int]


#: The vision signals a method may take from a model, each computed while the vision tower encodes (a few frames
#: at a time) and handed to the method's parameter the registry names (``register(signals=...)``): the shape per
#: video and, where one stands in for another when the family cannot compute it, the stand-in.
SIGNALS: dict[str, str] = {
    "scores": "[T, H, W] each token's contribution in the vision encoder (SigLIP: attention received; Qwen: pseudo-CLS)",
    "keys": "[T, H, W, D] keys of the vision layer feeding the projector, mean over heads, pooled like the features",
    "head": "[T, D] SigLIP's attention-pooling (MAP) head output per frame",
    "head_attention": "[T, H, W] the MAP head probe's attention over the patches, mean over heads, pooled like the features",
}
STAND_IN: dict[str, str] = {"head_attention": "scores"}
#: signals computed by a SigLIP attention-pooling head the user names (``apply(..., siglip_head=...)``)
HEAD_SIGNALS = frozenset({"head", "head_attention"})


class Adapter:
    """One model family. Subclasses set ``rope`` and implement :meth:`video_blocks`."""

    #: the vision signals this family computes (names of :data:`SIGNALS`) -> the method installing their hooks,
    #: ``method(sink, head)``: hooks handing ``sink`` one tensor per encoded chunk of frames, frames first
    vision_signals: dict[str, str] = {}

    #: "1d" (positions from the attention mask, one row) or "mrope" (rows of (t, h, w) per token)
    rope: str = "1d"
    #: whether the family pools the projector's grid with a parameter-free step a method may replace (LLaVA's
    #: 2x2 pooling); Qwen's 2x2 merger is part of its learned projector, so there a method gets the merged grid
    pooled: bool = False

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @property
    def name(self) -> str:
        return type(self.model).__name__

    @property
    def base(self) -> torch.nn.Module:
        """The multimodal base model (``model.model``), whose forward sees the processor's inputs."""
        return self.model.model

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.language_model.layers

    @property
    def text_config(self) -> Any:
        return self.language_model.config

    def video_mask(self, captured: dict[str, Any]) -> torch.Tensor:
        """[B, L] bool: the video placeholder tokens of the captured inputs."""
        ids = captured.get("input_ids")
        if ids is not None:
            return ids == self.video_token_id
        embeds = captured["inputs_embeds"]
        token = self.base.get_input_embeddings()(torch.tensor(self.video_token_id, device=embeds.device))
        return (embeds == token).all(-1)

    @property
    def video_token_id(self) -> int:
        config = self.model.config
        return getattr(config, "video_token_id", None) or config.video_token_index

    def video_blocks(self, captured: dict[str, Any]) -> list[list[VideoBlock]]:
        """Per sample, its videos' grid tokens, from the captured ``model.model`` inputs."""
        raise NotImplementedError

    def unpooled_hooks(self, sink: Callable[[torch.Tensor], None]) -> list[Any]:
        """Hooks that hand ``sink`` each encoded chunk of frames as [frames, H, W, C] before the family's pooling."""
        raise ValueError(f"{self.name} has no parameter-free pooling to replace")

    def signal_hooks(self, name: str, sink: Callable[[torch.Tensor], None], head: Any = None) -> list[Any]:
        """Install the hooks of the vision signal ``name`` (see :attr:`vision_signals`)."""
        if name not in self.vision_signals:
            raise ValueError(f"{self.name} cannot give the vision signal {name!r} ({SIGNALS.get(name, 'unknown')})")
        return getattr(self, self.vision_signals[name])(sink, head)

    def load_head(self, source: Any) -> Any:
        """The SigLIP attention-pooling head named by ``siglip_head`` (a hub id or a local folder)."""
        raise ValueError(f"siglip_head: {self.name} has no SigLIP vision tower whose attention-pooling head it could use")


def runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-D bool tensor."""
    padded = torch.cat([mask.new_zeros(1), mask, mask.new_zeros(1)]).int()
    edges = torch.nonzero(padded[1:] - padded[:-1]).squeeze(1).tolist()
    return list(zip(edges[0::2], edges[1::2]))


class _Restore:
    """Undo an instance attribute set over a method: put back what the instance had before (or nothing)."""

    def __init__(self, obj, name, previous):
        self.obj, self.name, self.previous = obj, name, previous

    def remove(self) -> None:
        if self.previous is None:
            self.obj.__dict__.pop(self.name, None)
        else:
            self.obj.__dict__[self.name] = self.previous
