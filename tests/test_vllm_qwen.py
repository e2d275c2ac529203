"""framepress in vLLM's Qwen2.5-VL (framepress.vllm.qwen), in the vLLM environment (``.venv-vllm``, README).

- Positions: :mod:`framepress.vllm.mrope` gives a compressed prompt the positions framepress's HF adapter gives it
  (captured at the language model's entry, prefill and decode), for several grids, frame rates and methods.
- Placeholders: vLLM's own processor, built for a tiny checkpoint with a ``framepress`` setting, lays out
  ``len(framepress.compress(...))`` video tokens for every pre-LLM method and grid.
- End to end: a vLLM engine (the CPU backend here; a GPU where vLLM has one) serves the tiny checkpoint with
  framepress, from video embeddings, and its prompt length and the log-probabilities of every generated token
  equal framepress's HF adapter on the same model and features.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

import transformers as tf  # noqa: E402
from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

import framepress  # noqa: E402
from framepress.vllm import mrope  # noqa: E402
from framepress.vllm import settings as fsettings  # noqa: E402
from vllm_support import servable_checkpoint  # noqa: E402

PROMPT = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>what is in the video<|im_end|>\n"
    "<|im_start|>assistant\n"
)
#: methods that need no vision signal, with a setting each (those reading the scores: test_vllm_qwen_signals.py)
METHODS = {
    "random": {"retention": 0.25},
    "divprune": {"retention": 0.3},
    "pool": {"params": {"stride": 2}},
    "frames": {"retention": 0.5},
    "prunevid": {"retention": 0.4},
    "dycoke": {"retention": 0.6},  # it keeps every 4-frame window's first frame whole
    "framefusion": {"retention": 0.3},
    "gridpool": {"retention": 0.3},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return servable_checkpoint(tmp_path_factory.mktemp("qwen25"), "qwen2_5_vl")


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    return tf.AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return tf.AutoTokenizer.from_pretrained(checkpoint)


def merged_features(model, grid, seed=0):
    """Random merged video features for a video of LLM grid (T, h, w), as the vision tower would give them."""
    T, h, w = grid
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T * h * w, model.config.text_config.hidden_size, generator=g)


def hf_run(model, tokenizer, embeds, grid, second, method, setting, steps=3):
    """framepress's HF adapter on ``model`` with the video's merged features ``embeds``: the language model's
    position ids at every forward (after framepress), its inputs' embeddings at prefill, the greedy tokens and
    their log-probabilities."""
    T, h, w = grid
    merge = model.config.vision_config.spatial_merge_size
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    at = ids.index(model.config.video_token_id)
    ids = ids[:at] + [model.config.video_token_id] * (T * h * w) + ids[at + 1 :]
    input_ids = torch.tensor([ids])
    kinds = (input_ids == model.config.video_token_id).int() * 2
    visual = model.model.visual

    def fake_visual(pixel_values, grid_thw=None, **kwargs):
        return tf.modeling_outputs.BaseModelOutputWithPooling(last_hidden_state=embeds, pooler_output=embeds)

    seen = []
    hook = None
    original = visual.forward
    visual.forward = fake_visual
    try:
        with framepress.apply(model, method, setting.get("retention"), **setting.get("params", {})):
            hook = model.model.language_model.register_forward_pre_hook(
                lambda m, a, k: seen.append((k["position_ids"].clone(), k["inputs_embeds"].clone())), with_kwargs=True
            )
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), mm_token_type_ids=kinds,
                pixel_values_videos=torch.zeros(T * h * w * merge * merge, 1),
                video_grid_thw=torch.tensor([[T, h * merge, w * merge]]),
                second_per_grid_ts=torch.tensor([second]), max_new_tokens=steps, do_sample=False,
                output_scores=True, return_dict_in_generate=True,
            )
    finally:
        visual.forward = original
        if hook is not None:
            hook.remove()
    tokens = out.sequences[0, input_ids.shape[1] :].tolist()
    logprobs = [torch.log_softmax(s[0].float(), -1) for s in out.scores]
    return seen, tokens, logprobs


def ours(model, tokenizer, embeds, grid, second, method, setting):
    """What the vLLM plugin computes for the same prompt: token ids, prefill positions, the delta, the video rows."""
    chosen = fsettings.parse({"method": method, **setting})
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    at = ids.index(model.config.video_token_id)
    count = chosen.count(grid)
    ids = ids[:at] + [model.config.video_token_id] * count + ids[at + 1 :]
    interval = mrope.time_interval(model.config.vision_config.tokens_per_second, second)
    positions, delta = mrope.prompt_positions(len(ids), [mrope.Media(at, count, grid, interval)])
    from framepress.vllm.qwen import compress_video

    rows = compress_video(chosen, embeds, grid, interval)
    features, relative, compressed = mrope.detach(rows)
    media_ids = (model.config.image_token_id, model.config.video_token_id)
    positions = mrope.rewrite(positions, torch.tensor(ids), relative, compressed, 0, media_ids)
    return ids, at, positions, delta, features


CASES = [((4, 2, 3), 1.0), ((3, 3, 2), 0.5), ((2, 4, 4), 2.0), ((8, 2, 2), 0.25)]


@pytest.mark.parametrize("grid,second", CASES)
@pytest.mark.parametrize("method", ["random", "divprune", "pool"])
def test_positions_and_features_equal_the_hf_adapter(hf_model, tokenizer, grid, second, method):
    embeds = merged_features(hf_model, grid)
    seen, _, _ = hf_run(hf_model, tokenizer, embeds, grid, second, method, METHODS[method])
    ids, at, positions, delta, features = ours(hf_model, tokenizer, embeds, grid, second, method, METHODS[method])
    prefill_pos, prefill_embeds = seen[0]
    assert prefill_pos.shape[-1] == len(ids)
    assert torch.equal(prefill_pos[-3:, 0], positions), "prefill positions differ from the HF adapter's"
    video = torch.tensor(ids) == hf_model.config.video_token_id
    assert torch.allclose(prefill_embeds[0, video], features, atol=1e-6), "kept features or their order differ"
    for step, (pos, _) in enumerate(seen[1:]):
        assert pos[-3:, 0, 0].tolist() == [len(ids) + step + delta] * 3, "decode positions differ"


def test_generated_tokens_follow_the_last_prompt_position_as_generate_does(hf_model, tokenizer):
    """A slow frame rate puts the video's last temporal position past every text position: ``generate`` still
    continues one past the prompt's last token, and so does the plugin."""
    grid, second = (8, 2, 2), 4.0
    embeds = merged_features(hf_model, grid)
    setting = {"retention": 0.5}
    ids, at, positions, delta, _ = ours(hf_model, tokenizer, embeds, grid, second, "random", setting)
    assert int(positions.max()) > int(positions[:, -1].max()), "the case must have a video position past the text"
    seen, _, _ = hf_run(hf_model, tokenizer, embeds, grid, second, "random", setting)
    assert [s[0][-3:, 0, 0].tolist() for s in seen[1:]] == [[len(ids) + k + delta] * 3 for k in range(2)]


