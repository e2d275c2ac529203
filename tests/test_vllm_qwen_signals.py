"""Vision signals in vLLM's Qwen2.5-VL (framepress.vllm.qwen), in the vLLM environment (``.venv-vllm``, README).

- Settings: the methods that read the pseudo-CLS scores (unified, holitom, visionzip, fastvid) are served, each
  parameter reading exactly what framepress's HF adapter hands it on Qwen2.5-VL (FastVID's MAP-head signals:
  the scores stand in, the frame features are the method's default; VisionZip: no keys, it compares the features).
- The tower: the scores the plugin computes in vLLM's own vision tower (a hook on its last block, window order
  put back to raster, several videos in one tower call split by grid) equal framepress's HF adapter's for the
  same tiny checkpoint and pixels, and so do the merged features.
- The model: ``embed_multimodal`` on pixels gives the kept features the HF adapter gives the language model, per
  method; videos given as embeddings (no tower run) are refused for a method that reads the scores.
- End to end: a vLLM engine (CPU here) serves unified's pre-LLM part from pixels through vLLM's own processor:
  prompt length, generated tokens and log-probabilities equal the HF adapter's on the same pixels.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

import transformers as tf  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import framepress  # noqa: E402
from framepress import budget, patch, registry  # noqa: E402
from framepress.models.qwen_vl import Qwen2_5_VL as HFAdapter  # noqa: E402
from framepress.vllm import mrope, qwen  # noqa: E402
from framepress.vllm import settings as fsettings  # noqa: E402
from vllm_support import one_rank, servable_checkpoint  # noqa: E402

PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>what is in the video<|im_end|>\n<|im_start|>assistant\n"
SIGNAL_METHODS = ["unified", "holitom", "visionzip", "fastvid"]
#: (T, H, W) in patches, videos encoded in one tower call: windows of 2x2 merged cells, some padded (3x5, 1x3)
GRIDS = [[4, 8, 12], [2, 8, 4], [3, 6, 10], [1, 2, 6]]
PATCH = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return servable_checkpoint(tmp_path_factory.mktemp("qwen25_signals"), "qwen2_5_vl")


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    return tf.AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()


def pixels(grids, seed=0) -> torch.Tensor:
    return torch.randn(sum(t * h * w for t, h, w in grids), PATCH, generator=torch.Generator().manual_seed(seed))


def video(frames, height, width, seed=0):
    """Random frames and the metadata vLLM's processor takes with them (2 fps, no sampling)."""
    pixels = (np.random.default_rng(seed).random((frames, height, width, 3)) * 255).astype(np.uint8)
    meta = {"fps": 2.0, "frames_indices": list(range(frames)), "total_num_frames": frames, "duration": frames / 2,
            "do_sample_frames": False}
    return pixels, meta


def hf_scores(model, px, grids):
    """framepress's HF adapter's pseudo-CLS scores (one [T, h, w] a video) and the merged features of one tower run."""
    got = []
    hooks = HFAdapter(model).score_hooks(got.append)
    try:
        with torch.no_grad():
            out = model.model.visual(px, grid_thw=torch.tensor(grids))
    finally:
        for h in hooks:
            h.remove()
    return got, getattr(out, "pooler_output", out)


def served(method, retention):
    """The settings the plugin serves on Qwen2.5-VL (as ``qwen.settings_of`` reads them from the config)."""
    return fsettings.parse({"method": method, "retention": retention}, qwen.FAMILY, qwen.SIGNALS, qwen.HF_SIGNALS)


# --- settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(fsettings.pre_llm_methods()))
def test_each_parameter_reads_what_the_hf_adapter_hands_it(hf_model, method):
    """The settings' signals are framepress.patch._signals's on the HF adapter (no SigLIP head), for every method."""
    spec = registry.get(method)
    raw = {"method": method, "retention": 0.3} if spec.budget != "steps" else {"method": method}
    chosen = fsettings.parse(raw, qwen.FAMILY, qwen.SIGNALS, qwen.HF_SIGNALS)
    assert dict(chosen.signals) == patch._signals(HFAdapter(hf_model), spec, {}, None)


