"""framepress.vllm.llava: vLLM's LLaVA-OneVision processor and model with framepress, on framepress's packaged
checkpoint (LLaVA-OneVision at toy size: 96 px frames of 8 px patches, 6x6 tokens a frame after pooling; a
384 px / 14 px override gives the real models' 14x14).

vLLM's environment only (``.venv-vllm``): the main suite skips this module.

- The processor's prompt replacement and the model's ``embed_multimodal`` run as vLLM calls them, on their own:
  counts against ``len(framepress.compress(...))``, embeddings against framepress.compress on vLLM's own pooled
  features, and against framepress's HF adapter (its HF side in the main environment,
  tests/vllm_llava_hf_reference.py, when there is one: transformers 5.23 there).
- ``processor.apply`` and the engine's batching, with the HF video processor replaced by a plain conversion.
- An engine (``vllm.LLM``, the CPU backend here) through the plugin, against framepress.apply on transformers'
  model in this environment: prompt length, tokens and log-probabilities.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("vllm")


pytest.importorskip("torchvision", exc_type=ImportError)  # vLLM's llava module imports it (README)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.model_executor.models.llava_onevision import (  # noqa: E402
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
)
from vllm.multimodal.inputs import MultiModalKwargsItems  # noqa: E402
from vllm.multimodal.processing import InputProcessingContext  # noqa: E402
from vllm.tokenizers import cached_tokenizer_from_config  # noqa: E402

import framepress  # noqa: E402
from framepress import budget, packaged, registry  # noqa: E402
from framepress.vllm import llava  # noqa: E402
from framepress.vllm import settings as fp_settings  # noqa: E402
from vllm_support import one_rank  # noqa: E402

#: the 14x14 grid of the real checkpoints (384 px frames, 14 px patches: 27x27 patches, pooled to 14x14)
REAL_SIZE = {"vision_config": {"image_size": 384, "patch_size": 14}}
#: every method vLLM serves on this family (all pre-LLM methods with a count the grid gives: those reading vision
#: signals read llava.SIGNALS, FastVID with "scores" standing in for its SigLIP-head saliency, as on HF)
METHODS = fp_settings.pre_llm_methods()
VIDEO_TOKEN = 251
#: the patch grid's side before the 2x2 pooling, by the side after it
UNPOOLED = {6: 12, 14: 27}


def served(method: str, retention: float | None, params=None) -> fp_settings.Settings:
    """The settings as this family's model reads them (its signals, and what the HF adapter hands each one)."""
    return llava.settings_of(types.SimpleNamespace(framepress={"method": method, "retention": retention,
                                                               "params": params or {}}))


def model_config(framepress_entry=None, **overrides) -> ModelConfig:
    hf_overrides = dict(overrides)
    if framepress_entry is not None:
        hf_overrides["framepress"] = framepress_entry
    return ModelConfig(model=str(packaged.FOLDER), hf_overrides=hf_overrides, dtype="float32")


def processor(config: ModelConfig, cls=None):
    """The processor vLLM builds for the model class (framepress's unless ``cls``)."""
    ctx = InputProcessingContext(config, cached_tokenizer_from_config(config))
    if cls is None:
        return llava.LlavaOnevision._processor_factory.build_processor(ctx)
    factory = LlavaOnevisionForConditionalGeneration._processor_factory
    return cls(factory.info(ctx), factory.dummy_inputs(factory.info(ctx)))


def placeholders(proc, frames: list[int]) -> list[list[int]]:
    """The processor's prompt replacement for videos of these frame counts, as vLLM applies it."""
    size = proc.info.get_hf_config().vision_config.image_size
    videos = [np.zeros((n, size, size, 3), dtype=np.uint8) for n in frames]
    items = proc.data_parser.parse_mm_data({"video": videos})
    updates = proc._get_prompt_updates(items, {}, MultiModalKwargsItems({}))
    (video,) = [u for u in updates if u.modality == "video"]
    assert video.target == [VIDEO_TOKEN]
    return [list(video.replacement(i)) for i in range(len(frames))]


