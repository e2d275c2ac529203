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

    def score_hooks(self, sink):
        """SigLIP has no CLS token: a token's score is the attention it receives in the layer whose output feeds
        the projector, mean over heads and queries, pooled to the LLM grid like the features (unified §4.1)."""
        tower = self.base.vision_tower
        layers = getattr(tower, "vision_model", tower).encoder.layers
        chosen = self.model.config.vision_feature_layer
        if not isinstance(chosen, int) or chosen == 0:
            raise ValueError(f"vision_feature_layer={chosen!r}: no single attention layer to score")
        layer = layers[len(layers) + chosen if chosen < 0 else chosen - 1]
        side = self.side

        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            received = signals.mean_attention_received(module, hidden)
            pooled = self.base.apply_pooling(received[..., None].to(hidden.dtype))
            sink(pooled.reshape(-1, side, side).float())

        return [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)]
