"""framepress.apply on tiny random models of each family, saved and loaded back with from_pretrained offline."""

from __future__ import annotations

import logging

import pytest
import torch

import framepress
from framepress.models.base import output_cache
from framepress.models.tiny import FAMILIES, VIDEO, random_frames, tiny_model, video_inputs

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    tiny_model(request.param).save_pretrained(path)
    loaded = transformers.AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    assert type(loaded).__name__ in framepress.models.ADAPTERS
    return loaded


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava")
    tiny_model("llava_onevision").save_pretrained(path)
    return transformers.AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()


def inputs_for(model, n=1, frames=4):
    return video_inputs(model, [random_frames(model, frames, seed=s) for s in range(n)])


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


#: the tiny vocabulary's placeholder ids: random weights must not generate them, or a recomputed prompt would
#: hold one placeholder too many
SPECIAL = [250, 251, 252, 253]


def generate(model, inputs, n=5):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, suppress_tokens=SPECIAL)
    return out[:, inputs["input_ids"].shape[1] :]


def record_layer_inputs(model):
    """Sequence lengths entering each decoder layer, per call."""
    seen: list[list[int]] = []

    def hook(i):
        def f(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if i == 0:
                seen.append([])
            seen[-1].append(h.shape[1])

        return f

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(model.model.language_model.layers)]
    return seen, handles


def test_unsupported_model_lists_the_supported_families():
    with pytest.raises(TypeError, match="LlavaOnevisionForConditionalGeneration, Qwen2_5_VLForConditionalGeneration"):
        framepress.apply(torch.nn.Linear(2, 2), "sttm", retention=0.5)


def test_off_is_bit_identical(model):
    inputs = inputs_for(model)
    before = logits(model, inputs)
    with framepress.apply(model, "sttm", tau_s=1.5, tau_t=-1.0, positions="original") as handle:
        assert torch.equal(logits(model, inputs), before)  # a stage that keeps every token changes nothing
        assert handle.stats[-1]["stages"][0]["visual_out"] == handle.stats[-1]["tokens_in"]
    assert torch.equal(logits(model, inputs), before)
    assert "_framepress_patch" not in model.__dict__ and "get_video_features" not in model.model.__dict__