def pooled_side(proc) -> int:
    vision = proc.info.get_hf_config().vision_config
    return math.ceil(vision.image_size // vision.patch_size / 2)


def compressed_count(method: str, retention: float, grid: tuple[int, int, int], params=None) -> int:
    """len(framepress.compress(...)) on random features of the video's LLM grid (the unpooled one for a method
    that replaces the pooling, at the HF patch's share)."""
    s = served(method, retention, params)
    T, h, w = grid
    if s.grid == "unpooled":
        H = W = UNPOOLED[h]
        x = torch.randn(T, H, W, 4, generator=torch.Generator().manual_seed(T * h))
        share = budget.tokens_for(retention, T * h * w) / (T * H * W)
        return len(framepress.compress(x, method, share, **s.params))
    g = torch.Generator().manual_seed(T * h)
    x = torch.randn(T, h, w, 4, generator=g)
    shapes = {"scores": (T, h, w), "keys": (T, h, w, 8)}
    signals = {param: torch.rand(shapes[name], generator=g) for param, name in s.signals.items()}
    return len(s.compress(x, signals))


# the processor: placeholder counts ---------------------------------------------------------------------------
def test_the_processor_is_registered_on_framepress_model_class():
    from vllm.model_executor.models.llava_onevision import (
        LlavaOnevisionDummyInputsBuilder,
        LlavaOnevisionProcessingInfo,
    )

    factory = llava.LlavaOnevision.__dict__["_processor_factory"]  # its own, not inherited from vLLM's class
    assert factory.processor is llava.LlavaOnevisionProcessor
    assert (factory.info, factory.dummy_inputs) == (LlavaOnevisionProcessingInfo, LlavaOnevisionDummyInputsBuilder)
    assert LlavaOnevisionForConditionalGeneration._processor_factory.processor is LlavaOnevisionMultiModalProcessor
    assert llava.SIGNALS.keys() == {"scores", "keys"} == llava.VISION_SIGNALS.keys()


GRIDS = [(T, side) for T in (1, 4, 8, 32) for side in (6, 14)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("retention", [0.05, 0.25, 0.5])
def test_placeholders_are_the_method_count_plus_the_newline(method, retention):
    for side in (6, 14):
        proc = processor(model_config({"method": method, "retention": retention}, **({} if side == 6 else REAL_SIZE)))
        assert pooled_side(proc) == side
        for T in [T for T, s in GRIDS if s == side and not (T == 32 and retention > 0.25)]:  # keep it quick
            try:
                expected = compressed_count(method, retention, (T, side, side))
            except ValueError:
                # a grid the method cannot serve at this retention: DyCoKe keeps a whole frame per window, frames
                # at least one frame. frames' count fails the same way, as the request is processed; DyCoKe's
                # does not (its error comes only as the encoder runs)
                assert method in ("dycoke", "frames")
                if method == "frames":
                    with pytest.raises(ValueError, match="less than one"):
                        placeholders(proc, [T])
                continue
            (tokens,) = placeholders(proc, [T])
            assert set(tokens) == {VIDEO_TOKEN}
            assert len(tokens) == expected + 1, (method, retention, T, side)


@pytest.mark.parametrize("method", ["frames", "pool"])
def test_step_methods_count_their_natural_setting(method):
    """A step method keeps the largest natural setting within the budget, not the budget itself."""
    proc = processor(model_config({"method": method, "retention": 0.3}, **REAL_SIZE))
    (tokens,) = placeholders(proc, [8])
    assert len(tokens) - 1 == compressed_count(method, 0.3, (8, 14, 14)) < budget.tokens_for(0.3, 8 * 196)


def test_several_videos_each_get_their_own_count():
    proc = processor(model_config({"method": "divprune", "retention": 0.1}, **REAL_SIZE))
    assert [len(t) for t in placeholders(proc, [4, 8, 1])] == [
        budget.tokens_for(0.1, T * 196) + 1 for T in (4, 8, 1)
    ]


@pytest.mark.parametrize("overrides", [{}, REAL_SIZE])
def test_without_a_framepress_entry_the_counts_are_vllms(overrides):
    config = model_config(None, **overrides)
    ours, theirs = processor(config), processor(config, cls=LlavaOnevisionMultiModalProcessor)
    assert ours.framepress is None
    frames = [1, 4, 8, 32]
    assert placeholders(ours, frames) == placeholders(theirs, frames)
    side = pooled_side(ours)
    assert [len(t) for t in placeholders(ours, frames)] == [T * side * side + 1 for T in frames]


# the model: compressed embeddings ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_context():
    """One process-wide tensor-parallel group of one (what vLLM's worker sets up before building a model)."""
    one_rank(model_config())
    return True


def build(config: ModelConfig, cls=llava.LlavaOnevision):
    """The model as vLLM's loader builds it: constructed under its config, the packaged weights loaded."""
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    vllm_config = VllmConfig(model_config=config)
    with set_current_vllm_config(vllm_config):
        model = cls(vllm_config=vllm_config).eval()
        weights = load_file(str(packaged.FOLDER / "model.safetensors"))
        if cls is not llava.LlavaOnevision:  # vLLM's own mapper does not know the packaged tower's names
            weights = {k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.")
                       else k: v for k, v in weights.items()}
        loaded = model.load_weights(weights.items())
        process_weights_after_loading(model, config, torch.device("cpu"))
    assert "image_newline" in loaded
    return model


def embed(model, pixels):
    with torch.inference_mode():
        return model.embed_multimodal(pixel_values_videos=pixels)


def pixels(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 3, 96, 96, generator=torch.Generator().manual_seed(seed))


def reference(model, video: torch.Tensor, method: str, retention: float, params=None) -> torch.Tensor:
    """What the compressed video must be: framepress.compress on vLLM's own pooled features (the unpooled ones
    for a method that replaces the pooling), the tokens in their representatives' raster order, then vLLM's
    newline (one, closing the video)."""
    s = served(method, retention, params)
    with torch.inference_mode():
        patches = model.multi_modal_projector(
            model.vision_tower(video, feature_select_strategy=model.config.vision_feature_select_strategy)
        )
        T, P, C = patches.shape
        side = math.isqrt(P)
        if s.grid == "unpooled":
            share = budget.tokens_for(retention, T * 36) / (T * P)
            kept = framepress.compress(patches.reshape(T, side, side, C), method, share, **s.params).features
        else:
            pooled = LlavaOnevisionForConditionalGeneration.apply_pooling(model, patches).reshape(T, 6, 6, C)
            computed = vision_signals(model, video)
            signals = {param: computed[name] for param, name in s.signals.items()}
            tokens = framepress.compress(pooled, method, retention, **s.params, **signals)
            rep = [int(t) * 36 + int(y) * 6 + int(x) for t, y, x in tokens.boxes[:, :3].tolist()]
            kept = tokens.features[sorted(range(len(rep)), key=rep.__getitem__)]
        return torch.cat([kept, model.image_newline[None]])


def vision_signals(model, video: torch.Tensor) -> dict[str, torch.Tensor]:
    """The last SigLIP layer's signals for the video, written out head by head: "scores" [T, 6, 6], the attention
    each patch receives (softmax(q k^T / sqrt(d)) per head, mean over heads and queries), and "keys"
    [T, 6, 6, d], the keys' mean over heads, each bilinearly pooled like the features."""
    layer = model.vision_tower.vision_model.encoder.layers[-1]
    seen = []
    hook = layer.self_attn.register_forward_pre_hook(lambda m, a, k: seen.append(k["hidden_states"]), with_kwargs=True)
    try:
        model.vision_tower(video, feature_select_strategy=model.config.vision_feature_select_strategy)
    finally:
        hook.remove()
    (hidden,) = seen
    attn = layer.self_attn
    q, k, _ = attn.qkv_proj(hidden)[0].chunk(3, dim=-1)
    T, P, _ = q.shape
    received, keys = torch.zeros(T, P), torch.zeros(T, P, attn.head_dim)
    for head in range(attn.num_heads):
        part = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
        logits = torch.einsum("tqd,tkd->tqk", q[..., part].float(), k[..., part].float()) / math.sqrt(attn.head_dim)
        received += logits.softmax(-1).mean(1) / attn.num_heads
        keys += k[..., part] / attn.num_heads
    pool = LlavaOnevisionForConditionalGeneration.apply_pooling
    return {"scores": pool(model, received[..., None]).reshape(T, 6, 6), "keys": pool(model, keys).reshape(T, 6, 6, -1)}


@pytest.fixture(scope="module")
def plain(engine_context):
    """The packaged model served without compression, by framepress's class and by vLLM's own."""
    return build(model_config()), build(model_config(), LlavaOnevisionForConditionalGeneration)


def test_without_a_framepress_entry_the_embeddings_are_vllms(plain):
    ours, theirs = plain
    assert ours.framepress is None
    video = torch.stack([pixels(4, 1), pixels(4, 2)])
    got, expected = embed(ours, video), embed(theirs, video)
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert g.shape == (4 * 36 + 1, 128)
        assert torch.equal(g, e)


CASES = [(m, r) for m in METHODS for r in (0.1, 0.3) if not (m in ("dycoke", "frames") and r < 0.25)]


@pytest.mark.parametrize("method,retention", CASES)
def test_embeddings_are_framepress_compress_then_the_newline(engine_context, plain, method, retention):
    model = build(model_config({"method": method, "retention": retention}))
    assert model.framepress.method == method
    video = pixels(8, 3)
    (got,) = embed(model, video[None])
    (placeholder,) = placeholders(processor(model_config({"method": method, "retention": retention})), [8])
    assert got.shape == (len(placeholder), 128)
    expected = reference(plain[1], video, method, retention)
    if registry.get(method).signals:  # the signals are summed in another order than the model's: to rounding
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(got, expected)
    assert torch.equal(got[-1], model.image_newline)


def test_videos_of_different_lengths_are_compressed_one_by_one(engine_context, plain):
    """vLLM hands videos of different frame counts as a list: each comes back as its own [N + 1, C]."""
    model = build(model_config({"method": "divprune", "retention": 0.2}))
    videos = [pixels(4, 4), pixels(8, 5), pixels(1, 6)]
    got = embed(model, videos)
    assert [g.shape for g in got] == [(budget.tokens_for(0.2, T * 36) + 1, 128) for T in (4, 8, 1)]
    for g, v in zip(got, videos):
        assert g.ndim == 2 and torch.equal(g, reference(plain[1], v, "divprune", 0.2))


def test_tokens_go_in_their_representatives_order():
    """A method whose output order is not raster order (here: reversed) is put back in raster order."""
    x = torch.randn(2, 3, 3, 4)
    tokens = framepress.compress(x, "random", 0.5)
    source = torch.where(tokens.source >= 0, len(tokens) - 1 - tokens.source, -1)
    flipped = framepress.Tokens.from_source(tokens.features.flip(0), tokens.boxes.flip(0), source, tokens.grid)
    assert torch.equal(llava.in_sequence_order(flipped), tokens.features)
    twice = framepress.Tokens(tokens.features[:2], tokens.boxes[[0, 0]], tokens.sizes[:2], tokens.source, tokens.grid)
    with pytest.raises(RuntimeError, match="share a representative"):
        llava.in_sequence_order(twice)


def test_an_unpooled_count_that_misses_the_placeholders_is_refused(monkeypatch):
    s = served("gridpool", 0.25)
    raw = torch.randn(4, 12, 12, 8)
    assert llava.compress_unpooled(s, raw, (4, 6, 6)).shape == (36, 8)
    real = fp_settings.compress
    monkeypatch.setattr(fp_settings, "compress", lambda x, *args, **kwargs: real(x[:1], *args, **kwargs))  # short
    with pytest.raises(RuntimeError, match="kept 9 tokens of a 4x12x12 unpooled video, but its prompt has 36"):
        llava.compress_unpooled(s, raw, (4, 6, 6))


# against framepress's HF adapter -----------------------------------------------------------------------------
MAIN_PYTHON = Path(os.environ.get("FRAMEPRESS_HF_PYTHON", Path(__file__).parents[1] / ".venv" / "bin" / "python"))


@pytest.mark.skipif(not MAIN_PYTHON.exists(), reason="no main environment (transformers' LLaVA-OneVision) here")
def test_embeddings_equal_framepress_hf_adapter(engine_context, tmp_path):
    """The same video through framepress.apply on transformers' LLaVA-OneVision (the packaged checkpoint):
    the video's block at the LLM's entry is what vLLM's model gives, tokens, order and newline."""
    # the params as vLLM serves them (an "official" method gets allocation="exact")
    cases = [{"method": m, "retention": r, "params": dict(served(m, r).params)}
             for m, r in CASES if r == 0.3]
    video = pixels(8, 7)
    torch.save(video, tmp_path / "pixels.pt")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = Path(__file__).with_name("vllm_llava_hf_reference.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(MAIN_PYTHON), str(script), str(tmp_path / "pixels.pt"), str(tmp_path / "cases.json"),
         str(tmp_path / "out.pt")], capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = torch.load(tmp_path / "out.pt")
    for case, hf in zip(cases, expected):
        model = build(model_config(case))
        (got,) = embed(model, video[None])
        assert got.shape == hf.shape, case
        torch.testing.assert_close(got, hf, rtol=1e-4, atol=1e-5, msg=lambda m: f"{case}: {m}")


# settings errors at start-up ---------------------------------------------------------------------------------
BAD = [
    ({"method": "sttm", "retention": 0.3}, ValueError, "framepress: sttm searches its thresholds"),
    ({"method": "fastv", "retention": 0.3}, ValueError, "framepress: fastv runs inside the LLM"),
    ({"method": "divprune", "retention": 2}, ValueError, r"retention must be in \(0, 1\]"),
    ({"method": "divprune"}, ValueError, "framepress: divprune needs a retention"),
    ({"method": "divprune", "retention": 0.1, "ratio": 3}, ValueError, "framepress: unknown key"),
    ('{"method": ', ValueError, "framepress: the setting is not valid JSON"),
    ({"method": "dycoke", "retention": 0.3, "params": {"allocation": "official"}}, ValueError, "allocation='exact'"),
]


@pytest.mark.parametrize("entry,error,message", BAD, ids=[str(b[0])[:40] for b in BAD])
def test_a_bad_setting_fails_at_construction(engine_context, entry, error, message):
    config = model_config(entry)
    with pytest.raises(error, match=message):
        processor(config)
    vllm_config = VllmConfig(model_config=config)
    with set_current_vllm_config(vllm_config), pytest.raises(error, match=message):
        llava.LlavaOnevision(vllm_config=vllm_config)


def test_every_pre_llm_method_serves_reading_what_the_hf_adapter_hands_it():
    for method in METHODS:
        s = llava.settings_of(types.SimpleNamespace(framepress={"method": method, "retention": 0.3}))
        assert set(s.signals.values()) <= set(llava.SIGNALS), method
    fastvid = llava.settings_of(types.SimpleNamespace(framepress={"method": "fastvid", "retention": 0.3}))
    assert fastvid.signals == {"scores": "scores"}  # no SigLIP head: its frame features take the default


def test_a_signal_the_family_does_not_compute_fails_at_construction(engine_context, monkeypatch):
    monkeypatch.setattr(llava, "SIGNALS", {"keys": llava.SIGNALS["keys"]})
    config = model_config({"method": "holitom", "retention": 0.3})
    message = "framepress: holitom reads the vision signal.s. scores, which framepress cannot compute in vLLM's LLaVA"
    with pytest.raises(ValueError, match=message):
        processor(config)
    vllm_config = VllmConfig(model_config=config)
    with set_current_vllm_config(vllm_config), pytest.raises(ValueError, match=message):
        llava.LlavaOnevision(vllm_config=vllm_config)


def test_an_unknown_method_param_fails_at_construction():
    with pytest.raises(Exception, match="nonsense"):
        processor(model_config({"method": "divprune", "retention": 0.1, "params": {"nonsense": 1}}))


# a property: counts over random grids and retentions ----------------------------------------------------------
@pytest.fixture(scope="module")
def infos():
    """vLLM's processing info for each frame side (6x6 and 14x14 tokens after pooling)."""
    return {6: processor(model_config()).info, 14: processor(model_config(None, **REAL_SIZE)).info}


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), frames=st.integers(1, 24), side=st.sampled_from([6, 14]),
       retention=st.floats(0.01, 0.6))
