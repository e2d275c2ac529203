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
    flat = x.reshape(-1, 64)
    cos = ops.cosines_from_gram(ops.gram(flat))
    order = torch.sort(-scores.reshape(-1), stable=True).indices
    for limit in (1, 10, 88, 400):
        assert select_diverse(cos, order, tau, limit).tolist() == sequential_greedy(cos, order, tau, limit)


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
    d = ops.distances_from_gram(ops.gram(blobs), scale=1 / math.sqrt(8))
    centers, cluster = ops.dpc_knn(d, 3, k=7)
    assert centers.numel() == 3 and sorted((centers // 20).tolist()) == [0, 1, 2]
    assert all(len(set(cluster[i * 20 : (i + 1) * 20].tolist())) == 1 for i in range(3))
    assert torch.equal(cluster[centers], torch.arange(3))


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
