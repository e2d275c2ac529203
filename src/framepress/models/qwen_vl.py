"""Qwen2.5-VL and Qwen3-VL: M-RoPE (t, h, w) positions; video tokens come after the 2x2 spatial merger.

Qwen2.5-VL places each video as one run of T*H*W tokens (T temporal patches of 2 frames, H x W merged cells);
Qwen3-VL splits it into T runs of H*W, each after its own timestamp text (integration spec §2.3-2.4). Both take
the grid of each video from ``video_grid_thw`` (in patches: divide H and W by the merge size).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import signals
from .base import Adapter, VideoBlock, runs


class QwenVL(Adapter):
    rope = "mrope"
    #: Qwen3-VL gives every temporal patch its own run of tokens (after a timestamp); Qwen2.5-VL one run a video
    run_per_frame = False

    def video_blocks(self, captured: dict[str, Any]) -> list[list[VideoBlock]]:
        grids = captured.get("video_grid_thw")
        mask = self.video_mask(captured)
        if grids is None:
            if bool(mask.any()):
                raise ValueError("video tokens without video_grid_thw: cannot tell the grid of each video")
            return [[] for _ in range(mask.shape[0])]
        merge = self.model.config.vision_config.spatial_merge_size
        queue = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grids.tolist()]
        blocks = []
        for row in mask:
            sample, pending = [], runs(row)
            while pending:
                if not queue:
                    raise ValueError("more video token runs than rows in video_grid_thw")
                T, H, W = queue.pop(0)
                take = T if self.run_per_frame else 1
                parts, pending = pending[:take], pending[take:]
                slots = torch.cat([torch.arange(s, e, device=row.device) for s, e in parts])
                if slots.numel() != T * H * W:
                    raise ValueError(f"a video of grid {T}x{H}x{W} has {slots.numel()} placeholder tokens")
                sample.append(VideoBlock(slots, (T, H, W)))
            blocks.append(sample)
        return blocks


    def window_index(self, grid: torch.Tensor) -> torch.Tensor:
        """The ViT's order of merge groups (for each group in its order, the group's raster index)."""
        merge = self.model.config.vision_config.spatial_merge_size
        return torch.arange(int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum()) // merge**2, device=grid.device)

    #: Only the scores: the official FastVID Qwen2.5-VL fork itself takes each frame's mean merged token as the
    #: frame feature and the pseudo-CLS scores as saliency (so fastvid's defaults are the official signals here),
    #: and VisionZip's official video port (HoliTom's) is LLaVA-OV only, so visionzip compares the features
    vision_signals = {"scores": "score_hooks"}

    def score_hooks(self, sink, head=None):
        """Pseudo-CLS scores in the last ViT block, per temporal frame (unified spec §4.4)."""
        visual = self.base.visual
        merge = self.model.config.vision_config.spatial_merge_size
        seen = {}

        def on_visual(module, args, kwargs):
            seen["grid"] = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

        def on_attention(module, args, kwargs):
            grid = seen["grid"]
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            cells = (grid[:, 1] * grid[:, 2] // merge**2).repeat_interleave(grid[:, 0])  # merged tokens a frame
            frame_raster = torch.arange(cells.numel(), device=grid.device).repeat_interleave(cells)
            order = self.window_index(grid).to(hidden.device)
            scores = signals.pseudo_cls_scores(module, hidden, cos, sin, frame_raster[order], merge**2)
            raster = torch.empty_like(scores)
            raster[order] = scores
            for piece, (t, h, w) in zip(raster.split((grid.prod(1) // merge**2).tolist()), grid.tolist()):
                sink(piece.reshape(t, h // merge, w // merge))

        return [
            visual.register_forward_pre_hook(on_visual, with_kwargs=True),
            visual.blocks[-1].attn.register_forward_pre_hook(on_attention, with_kwargs=True),
        ]


class Qwen2_5_VL(QwenVL):
    run_per_frame = False

    def window_index(self, grid: torch.Tensor) -> torch.Tensor:
        from transformers.vision_utils import get_vision_window_index

        vision = self.model.config.vision_config
        index, _ = get_vision_window_index(
            grid, spatial_merge_size=vision.spatial_merge_size, window_size=vision.window_size, patch_size=vision.patch_size
        )
        return index


class Qwen3VL(QwenVL):
    run_per_frame = True
