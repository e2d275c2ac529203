"""vLLM's LLaVA-OneVision with framepress: the processor lays out the budget, the model compresses after pooling.

- Prompt processing (:class:`LlavaOnevisionProcessor`): each video gets ``settings.count((T, h, w))``
  placeholders for its grid, (h, w) the frame's side after the family's 2x2 pooling (14x14 at 384 px), then the
  image newline that closes the video, exactly as vLLM lays it out (one token after the whole video).
- Encoding (:meth:`LlavaOnevision._process_video_pixels`): each video's pooled grid [T, h, w, C] is compressed
  and the kept tokens go in their representatives' raster order t*h*w + y0*w + x0 (where framepress's HF adapter
  places them), then the newline. A method on the unpooled grid (ST-GridPool) takes the projector's
  [T, 27, 27, C] output instead of the pooling, at the share of it that keeps the pooled grid's budget (as the HF
  adapter does), its tokens in output order.
- Vision signals (:data:`SIGNALS`): "scores", the attention each patch receives in the SigLIP layer that feeds the
  projector (mean over heads and queries), pooled like the features, as framepress's HF adapter computes them
  (HoliTom, the unified method, VisionZip), and "keys", that layer's keys (mean over heads), pooled the same way
  (VisionZip's metric). The SigLIP head's signals are not computed: FastVID runs as framepress's HF adapter runs
  it on the llava-hf checkpoints (which drop the head), "scores" standing in for its saliency.

Positions on LLaVA are 1-D and contiguous, so the compressed layout needs no position rewrite. Without a
``framepress`` entry in the model config the processor and the model are vLLM's own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import VideoEmbeddingItems, VideoProcessorItems
from vllm.multimodal.processing import PromptReplacement

from .. import budget as _budget
from ..models.llava_onevision import LlavaOnevision as _HFAdapter
from ..tokens import Tokens
from . import settings as _settings

#: the vision signals framepress computes in vLLM's LLaVA-OneVision tower
SIGNALS: dict[str, str] = {
    "scores": "the attention each patch receives in the SigLIP layer feeding the projector (mean over heads and "
              "queries), pooled like the features",
    "keys": "that layer's keys (mean over heads), pooled like the features",
}
#: the signals framepress's HF adapter computes on LLaVA-OneVision: a parameter reads what the adapter hands it
#: (without a SigLIP head: FastVID's head signals are not computed, "scores" stands in for its saliency and its
#: frame features take the method's default, as the HF adapter runs it on the llava-hf checkpoints)
HF_SIGNALS = tuple(_HFAdapter.vision_signals)
FAMILY = "LLaVA-OneVision"


def settings_of(config: Any) -> _settings.Settings | None:
    """The checked ``framepress`` entry of a model config, for this family's signals; None without one."""
    return _settings.from_config(config, FAMILY, SIGNALS, HF_SIGNALS)


def pooled_side(info: LlavaOnevisionProcessingInfo, image_width: int, image_height: int) -> int:
    """Tokens per side of a video frame after pooling, as vLLM counts them."""
    per_frame = info._get_num_frame_tokens(image_width=image_width, image_height=image_height)
    side = math.isqrt(per_frame)
    if side * side != per_frame:
        raise RuntimeError(f"framepress: vLLM counts {per_frame} tokens per video frame, not a square grid")
    return side


def num_video_tokens(
    info: LlavaOnevisionProcessingInfo,
    settings: _settings.Settings | None,
    *,
    image_width: int,
    image_height: int,
    num_frames: int,
) -> int:
    """A video's placeholders: vLLM's count, with its T*h*w grid tokens replaced by what the method keeps (the
    newline stays)."""
    full = info.get_num_video_tokens(image_width=image_width, image_height=image_height, num_frames=num_frames)
    if settings is None:
        return full
    side = pooled_side(info, image_width, image_height)
    newline = full - num_frames * side * side
    return settings.count((num_frames, side, side)) + newline


class LlavaOnevisionProcessor(LlavaOnevisionMultiModalProcessor):
    """vLLM's LLaVA-OneVision processor, with each video's placeholders cut to the method's count."""

    def __init__(self, info, dummy_inputs, *args, **kwargs) -> None:
        self.framepress = settings_of(info.get_hf_config())
        super().__init__(info, dummy_inputs, *args, **kwargs)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs) -> Sequence:
        updates = super()._get_prompt_updates(
            mm_items=mm_items, hf_processor_mm_kwargs=hf_processor_mm_kwargs, out_mm_kwargs=out_mm_kwargs
        )
        settings = self.framepress
        if settings is None:
            return updates
        video_token_id = self.info.get_hf_config().video_token_index

        def own(update):
            def replacement(item_idx: int):
                videos = mm_items.get_items("video", (VideoEmbeddingItems, VideoProcessorItems))
                if isinstance(videos, VideoEmbeddingItems):  # given embeddings are not compressed
                    return update.replacement(item_idx)
                size = videos.get_frame_size(item_idx)
                n = num_video_tokens(self.info, settings, image_width=size.width, image_height=size.height,
                                     num_frames=videos.get_num_frames(item_idx))
                return [video_token_id] * n

            return PromptReplacement(modality="video", target=update.target, replacement=replacement)

        return [own(u) if u.modality == "video" else u for u in updates]