def test_text_after_the_video_resumes_where_hf_resumes():
    """HF resumes at the video's start + max(h, w), whatever its temporal positions (vLLM's own unpruned rule
    resumes past the largest; EVS at start + w)."""
    positions, delta = mrope.prompt_positions(2 + 24 + 8, [mrope.Media(2, 24, (4, 2, 3), 2.0)])
    assert positions[:, 26].tolist() == [2 + 3] * 3  # start 2, then max(h, w) = 3
    assert positions[0, 2:26].max() == 2 + 6  # the temporal row reaches 2 + (4 - 1) * 2
    assert delta == (2 + 3 + 7) + 1 - 34  # one past the last token's position


@given(
    T=st.integers(1, 12), h=st.integers(1, 8), w=st.integers(1, 8), second=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.3]),
    retention=st.floats(0.01, 1.0), seed=st.integers(0, 5),
)
@hsettings(max_examples=40, deadline=None)
def test_rewrite_places_every_kept_token_at_its_own_grid_position(T, h, w, second, retention, seed):
    grid = (T, h, w)
    chosen = fsettings.parse({"method": "random", "retention": retention, "params": {"seed": seed}})
    interval = mrope.time_interval(2, second)
    embeds = torch.randn(T * h * w, 8, generator=torch.Generator().manual_seed(seed))
    from framepress.vllm.qwen import compress_video

    rows = compress_video(chosen, embeds, grid, interval)
    count = chosen.count(grid)
    assert rows.shape == (count, 8 + mrope.CHANNELS)
    ids = [1, 252] + [251] * count + [253, 5, 6]
    positions, _ = mrope.prompt_positions(len(ids), [mrope.Media(2, count, grid, interval)])
    _, relative, compressed = mrope.detach(rows)
    out = mrope.rewrite(positions, torch.tensor(ids), relative, compressed, 0, (250, 251))
    full = mrope.grid_positions(grid, interval) + 2
    source = chosen.compress(embeds.reshape(T, h, w, 8)).source
    kept = torch.nonzero(source >= 0).squeeze(1)
    assert torch.equal(out[:, 2 : 2 + count], full[:, kept])
    assert torch.equal(out[:, 2 + count :], positions[:, 2 + count :])


