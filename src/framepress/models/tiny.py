"""Tiny models of each supported family, built from config with random weights, and fake video inputs for them.

For tests, demos and latency runs on machines that cannot download weights (integration spec §8). Their
outputs are meaningless text: only shapes, positions, caches and timings mean anything.
"""

from __future__ import annotations

import torch

FAMILIES = ("llava_onevision", "qwen2_5_vl", "qwen3_vl")

#: Placeholder ids of the tiny configs (a 256-token vocabulary).
VIDEO, IMAGE, VISION_START, VISION_END = 251, 250, 252, 253
BOS, EOS, PAD = 1, 2, 0

_TEXT = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
)


def tiny_config(family: str, layers: int = 4):
    """The config of a tiny model of ``family`` (one of FAMILIES) with ``layers`` decoder layers."""
    import transformers as tf

    if family == "llava_onevision":
        return tf.LlavaOnevisionConfig(
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=56, patch_size=7, vision_use_head=False,
            ),
            text_config=dict(model_type="qwen2", num_hidden_layers=layers, **_TEXT),
            image_token_index=IMAGE,
            video_token_index=VIDEO,
            image_grid_pinpoints=[[56, 56]],
            vision_feature_select_strategy="full",
        )
    if family == "qwen2_5_vl":
        return tf.Qwen2_5_VLConfig(
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2, window_size=56, out_hidden_size=64, fullatt_block_indexes=[1],
                tokens_per_second=2,
            ),
            text_config=dict(
                num_hidden_layers=layers,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                **_TEXT,
            ),
            image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
            vision_end_token_id=VISION_END,
        )
    if family == "qwen3_vl":
        return tf.Qwen3VLConfig(
            vision_config=dict(
                depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=16,
                deepstack_visual_indexes=[0, 1],
            ),
            text_config=dict(
                num_hidden_layers=layers,
                head_dim=16,
                rope_parameters={
                    "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True,
                },
                **_TEXT,
            ),
            image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
            vision_end_token_id=VISION_END,
        )
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def tiny_model(family: str, layers: int = 4, seed: int = 0, attn_implementation: str = "sdpa"):
    """A tiny ``family`` model with seeded random weights, in eval mode."""
    import transformers as tf

    classes = {
        "llava_onevision": tf.LlavaOnevisionForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": tf.Qwen3VLForConditionalGeneration,
    }
    config = tiny_config(family, layers)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return classes[family](config).eval()


def family_of(model: torch.nn.Module) -> str:
    return {
        "LlavaOnevisionForConditionalGeneration": "llava_onevision",
        "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
        "Qwen3VLForConditionalGeneration": "qwen3_vl",
    }[type(model).__name__]


