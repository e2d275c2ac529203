"""framepress.training: the real regime's architecture and a resumable run that ends where an uninterrupted one does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from framepress import synth, training


def test_the_real_regime_is_llava_onevisions_token_grid():
    import transformers

    regime = training.regime_of("real")
    assert regime.size // regime.patch == 27 and regime.side == 14 and regime.frames == 32
    model = transformers.LlavaOnevisionForConditionalGeneration(training.config("real")).eval()
    video = training.pixels(synth.generate("still", 0).frames)[None]
    with torch.no_grad():
        features = model.model.get_video_features(video, vision_feature_layer=-1,
                                                  vision_feature_select_strategy="full").pooler_output
    assert features.shape[1] == 32 * 14 * 14 + 1 == 6273  # the family's own pooling, plus the newline
    tiny, real = training.config("tiny").to_dict(), training.config("real").to_dict()
    for side in (tiny, real):  # the tiny architecture at another frame size, with room for 6k positions
        side["vision_config"].pop("image_size"), side["text_config"].pop("max_position_embeddings")
        side.pop("image_grid_pinpoints")
    assert tiny == real


def test_warm_start_carries_the_packaged_tiny_model_to_the_real_frame_size():
    """Every weight is the tiny model's but the SigLIP position table, resized from its 12x12 grid to 27x27 (a
    bicubic resize: the corner positions keep their embeddings up to the resize's edge weighting)."""
    import transformers

    from framepress import packaged

    tiny = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(packaged.path()).state_dict()
    model = transformers.LlavaOnevisionForConditionalGeneration(training.config("real"))
    training.warm_start(model, packaged.path())
    real = model.state_dict()
    key = "model.vision_tower.embeddings.position_embedding.weight"
    assert tiny[key].shape[0] == 144 and real[key].shape[0] == 729
    assert all(torch.equal(real[k], tiny[k]) for k in tiny if k != key and not k.endswith("position_ids"))
    old, new = tiny[key].view(12, 12, -1), real[key].view(27, 27, -1)
    assert torch.nn.functional.cosine_similarity(old[0, 0], new[0, 0], 0) > 0.9
    assert torch.nn.functional.cosine_similarity(old[-1, -1], new[-1, -1], 0) > 0.9
    other = transformers.LlavaOnevisionForConditionalGeneration(training.config("real"))
    other.model.multi_modal_projector = torch.nn.Identity()
    with pytest.raises(ValueError, match="init: .* is not the tiny architecture"):
        training.warm_start(other, packaged.path())


def test_the_tiny_regime_is_unchanged():
    cfg = training.config()
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size, cfg.text_config.num_hidden_layers) == (96, 8, 4)
    assert training.regime_of("tiny").kinds == tuple(synth.KINDS)
    with pytest.raises(ValueError, match="regime must be one of tiny, real"):
        training.config("huge")


def test_dropping_the_mask_of_right_padded_sequences_changes_no_loss():
    import transformers

    torch.manual_seed(0)
    model = transformers.LlavaOnevisionForConditionalGeneration(training.config("real")).eval()
    prompts = training.Prompts(training.tiny_tokenizer())
    batch = [synth.generate(kind, 0, frames=24) for kind in ("events", "detail")]  # questions of other lengths
    generator = torch.Generator().manual_seed(0)
    embeds, mask, pos, labels = training.sequences(model, prompts, batch, "tokens", 0.05, False, generator)
    assert not mask.all()  # padded
    with torch.no_grad():
        masked = training.loss_and_hits(model, embeds, mask, pos, labels)
        unmasked = training.loss_and_hits(model, embeds, training.lm_mask(mask, "real"), pos, labels)
    assert torch.allclose(masked[0], unmasked[0], atol=1e-5) and torch.equal(masked[1], unmasked[1])


def small_run(out, **kwargs):
    return training.train(out, steps=2, batch=2, warmup=1, eval_every=0, log=lambda *a: None, regime="real",
                          save_every=1, threads=2, **kwargs)


def test_an_interrupted_real_run_resumes_to_the_same_weights(tmp_path):
    """Step 1, stop, resume, step 2 == steps 1 and 2 at once (model, optimizer and every RNG restored)."""
    from safetensors.torch import load_file

    straight = small_run(tmp_path / "straight")
    stopped = small_run(tmp_path / "split", until=1)
    assert stopped == training.resume_folder(tmp_path / "split") and (stopped / "state.pt").is_file()
    assert not (tmp_path / "split").exists()
    resumed = small_run(tmp_path / "split", resume=True)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recipe = json.loads((resumed / "training.json").read_text())
    assert recipe["regime"] == "real" and recipe["steps"] == 2
    with pytest.raises(ValueError, match="resume: .* holds another run .*batch=2 there, 3 here"):
        training.train(tmp_path / "split", steps=2, batch=3, regime="real", resume=True, log=lambda *a: None)
    with pytest.raises(FileNotFoundError, match="no saved state"):
        training.train(tmp_path / "none", steps=2, regime="real", resume=True, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"until must be a step in \[1, steps=2\]"):
        training.train(tmp_path / "none", steps=2, regime="real", until=3, log=lambda *a: None)


