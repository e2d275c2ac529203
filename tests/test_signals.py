"""Vision signals computed inside a model for the methods that declare them (registry ``signals``): VisionZip's
keys and FastVID's SigLIP attention-pooling head signals, on tiny random models saved and loaded offline."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import framepress
from framepress import registry
from framepress.models.tiny import random_frames, tiny_model, video_inputs

transformers = pytest.importorskip("transformers")


@pytest.fixture
def spy():
    """spy(name) -> list of the params each call of the registered method ``name`` got (the method still runs)."""
    saved, seen = {}, {}

    def install(name):
        method = registry.get(name)
        saved[name] = method
        seen[name] = []

        def recording(x, budget, **params):
            seen[name].append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in params.items()})
            return method.fn(x, budget, **params)

        registry._METHODS[name] = dataclasses.replace(method, fn=recording)
        return seen[name]

    yield install
    registry._METHODS.update(saved)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    tiny_model("llava_onevision").save_pretrained(path)
    return transformers.AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()


def siglip_checkpoint(path, hidden_size=32, use_head=True):
    """A tiny SigLIP vision checkpoint (random weights, with its MAP head) matching the tiny LLaVA's tower."""
    config = transformers.SiglipVisionConfig(
        hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=56,
        patch_size=7, vision_use_head=use_head,
    )
    torch.manual_seed(1)
    transformers.SiglipVisionModel(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    return siglip_checkpoint(tmp_path_factory.mktemp("siglip"))


def run(model, n=2, frames=4):
    inputs = video_inputs(model, [random_frames(model, frames, seed=s) for s in range(n)])
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    return inputs


def projector_input(model, inputs):
    """[videos, F, P, C]: the tower's patches feeding the projector, and the tower's hidden states."""
    pixels = inputs["pixel_values_videos"]
    with torch.no_grad():
        out = model.model.vision_tower(pixels.flatten(0, 1), output_hidden_states=True)
    return out.hidden_states, pixels.shape[:2]


def pooled(model, x, videos, frames):
    """The family's 2x2 pooling of [videos*F, P, C], as [videos, F, side, side, C]."""
    out = type(model.model).apply_pooling(model.model, x)
    side = int(out.shape[1] ** 0.5)
    return out.reshape(videos, frames, side, side, -1)


def test_the_registry_says_which_signals_each_method_takes():
    assert registry.get("visionzip").signals == {"scores": "scores", "metric": "keys"}
    assert registry.get("fastvid").signals == {"scores": "head_attention", "frame_features": "head"}
    assert registry.get("holitom").signals == {"scores": "scores"}
    assert registry.get("sttm").signals == {}


def test_visionzip_gets_the_keys_of_the_layer_feeding_the_projector(llava, spy):
    """HoliTom's VisionZip port: that layer's keys (k_proj of its normalized input), mean over heads, pooled like
    the features; the scores are still the attention each token receives there."""
    seen = spy("visionzip")
    with framepress.apply(llava, "visionzip", retention=0.5):
        inputs = run(llava)
    hidden, (videos, frames) = projector_input(llava, inputs)
    layer = llava.model.vision_tower.encoder.layers[-1]  # vision_feature_layer = -1
    with torch.no_grad():
        keys = layer.self_attn.k_proj(layer.layer_norm1(hidden[-2]))
        keys = keys.view(*keys.shape[:2], layer.self_attn.num_heads, -1).mean(2)
        want = pooled(llava, keys, videos, frames)
    assert len(seen) == videos
    for got, expected in zip(seen, want):
        assert got["metric"].shape == expected.shape == (frames, 4, 4, 16)
        torch.testing.assert_close(got["metric"], expected, rtol=1e-5, atol=1e-6)
        assert got["scores"].shape == (frames, 4, 4)


def test_fastvid_gets_the_named_siglip_heads_output_and_probe_attention(llava, spy, head_dir, monkeypatch):
    """FastVID's official signals: SigLIP's post-layernorm and MAP head on the patches feeding the projector; the
    pooled output per frame is frame_features, the probe's attention (mean over heads, pooled like the features)
    the saliency. Only the head weights are read, offline from a local folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = spy("fastvid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with framepress.apply(llava, "fastvid", retention=0.5, min_segments=2, siglip_head=str(head_dir)) as handle:
            inputs = run(llava)
            head = handle.stages[0].head
    assert {n.split(".")[0] for n, _ in head.named_parameters()} == {"post_layernorm", "head"}
    reference = transformers.SiglipVisionModel.from_pretrained(head_dir, local_files_only=True).eval()
    hidden, (videos, frames) = projector_input(llava, inputs)
    patches = hidden[-1]
    with torch.no_grad():
        normed = reference.post_layernorm(patches)
        want_features = reference.head(normed).reshape(videos, frames, -1)  # transformers' own head forward
        mha = reference.head.attention  # the probe's attention by hand: softmax(q k^T / sqrt(d)) per head
        wq, wk, _ = mha.in_proj_weight.chunk(3)
        bq, bk, _ = mha.in_proj_bias.chunk(3)
        q = (reference.head.probe[0] @ wq.T + bq).view(1, mha.num_heads, -1).transpose(0, 1)  # [heads, 1, d]
        k = (normed @ wk.T + bk).view(*normed.shape[:2], mha.num_heads, -1).permute(0, 2, 1, 3)  # [F, heads, P, d]
        probs = ((q[None] @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1)[:, :, 0].mean(1)  # [F, P]
        want_scores = pooled(llava, probs[..., None], videos, frames)[..., 0]
    assert len(seen) == videos
    for got, features, scores in zip(seen, want_features, want_scores):
        torch.testing.assert_close(got["frame_features"], features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["scores"], scores, rtol=1e-5, atol=1e-6)
    tower = llava.model.vision_tower.encoder.layers[-1].self_attn
    assert not tower._forward_pre_hooks and not llava.model.multi_modal_projector._forward_pre_hooks


def test_fastvid_without_a_head_warns_once_and_runs_the_stand_ins(llava, spy):
    seen = spy("fastvid")
    with pytest.warns(UserWarning, match="attention-pooling head is missing.*siglip_head=") as caught:
        handle = framepress.apply(llava, "fastvid", retention=0.5, min_segments=2)
    assert len(caught) == 1 and "frame_features" in str(caught[0].message) and "scores" in str(caught[0].message)
    with handle:
        run(llava, n=1)
    assert seen[0]["frame_features"] is None  # the method's default: each frame's mean token
    assert seen[0]["scores"].shape == (4, 4, 4)  # the attention each token receives


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_fastvid_takes_its_official_signals_without_a_head(family, spy):
    """The official Qwen2.5-VL fork uses pseudo-CLS saliency and each frame's mean token: no head, no warning;
    VisionZip has no official Qwen port, so its metric stays the features."""
    model = tiny_model(family)
    fast, zip_ = spy("fastvid"), spy("visionzip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method, extra in (("fastvid", {"min_segments": 2}), ("visionzip", {})):
            with framepress.apply(model, method, retention=0.5, **extra):
                run(model, n=1)
    assert fast[0]["frame_features"] is None and fast[0]["scores"].ndim == 3
    assert zip_[0]["metric"] is None and zip_[0]["scores"].ndim == 3
    with pytest.raises(ValueError, match="siglip_head"):
        framepress.apply(model, "fastvid", retention=0.5, siglip_head="google/siglip-so400m-patch14-384")
    assert "_framepress_patch" not in model.__dict__


def test_bad_siglip_heads_are_named(llava, head_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        ({"method": "visionzip", "siglip_head": str(head_dir)}, "siglip_head: visionzip takes no signal"),
        ({"method": "fastvid", "siglip_head": str(tmp_path / "missing")}, "siglip_head=.*cannot read"),
        ({"method": "fastvid", "siglip_head": 3}, "siglip_head must be"),
        ({"method": "fastvid", "siglip_head": str(siglip_checkpoint(tmp_path / "wide", hidden_size=48))}, "hidden size 48"),
        ({"method": "fastvid", "siglip_head": str(siglip_checkpoint(tmp_path / "headless", use_head=False))},
         "no attention-pooling head"),
        ({"method": "fastvid", "frame_features": torch.zeros(4, 64)}, "do not pass frame_features"),
    ]
    for kwargs, message in cases:
        method = kwargs.pop("method")
        with pytest.raises((ValueError, TypeError), match=message):
            framepress.apply(llava, method, retention=0.5, **kwargs)
        assert "_framepress_patch" not in llava.__dict__


def test_a_full_siglip_checkpoint_gives_only_its_vision_head(tmp_path, monkeypatch):
    """The hub's SigLIP checkpoints hold both towers (and the text tower has a head of its own): only the vision
    post-layernorm and MAP head are read, and they compute what transformers' SiglipModel does."""
    from framepress import signals

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.SiglipConfig(
        vision_config=dict(image_size=56, patch_size=7, **small),
        text_config=dict(vocab_size=64, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0, **small),
    )
    torch.manual_seed(2)
    full = transformers.SiglipModel(config).eval()
    full.save_pretrained(tmp_path)
    head = signals.load_siglip_head(str(tmp_path), 32)
    x = torch.randn(3, 64, 32)
    with torch.no_grad():
        want = full.vision_model.head(full.vision_model.post_layernorm(x))
        torch.testing.assert_close(head(x)[0], want, rtol=1e-5, atol=1e-6)