@pytest.mark.parametrize("method", SIGNAL_METHODS)
def test_signal_methods_are_served_on_qwen(method):
    chosen = fsettings.parse({"method": method, "retention": 0.3}, qwen.FAMILY, qwen.SIGNALS, qwen.HF_SIGNALS)
    assert dict(chosen.signals) == {"scores": "scores"}  # visionzip: no keys; fastvid: no MAP-head features


def test_without_the_hf_signals_the_registry_signals_are_read():
    """Without hf_signals (parse's default) every parameter reads the registry's signal, as before."""
    with pytest.raises(ValueError, match="vision signal"):
        fsettings.parse({"method": "fastvid", "retention": 0.3}, "LLaVA-OneVision", {"scores": "..."})
    with pytest.raises(ValueError, match="vision signal"):
        fsettings.parse({"method": "visionzip", "retention": 0.3}, "LLaVA-OneVision", {"scores": "..."})


def test_a_signal_the_family_cannot_give_is_refused():
    with pytest.raises(ValueError, match="cannot compute in vLLM's Qwen2.5-VL"):
        fsettings.parse({"method": "unified", "retention": 0.3}, qwen.FAMILY, {}, qwen.HF_SIGNALS)


@pytest.mark.parametrize("method", SIGNAL_METHODS)
def test_vllms_processor_lays_out_the_served_count(checkpoint, method):
    """vLLM's own processor, with the setting in the config, gives the video the count the model compresses to."""
    import vllm.plugins
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    vllm.plugins.load_general_plugins()
    setting = {"method": method, "retention": 0.3}
    processor = MULTIMODAL_REGISTRY.create_processor(
        ModelConfig(model=str(checkpoint), hf_overrides={"framepress": setting}, dtype="float32"))
    frames, meta = video(8, 112, 168)
    ids = tf.AutoTokenizer.from_pretrained(checkpoint)(PROMPT, add_special_tokens=False).input_ids
    out = processor.apply(ProcessorInputs(ids, processor.info.parse_mm_data({"video": [(frames, meta)]})),
                          TimingContext())
    grid = qwen.llm_grid(out["mm_kwargs"]["video"][0]["video_grid_thw"].data.tolist(), 2)
    count = out["prompt_token_ids"].count(processor.info.get_hf_config().video_token_id)
    assert count == served(method, 0.3).count(grid) == budget.tokens_for(0.3, grid[0] * grid[1] * grid[2])


# --- vLLM's vision tower ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_context(checkpoint):
    """One process-wide tensor-parallel group of one (what vLLM's worker sets up before building a model)."""
    from vllm.config import ModelConfig

    one_rank(ModelConfig(model=str(checkpoint), dtype="float32"))
    return True


def build(checkpoint, setting, **config):
    """framepress's vLLM model as vLLM's loader builds it: constructed under its config, the weights loaded."""
    from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    model_config = ModelConfig(model=str(checkpoint), dtype="float32", hf_overrides={"framepress": setting})
    vllm_config = VllmConfig(model_config=model_config, **config)
    with set_current_vllm_config(vllm_config):
        model = qwen.Qwen2_5_VL(vllm_config=vllm_config).eval()
        model.load_weights(load_file(str(checkpoint / "model.safetensors")).items())
        process_weights_after_loading(model, model_config, torch.device("cpu"))
    return model, vllm_config


@pytest.fixture(scope="module")
def vllm_model(engine_context, checkpoint):
    return build(checkpoint, {"method": "unified", "retention": 0.3})


def test_the_window_order_is_the_hf_adapters(vllm_model, hf_model):
    model, _ = vllm_model
    assert torch.equal(qwen.window_index(model.visual, GRIDS), HFAdapter(hf_model).window_index(torch.tensor(GRIDS)))