def in_sequence_order(tokens: Tokens) -> torch.Tensor:
    """[N, C] the tokens' features in the order of their representatives' flat index t*H*W + y0*W + x0: where
    framepress's HF adapter places tokens that stand at representatives."""
    T, H, W = tokens.grid
    t, y0, x0 = tokens.boxes[:, 0], tokens.boxes[:, 1], tokens.boxes[:, 2]
    rep = t * (H * W) + y0 * W + x0
    if torch.unique(rep).numel() != rep.numel():
        raise RuntimeError("framepress: two output tokens share a representative; cannot place them in the sequence")
    return tokens.features[torch.sort(rep, stable=True).indices]


def compress_pooled(settings: _settings.Settings, x: torch.Tensor, signals=None) -> torch.Tensor:
    """One video's pooled grid x [T, h, w, C] -> [N, C]: the kept tokens in sequence order (N = the count)."""
    return in_sequence_order(settings.compress(x, signals))


def unpooled_share(settings: _settings.Settings, pooled: tuple[int, int, int], unpooled: tuple[int, int, int]):
    """The retention on the unpooled grid that keeps the pooled grid's budget (framepress's HF patch does the
    same): tokens_for(retention, T*h*w) / (T*H*W)."""
    if settings.retention is None:
        return None
    return _budget.tokens_for(settings.retention, math.prod(pooled)) / math.prod(unpooled)


