"""Families whose compression framepress refuses in vLLM: with a ``framepress`` entry they stop start-up with the
reason, so that a setting is never silently ignored; without one they are vLLM's own classes."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

QWEN3_VL = (
    "framepress: Qwen3-VL is not supported in vLLM yet. It puts each frame's tokens after that frame's timestamp, "
    "so the prompt must know every frame's count before the encoder runs, while framepress's methods choose tokens "
    "across frames (vLLM's EVS moves them all into the first frame's run, which changes their order against the "
    "timestamps). Compress Qwen3-VL with framepress.apply on transformers, or serve Qwen2.5-VL or LLaVA-OneVision"
)


@MULTIMODAL_REGISTRY.register_processor(
    Qwen3VLMultiModalProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class Qwen3VL(Qwen3VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        if getattr(vllm_config.model_config.hf_config, "framepress", None) is not None:
            raise ValueError(QWEN3_VL)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