def manual_llava_logits(model, inputs, method, **params):
    """LLaVA-OneVision without hooks: encode, compress the grid, splice the tokens in, run the LM on embeddings."""
    m = model.model
    with torch.no_grad():
        feats = m.get_video_features(inputs["pixel_values_videos"], vision_feature_layer=model.config.vision_feature_layer,
                                     vision_feature_select_strategy=model.config.vision_feature_select_strategy).pooler_output[0]
        ids = inputs["input_ids"][0]
        slots = torch.nonzero(ids == VIDEO).squeeze(1)[:-1]  # the newline closes the video
        side = int((slots.numel() // 4) ** 0.5)
        tokens = framepress.compress(feats[:-1].reshape(4, side, side, -1), method, **params)
        T, H, W = tokens.grid
        rep = slots[tokens.boxes[:, 0] * H * W + tokens.boxes[:, 1] * W + tokens.boxes[:, 2]]
        embeds = m.get_input_embeddings()(ids).clone()
        embeds[slots] = feats[:-1]
        embeds[slots[-1] + 1] = feats[-1]
        embeds[rep] = tokens.features
        keep = torch.ones(ids.numel(), dtype=torch.bool)
        keep[slots] = False
        keep[rep] = True
        new = embeds[keep][None]
        return model(inputs_embeds=new, attention_mask=torch.ones(new.shape[:2], dtype=torch.long)).logits


@pytest.mark.parametrize("method,params", [
    ("sttm", {"retention": 0.3}), ("pool", {"retention": 0.25}), ("random", {"retention": 0.4}),
    ("sttm", {"retention": 0.3, "window": 2}), ("random", {"retention": 0.4, "window": 3, "split": "even"}),
])
def test_pre_llm_equals_compressing_by_hand(llava, method, params):
    inputs = inputs_for(llava)
    expected = manual_llava_logits(llava, inputs, method, **params)
    with framepress.apply(llava, method, **params):
        got = logits(llava, inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,params", [("sttm", {"retention": 0.3}), ("pool", {"retention": 0.25})])
def test_cached_generate_equals_recomputing_every_step(model, method, params):
    """A query-agnostic pre-LLM stage: decoding from the cache gives what a full recompute of the growing
    sequence gives (decode positions and masks continue the rewritten prefix)."""
    inputs = inputs_for(model)
    with framepress.apply(model, method, **params):
        cached = generate(model, inputs, n=4)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        steps = []
        for _ in range(4):
            step = dict(inputs, input_ids=ids, attention_mask=mask)
            if "mm_token_type_ids" in inputs:
                step["mm_token_type_ids"] = (ids == VIDEO).long() * 2
            last = logits(model, step)[:, -1]
            last[:, SPECIAL] = -torch.inf
            token = last.argmax(-1, keepdim=True)
            steps.append(token)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    assert torch.equal(cached, torch.cat(steps, 1))


def capture_positions(model):
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["position_ids"].clone())

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def test_llava_positions(llava):
    inputs = inputs_for(llava)  # bos, 2 prompt, 64 grid + newline, 3 question: 71 tokens
    with framepress.apply(llava, "pool", retention=0.25):  # 4x4 -> 2x2 a frame: 16 grid tokens stay
        seen, hook = capture_positions(llava)
        generate(llava, inputs, n=3)
        hook.remove()
    assert seen[0].tolist() == [list(range(23))] and seen[1].tolist() == [[23]] and seen[2].tolist() == [[24]]
    with framepress.apply(llava, "pool", retention=0.25, positions="original"):
        seen, hook = capture_positions(llava)
        generate(llava, inputs, n=2)
        hook.remove()
    kept = [0, 1, 2] + [3 + t * 16 + y * 4 + x for t in range(4) for y in (0, 2) for x in (0, 2)] + [67, 68, 69, 70]
    assert seen[0].tolist() == [kept] and seen[1].tolist() == [[71]]


def test_qwen2_5_positions_by_hand(tmp_path):
    model = tiny_model("qwen2_5_vl")
    inputs = video_inputs(model, [random_frames(model, 4, size=56)])  # grid (2, 4, 4) patches -> 2x2x2 tokens
    # bos 5 6 <vs> [8 video tokens] <ve> 7 8 9; video starts at 4: t = 4 + 2*{0,1} (2 tokens/s, 1 s a patch)
    with framepress.apply(model, "pool", retention=0.25):  # one token a temporal patch: the top-left cell
        seen, hook = capture_positions(model)
        generate(model, inputs, n=3)
        hook.remove()
    prefill = seen[0][:, 0].tolist()
    assert prefill[0] == list(range(10))
    assert prefill[1] == [0, 1, 2, 3, 4, 6, 6, 7, 8, 9]  # t: the kept cells at 4 and 6, then the text goes on
    assert prefill[2] == [0, 1, 2, 3, 4, 4, 6, 7, 8, 9]  # h: both kept cells at row 0 (4)
    assert prefill[3] == [0, 1, 2, 3, 4, 4, 6, 7, 8, 9]  # w: column 0 (4)
    assert seen[1][:, 0].tolist() == [[10], [10], [10], [10]]  # decoding continues after the text
    assert seen[2][:, 0].tolist() == [[11], [11], [11], [11]]


def test_fastv_keeps_the_top_attention_of_the_last_token(llava, tmp_path):
    """The recomputed attention row equals the eager kernel's, and the kept tokens are its top-k."""
    inputs = inputs_for(llava)
    eager = tiny_model("llava_onevision", attn_implementation="eager")
    eager.load_state_dict(llava.state_dict())
    with torch.no_grad():
        attn = eager(**inputs, output_attentions=True).attentions[1][0, :, -1]  # layer K-1 = 1
    slots = torch.nonzero(inputs["input_ids"][0] == VIDEO).squeeze(1)[:-1]  # the 64 grid tokens, not the newline
    expected = set(slots[torch.topk(attn.mean(0)[slots], 26).indices].tolist())
    kept = {}

    def spy(module, args, kwargs):  # what reaches layer 3: the hidden rows that survived
        kept["n"] = (args[0] if args else kwargs["hidden_states"]).shape[1]

    with framepress.apply(llava, "fastv", retention=0.4) as handle:  # 26 of 64 visual tokens
        hook = llava.model.language_model.layers[3].register_forward_pre_hook(spy, with_kwargs=True)
        logits(llava, inputs)
        hook.remove()
        record = handle.stats[-1]
    assert record["stages"][0]["visual_out"] == [26] and kept["n"] == 71 - 64 + 26
    assert set(record["stages"][0]["kept"][0]) == expected


def test_in_llm_layers_and_cache_lengths(model):
    inputs = inputs_for(model)
    L = inputs["input_ids"].shape[1]
    n_visual = int((inputs["input_ids"] == VIDEO).sum()) - (1 if "llava" in type(model).__name__.lower() else 0)
    with framepress.apply(model, "fastv", retention=0.5):
        seen, hooks = record_layer_inputs(model)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, suppress_tokens=SPECIAL)
        for h in hooks:
            h.remove()
    cut = L - n_visual + (n_visual + 1) // 2
    assert seen[0] == [L, L, cut, cut] and all(s == [1, 1, 1, 1] for s in seen[1:])
    cache = output_cache(out)
    assert [cache.get_seq_length(i) for i in range(4)] == [L + 2, L + 2, cut + 2, cut + 2]


def test_pre_and_in_llm_together(model):
    inputs = inputs_for(model)
    L = inputs["input_ids"].shape[1]
    with framepress.apply(model, "pool", retention=0.5), framepress.apply(model, "fastv", retention=0.125) as inner:
        seen, hooks = record_layer_inputs(model)
        tokens = generate(model, inputs, n=3)
        for h in hooks:
            h.remove()
        stages = inner.stats[-1]["stages"]
    assert tokens.shape == (1, 3)
    n_visual = inner.stats[-1]["tokens_in"][0]
    after_pool, after_fastv = stages[0]["visual_out"][0], stages[1]["visual_out"][0]
    assert after_fastv == round(0.125 * n_visual) < after_pool <= n_visual // 2
    assert seen[0] == [L - n_visual + after_pool] * 2 + [L - n_visual + after_fastv] * 2


@pytest.mark.parametrize("method,params", [("sttm", {"retention": 0.3}), ("fastv", {"retention": 0.3}), ("sttm", {"retention": 0.5, "layer": 2})])
def test_batch_equals_one_by_one(model, method, params):
    """Two different videos in one generate call, each compressed to its own count and left-padded."""
    videos = [random_frames(model, 4, seed=s) for s in (3, 4)]
    batch = video_inputs(model, videos)
    with framepress.apply(model, method, **params) as handle:
        together = generate(model, batch, n=4)
        counts = handle.stats[-1]["stages"][0]["visual_out"]
        alone = torch.cat([generate(model, video_inputs(model, [v]), n=4) for v in videos])
    assert torch.equal(together, alone), counts


def test_qwen3_deepstack_follows_an_in_llm_cut():
    model = tiny_model("qwen3_vl")  # DeepStack features are added after layers 0 and 1
    inputs = inputs_for(model)
    seen = []
    lm = model.model.language_model
    original = lm._deepstack_process

    def spy(hidden_states, visual_pos_masks, visual_embeds):  # installed first, so framepress calls it
        seen.append((hidden_states.shape[1], int(visual_pos_masks.sum()), visual_embeds.shape[0]))
        return original(hidden_states, visual_pos_masks, visual_embeds)

    lm._deepstack_process = spy
    with framepress.apply(model, "fastv", retention=0.5, layer=1):
        generate(model, inputs, n=2)
    assert lm.__dict__["_deepstack_process"] is spy  # put back as it was
    L = inputs["input_ids"].shape[1]
    assert seen[0] == (L, 32, 32) and seen[1] == (L - 16, 16, 16)


def test_no_video_tokens_warns_once_and_does_nothing(llava, caplog):
    ids = torch.tensor([[1, 5, 6, 7]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    before = generate(llava, inputs, n=2)
    with caplog.at_level(logging.WARNING, logger="framepress"), framepress.apply(llava, "sttm", retention=0.5):
        assert torch.equal(generate(llava, inputs, n=2), before)
        generate(llava, inputs, n=2)
    assert sum("no video tokens" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("method, params, miss", [
    ("pool", {}, "video_blocks"),  # the hooks cannot find the video in the inputs
    ("fastv", {}, "layer"),  # the in-LLM stage's layer hook never fires
])
def test_a_stage_that_did_not_run_is_an_error_not_a_silent_full_run(model, method, params, miss, monkeypatch):
    inputs = inputs_for(model)
    with framepress.apply(model, method, retention=0.25, **params) as handle:
        patch = handle._patch
        if miss == "video_blocks":
            monkeypatch.setattr(patch.adapter, "video_blocks", lambda captured: [[] for _ in captured["input_ids"]])
        else:
            monkeypatch.setattr(patch, "_cut", lambda i, stage, hidden, args, kwargs: (args, kwargs))
        with pytest.raises(RuntimeError, match=f"{method}@.* did not run on a prefill holding"):
            generate(model, inputs, n=2)
    monkeypatch.undo()
    assert "_framepress_patch" not in model.__dict__
    assert torch.equal(generate(model, inputs, n=2), generate(model, inputs, n=2))


def test_the_kv_cache_is_found_under_any_name():
    from framepress.models.base import cache_of

    cache = transformers.DynamicCache()
    assert cache_of({"past_key_values": cache}) is cache
    assert cache_of({"cache": cache, "past_key_values": None}) is cache
    assert cache_of({"kv": cache, "hidden_states": torch.zeros(1)}) is cache  # a future rename
    assert cache_of({"hidden_states": torch.zeros(1)}) is None


def test_bad_calls_raise_and_leave_nothing_patched(llava):
    cases = [
        (dict(method="sttm", retention=1.5), ValueError, "retention"),
        (dict(method="fastv", retention=0.5, layer=4), ValueError, "layer"),
        (dict(method="fastv", retention=0.5, layer=0), ValueError, "layer"),
        (dict(method="nope"), ValueError, "known methods"),
        (dict(method="sttm", tau_x=1), ValueError, "tau_x"),
        (dict(method="sttm", positions="sideways"), ValueError, "positions"),
    ]
    for kwargs, error, match in cases:
        method = kwargs.pop("method")
        with pytest.raises(error, match=match):
            framepress.apply(llava, method, **kwargs)
        assert "_framepress_patch" not in llava.__dict__
    qwen = tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="M-RoPE"):
        framepress.apply(qwen, "sttm", retention=0.5, positions="reassign")
    with pytest.raises(ValueError, match="inside the LLM"):
        framepress.compress(torch.randn(2, 4, 4, 8), "fastv", retention=0.5)


def test_stage_conflicts(llava):
    inputs = inputs_for(llava)
    with framepress.apply(llava, "pool", retention=0.5):
        with pytest.raises(ValueError, match="taken by pool"):
            framepress.apply(llava, "sttm", retention=0.5)
        with framepress.apply(llava, "sttm", retention=0.25, layer=2):  # a grid method after the grid was cut
            with pytest.raises(ValueError, match="whole grid"):
                generate(llava, inputs, n=1)
    assert "_framepress_patch" not in llava.__dict__


@pytest.mark.parametrize(
    "method,params",
    [("sttm", {"retention": 0.3}), ("pool", {"retention": 0.25}), ("sttm", {"retention": 0.5, "layer": 2}), ("fastv", {"retention": 0.3}), (None, {})],
)
def test_session_answers_equal_single_prompts(model, method, params):
    """Cached prefix (query-agnostic stages) or recomputed prompt (query-aware): same answers and scores as one
    generate over the whole prompt."""
    frames = random_frames(model, 4, seed=7)
    handle = framepress.apply(model, method, **params) if method else None
    try:
        session = framepress.Session(model, video_inputs(model, [frames], question=[]))
        assert session.reuse == (method != "fastv")
        for question in ([7, 8, 9], [10, 11], [12, 13, 14, 15]):
            kwargs = dict(max_new_tokens=3, do_sample=False, suppress_tokens=SPECIAL, output_logits=True, return_dict_in_generate=True)
            answer = session.ask(question, **{k: v for k, v in kwargs.items() if k not in ("output_logits", "return_dict_in_generate")})
            whole = video_inputs(model, [frames], question=question)
            with torch.no_grad():
                single = model.generate(**whole, **kwargs)
            assert torch.equal(answer, single.sequences[:, whole["input_ids"].shape[1] :])
    finally:
        if handle:
            handle.remove()


def test_session_scores_match_with_an_in_llm_reassign_stage(llava):
    """STTM at layer 2 reassigns positions in layers >= 2: appended question tokens must continue that layout."""
    frames = random_frames(llava, 4, seed=8)
    question = [7, 8, 9, 10]
    kwargs = dict(max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with framepress.apply(llava, "sttm", retention=0.5, layer=2):
        cached = framepress.Session(llava, video_inputs(llava, [frames], question=[])).ask(question, **kwargs)
        with torch.no_grad():
            single = llava.generate(**video_inputs(llava, [frames], question=question), **kwargs)
    torch.testing.assert_close(cached.logits[0], single.logits[0], rtol=1e-4, atol=1e-4)


@pytest.fixture
def score_recorder():
    """A registered grid method that keeps everything and records the vision scores the model hands it."""
    from framepress import registry

    got = []

    @framepress.register("test_record_scores", paper="test", budget="exact")
    def record(x, budget, *, scores):
        got.append(scores.clone())
        return framepress.Tokens.select(x, torch.arange(x.shape[:3].numel()))

    yield got
    registry._METHODS.pop("test_record_scores")


def test_siglip_scores_are_the_mean_attention_each_token_receives(score_recorder):
    model = tiny_model("llava_onevision")
    eager = tiny_model("llava_onevision", attn_implementation="eager")
    inputs = inputs_for(model, n=2)
    with framepress.apply(model, "test_record_scores"):
        generate(model, inputs, n=1)
    with torch.no_grad():
        pixels = inputs["pixel_values_videos"].flatten(0, 1)
        maps = eager.model.vision_tower(pixels, output_attentions=True).attentions[-1]  # [frames, heads, P, P]
        expected = eager.model.apply_pooling(maps.mean(dim=(1, 2))[..., None]).reshape(2, 4, 4, 4)
    assert len(score_recorder) == 2
    for got, want in zip(score_recorder, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_pseudo_cls_scores_follow_the_recipe(family, score_recorder):
    """Per temporal frame: mean query of its patches against each merged token's mean key, softmax within the
    frame, mean over heads — recomputed here frame by frame in raster order."""
    import sys

    model = tiny_model(family)
    inputs = inputs_for(model, n=2)
    block = model.model.visual.blocks[-1].attn
    seen = {}

    def spy(module, args, kwargs):
        seen["hidden"], seen["pos"] = kwargs.get("hidden_states", args[0] if args else None), kwargs["position_embeddings"]

    hook = block.register_forward_pre_hook(spy, with_kwargs=True)
    with framepress.apply(model, "test_record_scores"):
        generate(model, inputs, n=1)
    hook.remove()
    adapter = framepress.models.adapter_for(model)
    grid = inputs["video_grid_thw"]
    order = adapter.window_index(grid)
    n = seen["hidden"].shape[0]
    with torch.no_grad():
        q, k, _ = block.qkv(seen["hidden"]).reshape(n, 3, block.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = sys.modules[type(block).__module__].apply_rotary_pos_emb_vision(q, k, *seen["pos"])
    # back to raster order of merge groups (4 consecutive patches each)
    q = q.reshape(-1, 4, *q.shape[1:])[torch.argsort(order)].reshape(n, *q.shape[1:])
    k = k.reshape(-1, 4, *k.shape[1:])[torch.argsort(order)]
    expected, start = [], 0
    for t, h, w in grid.tolist():
        cells = h * w // 4
        video = []
        for f in range(t):
            rows = slice(start + f * cells, start + (f + 1) * cells)
            q_bar = q[rows.start * 4 : rows.stop * 4].float().mean(0)  # [heads, d]
            k_bar = k[rows].float().mean(1)  # [cells, heads, d]
            video.append(((k_bar * q_bar).sum(-1) * block.scaling).softmax(0).mean(1))
        expected.append(torch.stack(video).reshape(t, h // 2, w // 2))
        start += t * cells
    for got, want in zip(score_recorder, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_vision_scores_need_pixels_not_precomputed_features(score_recorder, llava):
    inputs = inputs_for(llava)
    with torch.no_grad():
        features = llava.model.get_video_features(inputs["pixel_values_videos"], vision_feature_layer=-1,
                                                  vision_feature_select_strategy="full")
    precomputed = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
    with framepress.apply(llava, "test_record_scores"):
        with pytest.raises(ValueError, match="give pixel values"):
            with torch.no_grad():
                llava(**precomputed, mm_encoder_outputs={"video": features})
    assert "_framepress_patch" not in llava.__dict__


def test_gridpool_replaces_llava_pooling_with_the_unpooled_grid(llava):
    """ST-GridPool takes the projector's grid before LLaVA's 2x2 pooling and its tokens replace the video block."""
    inputs = inputs_for(llava, frames=8)
    with torch.no_grad():
        tower = llava.model.vision_tower(inputs["pixel_values_videos"][0], output_hidden_states=True)
        raw = llava.model.multi_modal_projector(tower.hidden_states[-1]).reshape(8, 8, 8, -1)
    expected = framepress.compress(raw, "gridpool").features  # 8 frames x (8x8 -> 4x4)
    seen = {}
    with framepress.apply(llava, "gridpool") as handle:
        def spy(module, args, kwargs):
            seen.setdefault("embeds", kwargs["inputs_embeds"].clone())

        hook = llava.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
        generate(llava, inputs, n=2)
        hook.remove()
        assert handle.stats[-1]["stages"][0]["visual_out"] == [8 * 16]
    start = 3  # bos + 2 prompt tokens, then the video
    torch.testing.assert_close(seen["embeds"][0, start : start + 128], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positions='reassign'"):
        framepress.apply(llava, "gridpool", positions="original")
    with framepress.apply(llava, "gridpool", retention=0.25) as handle:
        generate(llava, inputs, n=1)
        assert handle.stats[-1]["stages"][0]["visual_out"] == [round(0.25 * 128)]


def test_gridpool_on_qwen_takes_the_merged_grid():
    model = tiny_model("qwen2_5_vl")
    inputs = inputs_for(model, frames=8)
    with framepress.apply(model, "gridpool") as handle:
        generate(model, inputs, n=2)
        assert handle.stats[-1]["tokens_in"] == [64] and handle.stats[-1]["stages"][0]["visual_out"] == [16]


@pytest.mark.parametrize("method", [m for m in framepress.methods("pre-llm") if not m.startswith("test_")])
def test_every_pre_llm_method_runs_in_every_family(model, method):
    """Each registered grid method, by name, inside each family: generate runs and the count is the method's."""
    inputs = inputs_for(model, frames=8)
    spec = framepress.registry.get(method)
    retention = 0.5 if spec.budget != "steps" else 0.25
    given = f"{retention:.0%}" if spec.inner else retention  # "A%" alone: the pre-LLM part only
    exact = {"allocation": "exact"} if spec.budget == "official" else {}  # the official count is checked elsewhere
    with framepress.apply(model, method, retention=given, **exact) as handle:
        tokens = generate(model, inputs, n=2)
        stage = handle.stats[-1]["stages"][0]
    assert tokens.shape == (1, 2)
    n = handle.stats[-1]["tokens_in"][0]
    if spec.budget in ("exact", "official"):
        assert stage["visual_out"][0] == round(retention * n)
    else:
        assert 0 < stage["visual_out"][0] <= round(retention * n)


def test_stats_print_short_and_keep_their_index_lists(llava):
    inputs = inputs_for(llava)
    with framepress.apply(llava, "sttm", retention=0.3) as handle:
        generate(llava, inputs, n=2)
    record = handle.stats[-1]
    text = repr(record)
    assert text.startswith("{'tokens_in': [64], 'stages': [{'stage': 'sttm@pre-LLM', 'visual_out': [")
    assert "kept" not in text and "blocks" not in text and len(text) < 200
    assert len(record["stages"][0]["kept"][0]) == record["stages"][0]["visual_out"][0]
    assert len(record["blocks"][0][0][0]) == 64


def test_dycoke_stage_2_reads_layer_2_attention_and_masks_the_rest_of_the_visual_keys_from_layer_3():
    """DyCoke's decode part: at each generated token it reads the new token's attention at layer L-1 = 2 (equal to
    the eager attention map there) and layers >= 3 attend to the top int(0.3 N) visual keys only (a mask)."""
    import dataclasses

    model = tiny_model("llava_onevision", attn_implementation="eager")
    inputs = inputs_for(model, frames=8)
    seen, masks = [], {}
    with framepress.apply(model, "dycoke", retention=0.5, refresh=1.0) as handle:
        decode = handle.stages[-1]
        fn = decode.method.fn

        def spy(attention, memory, **params):
            seen.append(attention.clone())
            chosen = fn(attention, memory, **params)
            seen.append(chosen)
            return chosen

        decode.method = dataclasses.replace(decode.method, fn=spy)
        hooks = [layer.register_forward_pre_hook(
            lambda m, a, k, i=i: masks.setdefault(i, []).append(k.get("attention_mask")), with_kwargs=True)
            for i, layer in enumerate(model.model.language_model.layers)]
        try:
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=SPECIAL,
                                     output_attentions=True, return_dict_in_generate=True)
        finally:
            for h in hooks:
                h.remove()
        patch = handle._patch
        visual = torch.nonzero(patch.current.visual[0]).squeeze(1)
        record = handle.stats[-1]
    assert record["decode"]["steps"] == 2 and record["decode"]["pruned_steps"] == 2  # refresh=1: every step selects
    n = visual.numel()
    for step in range(2):
        attention, chosen = seen[2 * step], seen[2 * step + 1]
        eager = out.attentions[step + 1][2][0, :, -1].float().mean(0)[visual]  # layer 2's map at this decode step
        torch.testing.assert_close(attention, eager, rtol=1e-4, atol=1e-6)
        assert chosen.numel() == int(0.3 * n)
        assert torch.equal(chosen, torch.sort(attention, descending=True, stable=True).indices[: int(0.3 * n)].sort().values)
        for i in range(4):
            mask = masks[i][step + 1]  # call 0 is the prefill
            if i < 3:
                assert mask is None or bool((mask[0, 0, -1] == 0).all())  # layers below L see every key
            else:
                blocked = torch.nonzero(mask[0, 0, -1] != 0).squeeze(1)
                assert set(blocked.tolist()) == set(visual.tolist()) - set(visual[chosen].tolist())


def test_dycoke_stage_2_refresh_and_sessions(llava):
    inputs = inputs_for(llava, frames=8)
    with framepress.apply(llava, "dycoke", retention=0.5, refresh=-1.0) as handle:  # cosine >= -1: never selects
        off = generate(llava, inputs, n=4)
        assert handle.stats[-1]["decode"] == {"stage": "dycoke_decode@layer 3", "steps": 3, "pruned_steps": 0,
                                              "keys_skipped": 0}
    with framepress.apply(llava, "dycoke", retention=0.5, decode_prune=0.0) as handle:  # selects, and keeps all
        assert torch.equal(generate(llava, inputs, n=4), off)
        assert handle.stats[-1]["decode"]["pruned_steps"] == 0
    with framepress.apply(llava, "dycoke", retention=0.5) as handle:  # the first step always selects (cosine 0 < 0.9)
        generate(llava, inputs, n=4)
        visual = handle.stats[-1]["stages"][0]["visual_out"][0]
        assert handle.stats[-1]["decode"]["pruned_steps"] >= 1
        assert handle.stats[-1]["decode"]["keys_skipped"] >= (visual - int(0.3 * visual)) * (4 - 3)
    with pytest.raises(ValueError, match="decode_prune"):
        framepress.apply(llava, "dycoke", retention=0.5, decode_prune=2)
    assert "_framepress_patch" not in llava.__dict__
    # a Session's appended question is not a generated step; its answers equal one generate over the whole prompt
    prefix_len = inputs["input_ids"].shape[1] - 3
    prefix = {k: v[:, :prefix_len] if k in ("input_ids", "attention_mask") else v for k, v in inputs.items()}
    with framepress.apply(llava, "dycoke", retention=0.5):
        whole = generate(llava, inputs, n=4)
        session = framepress.Session(llava, prefix)
        answer = session.ask(inputs["input_ids"][0, prefix_len:], max_new_tokens=4, do_sample=False, suppress_tokens=SPECIAL)
    assert torch.equal(answer, whole)