def test_property_counts_follow_the_method(infos, method, frames, side, retention):
    if side == 14:
        frames = min(frames, 8)  # DivPrune is quadratic in the tokens: keep the big grids small
    s = served(method, retention)
    info = infos[side]
    size = info.get_hf_config().vision_config.image_size
    try:
        expected = compressed_count(method, retention, (frames, side, side))
    except ValueError as exc:  # a grid the method cannot serve at this retention (DyCoke's, pool's, frames' floors)
        assert not registry.get(method).signals, exc
        with pytest.raises(ValueError):  # its count fails the same way, as the request is processed
            llava.num_video_tokens(info, s, image_width=size, image_height=size, num_frames=frames)
        return
    got = llava.num_video_tokens(info, s, image_width=size, image_height=size, num_frames=frames)
    assert got == expected + 1
    full = info.get_num_video_tokens(image_width=size, image_height=size, num_frames=frames)
    assert llava.num_video_tokens(info, None, image_width=size, image_height=size, num_frames=frames) == full
    assert got <= full


# vLLM's own processing, end to end (but for the HF video processor) ------------------------------------------
def test_a_request_processed_by_vllm_gets_placeholders_the_model_fills(engine_context, plain, monkeypatch):
    """processor.apply as vLLM's frontend calls it (prompt updates applied to the token ids, placeholder ranges
    found), then the engine's batching of the request's video items into embed_multimodal: each video's
    embeddings fill exactly its placeholder range. The HF video processor (torchvision's) is replaced by a plain
    conversion of the frames to pixels."""
    from transformers import BatchFeature
    from vllm.multimodal.processing import ProcessorInputs
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.utils import group_and_batch_mm_kwargs

    config = model_config({"method": "holitom", "retention": 0.25})
    proc = processor(config)

    def hf_main(mm_items, hf_kwargs):
        videos = mm_items.get_items("video", type(mm_items["video"]))
        return BatchFeature({"pixel_values_videos": [
            torch.from_numpy(np.asarray(videos.get(i))).permute(0, 3, 1, 2).float() / 127.5 - 1
            for i in range(videos.get_count())
        ]})

    monkeypatch.setattr(proc, "_apply_hf_processor_main", hf_main)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8) for n in (4, 8)]
    prompt = [1, 5, VIDEO_TOKEN, 6, VIDEO_TOKEN, 7, 2]
    result = proc.apply(
        ProcessorInputs(prompt=prompt, mm_data_items=proc.data_parser.parse_mm_data({"video": frames})),
        TimingContext(enabled=False),
    )
    ranges = result["mm_placeholders"]["video"]
    counts = [budget.tokens_for(0.25, n * 36) + 1 for n in (4, 8)]
    assert [r.length for r in ranges] == counts
    ids = result["prompt_token_ids"]
    assert len(ids) == len(prompt) - 2 + sum(counts)
    for r in ranges:
        assert ids[r.offset : r.offset + r.length] == [VIDEO_TOKEN] * r.length
    model = build(config)
    items = [("video", item) for item in result["mm_kwargs"]["video"]]
    embeddings = []
    for modality, n, batch in group_and_batch_mm_kwargs(items):
        embeddings += embed(model, batch["pixel_values_videos"])
    assert [e.shape for e in embeddings] == [(c, 128) for c in counts]
    for e, f in zip(embeddings, frames):
        video = torch.from_numpy(f).permute(0, 3, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(e, reference(plain[1], video, "holitom", 0.25), rtol=1e-5, atol=1e-6)


# a vLLM engine end to end ------------------------------------------------------------------------------------
ENGINE_PROMPT = "<|im_start|> user <video> what color <|im_end|> <|im_start|> assistant"


def servable_packaged(path: Path) -> Path:
    """framepress's packaged checkpoint with the processor settings vLLM's processing reads (96 px frames:
    12x12 patches, pooled to 6x6)."""
    import shutil

    shutil.copytree(packaged.FOLDER, path, dirs_exist_ok=True)
    size = {"height": 96, "width": 96}
    (path / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 144, "vision_feature_select_strategy": "full",
        "image_processor": {"image_processor_type": "LlavaOnevisionImageProcessor", "size": size,
                            "image_grid_pinpoints": [[96, 96]]},
        "video_processor": {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": size},
    }))
    return path