def test_tower_scores_equal_the_hf_adapters(vllm_model, hf_model):
    """Several videos in one vLLM tower call: per video, the scores (and the merged features) of the HF adapter."""
    model, vllm_config = vllm_model
    from vllm.config import set_current_vllm_config

    px = pixels(GRIDS)
    expected, hf_features = hf_scores(hf_model, px, GRIDS)
    seen = []
    hook = model.visual.blocks[-1].attn.register_forward_pre_hook(
        lambda m, a, k: seen.append(qwen.tower_scores(model.visual, m, a, k, GRIDS)), with_kwargs=True)
    try:
        with set_current_vllm_config(vllm_config), torch.inference_mode():
            features = model.visual(px, grid_thw=GRIDS)
    finally:
        hook.remove()
    torch.testing.assert_close(features, hf_features, rtol=0, atol=1e-6)
    got = qwen.split_videos(seen[0], GRIDS, 2)
    assert [tuple(g.shape) for g in got] == [(t, h // 2, w // 2) for t, h, w in GRIDS]
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=0, atol=1e-7)
        torch.testing.assert_close(g.sum((1, 2)), torch.ones(g.shape[0]))  # a softmax within each frame


# --- the model: kept features ----------------------------------------------------------------------------------


def hf_kept(model, px, grid, method, retention, params):
    """The video rows the language model receives from framepress's HF adapter (pre-LLM part alone, "R%")."""
    T, H, W = grid
    n = T * (H // 2) * (W // 2)
    video = model.config.video_token_id
    ids = torch.tensor([[1, 252] + [video] * n + [253, 5]])
    seen = []
    with framepress.apply(model, method, f"{retention * 100:g}%", **params):
        hook = model.model.language_model.register_forward_pre_hook(
            lambda m, a, k: seen.append(k["inputs_embeds"]), with_kwargs=True)
        try:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == video).int() * 2,
                      pixel_values_videos=px, video_grid_thw=torch.tensor([grid]),
                      second_per_grid_ts=torch.tensor([1.0]))
        finally:
            hook.remove()
    (embeds,) = seen
    return embeds[0, 2:-2]  # the compressed video between vision_start and vision_end


@pytest.mark.parametrize("method", SIGNAL_METHODS)
def test_embed_multimodal_keeps_the_hf_adapters_tokens(vllm_model, hf_model, method):
    model, vllm_config = vllm_model
    from vllm.config import set_current_vllm_config

    grids = GRIDS[:2]
    retention = 0.3
    params = {"allocation": "exact"} if registry.get(method).budget == "official" else {}
    model.framepress = served(method, retention)
    try:
        px = pixels(grids, seed=1)
        with set_current_vllm_config(vllm_config), torch.inference_mode():
            out = model.embed_multimodal(pixel_values_videos=px, video_grid_thw=torch.tensor(grids),
                                         second_per_grid_ts=torch.tensor([1.0, 1.0]))
    finally:
        model.framepress = qwen.settings_of(model.config)
    assert len(out) == len(grids)
    start = 0
    for rows, grid in zip(out, grids):
        size = grid[0] * grid[1] * grid[2]
        features, _, _ = mrope.detach(rows)
        expected = hf_kept(hf_model, px[start : start + size], grid, method, retention, params)
        start += size
        assert features.shape == expected.shape
        assert features.shape[0] == served(method, retention).count(qwen.llm_grid(grid, 2))
        torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_video_embeds_cannot_give_the_scores(vllm_model):
    model, vllm_config = vllm_model
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(vllm_config), torch.inference_mode(), pytest.raises(ValueError, match="video_embeds"):
        model.embed_multimodal(video_embeds=torch.randn(24, 128), video_grid_thw=torch.tensor([[4, 4, 6]]),
                               second_per_grid_ts=torch.tensor([1.0]))


