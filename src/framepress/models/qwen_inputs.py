"""Qwen2.5-VL and Qwen3-VL video inputs built without torchvision, equal to their transformers processors' output.

In transformers 5.23 and 5.24 the Qwen video processors (``Qwen2VLVideoProcessor``, used by Qwen2.5-VL, and
``Qwen3VLVideoProcessor``) import torchvision, whose wheels pull a CUDA build. framepress builds the same
``pixel_values_videos``, ``video_grid_thw``, ``second_per_grid_ts`` and expanded prompt from the checkpoint's saved
processor settings with torch alone, following those processors step by step:

1. **Size.** The family's ``smart_resize``: both sides multiples of ``factor = patch_size * merge_size``, the aspect
   ratio kept, the pixel count brought inside ``[size.shortest_edge, size.longest_edge]`` — per frame for Qwen2.5-VL,
   over all (temporally rounded) frames for Qwen3-VL, which also scales frames smaller than ``factor`` up first;
   ``cap_pixels_per_frame`` tightens the upper bound as each processor does.
2. **Resize** uint8 frames with ``interpolate(..., antialias=True)`` in the saved ``resample`` mode, as torchvision
   0.29's ``resize`` does on CPU: bicubic in uint8 natively, bilinear natively on AVX2/AVX512 and ARM CPUs (else in
   float32, rounded back), nearest without antialiasing; a frame already at its size is left alone.
3. **Normalize** in float32 with the mean and std divided by the rescale factor (the processors' fused step:
   ``(x - 255 mean) / (255 std)``), or only rescale / only normalize when the settings say so.
4. **Patchify**: the last frame repeated up to a multiple of ``temporal_patch_size``, then each video flattened to
   ``[t * h * w, 3 * temporal * patch * patch]`` rows in merge-window order ``(t, h/m, w/m, m, m)``.
5. **Prompt**: the ``<|video_pad|>`` placeholder becomes ``t*h*w / m^2`` pads (Qwen2.5-VL), or, per temporal patch,
   ``<{time:.1f} seconds><|vision_start|>`` + ``h*w / m^2`` pads + ``<|vision_end|>`` (Qwen3-VL; the time is the mean of
   the first and last frame of the patch, source index / fps). The template's own ``<|vision_start|>`` and
   ``<|vision_end|>`` around the placeholder stay, as in transformers. Qwen2.5-VL's ``second_per_grid_ts`` is
   ``temporal_patch_size / sampled fps``, the sampled fps being ``frames / source frames * source fps``.

Frames are never re-sampled here or in the processor (framepress samples them, :mod:`framepress.video`); a clip
of unknown frame rate is timed at 24 fps, the processors' fallback. ``tests/test_qwen_inputs.py`` checks equality
with the transformers processors where torchvision is installed.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: model class -> family
FAMILY = {"Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl", "Qwen3VLForConditionalGeneration": "qwen3_vl"}

#: each video processor's class defaults (transformers 5.23/5.24), which a saved setting overrides
_DEFAULTS = {
    "qwen2_5_vl": dict(
        size={"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}, patch_size=14,
        image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711),
        max_video_tokens=128000,
    ),
    "qwen3_vl": dict(
        size={"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}, patch_size=16,
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), max_video_tokens=768,
    ),
}
_COMMON = dict(
    temporal_patch_size=2, merge_size=2, resample=3, do_resize=True, do_rescale=True, rescale_factor=1 / 255,
    do_normalize=True, cap_pixels_per_frame=False,
)
#: PIL resampling codes the saved settings use -> interpolate modes (torchvision's mapping of the same codes)
_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
#: the processors' frame rate when a clip has none
FALLBACK_FPS = 24.0


@dataclass(frozen=True)
class VideoSettings:
    """What the family's video processor would use: its class defaults overridden by the checkpoint's settings."""

    family: str
    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float
    do_resize: bool
    do_rescale: bool
    do_normalize: bool
    resample: int
    cap_pixels_per_frame: bool
    max_video_tokens: int

    @classmethod
    def from_saved(cls, family: str, saved: dict[str, Any]) -> VideoSettings:
        """``saved``: the video processor's saved dict (a null or missing key keeps the class default, as in
        transformers); Qwen2.5-VL's ``min_pixels`` / ``max_pixels`` override ``size`` as its processor's do."""
        if family not in _DEFAULTS:
            raise ValueError(f"family must be one of {sorted(_DEFAULTS)}, got {family!r}")
        values = {**_COMMON, **_DEFAULTS[family]}
        values.update({k: v for k, v in saved.items() if k in values and v is not None})
        size = dict(values.pop("size"))
        if family == "qwen2_5_vl":
            for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
                if saved.get(key) is not None:
                    size[edge] = saved[key]
        if not size.get("shortest_edge") or not size.get("longest_edge"):
            raise ValueError(f"the video processor's size must give shortest_edge and longest_edge, got {size}")
        if values["resample"] not in _MODES:
            raise ValueError(
                f"resample={values['resample']!r}: framepress builds Qwen video inputs with nearest (0), bilinear (2) "
                "or bicubic (3) resizing only"
            )
        return cls(
            family=family, min_pixels=int(size["shortest_edge"]), max_pixels=int(size["longest_edge"]),
            image_mean=tuple(values.pop("image_mean")), image_std=tuple(values.pop("image_std")),
            cap_pixels_per_frame=bool(values.pop("cap_pixels_per_frame")), **values,
        )

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """The (height, width) every frame of a ``frames``-frame clip is resized to."""
        factor, max_pixels = self.factor, self.max_pixels
        if self.family == "qwen2_5_vl":
            if self.cap_pixels_per_frame:  # an even share of the video budget, per temporal patch
                total = int(self.max_video_tokens * factor * factor * 0.9)
                max_pixels = max(min(max_pixels, total * self.temporal_patch_size // frames), int(self.min_pixels * 1.05))
            return _fit(height, width, factor, self.min_pixels, max_pixels, frames=1, counted=1)
        if frames < self.temporal_patch_size:
            raise ValueError(f"frames: Qwen3-VL needs at least {self.temporal_patch_size} frames, got {frames}")
        if self.cap_pixels_per_frame:  # per frame: at most max_video_tokens patches or an even share of the budget
            per_frame = max(min(self.max_video_tokens * factor * factor, max_pixels // frames), int(self.min_pixels * 1.05))
            max_pixels = per_frame * frames
        if height < factor or width < factor:  # small frames are scaled up to the factor first
            scale = max(factor / height, factor / width)
            height, width = int(height * scale), int(width * scale)
        counted = round(frames / self.temporal_patch_size) * self.temporal_patch_size
        return _fit(height, width, factor, self.min_pixels, max_pixels, frames=frames, counted=counted)


def _fit(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: int, counted: int):
    """Round both sides to ``factor``; if ``counted`` frames of that size fall outside the pixel range, scale the
    ``frames`` original frames' area into it (down: floor, at least one factor; up: ceil)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frames: the aspect ratio must be below 200, got {height}x{width}")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if counted * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif counted * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def _native_uint8_bilinear() -> bool:
    """Whether torchvision (0.29, the eval environment's) resizes uint8 bilinearly without a float round trip."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def _resize(video: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """uint8 [F, 3, H, W] -> uint8 [F, 3, h, w], as torchvision's ``resize(antialias=True)`` computes it on CPU."""
    if tuple(video.shape[-2:]) == size:
        return video
    mode = _MODES[resample]
    if mode == "nearest":
        return F.interpolate(video, size=size, mode="nearest")
    if mode == "bicubic" or _native_uint8_bilinear():
        return F.interpolate(video, size=size, mode=mode, align_corners=False, antialias=True)
    out = F.interpolate(video.float(), size=size, mode=mode, align_corners=False, antialias=True)
    return out.round_().to(torch.uint8)