def test_rewrite_in_chunks_equals_rewrite_at_once():
    """Chunked prefill hands the runner a video's rows in pieces: the positions come out the same."""
    grid, interval = (4, 3, 3), 2.0
    chosen = fsettings.parse({"method": "random", "retention": 0.5})
    from framepress.vllm.qwen import compress_video

    rows = compress_video(chosen, torch.randn(36, 8), grid, interval)
    count = rows.shape[0]
    ids = torch.tensor([1, 252] + [251] * count + [253, 5])
    positions, _ = mrope.prompt_positions(len(ids), [mrope.Media(2, count, grid, interval)])
    _, relative, compressed = mrope.detach(rows)
    once = mrope.rewrite(positions, ids, relative, compressed, 0, (250, 251))
    cut = 7
    first = mrope.rewrite(positions, ids, relative[: cut - 2], compressed[: cut - 2], 0, (250, 251))
    both = mrope.rewrite(first, ids, relative[cut - 2 :], compressed[cut - 2 :], cut, (250, 251))
    assert torch.equal(once, both)


def test_positions_survive_bfloat16_embeddings():
    """The position channels ride on the embeddings' dtype: bfloat16 holds integers exactly only to 256."""
    rel = torch.tensor([[1000, 3, 70], [65535, 0, 255]])
    back = mrope.detach(mrope.attach(torch.zeros(2, 4, dtype=torch.bfloat16), rel))[1]
    assert torch.equal(back, rel)
    with pytest.raises(ValueError, match="exceeds"):
        mrope.attach(torch.zeros(1, 4), torch.tensor([[65536, 0, 0]]))


# --- vLLM's own processor -----------------------------------------------------------------------------------


def vllm_processor(checkpoint, framepress_setting):
    import vllm.plugins
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    vllm.plugins.load_general_plugins()
    overrides = {} if framepress_setting is None else {"framepress": framepress_setting}
    config = ModelConfig(model=str(checkpoint), hf_overrides=overrides, dtype="float32")
    return MULTIMODAL_REGISTRY.create_processor(config)


