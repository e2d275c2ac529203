"""vLLM's Qwen2.5-VL with framepress: the processor lays out the budget, the model compresses after the merger.

- Prompt processing (:class:`Qwen2_5_VLProcessor`): each video gets ``settings.count((T, h, w))`` placeholders,
  (T, h, w) its grid after the 2x2 merger.
- Encoding (:meth:`Qwen2_5_VL.embed_multimodal`): each video's merged features [T, h, w, C] are compressed; the
  kept tokens go in their representatives' raster order (where framepress's HF adapter places them), each
  carrying its relative (t, y, x) positions in extra channels (:mod:`framepress.vllm.mrope`).
- Positions: :meth:`Qwen2_5_VL.get_mrope_input_positions` gives HF's text positions for the compressed layout;
  :meth:`Qwen2_5_VL.recompute_mrope_positions`, which vLLM's runner calls once the embeddings exist, writes the
  kept tokens' own positions. The runner calls it only when its multimodal-pruning flag is on, so a model that
  compresses turns the flag on in its worker's config (the frontend's copy, which chooses EVS's own counts,
  stays off).

Without a ``framepress`` entry in the model config every method falls through to vLLM's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement

from . import mrope
from . import settings as _settings

#: the vision signals framepress computes in vLLM's Qwen2.5-VL tower (none yet: methods that read scores are
#: refused at start-up with the reason)
SIGNALS: dict[str, str] = {}
FAMILY = "Qwen2.5-VL"


def settings_of(config: Any) -> _settings.Settings | None:
    raw = getattr(config, "framepress", None)
    return None if raw is None else _settings.parse(raw, FAMILY, SIGNALS)


def llm_grid(grid_thw: Sequence[int], merge: int) -> tuple[int, int, int]:
    T, H, W = (int(v) for v in grid_thw)
    return T, H // merge, W // merge


class Qwen2_5_VLProcessor(Qwen2_5_VLMultiModalProcessor):
    """vLLM's processor, with each video's placeholder count the framepress budget of its merged grid."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        config = self.info.get_hf_config()
        chosen = settings_of(config)
        if chosen is None:
            return updates
        merge = config.vision_config.spatial_merge_size
        token = config.video_token_id

        def video(item_idx: int) -> list[int]:
            grid = out_mm_kwargs["video"][item_idx]["video_grid_thw"].data
            return [token] * chosen.count(llm_grid(grid.tolist(), merge))

        return [
            PromptReplacement(modality="video", target=u.target, replacement=video) if u.modality == "video" else u
            for u in updates
        ]


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class Qwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL whose videos are compressed by the ``framepress`` setting of its config."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.framepress = settings_of(self.config)
        if self.framepress is not None:
            refuse_evs(vllm_config.model_config.multimodal_config)
            enable_position_rewrite(vllm_config.model_config.multimodal_config)
            self.is_multimodal_pruning_enabled = True  # no encoder CUDA graphs: the output rows vary

    @property
    def merge(self) -> int:
        return self.config.vision_config.spatial_merge_size

    def interval(self, second_per_grid_t: float) -> float:
        return mrope.time_interval(getattr(self.config.vision_config, "tokens_per_second", 1), second_per_grid_t)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        if self.framepress is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        media = []
        for feature in mm_features:
            data = feature.data
            key = "video_grid_thw" if feature.modality == "video" else "image_grid_thw"
            seconds = data.get("second_per_grid_ts") if feature.modality == "video" else None
            interval = self.interval(float(seconds.data.item())) if seconds is not None else (
                self.interval(1.0) if feature.modality == "video" else 1.0)
            grid = llm_grid(data[key].data.tolist(), self.merge)
            media.append(mrope.Media(feature.mm_position.offset, feature.mm_position.length, grid, interval))
        return mrope.prompt_positions(len(input_tokens), media)

    def embed_multimodal(self, **kwargs: object):
        if self.framepress is None:
            return super().embed_multimodal(**kwargs)
        out: tuple[torch.Tensor, ...] = ()
        for modality, inputs in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            if modality == "image":
                out += tuple(mrope.attach(e, None) for e in self._process_image_input(inputs))
            elif modality == "video":
                out += self.compress_videos(self._process_video_input(inputs), inputs)
        return out

    def compress_videos(self, embeds: Sequence[torch.Tensor], inputs: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """Each video's merged embeddings [T*h*w, C], compressed, with their kept tokens' relative positions."""
        grids = inputs["video_grid_thw"].tolist()
        seconds = inputs.get("second_per_grid_ts")
        seconds = [1.0] * len(grids) if seconds is None else [float(s) for s in seconds.reshape(-1).tolist()]
        return tuple(
            compress_video(self.framepress, e, llm_grid(g, self.merge), self.interval(s))
            for e, g, s in zip(embeds, grids, seconds)
        )

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        if self.framepress is None:
            return super().recompute_mrope_positions(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens)
        parts = [mrope.detach(e) for e in multimodal_embeddings]
        positions = mrope_positions
        if parts:
            positions = mrope.rewrite(
                mrope_positions, torch.as_tensor(input_ids, device=mrope_positions.device),
                torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), num_computed_tokens,
                (self.config.image_token_id, self.config.video_token_id),
            )
        return [p[0] for p in parts], positions, mrope.delta(positions)


def compress_video(chosen: _settings.Settings, embeds: torch.Tensor, grid: tuple[int, int, int], interval: float):
    """One video's merged embeddings [T*h*w, C] -> its kept tokens [K, C + CHANNELS], in the raster order of their
    representatives, with their relative M-RoPE positions attached."""
    T, h, w = grid
    tokens = chosen.compress(embeds.reshape(T, h, w, -1))
    boxes = tokens.boxes.to(embeds.device)
    order = torch.argsort(boxes[:, 0] * (h * w) + boxes[:, 1] * w + boxes[:, 2])
    features = tokens.features.to(embeds.device, embeds.dtype)[order]
    return mrope.attach(features, mrope.kept_positions(boxes[order], grid, interval))


def refuse_evs(multimodal_config: Any) -> None:
    """framepress and vLLM's own ``--video-pruning-rate`` would both choose a video's tokens: refuse the pair."""
    if multimodal_config is not None and multimodal_config.is_multimodal_pruning_enabled():
        raise ValueError(
            "framepress: --video-pruning-rate turns on vLLM's own video pruning (EVS/VidCom2) as well; "
            "serve with one of them (drop --video-pruning-rate, or the framepress entry of --hf-overrides)"
        )


def enable_position_rewrite(multimodal_config: Any) -> None:
    """Turn on the runner's multimodal-pruning flag in this (worker) process's config, so that it calls
    ``recompute_mrope_positions``; EVS stays off because this model's own methods replace its code paths."""
    if multimodal_config is None:
        raise RuntimeError("framepress: the model has no multimodal config; vLLM must serve it with video input")
    if not multimodal_config.is_multimodal_pruning_enabled():
        object.__setattr__(multimodal_config, "video_pruning_rate", 0.5)
