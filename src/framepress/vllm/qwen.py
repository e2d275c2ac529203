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
- Vision signals (:data:`SIGNALS`): "scores", the pseudo-CLS scores of the last ViT block (per temporal frame,
  the mean query of its patches against each merged token's mean key, softmax within the frame, mean over heads:
  :func:`framepress.signals.pseudo_cls_probs`), computed by a hook while the tower encodes a request's videos,
  from the block's own q/k projection and rotary embedding, and put back from the ViT's window order into
  raster order, one [T, h, w] tensor per video, as framepress's HF adapter computes them
  (``framepress.models.qwen_vl``). Each parameter reads the signal the HF adapter gives it on this family
  (:data:`HF_SIGNALS`): FastVID's MAP-head scores stand in as the pseudo-CLS scores and its frame features are
  its default (frame means), VisionZip compares the features (no keys). Videos given as ``video_embeds`` skip
  the tower, so a method reading a signal cannot compress them: such a request fails with the reason.

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

from .. import signals as _signals
from ..models.qwen_vl import Qwen2_5_VL as _HFAdapter
from . import mrope
from . import settings as _settings

#: the vision signals framepress computes in vLLM's Qwen2.5-VL tower
SIGNALS: dict[str, str] = {
    "scores": "the pseudo-CLS scores of the last ViT block (per frame, the mean query against each merged token's "
              "mean key, softmax within the frame, mean over heads), in raster order",
}
#: the signals framepress's HF adapter computes on Qwen2.5-VL: a parameter reads what the adapter hands it
HF_SIGNALS = tuple(_HFAdapter.vision_signals)
FAMILY = "Qwen2.5-VL"


def settings_of(config: Any) -> _settings.Settings | None:
    """The checked ``framepress`` entry of a model config, for this family's signals; None without one."""
    return _settings.from_config(config, FAMILY, SIGNALS, HF_SIGNALS)


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
            refuse_signal_paths(self.framepress, vllm_config, self.use_data_parallel)
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
                embeds, signals = self.encode_videos(inputs)
                out += self.compress_videos(embeds, inputs, signals)
        return out

    def encode_videos(self, inputs: Mapping[str, Any]) -> tuple[Sequence[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Each video's merged embeddings [T*h*w, C] (vLLM's own encoding) and the vision signals the method reads,
        by name, computed while the tower encodes them (one tower call may hold several videos)."""
        wanted = set(self.framepress.signals.values())
        grids = inputs["video_grid_thw"].tolist()
        if not wanted:
            return self._process_video_input(inputs), [{} for _ in grids]
        if inputs["type"] == "video_embeds":
            raise ValueError(
                f"framepress: {self.framepress.method} reads the vision tower's {', '.join(sorted(wanted))}, but "
                "this request gives video_embeds, which skip the tower; send the video's frames (pixels), or "
                "serve a method that reads no vision signal (e.g. divprune, random, pool, prunevid)"
            )
        seen: list[torch.Tensor] = []
        hook = self.visual.blocks[-1].attn.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(tower_scores(self.visual, module, args, kwargs, grids)),
            with_kwargs=True,
        )
        try:
            embeds = self._process_video_input(inputs)
        finally:
            hook.remove()
        if len(seen) != 1:
            raise RuntimeError(f"framepress: the vision tower ran its last block {len(seen)} times for one batch "
                               "of videos; the scores cannot be matched to them")
        return embeds, [{"scores": s} for s in split_videos(seen[0], grids, self.merge)]

    def compress_videos(self, embeds: Sequence[torch.Tensor], inputs: Mapping[str, Any],
                        signals: Sequence[Mapping[str, torch.Tensor]] | None = None) -> tuple[torch.Tensor, ...]:
        """Each video's merged embeddings [T*h*w, C] (and its vision signals, by name), compressed, with their
        kept tokens' relative positions."""
        grids = inputs["video_grid_thw"].tolist()
        seconds = inputs.get("second_per_grid_ts")
        seconds = [1.0] * len(grids) if seconds is None else [float(s) for s in seconds.reshape(-1).tolist()]
        signals = signals or [{} for _ in grids]
        return tuple(
            compress_video(self.framepress, e, llm_grid(g, self.merge), self.interval(s), v)
            for e, g, s, v in zip(embeds, grids, seconds, signals)
        )

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        if self.framepress is None:
            return super().recompute_mrope_positions(
                input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens
            )
        parts = [mrope.detach(e) for e in multimodal_embeddings]
        positions = mrope_positions
        if parts:
            positions = mrope.rewrite(
                mrope_positions, torch.as_tensor(input_ids, device=mrope_positions.device),
                torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), num_computed_tokens,
                (self.config.image_token_id, self.config.video_token_id),
            )
        return [p[0] for p in parts], positions, mrope.delta(positions)


def compress_video(chosen: _settings.Settings, embeds: torch.Tensor, grid: tuple[int, int, int], interval: float,
                   signals: Mapping[str, torch.Tensor] | None = None):
    """One video's merged embeddings [T*h*w, C] (and its vision signals by name, "scores": [T, h, w]) -> its kept
    tokens [K, C + CHANNELS], in the raster order of their representatives, with their relative M-RoPE positions
    attached."""
    T, h, w = grid
    given = {param: signals[name] for param, name in chosen.signals.items() if signals and name in signals}
    tokens = chosen.compress(embeds.reshape(T, h, w, -1), given)
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