def video_inputs(
    model: torch.nn.Module,
    frames: list[torch.Tensor] | torch.Tensor,
    prompt: list[int] = (5, 6),
    question: list[int] = (7, 8, 9),
) -> dict[str, torch.Tensor]:
    """Model inputs for a batch of videos as the family's processor lays them out, left-padded.

    ``frames``: one [F, 3, S, S] pixel tensor per sample (S: the config's image size for LLaVA-OneVision;
    a multiple of 2*patch for the Qwen families, F even). Token ids are placeholders of the tiny vocabulary.
    """
    family = family_of(model)
    config = model.config
    videos = [frames] if isinstance(frames, torch.Tensor) else list(frames)
    rows, extra = [], {}
    if family == "llava_onevision":
        side = -(-(config.vision_config.image_size // config.vision_config.patch_size) // 2)
        for v in videos:
            rows.append([BOS, *prompt, *[VIDEO] * (v.shape[0] * side * side + 1), *question])
        extra["pixel_values_videos"] = torch.stack(videos)
    else:
        patch, merge = config.vision_config.patch_size, config.vision_config.spatial_merge_size
        temporal = config.vision_config.temporal_patch_size
        pixels, grids = [], []
        for v in videos:
            F, C, S, _ = v.shape
            t, g = F // temporal, S // patch
            grids.append([t, g, g])
            # patches in merge-window order, as the Qwen processors flatten them: (t, h/m, w/m, m, m) x values
            x = v.reshape(t, temporal, C, g // merge, merge, patch, g // merge, merge, patch)
            pixels.append(x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * g * g, C * temporal * patch * patch))
            cells = (g // merge) ** 2
            if family == "qwen2_5_vl":
                video = [VISION_START, *[VIDEO] * (t * cells), VISION_END]
            else:  # Qwen3-VL: a timestamp before each temporal patch
                video = [tok for i in range(t) for tok in (30 + i, VISION_START, *[VIDEO] * cells, VISION_END)]
            rows.append([BOS, *prompt, *video, *question])
        extra["pixel_values_videos"] = torch.cat(pixels)
        extra["video_grid_thw"] = torch.tensor(grids)
        if family == "qwen2_5_vl":
            extra["second_per_grid_ts"] = torch.ones(len(videos))
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    inputs = {"input_ids": ids, "attention_mask": mask, **extra}
    if family != "llava_onevision":
        inputs["mm_token_type_ids"] = (ids == VIDEO).long() * 2
    return inputs


def random_frames(model: torch.nn.Module, frames: int, seed: int = 0, size: int | None = None) -> torch.Tensor:
    """[F, 3, S, S] random pixels of the size the tiny model takes."""
    family = family_of(model)
    if size is None:
        size = model.config.vision_config.image_size if family == "llava_onevision" else 8 * model.config.vision_config.patch_size
    return torch.randn(frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


#: The tiny checkpoints' words: enough for the demo's questions and for answers to read as words.
WORDS = ["user", "assistant", "system", "what", "which", "how", "many", "is", "are", "the", "a", "an", "of", "in", "on", "at", "to", "and", "or", "video", "frame", "frames", "shape", "shapes", "object", "objects", "color", "colour", "red", "green", "blue", "yellow", "white", "black", "orange", "purple", "square", "circle", "triangle", "star", "appears", "appeared", "briefly", "first", "last", "left", "right", "up", "down", "moving", "moves", "still", "static", "scene", "cut", "there", "count", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "yes", "no", "describe", "happens", "that", "big", "appear", "way", "does", "move"]
#: Words of the real-regime questions (:data:`framepress.synth.REAL_KINDS`), appended so that every earlier word keeps
#: its id (the packaged checkpoint's tokenizer was saved with the list above).
WORDS += ["small", "second", "times", "where", "mark", "after"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {% if m['content'] is string %}{{ m['content'] }} "
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}<video> {% else %}{{ c['text'] }} "
    "{% endif %}{% endfor %}{% endif %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant "
    "{% endif %}"
)
#: The Qwen families' template: a video is ``<|vision_start|><|video_pad|><|vision_end|>``, as in the real ones.
QWEN_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<video> ", "<|vision_start|><|video_pad|><|vision_end|> ")

def qwen_processor_config(family: str) -> dict:
    """The tiny Qwen checkpoints' ``processor_config.json`` in the layout transformers 5.x saves: the processor
    class and its image and video processors' settings, small pixel budgets so a 64x64 clip is a few tokens (every
    setting not given is the transformers processors' default)."""
    if family == "qwen2_5_vl":
        common = {"size": {"shortest_edge": 28 * 28, "longest_edge": 112 * 112}, "patch_size": 14}
        video, processor = "Qwen2VLVideoProcessor", "Qwen2_5_VLProcessor"
    elif family == "qwen3_vl":
        common = {"size": {"shortest_edge": 32 * 32 * 2, "longest_edge": 64 * 64 * 16}, "patch_size": 16}
        video, processor = "Qwen3VLVideoProcessor", "Qwen3VLProcessor"
    else:
        raise ValueError(f"family must be qwen2_5_vl or qwen3_vl, got {family!r}")
    common.update(temporal_patch_size=2, merge_size=2)
    return {
        "processor_class": processor,
        "image_processor": {"image_processor_type": "Qwen2VLImageProcessor", **common},
        "video_processor": {"video_processor_type": video, **common},
    }


def tiny_tokenizer(family: str = "llava_onevision"):
    """A word-level tokenizer over :data:`WORDS` with the tiny configs' special ids and a chat template; the Qwen
    families name their placeholders as the real Qwen tokenizers do (``<|video_pad|>``, ``<|image_pad|>``)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    qwen = family != "llava_onevision"
    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    special = {"<|im_start|>": 248, "<|im_end|>": 249, ("<|image_pad|>" if qwen else "<image>"): IMAGE,
               ("<|video_pad|>" if qwen else "<video>"): VIDEO, "<|vision_start|>": VISION_START,
               "<|vision_end|>": VISION_END}
    vocab.update(special)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=list(special),
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE if qwen else CHAT_TEMPLATE
    return tokenizer


def save_tiny_checkpoint(path, family: str = "llava_onevision", layers: int = 4, seed: int = 0):
    """Write a loadable tiny checkpoint (random weights, tokenizer, chat template; for the Qwen families their
    video processor settings) to ``path``; returns it."""
    import json
    from pathlib import Path

    path = Path(path)
    model = tiny_model(family, layers=layers, seed=seed)
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(path)
    tiny_tokenizer(family).save_pretrained(path)
    if family != "llava_onevision":  # the processor's settings, written without building it (needs torchvision)
        (path / "processor_config.json").write_text(json.dumps(qwen_processor_config(family), indent=2))
    return path