def hf_generate(folder: Path, frames: np.ndarray, method: str, retention: float, steps: int):
    """framepress's HF adapter on transformers' LLaVA-OneVision (the same checkpoint and HF processor): the
    compressed prompt's length, the greedy tokens and their log-probabilities."""
    import transformers as tf

    model = tf.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    inputs = tf.AutoProcessor.from_pretrained(folder)(text=ENGINE_PROMPT, videos=[frames], return_tensors="pt")
    s = served(method, retention)
    share = f"{retention * 100!r}%" if registry.get(method).inner else retention  # the pre-LLM part alone
    lengths = []
    with framepress.apply(model, method, share, **s.params):
        hook = model.model.language_model.register_forward_pre_hook(
            lambda m, a, k: lengths.append(k["inputs_embeds"].shape[1]), with_kwargs=True
        )
        try:
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
        finally:
            hook.remove()
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    return lengths[0], tokens, [torch.log_softmax(step[0].float(), -1) for step in out.logits]


@pytest.mark.parametrize("method,retention", [("holitom", 0.25), ("gridpool", 0.25)])
def test_an_engine_serves_compressed_videos_as_the_hf_adapter_answers(tmp_path, method, retention):
    """``LLM(..., hf_overrides={"framepress": ...})`` through the plugin (framepress.vllm.register, vLLM's
    general plugin): a video request's prompt is the compressed length, and every generated token and its
    log-probabilities equal framepress.apply on transformers' model."""
    pytest.importorskip("torchvision")  # the HF video processor vLLM calls
    from vllm import LLM, SamplingParams

    folder = servable_packaged(tmp_path / "ckpt")
    frames = np.random.default_rng(1).integers(0, 255, (8, 96, 96, 3), dtype=np.uint8)
    llm = LLM(
        model=str(folder), dtype="float32", enforce_eager=True, max_model_len=1024, max_num_seqs=2,
        gpu_memory_utilization=0.1, limit_mm_per_prompt={"video": 1, "image": 0},
        hf_overrides={"framepress": {"method": method, "retention": retention}},
    )
    try:
        (out,) = llm.generate({"prompt": ENGINE_PROMPT, "multi_modal_data": {"video": frames}},
                              SamplingParams(max_tokens=3, temperature=0, logprobs=3))
    finally:
        del llm
    assert len(out.prompt_token_ids) == 7 + budget.tokens_for(retention, 8 * 36) + 1  # 7 words, the video, newline
    length, tokens, logprobs = hf_generate(folder, frames, method, retention, steps=3)
    assert len(out.prompt_token_ids) == length
    assert list(out.outputs[0].token_ids) == tokens
    for step, chosen in enumerate(out.outputs[0].logprobs):
        for token, lp in chosen.items():
            assert abs(lp.logprob - float(logprobs[step][token])) < 2e-4, (step, token)


