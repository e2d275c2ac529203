"""Tiny checkpoints that vLLM's CPU backend can serve: its attention kernels take head sizes of 32 and up, so the
text model here has 2 heads of 64 (framepress's usual tiny models have heads of 16)."""

from __future__ import annotations

from pathlib import Path

from framepress.models.tiny import save_tiny_checkpoint

#: text width, heads and M-RoPE sections (half the head size, split over t, h, w) of the served tiny models
HIDDEN, HEADS, MROPE = 128, 2, [8, 12, 12]


def servable_checkpoint(path: Path, family: str, layers: int = 2, seed: int = 0) -> Path:
    """A tiny ``family`` checkpoint (as :func:`framepress.models.tiny.save_tiny_checkpoint`) resized to heads of 64."""
    import json

    import torch
    import transformers as tf

    path = save_tiny_checkpoint(path, family, layers=layers, seed=seed)
    config = json.loads((path / "config.json").read_text())
    text = config["text_config"]
    text.update(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_attention_heads=HEADS, num_key_value_heads=1)
    text.pop("head_dim", None)
    if "mrope_section" in text.get("rope_parameters", {}):
        text["rope_parameters"]["mrope_section"] = MROPE
    if "out_hidden_size" in config.get("vision_config", {}):
        config["vision_config"]["out_hidden_size"] = HIDDEN
    cfg = tf.AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    model = tf.AutoModelForImageTextToText.from_config(cfg).eval()
    model.generation_config = tf.GenerationConfig.from_pretrained(path)
    model.save_pretrained(path)
    return path


def one_rank(model_config) -> None:
    """One process-wide tensor-parallel group of one under ``model_config`` (what vLLM's worker sets up before
    it builds a model), for tests that build vLLM's model classes directly; once a process."""
    import tempfile

    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized

    with set_current_vllm_config(VllmConfig(model_config=model_config)):
        if not model_parallel_is_initialized():
            init_distributed_environment(
                world_size=1, rank=0, local_rank=0, backend="gloo",
                distributed_init_method=f"file://{tempfile.mkdtemp()}/init",
            )
            initialize_model_parallel(1, 1)