def video_pixels(frames: np.ndarray, settings: VideoSettings) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``pixel_values_videos`` [t*h*w, 3*temporal*patch*patch] (float32) and the grid (t, h, w) in patches of one
    clip of uint8 RGB ``frames`` [F, H, W, 3]."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be a uint8 [F, H, W, 3] array, got {got}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"frames is empty: {frames.shape}")
    s = settings
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()
    if s.do_resize:
        video = _resize(video, s.resized(*frames.shape[:3]), s.resample)
    x = video.float()
    if s.do_normalize:
        scale = 1.0 / s.rescale_factor if s.do_rescale else 1.0  # the fused rescale: mean and std times 255
        mean = (torch.tensor(s.image_mean) * scale).view(-1, 1, 1)
        std = (torch.tensor(s.image_std) * scale).view(-1, 1, 1)
        x = x.sub_(mean).div_(std)
    elif s.do_rescale:
        x = x * s.rescale_factor
    n, c, height, width = x.shape
    p, m, tp = s.patch_size, s.merge_size, s.temporal_patch_size
    if height % (p * m) or width % (p * m):
        raise ValueError(f"frames of {height}x{width} do not split into {p * m}-pixel merge windows (do_resize=False?)")
    if pad := -n % tp:  # the last frame repeated to fill the last temporal patch
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
    t, gh, gw = x.shape[0] // tp, height // p, width // p
    x = x.reshape(t, tp, c, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, c * tp * p * p), (t, gh, gw)