def compress_unpooled(settings: _settings.Settings, raw: torch.Tensor, pooled: tuple[int, int, int],
                      signals=None) -> torch.Tensor:
    """One video's unpooled grid raw [T, H, W, C] (a method that replaces the pooling) -> [N, C] in output
    order; N must be the pooled grid's count, the video's placeholders."""
    share = unpooled_share(settings, pooled, tuple(raw.shape[:3]))
    tokens = dataclasses.replace(settings, retention=share).compress(raw, signals)
    expected = settings.count(pooled)
    if len(tokens) != expected:
        T, h, w = pooled
        raise RuntimeError(
            f"framepress: {settings.method} kept {len(tokens)} tokens of a {'x'.join(map(str, raw.shape[:3]))} "
            f"unpooled video, but its prompt has {expected} placeholders (the {T}x{h}x{w} pooled grid's budget); "
            "refusing to serve a misaligned request"
        )
    return tokens.features


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionProcessor,
    info=LlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class LlavaOnevision(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision, compressing each video's visual tokens with the config's ``framepress`` entry."""

    #: vLLM's names, and those of a checkpoint whose tower is saved without its ``vision_model`` level (framepress's
    #: packaged model, ``framepress.packaged``)
    hf_to_vllm_mapper = LlavaOnevisionForConditionalGeneration.hf_to_vllm_mapper | WeightsMapper(
        orig_to_new_prefix={
            f"vision_tower.{part}.": f"vision_tower.vision_model.{part}."
            for part in ("embeddings", "encoder", "post_layernorm")
        }
    )

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        settings = settings_of(vllm_config.model_config.hf_config)  # a bad setting fails before any weight
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.framepress = settings
        if settings is not None and settings.signals:
            self._feature_layer()  # the layer the signals read: checked at start-up

    def _feature_layer(self) -> torch.nn.Module:
        """The SigLIP layer whose output feeds the projector: vLLM builds the tower up to it, so its last."""
        if not isinstance(self.config.vision_feature_layer, int):
            raise ValueError(f"framepress: vision_feature_layer={self.config.vision_feature_layer!r} concatenates "
                             "layers; the vision signals read one")
        return self.vision_tower.vision_model.encoder.layers[-1]

    def _video_patches(self, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """[frames, c, h, w] -> the projector's [frames, P, C] (vLLM's path up to the pooling), and the vision
        signals the method reads, per frame, pooled like the features (float: "scores" [frames, h, w], "keys"
        [frames, h, w, head_dim])."""
        wanted = sorted(set(self.framepress.signals.values()))
        computed: dict[str, torch.Tensor] = {}
        hook = None
        if wanted:
            def on_attention(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                for name in wanted:
                    computed[name] = VISION_SIGNALS[name](module, hidden)

            hook = self._feature_layer().self_attn.register_forward_pre_hook(on_attention, with_kwargs=True)
        try:
            features = self.vision_tower(pixels, feature_select_strategy=self.config.vision_feature_select_strategy)
        finally:
            if hook is not None:
                hook.remove()
        signals = {}
        for name, value in computed.items():  # pooled as framepress's HF adapter pools them: like the features
            plain = value.ndim == 2  # [F, P] (scores), or [F, P, D] (keys)
            pooled = self.apply_pooling((value[..., None] if plain else value).to(features.dtype))
            h = math.isqrt(pooled.shape[1])
            pooled = pooled.reshape(pooled.shape[0], h, h, -1).float()
            signals[name] = pooled[..., 0] if plain else pooled
        return self.multi_modal_projector(features), signals

    def compress_video(self, patches: torch.Tensor, signals: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """One video's projected patches [T, P, C] (and its frames' vision signals, by name) -> its embeddings
        [N + 1, C]: the kept tokens, then the newline."""
        settings = self.framepress
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        h = math.ceil(side / 2)  # apply_pooling's 2x2 (stride 2) bilinear pooling
        T, C = patches.shape[0], patches.shape[-1]
        given = {param: signals[name] for param, name in settings.signals.items() if signals and name in signals}
        if settings.grid == "unpooled":
            kept = compress_unpooled(settings, patches.reshape(T, side, side, C), (T, h, h), given)
        else:
            kept = compress_pooled(settings, self.apply_pooling(patches).reshape(T, h, h, C), given)
        return torch.cat((kept, self.image_newline[None].to(kept)), dim=0)

    def _process_video_pixels(self, inputs):
        if self.framepress is None:
            return super()._process_video_pixels(inputs)
        videos = list(inputs["pixel_values_videos"])  # a [B, F, c, h, w] tensor or a list of [F, c, h, w]
        frames = [len(v) for v in videos]
        patches, signals = self._video_patches(torch.cat(videos))
        per_video = [dict(zip(signals, parts)) for parts in zip(*(torch.split(v, frames) for v in signals.values()))]
        return [self.compress_video(p, per_video[i] if signals else None)
                for i, p in enumerate(torch.split(patches, frames))]


def mean_attention_received(attn: torch.nn.Module, hidden: torch.Tensor, frames_per_chunk: int = 4) -> torch.Tensor:
    """[F, P]: the attention each patch receives in vLLM's SigLIP attention ``attn``, mean over heads and queries,
    per frame (framepress.signals.mean_attention_received on vLLM's fused q/k/v projection). ``hidden`` [F, P, d]
    is the layer's normalized input; a few frames at a time, so only [frames_per_chunk, heads, P, P] is held.
    Under tensor parallelism each rank holds some heads: their sums are added across ranks."""
    heads, d = attn.num_heads_per_partition, attn.head_dim
    out = []
    for s in range(0, hidden.shape[0], frames_per_chunk):
        h = hidden[s : s + frames_per_chunk]
        qkv, _ = attn.qkv_proj(h)
        q, k, _ = qkv.chunk(3, dim=-1)
        q = q.reshape(*h.shape[:-1], heads, d).transpose(1, 2).float()
        k = k.reshape(*h.shape[:-1], heads, d).transpose(1, 2).float()
        probs = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)  # [f, heads, P, P]
        out.append(probs.mean(dim=(1, 2)) if attn.tp_size == 1 else probs.mean(dim=2).sum(dim=1))
    received = torch.cat(out)
    if attn.tp_size > 1:
        from vllm.distributed import tensor_model_parallel_all_reduce

        received = tensor_model_parallel_all_reduce(received) / attn.num_heads
    return received


def mean_keys(attn: torch.nn.Module, hidden: torch.Tensor, frames_per_chunk: int = 4) -> torch.Tensor:
    """[F, P, head_dim]: vLLM's SigLIP attention's keys, mean over heads (framepress.signals.mean_keys on vLLM's
    fused projection: VisionZip's metric). Under tensor parallelism the ranks' sums over their heads are added."""
    heads, d = attn.num_heads_per_partition, attn.head_dim
    out = []
    for s in range(0, hidden.shape[0], frames_per_chunk):
        h = hidden[s : s + frames_per_chunk]
        qkv, _ = attn.qkv_proj(h)
        k = qkv.chunk(3, dim=-1)[1].reshape(*h.shape[:-1], heads, d)
        out.append(k.mean(-2) if attn.tp_size == 1 else k.sum(-2))
    keys = torch.cat(out)
    if attn.tp_size > 1:
        from vllm.distributed import tensor_model_parallel_all_reduce

        keys = tensor_model_parallel_all_reduce(keys) / attn.num_heads
    return keys


#: how each signal of :data:`SIGNALS` is computed from the feature layer's attention and its normalized input
VISION_SIGNALS = {"scores": mean_attention_received, "keys": mean_keys}
