"""Model inputs for a video and a question, with the family's own processor and chat template.

In transformers 5.23 and 5.24 the video processors need torchvision. When the family's processor loads, it does
all the work. When it cannot (no torchvision, or a checkpoint folder without processor files), the inputs are
built here from the settings saved with the checkpoint, the way its video processor builds them, and a warning
says so (an info line for a LLaVA checkpoint that saves no processor at all): LLaVA-OneVision's — resize every frame to the vision size (bicubic), rescale to [0, 1], normalize with the
saved mean and std, one ``<video>`` placeholder expanded to F*side*side + 1 tokens — and Qwen2.5-VL's and
Qwen3-VL's with :mod:`framepress.models.qwen_inputs` (equal to their processors' output, a test).

framepress samples the frames itself; the Qwen processors get the clip's source frame indices and rate as their
``video_metadata`` and never re-sample (``do_sample_frames=False``), so Qwen3-VL's timestamps and Qwen2.5-VL's
``second_per_grid_ts`` follow the source video.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .models import adapter_for
from .models.qwen_inputs import Clip, QwenVideoInputs

log = logging.getLogger("framepress")

#: OpenAI CLIP normalization, LlavaOnevisionVideoProcessor's defaults
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
QUESTION = "\x00question\x00"


def _saved_settings(path: str | None) -> tuple[dict[str, Any], str | None]:
    """The video processor settings saved in a local checkpoint folder and the file they come from, looked up as
    transformers does: ``processor_config.json``'s ``video_processor``, else ``video_preprocessor_config.json``, else
    the image processor's ``preprocessor_config.json``; ({}, None) when there are none."""
    if path is None or not Path(path).is_dir():
        return {}, None
    combined = Path(path) / "processor_config.json"
    if combined.is_file() and "video_processor" in (saved := json.loads(combined.read_text())):
        return saved["video_processor"], combined.name
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        file = Path(path) / name
        if file.is_file():
            return json.loads(file.read_text()), name
    return {}, None


def _saved_chat_template(path: str | None) -> str | None:
    if path is None or not Path(path).is_dir():
        return None
    jinja = Path(path) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    js = Path(path) / "chat_template.json"
    if js.is_file():
        return json.loads(js.read_text()).get("chat_template")
    return None


class Prompter:
    """Turns (frames, question) into ``model(**inputs)`` inputs for one model."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, source: str | None = None):
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.adapter = adapter_for(model)
        self.processor, reason = None, "no checkpoint folder or hub id"
        try:
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(source) if source else None
        except (ImportError, OSError, ValueError, TypeError, AttributeError) as exc:
            reason = " ".join(str(exc).split()).split(". ")[0] or type(exc).__name__  # its first sentence
        if self.processor is not None and getattr(self.processor, "video_processor", None) is None:
            self.processor, reason = None, f"{type(self.processor).__name__} has no video processor"
        self.settings, settings_file = _saved_settings(source)
        self.qwen = None
        if self.processor is None:
            if self.adapter.rope == "mrope":
                self.qwen = QwenVideoInputs(model, tokenizer, self.settings)
            # said as a warning, except for a LLaVA checkpoint that saves no processor (framepress's packaged
            # model): there nothing else could build its inputs and nothing is guessed
            level = logging.INFO if settings_file is None and self.qwen is None else logging.WARNING
            log.log(
                level, "framepress: %s's processor does not load here (%s); building its video inputs from the "
                "checkpoint's processor settings (%s)", self.adapter.name, reason,
                settings_file or "none saved: the processor's defaults",
            )
        self.chat_template = _saved_chat_template(source) or getattr(tokenizer, "chat_template", None)

    def messages(self, question: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]

    def render(self, question: str) -> str:
        """The chat-template text of one user turn (the video, then the question) and the assistant's cue."""
        messages = self.messages(question)
        if self.processor is not None and getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template and the checkpoint saves none")
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )

    def inputs(self, frames: np.ndarray, question: str, video: Any = None) -> dict[str, torch.Tensor]:
        """Model inputs for the frames [F, H, W, 3] (uint8 RGB) and the question. ``video``: the
        :class:`framepress.video.Video` they were sampled from (its frame indices, frame count and fps time the Qwen
        families' frames); None: frames 0..F-1 of a clip of unknown rate."""
        return self._inputs_for_text(frames, self.render(question), video)

    def split(self, frames: np.ndarray, video: Any = None) -> tuple[dict[str, torch.Tensor], str]:
        """The inputs of everything before the question (for a cached prefix) and the text that follows it, where
        the question goes (the template's tail: end of turn and the assistant's cue)."""
        text = self.render(QUESTION)
        before, after = text.split(QUESTION, 1)
        prefix = self._inputs_for_text(frames, before, video)
        return prefix, after

    def question_ids(self, question: str, tail: str) -> torch.Tensor:
        return self.tokenizer(question + tail, add_special_tokens=False, return_tensors="pt").input_ids[0]

    def _inputs_for_text(self, frames: np.ndarray, text: str, video: Any) -> dict[str, torch.Tensor]:
        if isinstance(video, (int, float)):
            raise TypeError(f"video must be the Video the frames came from (or None), got a {type(video).__name__}")
        if self.adapter.rope == "mrope":
            clip = Clip.of(video, len(frames))
            if self.processor is None:
                return self.qwen(frames, text, clip)
            # the clip's timing, no re-sampling; the pixel cap as saved, unset meaning off (5.23's behaviour, said
            # explicitly to silence the processor's warning about a future default)
            cap = bool(getattr(self.processor.video_processor, "cap_pixels_per_frame", None))
            return dict(self.processor(
                videos=[list(frames)], text=text, video_metadata=[clip.metadata()], do_sample_frames=False,
                cap_pixels_per_frame=cap, return_tensors="pt",
            ))
        if self.processor is not None:
            return dict(self.processor(videos=[list(frames)], text=text, return_tensors="pt"))
        return self._llava_inputs(frames, text)

    def _llava_inputs(self, frames: np.ndarray, text: str) -> dict[str, torch.Tensor]:
        from PIL import Image

        vision = self.model.config.vision_config
        size = self.settings.get("size", {}).get("height", vision.image_size)
        mean = torch.tensor(self.settings.get("image_mean", CLIP_MEAN)).view(3, 1, 1)
        std = torch.tensor(self.settings.get("image_std", CLIP_STD)).view(3, 1, 1)
        resized = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames])
        pixels = (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255 - mean) / std
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        video = self.adapter.video_token_id
        if ids.count(video) != 1:
            raise ValueError(f"the rendered prompt holds {ids.count(video)} video placeholders, expected one")
        side = self.adapter.side
        at = ids.index(video)
        ids = ids[:at] + [video] * (len(frames) * side * side + 1) + ids[at + 1 :]
        input_ids = torch.tensor([ids])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values_videos": pixels[None]}