def placeholders(processor, tokenizer, frames, height, width):
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    video = (np.random.default_rng(0).random((frames, height, width, 3)) * 255).astype(np.uint8)
    meta = {"fps": 2.0, "frames_indices": list(range(frames)), "total_num_frames": frames, "duration": frames / 2,
            "do_sample_frames": False}
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    items = processor.info.parse_mm_data({"video": [(video, meta)]})
    out = processor.apply(ProcessorInputs(ids, items), TimingContext())
    grid = out["mm_kwargs"]["video"][0]["video_grid_thw"].data.tolist()
    return out["prompt_token_ids"].count(processor.info.get_hf_config().video_token_id), grid


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_processor_lays_out_the_compressed_count(checkpoint, tokenizer, method):
    processor = vllm_processor(checkpoint, {"method": method, **METHODS[method]})
    assert type(processor).__module__ == "framepress.vllm.qwen"
    for frames, height, width in [(8, 56, 84), (4, 112, 56), (12, 56, 56)]:
        count, (T, H, W) = placeholders(processor, tokenizer, frames, height, width)
        x = torch.randn(T, H // 2, W // 2, 16)
        params = dict(METHODS[method].get("params", {}))
        if framepress.registry.get(method).budget == "official":
            params["allocation"] = "exact"  # what the plugin serves
        tokens = framepress.compress(x, method, METHODS[method].get("retention"), **params)
        assert count == len(tokens), (method, frames, height, width)


def test_without_a_setting_the_processor_is_vllms_own(checkpoint, tokenizer):
    count, (T, H, W) = placeholders(vllm_processor(checkpoint, None), tokenizer, 8, 56, 84)
    assert count == T * (H // 2) * (W // 2)


@pytest.mark.parametrize(
    "setting,message",
    [
        ({"method": "fastv", "retention": 0.5}, "runs inside the LLM"),
        ({"method": "sttm", "retention": 0.5}, "searches its thresholds"),
        ({"method": "divprune"}, "needs a retention"),
        ({"method": "divprune", "retention": 1.5}, "retention must be in"),
        ({"method": "holitom", "retention": 0.2, "params": {"allocation": "official"}}, "allocation='exact'"),
        ({"method": "divprune", "retention": 0.2, "extra": 1}, "unknown key"),
        ({"method": "pool", "params": {"stride": 0}}, "stride"),
        ({"method": "nope", "retention": 0.2}, "unknown method"),
    ],
)
def test_bad_settings_stop_start_up_with_framepress_messages(checkpoint, tokenizer, setting, message):
    with pytest.raises((ValueError, TypeError), match=message):
        placeholders(vllm_processor(checkpoint, setting), tokenizer, 4, 56, 56)


def test_a_grid_the_method_cannot_serve_fails_in_prompt_processing(checkpoint, tokenizer):
    """DyCoke keeps every 4-frame window's first frame whole: a request below that fails while its prompt is
    processed (vLLM rejects that request) with DyCoke's own message, not later inside the encoder."""
    processor = vllm_processor(checkpoint, {"method": "dycoke", "retention": 0.1})
    with pytest.raises(ValueError, match="first frame of every 4-frame window"):
        placeholders(processor, tokenizer, 8, 56, 56)


def test_the_entry_point_registers_framepress_classes():
    from importlib.metadata import entry_points

    import vllm.plugins
    from vllm import ModelRegistry

    (point,) = [p for p in entry_points(group="vllm.general_plugins") if p.name == "framepress"]
    assert point.value == "framepress.vllm:register"
    vllm.plugins.load_general_plugins()
    for arch, target in framepress.vllm.ARCHITECTURES.items():
        cls = ModelRegistry._try_load_model_cls(arch)  # what vLLM builds for a checkpoint of this architecture
        assert cls is not None and f"{cls.__module__}:{cls.__name__}" == target


# --- a vLLM engine end to end --------------------------------------------------------------------------------


ENGINE_CASES = [("divprune", METHODS["divprune"]), ("pool", METHODS["pool"])]


@pytest.mark.parametrize("method,setting", ENGINE_CASES)
def test_an_engine_serves_compressed_videos_as_the_hf_adapter_answers(checkpoint, hf_model, tokenizer, method, setting):
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(checkpoint), dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=2,
        gpu_memory_utilization=0.1, enable_mm_embeds=True, limit_mm_per_prompt={"video": 1, "image": 0},
        hf_overrides={"framepress": {"method": method, **setting}},
    )
    try:
        for grid, second in [((4, 2, 3), 1.0), ((3, 4, 2), 0.5)]:
            T, h, w = grid
            embeds = merged_features(hf_model, grid, seed=T)
            data = {"video_embeds": embeds, "video_grid_thw": torch.tensor([[T, 2 * h, 2 * w]]),
                    "second_per_grid_ts": torch.tensor([second])}
            (out,) = llm.generate({"prompt": PROMPT, "multi_modal_data": {"video": data}},
                                  SamplingParams(max_tokens=3, temperature=0, logprobs=3))
            _, tokens, logprobs = hf_run(hf_model, tokenizer, embeds, grid, second, method, setting)
            ids, *_ = ours(hf_model, tokenizer, embeds, grid, second, method, setting)
            assert len(out.prompt_token_ids) == len(ids)
            assert list(out.outputs[0].token_ids) == tokens
            for step, chosen in enumerate(out.outputs[0].logprobs):
                for token, lp in chosen.items():
                    assert abs(lp.logprob - float(logprobs[step][token])) < 2e-4, (step, token)
    finally:
        del llm