def test_the_schedule_keeps_the_tiny_frame_counts():
    rng = np.random.default_rng(0)
    assert {training.schedule(rng)[3] for _ in range(200)} == {8, 12, 16}
    rng = np.random.default_rng(0)
    assert {training.schedule(rng, training.REGIMES["real"].frame_choices)[3] for _ in range(200)} == {24, 28, 32}


def test_keep_max_bounds_every_reduced_batch_but_the_all_token_ones():
    """The real regime trains on short sequences: every token-dropping, frame-dropping or merging batch keeps at
    most ``keep_max`` of its tokens (the tiny regime's shares still reach 100%)."""
    real = training.REGIMES["real"]
    rng = np.random.default_rng(1)
    draws = [training.schedule(rng, real.frame_choices, real.mix, real.keep_max) for _ in range(2000)]
    assert all(keep == 1.0 for mode, keep, *_ in draws if mode == "all")
    reduced = [keep for mode, keep, *_ in draws if mode != "all"]
    assert max(reduced) == real.keep_max and 0.01 <= min(reduced) < 0.012
    assert {mode for mode, *_ in draws} == {"all", "tokens", "frames", "merge", "evidence"}
    rng = np.random.default_rng(1)
    tiny = [training.schedule(rng) for _ in range(2000)]
    assert max(keep for mode, keep, *_ in tiny if mode == "tokens") > 0.9


def test_the_real_regime_trains_only_the_lm_and_reuses_each_batch(tmp_path):
    """The encoder (tower, projector, newline) leaves the run as it was initialised; the LM moves; every step is
    ``reuse`` updates (the schedule counts updates)."""
    import transformers

    out = small_run(tmp_path / "run")
    trained = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(out).state_dict()
    torch.manual_seed(0)  # what train() seeds before building the model
    start = transformers.LlavaOnevisionForConditionalGeneration(training.config("real"))
    training.warm_start(start, training.packaged.path())
    fresh = start.state_dict()
    encoder = [k for k in fresh if "vision_tower" in k or "multi_modal_projector" in k or "image_newline" in k]
    assert encoder and all(torch.equal(trained[k], fresh[k]) for k in encoder)
    lm = [k for k in fresh if "language_model" in k]
    assert any(not torch.equal(trained[k], fresh[k]) for k in lm)
    recipe = json.loads((out / "training.json").read_text())
    regime = training.regime_of("real")
    assert recipe["frozen_encoder"] and recipe["reuse"] == regime.reuse == 4
    assert recipe["keep_max"] == regime.keep_max == 0.3 and recipe["mix"] == list(regime.mix)
    assert regime.init == "tiny" and "packaged tiny model" in recipe["init"]
    assert recipe["trainable_parameters"] < sum(v.numel() for v in fresh.values())
    state = torch.load(training.resume_folder(tmp_path / "run") / "state.pt", weights_only=False)
    assert state["schedule"]["last_epoch"] == 2 * regime.reuse


def test_the_evidence_mode_keeps_every_rows_evidence_frames_and_whole_frames_only():
    """Mode "evidence" keeps the frames an answer depends on, then random others: a short sequence that still
    holds the answer; a row whose evidence is every frame gets random frames, as in mode "frames"."""
    from framepress import synth

    items = [synth.generate(kind, 3, split="train") for kind in ("needle32", "second", "still", "events")]
    frames, per_frame = 32, 196
    features = torch.arange(frames * per_frame + 1).float()[None, :, None].expand(len(items), -1, 2).clone()
    kept, index = training.reduce_tokens(features, frames, "evidence", 0.05, torch.Generator().manual_seed(0),
                                         [item.evidence for item in items])
    assert torch.equal(kept[:, :, 0].long(), index) and (index[:, -1] == frames * per_frame).all()
    width = max(len(item.evidence) for item in items if len(item.evidence) < frames)
    assert index.shape[1] == width * per_frame + 1
    for item, row in zip(items, index[:, :-1]):
        assert (row.diff() > 0).all()  # video order
        shown = row.view(-1, per_frame) // per_frame
        assert (shown == shown[:, :1]).all()  # whole frames
        assert set(item.evidence) <= set(shown[:, 0].tolist()) or len(item.evidence) == frames