def test_vision_signals_under_tensor_parallelism_add_up_the_ranks_heads(monkeypatch):
    """Each rank holds some heads: its part of the mean over heads, summed across ranks (here: the all-reduce left
    out, the ranks' results added by hand), is the single-rank mean."""
    import types

    import vllm.distributed

    monkeypatch.setattr(vllm.distributed, "tensor_model_parallel_all_reduce", lambda x: x)
    heads, d, width = 4, 8, 16
    g = torch.Generator().manual_seed(0)
    wq, wk, wv = (torch.randn(heads * d, width, generator=g) for _ in range(3))
    hidden = torch.randn(5, 9, width, generator=g)

    def attention(rank_heads, tp_size):
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in rank_heads])
        w = torch.cat([wq[rows], wk[rows], wv[rows]])
        return types.SimpleNamespace(num_heads=heads, num_heads_per_partition=len(rank_heads), head_dim=d,
                                     tp_size=tp_size, scale=d**-0.5, qkv_proj=lambda h: (h @ w.T, None))

    single = attention(range(heads), 1)
    ranks = [attention([0, 1], 2), attention([2, 3], 2)]
    for name, fn in llava.VISION_SIGNALS.items():
        whole = fn(single, hidden)
        torch.testing.assert_close(sum(fn(r, hidden) for r in ranks), whole, rtol=1e-5, atol=1e-6, msg=name)