def refuse_signal_paths(chosen: _settings.Settings, vllm_config: Any, data_parallel: bool) -> None:
    """The vision signals come from a hook on the tower's last block in the process that encodes a batch of videos:
    refuse the encoder set-ups where it cannot see them (videos sharded over ranks, a compiled encoder)."""
    if not chosen.signals:
        return
    reads = f"framepress: {chosen.method} reads the vision tower's {', '.join(sorted(set(chosen.signals.values())))}"
    if data_parallel:
        raise ValueError(f"{reads}, computed in the tower of the rank that encodes the videos; --mm-encoder-tp-mode "
                         "data shards the videos over ranks, so serve it with the default tensor-parallel encoder")
    compilation = getattr(vllm_config, "compilation_config", None)
    if getattr(compilation, "compile_mm_encoder", False):
        raise ValueError(f"{reads}, computed by a forward hook on the last vision block, which a compiled encoder "
                         "traces away; serve it without compile_mm_encoder")


def enable_position_rewrite(multimodal_config: Any) -> None:
    """Turn on the runner's multimodal-pruning flag in this (worker) process's config, so that it calls
    ``recompute_mrope_positions``; EVS stays off because this model's own methods replace its code paths."""
    if multimodal_config is None:
        raise RuntimeError("framepress: the model has no multimodal config; vLLM must serve it with video input")
    if not multimodal_config.is_multimodal_pruning_enabled():
        object.__setattr__(multimodal_config, "video_pruning_rate", 0.5)


# --- the pseudo-CLS scores in vLLM's vision tower -------------------------------------------------------------


def vision_query_key(attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """The rotated queries and keys [s, heads, d] of vLLM's ``Qwen2_5_VisionAttention`` ``attn`` (this rank's heads)
    for its input ``x`` [s, 1, c] and rotary tables, by its own fused q/k/v projection and rotary op, laid out as
    its forward lays them out."""
    qkv, _ = attn.qkv(x)
    s, b, _ = qkv.shape
    if b != 1:
        raise RuntimeError(f"framepress: the vision attention got a batch of {b}; the scores read one sequence")
    heads, d = attn.num_attention_heads_per_partition, attn.hidden_size_per_attention_head
    qk = qkv.reshape(s, b, 3, heads, d)[:, :, :2].permute(2, 1, 0, 3, 4).reshape(2 * b, s, heads, d).contiguous()
    q, k = attn.apply_rotary_emb(qk, cos, sin).view(2, b, s, heads, d).unbind(0)
    return q[0], k[0]


def window_index(visual: torch.nn.Module, grids: Sequence[Sequence[int]]) -> torch.Tensor:
    """The tower's order of merge groups for the videos of one call (for each group in its order, the group's
    raster index over all of them), as ``prepare_encoder_metadata`` builds it."""
    parts, offset = [], 0
    for t, h, w in grids:
        index, _ = visual.get_window_index_thw(int(t), int(h), int(w))
        parts.append(index + offset)
        offset += int(t) * (int(h) // visual.spatial_merge_size) * (int(w) // visual.spatial_merge_size)
    return torch.cat(parts)


def tower_scores(visual: torch.nn.Module, attn: torch.nn.Module, args, kwargs, grids) -> torch.Tensor:
    """[M] pseudo-CLS scores of every merged token of one tower call, in raster order (videos one after another),
    from the last block's attention inputs (a forward pre-hook's ``args``, ``kwargs``)."""
    x = kwargs["x"] if "x" in kwargs else args[0]
    cos, sin = kwargs["rotary_pos_emb_cos"], kwargs["rotary_pos_emb_sin"]
    merge = visual.spatial_merge_size
    order = window_index(visual, grids).to(x.device)
    cells = torch.tensor([int(h) * int(w) // merge**2 for t, h, w in grids for _ in range(int(t))], device=x.device)
    frame_raster = torch.arange(cells.numel(), device=x.device).repeat_interleave(cells)
    q, k = vision_query_key(attn, x, cos, sin)
    probs = _signals.pseudo_cls_probs(q, k, frame_raster[order], merge**2, attn.hidden_size_per_attention_head**-0.5)
    if attn.tp_size == 1:
        scores = probs.mean(1)
    else:  # each rank holds some heads: their sums are added across ranks
        from vllm.distributed import tensor_model_parallel_all_reduce

        scores = tensor_model_parallel_all_reduce(probs.sum(1)) / (probs.shape[1] * attn.tp_size)
    raster = torch.empty_like(scores)
    raster[order] = scores
    return raster


def split_videos(scores: torch.Tensor, grids: Sequence[Sequence[int]], merge: int) -> list[torch.Tensor]:
    """One tower call's raster scores [M] -> one [T, h, w] tensor per video."""
    sizes = [int(t) * (int(h) // merge) * (int(w) // merge) for t, h, w in grids]
    return [piece.reshape(llm_grid(g, merge)) for piece, g in zip(scores.split(sizes), grids)]