@dataclass(frozen=True)
class Clip:
    """Where a clip's frames came from: their indices in the source, its frame count and rate (None: unknown)."""

    indices: tuple[int, ...]
    total_frames: int
    fps: float | None

    @classmethod
    def of(cls, video: Any, frames: int) -> Clip:
        """From a :class:`framepress.video.Video` (or anything with ``indices``, ``total_frames``, ``fps``); None:
        frames 0..F-1 of a clip of F frames and unknown rate."""
        indices = getattr(video, "indices", None)
        indices = tuple(range(frames)) if indices is None else tuple(int(i) for i in indices)
        if len(indices) != frames:
            raise ValueError(f"video: {len(indices)} frame indices for {frames} frames")
        total = getattr(video, "total_frames", None) or frames
        fps = getattr(video, "fps", None)
        return cls(indices, int(total), float(fps) if fps else None)

    def metadata(self) -> dict[str, Any]:
        """The clip as the transformers processors' ``video_metadata``."""
        return {"total_num_frames": self.total_frames, "fps": self.fps, "frames_indices": list(self.indices)}


class QwenVideoInputs:
    """One Qwen checkpoint's video processor and prompt expansion, built from its saved settings."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, saved: dict[str, Any]):
        name = type(model).__name__
        if name not in FAMILY:
            raise ValueError(f"model: {name} is not a Qwen2.5-VL or Qwen3-VL model")
        self.family, self.tokenizer = FAMILY[name], tokenizer
        self.settings = VideoSettings.from_saved(self.family, saved)
        vision = model.config.vision_config
        for setting, value in (("patch_size", vision.patch_size), ("temporal_patch_size", vision.temporal_patch_size),
                               ("merge_size", vision.spatial_merge_size)):
            if getattr(self.settings, setting) != value:
                raise ValueError(f"the processor settings' {setting}={getattr(self.settings, setting)} differs from "
                                 f"the model's vision config ({value})")
        # the processor's placeholder names: the tokenizer's own when it has them, else Qwen's
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.vision_start = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
        self.vision_end = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(self.video_token)
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(self.image_token)
        if self.video_token_id != model.config.video_token_id:
            raise ValueError(f"the tokenizer's {self.video_token} is id {self.video_token_id}, the model's video "
                             f"token is {model.config.video_token_id}")

    def placeholder(self, grid: tuple[int, int, int], clip: Clip) -> str:
        """What the prompt's one video placeholder expands to."""
        t, h, w = grid
        cells = h * w // self.settings.merge_size**2
        if self.family == "qwen2_5_vl":
            return self.video_token * (t * cells)
        tp = self.settings.temporal_patch_size
        indices = np.array(clip.indices + clip.indices[-1:] * (-len(clip.indices) % tp), dtype=np.float64)
        seconds = indices.reshape(-1, tp)[:, [0, -1]] / (clip.fps or FALLBACK_FPS)
        frame = self.vision_start + self.video_token * cells + self.vision_end
        return "".join(f"<{(a + b) / 2:.1f} seconds>{frame}" for a, b in seconds.tolist())

    def __call__(self, frames: np.ndarray, text: str, clip: Clip) -> dict[str, torch.Tensor]:
        """The model inputs of ``text`` (a rendered prompt with one video placeholder) and the clip's frames."""
        count = text.count(self.video_token)
        if count != 1:
            raise ValueError(f"the rendered prompt holds {count} {self.video_token} placeholders, expected one")
        pixels, grid = video_pixels(frames, self.settings)
        encoded = self.tokenizer([text.replace(self.video_token, self.placeholder(grid, clip))], return_tensors="pt")
        ids = encoded["input_ids"]
        types = (ids == self.image_token_id).long() + (ids == self.video_token_id).long() * 2
        out = {"input_ids": ids, "attention_mask": encoded["attention_mask"], "mm_token_type_ids": types,
               "pixel_values_videos": pixels, "video_grid_thw": torch.tensor([grid])}
        if self.family == "qwen2_5_vl":
            fps = clip.fps or FALLBACK_FPS
            sampled = len(clip.indices) / clip.total_frames * fps if clip.fps else fps
            out["second_per_grid_ts"] = torch.tensor([self.settings.temporal_patch_size / sampled])
        return out
