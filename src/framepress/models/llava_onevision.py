"""LLaVA-OneVision and LLaVA-Video (-hf checkpoints): ``LlavaOnevisionForConditionalGeneration``.

SigLIP patches (27x27 at 384 px) are projected, then bilinearly pooled per frame to ceil(27/2) = 14x14, and one
image newline follows the whole video (integration spec §2.1): a video of F frames is F*14*14 + 1 placeholders.
The language model is Qwen2 with 1-D RoPE.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import signals
from .base import Adapter, VideoBlock, _Restore, runs


class LlavaOnevision(Adapter):
    rope = "1d"
    pooled = True

    @property
    def side(self) -> int:
        """Tokens per side of a frame after the family's 2x2 pooling."""
        vision = self.model.config.vision_config
        return math.ceil(vision.image_size // vision.patch_size / 2)

    def video_blocks(self, captured: dict[str, Any]) -> list[list[VideoBlock]]:
        side = self.side
        blocks = []
        for row in self.video_mask(captured):
            sample = []
            for start, end in runs(row):
                grid_tokens = end - start - 1  # the newline closes the video
                if grid_tokens <= 0 or grid_tokens % (side * side):
                    raise ValueError(
                        f"a run of {end - start} video tokens is not F*{side}*{side} + 1 (one video and its newline)"
                    )
                slots = torch.arange(start, start + grid_tokens, device=row.device)
                sample.append(VideoBlock(slots, (grid_tokens // (side * side), side, side)))
            blocks.append(sample)
        return blocks

    def unpooled_hooks(self, sink):
        """The projector's [frames, 27, 27, C] output, taken as it enters the family's 2x2 bilinear pooling."""
        base = self.base
        original = base.apply_pooling
        previous = base.__dict__.get("apply_pooling")
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size

        def apply_pooling(image_features):
            sink(image_features.reshape(image_features.shape[0], side, side, -1))
            return original(image_features)

        base.apply_pooling = apply_pooling
        return [_Restore(base, "apply_pooling", previous)]

    #: VisionZip's keys and FastVID's MAP-head signals come from the layer feeding the projector, as in the
    #: official LLaVA-OV ports (HoliTom's VisionZip, FastVID), whose SigLIP tower ends at that layer
    vision_signals = {
        "scores": "score_hooks", "keys": "key_hooks", "head": "head_hooks", "head_attention": "head_attention_hooks",
    }

    def _feature_layer(self) -> torch.nn.Module:
        """The vision encoder layer whose output feeds the projector (``vision_feature_layer``)."""
        tower = self.base.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        chosen = self.model.config.vision_feature_layer
        if not isinstance(chosen, int) or chosen == 0:
            raise ValueError(f"vision_feature_layer={chosen!r}: no single vision layer feeds the projector")
        return layers[len(layers) + chosen if chosen < 0 else chosen - 1]

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """[F, P, C] -> [F, side, side, C] float: the family's own 2x2 pooling (the class's, not a hook's)."""
        side = self.side
        return type(self.base).apply_pooling(self.base, x).reshape(x.shape[0], side, side, -1).float()

    def _on_attention_input(self, make):
        """A pre-hook on the feature layer's attention calling ``make(module, normalized input)``."""
        def hook(module, args, kwargs):
            make(module, kwargs.get("hidden_states", args[0] if args else None))

        return [self._feature_layer().self_attn.register_forward_pre_hook(hook, with_kwargs=True)]

    def score_hooks(self, sink, head=None):
        """SigLIP has no CLS token: a token's score is the attention it receives in the layer whose output feeds
        the projector, mean over heads and queries, pooled to the LLM grid like the features (unified §4.1)."""
        def make(module, hidden):
            received = signals.mean_attention_received(module, hidden)
            sink(self._pool(received[..., None].to(hidden.dtype))[..., 0])

        return self._on_attention_input(make)

    def key_hooks(self, sink, head=None):
        """VisionZip's metric: that layer's keys, mean over heads, pooled like the features."""
        return self._on_attention_input(lambda module, hidden: sink(self._pool(signals.mean_keys(module, hidden))))

    def _on_projector_input(self, make):
        """A pre-hook on the projector: its input is the patches FastVID's head reads (the tower's output)."""
        return [self.base.multi_modal_projector.register_forward_pre_hook(lambda module, args: make(args[0]))]

    def head_hooks(self, sink, head):
        """FastVID's frame features: the MAP head's pooled output per frame."""
        return self._on_projector_input(lambda patches: sink(head(patches)[0].float()))

    def head_attention_hooks(self, sink, head):
        """FastVID's saliency: the MAP head probe's attention over the patches, pooled like the features."""
        def make(patches):
            sink(self._pool(head(patches)[1][..., None].to(patches.dtype))[..., 0])

        return self._on_projector_input(make)

    def load_head(self, source):
        """The named SigLIP checkpoint's post-layernorm and MAP head, on the vision tower's device and dtype."""
        chosen = self.model.config.vision_feature_layer
        if not isinstance(chosen, int):
            raise ValueError(f"siglip_head: vision_feature_layer={chosen!r} concatenates layers; the head reads one")
        head = signals.load_siglip_head(source, self.model.config.vision_config.hidden_size)
        weight = next(self.base.vision_tower.parameters())
        return head.to(weight.device, weight.dtype)
