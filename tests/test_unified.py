"""The unified spatiotemporal method and the shared primitives it is built from."""

from __future__ import annotations

import math

import pytest
import torch

import framepress
from framepress import ops
from framepress.features import synthetic
from framepress.methods.unified import select_diverse


@pytest.fixture(scope="module")
def video():
    x = synthetic(8, 14, 14, 64, seed=3)
    scores = torch.rand(8, 14, 14, generator=torch.Generator().manual_seed(1))
    return x, scores


def sequential_greedy(cos, order, tau, limit):
    kept = []
    for i in order.tolist():
        if len(kept) == limit:
            break
        if all(cos[i, j] < tau for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("tau", [0.3, 0.7, 0.9])
def test_parallel_greedy_equals_the_sequential_pass(video, tau):
    x, scores = video
    unit = ops.normalize(x.reshape(-1, 64))
    cos = unit @ unit.T
    order = torch.sort(-scores.reshape(-1), stable=True).indices
    for limit in (1, 10, 88, 400):
        assert select_diverse(unit, order, tau, limit).tolist() == sequential_greedy(cos, order, tau, limit)


@pytest.mark.parametrize("retention", [0.01, 0.02, 0.05, 0.1, 0.25])
def test_exact_budget_and_its_split(video, retention):
    x, scores = video
    budget = max(1, round(retention * 1568))
    out = framepress.compress(x, "unified", retention=retention, scores=scores)
    out.check()
    assert len(out) == budget
    assert out.info["clusters"] == budget - out.info["selected"]
    assert out.info["selected"] <= budget - round(0.3 * budget)


def test_selected_tokens_are_not_redundant_and_clusters_are_means(video):
    x, scores = video
    out = framepress.compress(x, "unified", retention=0.1, scores=scores)
    flat = x.reshape(-1, 64)
    singles = out.sizes == 1
    reps = out.boxes[:, 0] * 196 + out.boxes[:, 1] * 14 + out.boxes[:, 2]
    selected = reps[singles & (out.source[reps] == torch.arange(len(out)))]
    cos = torch.nn.functional.cosine_similarity(flat[selected][:, None], flat[selected][None], dim=-1)
    cos.fill_diagonal_(-1)
    assert bool((cos < 0.7 + 1e-6).all())  # no two kept tokens at or above tau
    for i in range(len(out)):  # every output is the mean of the inputs it stands for
        members = torch.nonzero(out.source == i).squeeze(1)
        torch.testing.assert_close(out.features[i], flat[members].mean(0), rtol=1e-5, atol=1e-5)
    order = out.boxes[:, 0] * 196 + out.boxes[:, 1] * 14 + out.boxes[:, 2]
    assert bool((order[1:] > order[:-1]).all())  # spatiotemporal order


def test_center_weighted_merge(video):
    x, scores = video
    out = framepress.compress(x, "unified", retention=0.05, scores=scores, merge="center", beta=0.6)
    flat = x.reshape(-1, 64)
    reps = out.boxes[:, 0] * 196 + out.boxes[:, 1] * 14 + out.boxes[:, 2]
    for i in torch.nonzero(out.sizes > 1).squeeze(1).tolist():
        members = torch.nonzero(out.source == i).squeeze(1)
        others = members[members != reps[i]]
        want = 0.6 * flat[reps[i]] + 0.4 * flat[others].mean(0)
        torch.testing.assert_close(out.features[i], want, rtol=1e-5, atol=1e-5)


def test_dpc_knn_finds_the_obvious_clusters():
    g = torch.Generator().manual_seed(0)
    blobs = torch.cat([torch.randn(20, 8, generator=g) * 0.05 + c for c in (torch.zeros(8), torch.ones(8) * 3, -torch.ones(8) * 3)])
    centers, cluster = ops.dpc_knn(blobs, 3, k=7, scale=1 / math.sqrt(8))
    assert centers.numel() == 3 and sorted((centers // 20).tolist()) == [0, 1, 2]
    assert all(len(set(cluster[i * 20 : (i + 1) * 20].tolist())) == 1 for i in range(3))
    assert torch.equal(cluster[centers], torch.arange(3))


def dpc_knn_full(x, n_centers, k, scale):
    """The reference: DPC-KNN over the whole N x N distance matrix, every quantity read off it."""
    n = x.shape[0]
    d = ((x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x @ x.T).clamp(min=0).sqrt() * scale
    d.fill_diagonal_(0)
    density = torch.exp(-(d.topk(k, dim=1, largest=False).values ** 2).mean(1))
    index = torch.arange(n)
    other, mine = density[None, :], density[:, None]
    denser = (other > mine) | ((other == mine) & (index[None, :] < index[:, None]))
    delta = torch.where(denser, d, torch.inf).amin(1)
    delta = torch.where(denser.any(1), delta, d.max())
    centers = ops.top_indices(density * delta, n_centers)
    cluster = d[:, centers].argmin(1)
    cluster[centers] = torch.arange(n_centers)
    return centers, cluster


@pytest.mark.parametrize("block_bytes, neighbours", [(1 << 30, 32), (4096, 8), (2048, 3)])
@pytest.mark.parametrize("n_centers", [1, 5, 40])
def test_blocked_dpc_knn_equals_the_full_computation(monkeypatch, block_bytes, neighbours, n_centers):
    """One strip or many, long or short neighbour lists (many points then need the second pass): the full
    matrix's centers and clusters (float64, so no rounding decides)."""
    monkeypatch.setattr(ops, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(ops, "NEIGHBOURS", neighbours)
    x = synthetic(3, 7, 9, 24, seed=2).reshape(-1, 24).double()
    want = dpc_knn_full(x, n_centers, 7, 1 / math.sqrt(24))
    got = ops.dpc_knn(x, n_centers, 7, scale=1 / math.sqrt(24))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def largest_allocation(fn) -> int:
    """The most bytes any one torch op allocated while fn ran (the CPU allocator, as the profiler sees it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.self_cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("method", ["unified", "divprune"])
def test_no_n_by_n_matrix_is_ever_allocated(monkeypatch, method):
    """With 64 KB blocks, 3,200 tokens (an N x N float32 matrix: 41 MB) run in allocations of a few rows each."""
    monkeypatch.setattr(ops, "BLOCK_BYTES", 64 << 10)
    x = synthetic(32, 10, 10, 32, seed=0)
    params = {"scores": "norm"} if method == "unified" else {}
    n = x.shape[0] * 100
    biggest = largest_allocation(lambda: framepress.compress(x, method, retention=0.1, **params))
    assert biggest < n * n * 4 / 16


def test_degenerate_inputs_are_defined():
    same = torch.ones(4, 5, 5, 8)
    out = framepress.compress(same, "unified", retention=0.1, scores=torch.ones(4, 5, 5))
    out.check()
    assert len(out) == 10  # one token survives selection (all others are copies), clusters fill the rest
    single = framepress.compress(torch.randn(1, 3, 3, 4), "unified", retention=0.5, scores="norm")
    assert len(single) == 4
    tiny = framepress.compress(torch.randn(3, 1, 1, 4), "unified", retention=1 / 3, scores=torch.rand(3, 1, 1))
    assert len(tiny) == 1 and tiny.sizes.tolist() == [1]  # a budget of 1: no cluster share (round(0.3) = 0)
    all_kept = framepress.compress(torch.randn(2, 2, 2, 4), "unified", retention=1.0, scores=torch.rand(2, 2, 2))
    assert len(all_kept) == 8


def test_determinism(video):
    x, scores = video
    a = framepress.compress(x, "unified", retention=0.02, scores=scores)
    b = framepress.compress(x, "unified", retention=0.02, scores=scores)
    assert torch.equal(a.features, b.features) and torch.equal(a.source, b.source)


def test_missing_or_bad_scores_say_how_to_get_them(video):
    x, _ = video
    with pytest.raises(ValueError, match="needs the parameter.*scores"):
        framepress.compress(x, "unified", retention=0.1)
    with pytest.raises(TypeError, match="vision encoder"):
        framepress.compress(x, "unified", retention=0.1, scores=[1, 2])
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        framepress.compress(x, "unified", retention=0.1, scores=torch.rand(8, 14))
    with pytest.raises(ValueError, match="scores must be one of 'norm'"):
        framepress.compress(x, "unified", retention=0.1, scores="attention")
    with pytest.raises(ValueError, match="needs a retention"):
        framepress.compress(x, "unified", scores="norm")


def test_text_aware_merge_keeps_the_most_important_and_averages_the_rest():
    from framepress.layer import LayerInputs
    from framepress.methods.unified import unified_merge

    g = torch.Generator().manual_seed(5)
    visual, text = torch.randn(12, 16, generator=g), torch.randn(4, 16, generator=g)
    attention = torch.rand(4, 12, generator=g)
    inputs = LayerInputs(visual, text, None, 18, _attention=lambda which, heads: attention)
    out = unified_merge(inputs, 5, lam=0.5)
    out.check()
    mm = lambda v: (v - v.min()) / (v.max() - v.min())  # noqa: E731
    cos = torch.nn.functional.cosine_similarity(visual[:, None], text[None], dim=-1).amax(1)
    importance = 0.5 * mm(attention.amax(0)) + 0.5 * mm(cos)
    kept = torch.sort(importance, descending=True).indices[:5].sort().values
    assert torch.equal(out.boxes[:, 2], kept) and len(out) == 5
    similar = torch.nn.functional.cosine_similarity(visual[:, None], visual[kept][None], dim=-1).argmax(1)
    similar[kept] = torch.arange(5)
    assert torch.equal(out.source, similar)
    for i in range(5):
        torch.testing.assert_close(out.features[i], visual[similar == i].mean(0))
    attention_only = unified_merge(LayerInputs(visual, text, None, 18, _attention=lambda which, heads: attention), 5, lam=0.0)
    assert torch.equal(attention_only.boxes[:, 2], torch.sort(attention.amax(0), descending=True).indices[:5].sort().values)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_unified_in_a_model_reads_a_percent_b_percent(family):
    from framepress.flops import LLM, prefill_flops
    from framepress.models.tiny import random_frames, tiny_model, video_inputs

    model = tiny_model(family)
    inputs = video_inputs(model, [random_frames(model, 4, seed=s) for s in (0, 1)])
    with framepress.apply(model, "unified", retention="50%/20%", inner_layer=2) as handle:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, suppress_tokens=[250, 251, 252, 253])
        record = handle.stats[-1]
        n = record["tokens_in"][0]
        assert record["stages"][0]["visual_out"] == [round(0.5 * n)] * 2
        assert record["stages"][1]["visual_out"] == [round(0.2 * n)] * 2
        counts = [record["layer_tokens"][0][0]] * 2 + [record["layer_tokens"][2][0]] * 2
        assert handle.flops() == [prefill_flops(counts, LLM.from_config(model.config))] * 2
    with framepress.apply(model, "unified", retention=0.5, inner_layer=2) as handle:  # a number: the paper's R=50%
        with torch.no_grad():
            model(**inputs)
        assert [s["visual_out"][0] for s in handle.stats[-1]["stages"]] == [round(0.5 * n), round(0.25 * n)]
    with pytest.raises(ValueError, match="inner_layer"):
        framepress.apply(model, "unified", retention=0.5)  # layer 18 of a 4-layer model
    assert "_framepress_patch" not in model.__dict__


def test_visionzip_keeps_dominant_tokens_per_frame_and_condenses_the_rest(video):
    x, scores = video
    out = framepress.compress(x, "visionzip", retention=0.1, scores=scores)
    out.check()
    budget = round(0.1 * 1568)
    assert len(out) == budget
    per_frame = torch.bincount(out.boxes[:, 0], minlength=8)
    assert per_frame.tolist() == [budget // 8 + (t < budget % 8) for t in range(8)]
    flat = x.reshape(-1, 64)
    reps = out.boxes[:, 0] * 196 + out.boxes[:, 1] * 14 + out.boxes[:, 2]
    for t in range(8):
        mine = reps[out.boxes[:, 0] == t]
        n_dom = int(int(per_frame[t]) * 54 / 64)  # the official split rounds down
        top = torch.sort(scores[t].reshape(-1), descending=True, stable=True).indices[:n_dom] + t * 196
        assert set(top.tolist()) <= set(mine.tolist())
    for i in torch.nonzero(out.sizes > 1).squeeze(1).tolist():  # contextual: target + mean of its others
        members = torch.nonzero(out.source == i).squeeze(1)
        others = members[members != reps[i]]
        torch.testing.assert_close(out.features[i], flat[reps[i]] + flat[others].mean(0), rtol=1e-5, atol=1e-5)
    mean = framepress.compress(x, "visionzip", retention=0.1, scores=scores, contextual="mean")
    for i in torch.nonzero(mean.sizes > 1).squeeze(1).tolist():
        torch.testing.assert_close(mean.features[i], flat[mean.source == i].mean(0), rtol=1e-5, atol=1e-5)
    few = framepress.compress(x, "visionzip", retention=3 / 1568, scores=scores)  # fewer tokens than frames
    assert len(few) == 3 and torch.bincount(few.boxes[:, 0], minlength=8).tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
