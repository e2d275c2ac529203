"""Qwen2.5-VL and Qwen3-VL: M-RoPE (t, h, w) positions; video tokens come after the 2x2 spatial merger.

Qwen2.5-VL places each video as one run of T*H*W tokens (T temporal patches of 2 frames, H x W merged cells);
Qwen3-VL splits it into T runs of H*W, each after its own timestamp text (integration spec §2.3-2.4). Both take
the grid of each video from ``video_grid_thw`` (in patches: divide H and W by the merge size).
"""

from __future__ import annotations

from typing import Any

import torch

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


class Qwen2_5_VL(QwenVL):
    run_per_frame = False


class Qwen3VL(QwenVL):
    run_per_frame = True
