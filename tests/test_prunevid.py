"""PruneVid: temporal segments, static merging over time, DPC-KNN sets, exact budgets, and the in-LLM pruning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framepress
from framepress.features import synthetic
from framepress.layer import LayerInputs
from framepress.methods.prunevid import blocks, official_blocks, prunevid_prune, refine_clusters, runs, shares

DATA = Path(__file__).parent / "data"


def cases(method):
    return [(c["name"], c) for c in json.loads((DATA / method / "manifest.json").read_text())["cases"]]


@pytest.fixture(scope="module")
def clip():
    """12 frames of 10 x 10 in three scenes, low noise (static positions), with a 5 x 4 patch of fresh noise in
    every frame (dynamic positions)."""
    x = synthetic(12, 10, 10, 32, seed=4, noise=0.05)
    x[:, 2:7, 3:7] = torch.randn(12, 5, 4, 32, generator=torch.Generator().manual_seed(0))
    return x


def set_counts(out, n):
    """Output tokens of each set, in the method's set order (each segment's static set, then its frames), read
    off ``source``: a token whose members span several frames is static."""
    T = sum(out.info["segments"])
    kept = torch.nonzero(out.source >= 0).squeeze(1)
    frames, token = kept // n, out.source[kept]
    first = torch.full((len(out),), T, dtype=torch.long).scatter_reduce(0, token, frames, "amin")
    last = torch.full((len(out),), -1, dtype=torch.long).scatter_reduce(0, token, frames, "amax")
    counts = []
    for a, b in bounds(out.info["segments"]):
        counts.append(int(((first == a) & (last == b - 1) & (last > first)).sum()))
        counts += [int(((first == t) & (last == t)).sum()) for t in range(a, b)]
    return counts


def bounds(lengths):
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return list(zip(starts, [s + w for s, w in zip(starts, lengths)]))


def mean_pairwise_cosine(frames):
    """[n]: the mean cosine over every ordered pair of distinct frames, one pair at a time (float64)."""
    frames = frames.double()
    W = frames.shape[0]
    total = sum(
        torch.nn.functional.cosine_similarity(frames[a], frames[b], dim=-1)
        for a in range(W) for b in range(W) if a != b
    )
    return total / (W * (W - 1))


@pytest.mark.parametrize("retention", [0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0])
def test_exact_budget(clip, retention):
    out = framepress.compress(clip, "prunevid", retention=retention)
    out.check()
    assert len(out) == max(1, round(retention * 1200))
    key = out.boxes[:, 0] * 100 + out.boxes[:, 1] * 10 + out.boxes[:, 2]
    assert bool((key[1:] > key[:-1]).all())  # (t, y, x) order
    flat = clip.reshape(-1, 32).double()
    for i in range(len(out)):  # every output token is the mean of the input tokens it stands for
        torch.testing.assert_close(out.features[i].double(), flat[out.source == i].mean(0), rtol=1e-5, atol=1e-5)


def test_full_retention_is_the_input(clip):
    out = framepress.compress(clip, "prunevid", retention=1.0)
    assert out.info["static"] == [0] * len(out.info["segments"])
    assert torch.equal(out.features, clip.reshape(-1, 32)) and torch.equal(out.source, torch.arange(1200))


@pytest.mark.parametrize("retention", [None, 0.1])
def test_static_positions_are_merged_over_time(clip, retention):
    out = framepress.compress(clip, "prunevid", retention=retention)
    assert sum(out.info["static"]) > 0
    frames_of = torch.arange(1200) // 100
    seen = 0
    for (a, b), n_static in zip(bounds(out.info["segments"]), out.info["static"]):
        if b - a == 1:
            assert n_static == 0
            continue
        static = torch.nonzero(mean_pairwise_cosine(clip[a:b].reshape(b - a, 100, 32)) > 0.8).squeeze(1)
        assert n_static == static.numel() and 0 < n_static < 100  # no budget above 40%: tau decides alone
        members_static = []
        for i in out.source[a * 100 : b * 100].unique().tolist():
            members = torch.nonzero(out.source == i).squeeze(1)
            if frames_of[members].unique().numel() == 1 and b - a > 1:
                continue  # a dynamic token (one frame)
            positions = (members % 100).unique()
            # a static token: the same positions in every frame of its segment, at the segment's first frame
            assert members.numel() == positions.numel() * (b - a)
            assert frames_of[members].unique().tolist() == list(range(a, b))
            assert int(out.boxes[i, 0]) == a
            assert int(out.boxes[i, 1] * 10 + out.boxes[i, 2]) in positions.tolist()
            want = clip[a:b].reshape(b - a, 100, 32)[:, positions].double().mean(0).mean(0)  # time, then cluster
            torch.testing.assert_close(out.features[i].double(), want, rtol=1e-5, atol=1e-5)
            members_static.append(positions)
            seen += 1
        if members_static:
            merged = torch.cat(members_static).sort().values
            assert set(merged.tolist()) <= set(static.tolist())
            if retention is None:
                assert torch.equal(merged, static)  # no static set is dropped without a budget
    assert seen > 0


def test_default_counts_follow_the_official_rule(clip):
    out = framepress.compress(clip, "prunevid")
    kept = lambda m: m if m <= 14 else int(m * 0.5)
    want = sum(kept(p) + w * kept(100 - p) for w, p in zip(out.info["segments"], out.info["static"]))
    assert len(out) == want
    smaller = framepress.compress(clip, "prunevid", cluster_ratio=0.25)
    kept = lambda m: m if m <= 14 else int(m * 0.25)
    assert len(smaller) == sum(kept(p) + w * kept(100 - p) for w, p in zip(smaller.info["segments"], smaller.info["static"]))


@pytest.mark.parametrize("seed", range(4))
def test_a_segment_boundary_falls_at_a_hard_cut(seed):
    x = synthetic(16, 8, 8, 32, seed=seed, cuts=(0.5,), noise=0.05)
    out = framepress.compress(x, "prunevid", retention=0.1)
    assert 8 in [a for a, _ in bounds(out.info["segments"])]
    assert len(out) == round(0.1 * 16 * 64)


def test_refine_clusters_as_the_official_code():
    # each label keeps its longest run; the others join their longer neighbour (a tie: the left)
    assert refine_clusters([0, 0, 1, 0, 0, 0, 2, 2, 1, 1, 1]) == [0, 0, 0, 0, 0, 0, 2, 2, 1, 1, 1]
    assert refine_clusters([0, 1, 1, 0, 0, 2, 2]) == [1, 1, 1, 0, 0, 2, 2]
    assert refine_clusters([3, 3, 5, 4, 4]) == [3, 3, 3, 4, 4]
    assert refine_clusters([0, 0, 1, 1, 0, 0]) == [0, 0, 1, 1, 0, 0]  # every run of the longest length stays
    assert refine_clusters([0, 1, 2]) == [0, 0, 0]  # all single frames: no neighbour is left, label 0
    assert refine_clusters([2, 0, 0, 0, 1, 0, 0]) == [0, 0, 0, 0, 0, 0, 0]  # relabelled runs count as they stand
    assert runs([0, 0, 1, 1, 0, 0]) == [2, 2, 2] and runs([4]) == [1]


def test_shares_are_exact_proportional_and_capped():
    assert shares([0, 5, 5, 5], 2) == [0, 1, 1, 0]  # fewer tokens than sets: the earlier sets on a tie
    assert shares([10, 30, 60], 10) == [1, 3, 6]
    assert shares([3, 1], 4) == [3, 1]
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        sizes = torch.randint(0, 40, (9,), generator=g).tolist()
        if sum(sizes) == 0:
            continue
        budget = int(torch.randint(1, sum(sizes) + 1, (1,), generator=g))
        got = shares(sizes, budget)
        assert sum(got) == budget and all(0 <= c <= s for c, s in zip(got, sizes))
        assert all(abs(c - s * budget / sum(sizes)) < 1 for c, s in zip(got, sizes))


def test_determinism(clip):
    for retention in (None, 0.05):
        a = framepress.compress(clip, "prunevid", retention=retention)
        b = framepress.compress(clip, "prunevid", retention=retention)
        assert torch.equal(a.features, b.features) and torch.equal(a.source, b.source)
        assert torch.equal(a.boxes, b.boxes) and a.info == b.info


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_any_float_dtype(clip, dtype):
    out = framepress.compress(clip.to(dtype), "prunevid", retention=0.1)
    out.check()
    assert len(out) == 120 and out.features.dtype == dtype


def test_degenerate_inputs_are_defined():
    single = framepress.compress(torch.randn(1, 5, 5, 8), "prunevid")  # T = 1: one segment, no static set
    single.check()
    assert single.info == {"segments": [1], "static": [0]} and len(single) == 12  # 25 > 14 -> int(25 * 0.5)
    assert len(framepress.compress(torch.randn(1, 5, 5, 8), "prunevid", retention=0.2)) == 5
    for shape in [(6, 1, 1, 4), (4, 1, 7, 4), (5, 3, 1, 2)]:  # tiny grids
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        total = shape[0] * shape[1] * shape[2]
        for retention in (None, 1 / total, 0.5, 1.0):
            out = framepress.compress(x, "prunevid", retention=retention)
            out.check()
            if retention is not None:
                assert len(out) == max(1, round(retention * total))
    same = torch.ones(4, 5, 5, 8)  # all-identical tokens: one segment, every position static
    out = framepress.compress(same, "prunevid")
    assert out.info == {"segments": [4], "static": [25]} and len(out) == 12
    assert torch.equal(out.features, torch.ones(12, 8))
    assert len(framepress.compress(same, "prunevid", retention=0.1)) == 10
    # a budget above what temporal merging leaves (25 tokens): static positions go back until it fits
    out = framepress.compress(same, "prunevid", retention=0.5)
    out.check()
    assert len(out) == 50 and out.info["static"] == [16]  # 100 - 3 * 16 = 52 >= 50 > 100 - 3 * 17
    zeros = framepress.compress(torch.zeros(3, 4, 4, 2), "prunevid", retention=0.25)  # zero vectors: no cosine
    zeros.check()
    assert len(zeros) == 12 and zeros.info["static"] == [0]


@pytest.mark.parametrize("retention", [None, 1 / 1200, 3 / 1200, 7 / 1200, 0.02, 0.1, 0.4])
def test_the_budget_is_split_over_the_sets_by_size(clip, retention):
    out = framepress.compress(clip, "prunevid", retention=retention)
    sizes = []
    for w, p in zip(out.info["segments"], out.info["static"]):
        sizes += [p] + [100 - p] * w
    if retention is None:  # the official rule: more than 14 tokens -> int(n * cluster_ratio) clusters
        assert set_counts(out, 100) == [m if m <= 14 else int(m * 0.5) for m in sizes]
        return
    budget = max(1, round(retention * 1200))
    assert set_counts(out, 100) == shares(sizes, budget)
    # fewer tokens than sets (15 here): whole sets are dropped, the budget is still exact
    assert len(out) == budget and int((torch.tensor(shares(sizes, budget)) == 0).sum()) >= 15 - budget


def test_budgets_above_temporal_merging_raise_tau_just_enough(clip):
    base = framepress.compress(clip, "prunevid")
    similarity = torch.cat([mean_pairwise_cosine(clip[a:b].reshape(b - a, 100, 32)) for a, b in bounds(base.info["segments"])])
    saving = torch.tensor([w - 1 for w in base.info["segments"]]).repeat_interleave(100)
    for retention in (0.5, 0.7, 0.9):
        out = framepress.compress(clip, "prunevid", retention=retention)
        out.check()
        budget = round(retention * 1200)
        assert len(out) == budget and out.info["segments"] == base.info["segments"]
        static = torch.zeros(similarity.numel(), dtype=torch.bool)
        for i in torch.nonzero(out.sizes > 1).squeeze(1).tolist():
            members = torch.nonzero(out.source == i).squeeze(1)
            if (members // 100).unique().numel() > 1:
                seg = next(k for k, (a, b) in enumerate(bounds(out.info["segments"])) if a <= int(out.boxes[i, 0]) < b)
                static[seg * 100 + (members % 100).unique()] = True
        dropped = (similarity > 0.8) & ~static
        assert int(static.sum()) == sum(out.info["static"]) and bool(dropped.any())
        assert float(similarity[static].min()) >= float(similarity[dropped].max())  # the most similar stay static
        saved = int(saving[static].sum())
        assert saved <= 1200 - budget < saved + int(saving[dropped].max())  # and as many as fit


def test_bad_parameters_name_the_argument(clip):
    for name, value in [("tau", 1.5), ("temporal_segment_ratio", 0.0), ("temporal_segment_ratio", 2.0),
                        ("cluster_ratio", 0.0), ("cluster_ratio", -1.0), ("k", 0)]:
        with pytest.raises(ValueError, match=name):
            framepress.compress(clip, "prunevid", **{name: value})
    with pytest.raises(TypeError, match="k"):
        framepress.compress(clip, "prunevid", k=2.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        framepress.compress(clip, "prunevid", alpha=0.4)  # the in-LLM part's parameter
    inputs = LayerInputs(torch.randn(5, 4), torch.randn(2, 4), None, 10, _attention=lambda which, heads: torch.rand(2, 5))
    for value in (0.0, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            prunevid_prune(inputs, None, alpha=value)
    with pytest.raises(ValueError, match="runs inside the LLM"):
        framepress.compress(clip, "prunevid_prune", retention=0.1)


def test_in_llm_pruning_keeps_the_max_max_attention():
    g = torch.Generator().manual_seed(5)
    visual, text = torch.randn(20, 16, generator=g), torch.randn(6, 16, generator=g)
    attention = torch.rand(6, 20, generator=g)
    attention[:, 7] = attention[:, 3] = 2.0  # a tie: both kept ahead of the rest
    calls = []

    def signal(which, heads):
        calls.append((which, heads))
        return attention

    inputs = LayerInputs(visual, text, None, 10, _attention=signal)
    out = prunevid_prune(inputs, 5)
    out.check()
    assert calls == [("text", "max")]
    top = torch.sort(attention.amax(0), descending=True, stable=True).indices[:5].sort().values
    assert {3, 7} <= set(top.tolist())
    assert len(out) == 5 and torch.equal(out.boxes[:, 2], top)
    assert torch.equal(out.features, visual[top]) and out.grid == (1, 1, 20) and out.info == {"layer": 10}
    assert torch.equal(out.source[top], torch.arange(5)) and int((out.source >= 0).sum()) == 5
    default = prunevid_prune(inputs, None)  # alpha = 0.4 of them
    assert len(default) == 8
    assert torch.equal(default.boxes[:, 2], torch.sort(attention.amax(0), descending=True, stable=True).indices[:8].sort().values)
    assert len(prunevid_prune(inputs, None, alpha=0.01)) == 1
    assert len(prunevid_prune(inputs, 50)) == 20
    no_text = prunevid_prune(LayerInputs(visual, text[:0], None, 10, _attention=signal), 4)
    assert no_text.boxes[:, 2].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_prunevid_in_a_model_reads_a_percent_b_percent(family):
    from framepress.models.tiny import random_frames, tiny_model, video_inputs

    model = tiny_model(family)
    inputs = video_inputs(model, [random_frames(model, 4, seed=s) for s in (0, 1)])
    with framepress.apply(model, "prunevid", retention="50%/20%", inner_layer=2, allocation="exact") as handle:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, suppress_tokens=[250, 251, 252, 253])
        record = handle.stats[-1]
        n = record["tokens_in"][0]
        assert [s["visual_out"] for s in record["stages"]] == [[round(0.5 * n)] * 2, [round(0.2 * n)] * 2]
    with framepress.apply(model, "prunevid", retention="50%/20%", inner_layer=2) as handle:  # official: per-block floors
        with torch.no_grad():
            model(**inputs)
        assert all(0 < v <= round(0.2 * n) for v in handle.stats[-1]["stages"][1]["visual_out"])
    with framepress.apply(model, "prunevid", retention=0.5, inner_layer=2, allocation="exact") as handle:  # alpha = 0.4 of it
        with torch.no_grad():
            model(**inputs)
        assert [s["visual_out"][0] for s in handle.stats[-1]["stages"]] == [round(0.5 * n), round(0.2 * n)]
    with pytest.raises(ValueError, match="inner_layer"):
        framepress.apply(model, "prunevid", retention=0.5)  # layer 11 of a 4-layer model
    assert "_framepress_patch" not in model.__dict__


@pytest.mark.parametrize("family", ["llava_onevision", "qwen3_vl"])
def test_in_a_model_the_pruning_gets_the_pre_llm_blocks_in_sequence_order(family, monkeypatch):
    """Inside a model, prunevid_prune selects per block of the prunevid output it follows (the official rule),
    each visual token labelled with the block of the output token standing at its position."""
    import dataclasses

    from framepress.models.tiny import random_frames, tiny_model, video_inputs

    model = tiny_model(family)
    inputs = video_inputs(model, [random_frames(model, 8, seed=s) for s in (0, 1)])
    received = []
    with framepress.apply(model, "prunevid", retention="50%/20%", inner_layer=2) as handle:
        inner = handle.stages[1]
        fn = inner.method.fn

        def spy(layer_inputs, budget, **params):
            received.append(params["blocks"])
            return fn(layer_inputs, budget, **params)

        monkeypatch.setattr(inner, "method", dataclasses.replace(inner.method, fn=spy))
        with torch.no_grad():
            model(**inputs)
        record, videos = handle.stats[-1], handle._patch.last_tokens
    assert len(received) == 2 and len(videos) == 2
    for b, (labels, tokens) in enumerate(zip(received, videos)):
        slots = torch.tensor(record["blocks"][b][0][0])
        T, H, W = tokens.grid
        rep = slots[tokens.boxes[:, 0] * H * W + tokens.boxes[:, 1] * W + tokens.boxes[:, 2]]
        label_at = dict(zip(rep.tolist(), blocks(tokens).tolist()))
        assert labels.tolist() == [label_at[slot] for slot in record["stages"][0]["kept"][b]]
        assert labels.unique().numel() > 1  # several blocks: the per-block rule is what runs


# ---------------------------------------------------------------------------------------------------------------
# the official outputs (tests/data/prunevid, tests/data/prunevid_prune)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,case", cases("prunevid"), ids=[n for n, _ in cases("prunevid")])
def test_prunevid_matches_official_golden(name, case):
    data = np.load(DATA / "prunevid" / case["file"])
    x = torch.from_numpy(data["x"])
    T, H, W, C = x.shape
    out = framepress.compress(x, "prunevid", **case["params"])
    out.check()
    if case["official_status"] != "ok":  # the official crash (T < k = 7): valid tokens by the same rules
        assert out.info["segments"] == [T] and len(out) >= 1
        return
    assert out.info["segments"] == case["official_window_sizes"]
    counts = set_counts(out, H * W)
    static, dynamic, i = [], [], 0
    for w in out.info["segments"]:
        static.append(counts[i])
        dynamic.append(sum(counts[i + 1 : i + 1 + w]))
        i += 1 + w
    assert static == case["official_static_sizes"] and dynamic == case["official_dynamic_sizes"]
    assert len(out) == case["official_tokens"]
    # the static positions of each segment
    masks = torch.zeros(len(out.info["segments"]), H * W, dtype=torch.bool)
    label = blocks(out)
    starts = np.cumsum([0] + [1 + w for w in out.info["segments"]])[:-1]
    for s, b in enumerate(starts):
        members = torch.nonzero(torch.isin(out.source, torch.nonzero(label == int(b)).squeeze(1))).squeeze(1)
        masks[s, members % (H * W)] = True
    np.testing.assert_array_equal(masks.numpy(), data["official_static_masks"])
    # the features as a set: rows paired by nearest feature, one to one up to exact duplicates
    mine = out.features.double()
    seeds = [k for k in data.files if k.startswith("official_features")]
    best = min(float(torch.cdist(torch.from_numpy(data[k]).double(), mine).min(1).values.max()) for k in seeds)
    assert best < 1e-4


@pytest.mark.parametrize("name,case", cases("prunevid_prune"), ids=[n for n, _ in cases("prunevid_prune")])
def test_prunevid_prune_matches_official_golden(name, case):
    data = np.load(DATA / "prunevid_prune" / case["file"])
    hidden, q, k = (torch.from_numpy(data[key]) for key in ("hidden", "q", "k"))
    start, end = int(data["visual_start"]), int(data["visual_end"])
    L = hidden.shape[0]
    rows = torch.arange(end, L)
    scores = (q[:, rows] @ k.transpose(1, 2)) / q.shape[-1] ** 0.5
    causal = torch.arange(L)[None, :] <= rows[:, None]
    probs = scores.masked_fill(~causal[None], torch.finfo(scores.dtype).min).softmax(-1)[:, :, start:end]
    assert torch.equal(probs.amax(0).amax(0), torch.from_numpy(data["official_scores"]))

    def attention(which, heads):
        assert which == "text"
        return probs.amax(0) if heads == "max" else probs.mean(0)

    inputs = LayerInputs(hidden[start:end], hidden[end:], None, 11, 32, _attention=attention)
    labels = official_blocks(data["static_sizes"], data["dynamic_sizes"], data["window_sizes"])
    fn = framepress.registry.get("prunevid_prune").fn
    out = fn(inputs, None, alpha=case["alpha"], blocks=labels)
    out.check()
    np.testing.assert_array_equal(out.boxes[:, 2].numpy() + start, data["official_keep"])
    np.testing.assert_allclose(out.features.numpy(), data["hidden"][data["official_keep"]], atol=1e-4)
    exact = fn(inputs, None, alpha=case["alpha"], blocks=labels, allocation="exact")
    assert len(exact) == int(case["alpha"] * case["N_visual"])  # 241 for q3, where the official keeps 235


def test_blocks_of_a_prunevid_output_are_the_official_blocks():
    data = np.load(DATA / "prunevid" / "p1_T16_2cuts_static.npz")
    out = framepress.compress(torch.from_numpy(data["x"]), "prunevid")
    sizes = official_blocks(data["official_static_sizes"], data["official_dynamic_sizes"], data["official_window_sizes"])
    assert torch.bincount(blocks(out), minlength=int(sizes.max()) + 1).tolist() == torch.bincount(sizes).tolist()
    with pytest.raises(ValueError, match="dynamic_sizes"):
        official_blocks([0], [5], [2])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=8).filter(lambda v: sum(v) > 0),
    share=st.floats(0.0, 1.0, exclude_min=True), alpha=st.floats(0.01, 1.0), seed=st.integers(0, 10_000),
    with_budget=st.booleans(), levels=st.booleans(),
)
def test_prunevid_prune_exact_allocation(sizes, share, alpha, seed, with_budget, levels):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    labels = labels[torch.randperm(n, generator=g)]  # blocks need not be contiguous
    attention = torch.randint(0, 3, (3, n), generator=g).float() if levels else torch.rand(3, n, generator=g)
    inputs = LayerInputs(torch.randn(n, 4, generator=g), torch.randn(3, 4), None, 11, _attention=lambda w, h: attention)
    budget = max(1, round(share * n)) if with_budget else None
    out = prunevid_prune(inputs, budget, alpha=alpha, blocks=labels, allocation="exact")
    out.check()
    target = budget if with_budget else max(1, int(alpha * n))
    assert len(out) == target
    kept = torch.zeros(n, dtype=torch.bool)
    kept[out.boxes[:, 2]] = True
    assert torch.bincount(labels[kept], minlength=len(sizes)).tolist() == shares(sizes, target)
    score = attention.amax(0)
    for b in range(len(sizes)):  # inside each block, the top scores (ties: the earlier token)
        inside, outside = score[kept & (labels == b)], score[~kept & (labels == b)]
        if inside.numel() and outside.numel():
            assert float(inside.min()) >= float(outside.max())
    official = prunevid_prune(inputs, budget, alpha=alpha, blocks=labels)
    floors = [m * budget // n if with_budget else int(m * alpha) for m in sizes]
    assert len(official) == max(1, sum(floors)) and len(official) <= max(1, target)


@pytest.mark.parametrize("retention", [None, 0.1])
def test_prunevid_thread_count_does_not_change_the_output(retention, on_threads):
    x = synthetic(16, 14, 14, 96, seed=7, noise=0.2)
    x[:, 3:8, 3:9] = x[:1, 3:8, 3:9]  # static copies: ties in densities and cosines
    one = on_threads(1, lambda: framepress.compress(x, "prunevid", retention=retention))
    two = on_threads(2, lambda: framepress.compress(x, "prunevid", retention=retention))
    assert torch.equal(one.features, two.features) and torch.equal(one.source, two.source) and one.info == two.info
    g = torch.Generator().manual_seed(1)
    attention = torch.rand(5, len(one), generator=g)
    inputs = LayerInputs(one.features, torch.randn(5, 96), None, 11, _attention=lambda w, h: attention)
    a = on_threads(1, lambda: prunevid_prune(inputs, 80, blocks=blocks(one)))
    b = on_threads(2, lambda: prunevid_prune(inputs, 80, blocks=blocks(one)))
    assert torch.equal(a.source, b.source) and torch.equal(a.features, b.features)


def test_prunevid_prune_parameters_name_the_argument():
    inputs = LayerInputs(torch.randn(5, 4), torch.randn(2, 4), None, 10, _attention=lambda which, heads: torch.rand(2, 5))
    with pytest.raises(ValueError, match="allocation must be one of"):
        prunevid_prune(inputs, None, allocation="round")
    with pytest.raises(TypeError, match="blocks must be a 1-D sequence of integer"):
        prunevid_prune(inputs, None, blocks=[0.5] * 5)
    with pytest.raises(ValueError, match="blocks: 3 labels for 5 visual tokens"):
        prunevid_prune(inputs, None, blocks=[0, 0, 1])
    with pytest.raises(ValueError, match="blocks: block labels must be >= 0"):
        prunevid_prune(inputs, None, blocks=[0, 0, -1, 1, 1])