def test_without_signals_the_tower_is_not_hooked(vllm_model):
    """A signal-free method reads no scores: no hook runs, and video_embeds still compress."""
    model, vllm_config = vllm_model
    from vllm.config import set_current_vllm_config

    model.framepress = served("random", 0.5)
    try:
        with set_current_vllm_config(vllm_config), torch.inference_mode():
            (rows,) = model.embed_multimodal(video_embeds=torch.randn(12, 128),
                                             video_grid_thw=torch.tensor([[2, 4, 6]]),
                                             second_per_grid_ts=torch.tensor([1.0]))
    finally:
        model.framepress = qwen.settings_of(model.config)
    assert rows.shape[0] == 6


def test_a_data_parallel_encoder_is_refused_for_signal_methods():
    chosen = fsettings.parse({"method": "unified", "retention": 0.3}, qwen.FAMILY, qwen.SIGNALS, qwen.HF_SIGNALS)
    with pytest.raises(ValueError, match="mm-encoder-tp-mode data"):
        qwen.refuse_signal_paths(chosen, None, True)
    qwen.refuse_signal_paths(fsettings.parse({"method": "random", "retention": 0.3}), None, True)


# --- a vLLM engine end to end, from pixels ---------------------------------------------------------------------


def test_an_engine_serves_unified_from_pixels_as_the_hf_adapter_answers(checkpoint, hf_model):
    """vLLM's processor turns the frames into pixels; its engine encodes them (the scores from its tower) and
    compresses with unified's pre-LLM part: the HF adapter, given the same pixels, answers the same."""
    from vllm import LLM, SamplingParams
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    import vllm.plugins

    retention = 0.3
    frames, meta = video(8, 112, 168)
    tokenizer = tf.AutoTokenizer.from_pretrained(checkpoint)
    text = tokenizer(PROMPT, add_special_tokens=False).input_ids
    # the pixels vLLM's processor makes of the frames (what its engine encodes), for the HF reference
    vllm.plugins.load_general_plugins()
    processor = MULTIMODAL_REGISTRY.create_processor(ModelConfig(model=str(checkpoint), dtype="float32"))
    processed = processor.apply(ProcessorInputs(text, processor.info.parse_mm_data({"video": [(frames, meta)]})),
                                TimingContext())
    item = processed["mm_kwargs"]["video"][0]
    px, grid = item["pixel_values_videos"].data, item["video_grid_thw"].data.tolist()
    second = float(item["second_per_grid_ts"].data.reshape(-1)[0])
    T, h, w = qwen.llm_grid(grid, 2)
    count = fsettings.parse({"method": "unified", "retention": retention}).count((T, h, w))

    pad = hf_model.config.video_token_id
    at = text.index(pad)
    ids = torch.tensor([text[:at] + [pad] * (T * h * w) + text[at + 1 :]])
    with framepress.apply(hf_model, "unified", f"{retention * 100:g}%"):
        out = hf_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == pad).int() * 2,
            pixel_values_videos=px, video_grid_thw=torch.tensor([grid]), second_per_grid_ts=torch.tensor([second]),
            max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True,
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    logprobs = [torch.log_softmax(s[0].float(), -1) for s in out.scores]

    llm = LLM(
        model=str(checkpoint), dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=2,
        gpu_memory_utilization=0.1, limit_mm_per_prompt={"video": 1, "image": 0},
        hf_overrides={"framepress": {"method": "unified", "retention": retention}},
    )
    try:
        (result,) = llm.generate({"prompt": PROMPT, "multi_modal_data": {"video": [(frames, meta)]}},
                                 SamplingParams(max_tokens=3, temperature=0, logprobs=3))
    finally:
        del llm
    assert len(result.prompt_token_ids) == len(text) - 1 + count
    assert list(result.outputs[0].token_ids) == tokens
    for step, chosen in enumerate(result.outputs[0].logprobs):
        for token, lp in chosen.items():
            assert abs(lp.logprob - float(logprobs[step][token])) < 2e-4, (step, token)
