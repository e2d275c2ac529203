"""FastVID (specs/baselines.md §3): DySeg segments, per-frame salient tokens, DPC-KNN anchors and their merge."""

from __future__ import annotations

import math

import pytest
import torch

import framepress
from framepress import ops, registry
from framepress.features import synthetic
from framepress.methods.fastvid import allocate, even_split, fill, frame_features, segment_lengths

T, H, W, C = 8, 14, 14, 32
N = H * W


@pytest.fixture(scope="module")
def video():
    x = synthetic(T, H, W, C, seed=3)
    scores = torch.rand(T, H, W, generator=torch.Generator().manual_seed(1))
    return x, scores


def budget_of(x, retention):
    t, h, w, _ = x.shape
    return max(1, round(retention * t * h * w))


def reps_of(out):
    """Flat input index of each output token's representative."""
    _, h, w = out.grid
    return out.boxes[:, 0] * h * w + out.boxes[:, 1] * w + out.boxes[:, 2]


def split(budget, lengths, n, share):
    """The documented split, restated: per frame the salient slots (segment [a, b) gets floor(B b/T) -
    floor(B a/T) tokens, floor(share * that) context, the rest salient, spread evenly over its frames)."""
    total, salient, start = sum(lengths), [], 0
    for length in lengths:
        seg = budget * (start + length) // total - budget * start // total
        ctx = math.floor(share * seg + 1e-9)
        per = [(seg - ctx) * (i + 1) // length - (seg - ctx) * i // length for i in range(length)]
        assert max(per) - min(per) <= 1
        salient += per
        start += length
    return salient


def salient_and_anchors(out, scores, context_share=0.4):
    """The salient tokens (each frame's top-ranked ones, as many as the split gives) and the anchors (every
    other output token's representative)."""
    t_, h, w = out.grid
    n = h * w
    per = split(len(out), out.info["segments"], n, context_share)
    order = torch.sort(scores.reshape(t_, n), dim=1, descending=True, stable=True).indices
    salient = torch.cat([t * n + order[t, : per[t]] for t in range(t_)]).sort().values
    reps = reps_of(out)
    anchors = reps[~torch.isin(reps, salient)]
    return salient, anchors


def segment_of(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


# ---------------------------------------------------------------------------------------------------------------
# budget and token model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("retention", [0.01, 0.02, 0.05, 0.1, 0.25])
def test_exact_budget(video, retention):
    x, scores = video
    out = framepress.compress(x, "fastvid", retention, scores=scores)
    out.check()
    assert len(out) == budget_of(x, retention)
    assert out.info["salient"] + out.info["context"] == len(out)
    assert sum(out.info["segments"]) == T
    reps = reps_of(out)
    assert bool((reps[1:] > reps[:-1]).all()), "output in (t, y, x) order"
    assert torch.equal(out.source[reps], torch.arange(len(out))), "a representative goes into its own token"
    assert out.features.dtype == x.dtype


@pytest.mark.parametrize("retention", [0.5, 0.75, 1.0])
def test_high_retention_spills_context_over_the_segment_and_stays_exact(video, retention):
    x, scores = video
    out = framepress.compress(x, "fastvid", retention, scores=scores, min_segments=2)
    out.check()
    assert len(out) == budget_of(x, retention)
    _, anchors = salient_and_anchors(out, scores)
    spilled = not set((anchors // N).tolist()) <= anchor_frames(out.info["segments"], 4)
    assert spilled == (retention > 0.5), "context slots the anchor frames cannot hold go to other frames"
    if retention == 1.0:
        assert torch.equal(out.source, torch.arange(T * N))
        assert torch.equal(out.features, x.reshape(-1, C))


def test_registry_entry():
    spec = registry.get("fastvid")
    assert spec.budget == "exact" and spec.stage == "pre-llm" and not spec.query_aware
    assert spec.required == ("scores",)
    assert spec.params["min_segments"] == 8 and spec.params["tau"] == 0.9 and spec.params["context_share"] == 0.4
    assert spec.params["anchor_stride"] == 4 and spec.params["beta"] == 0.6 and spec.params["k"] == 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(video, dtype):
    x, scores = video
    out = framepress.compress(x.to(dtype), "fastvid", 0.1, scores=scores)
    out.check()
    assert len(out) == budget_of(x, 0.1) and out.features.dtype == dtype


def test_determinism(video):
    x, scores = video
    a = framepress.compress(x, "fastvid", 0.05, scores=scores)
    b = framepress.compress(x.clone(), "fastvid", 0.05, scores=scores.clone())
    assert torch.equal(a.features, b.features) and torch.equal(a.source, b.source)
    assert torch.equal(a.boxes, b.boxes) and a.info == b.info


def test_norm_scores(video):
    x, _ = video
    out = framepress.compress(x, "fastvid", 0.1, scores="norm")
    same = framepress.compress(x, "fastvid", 0.1, scores=x.norm(dim=-1))
    assert torch.equal(out.source, same.source)


# ---------------------------------------------------------------------------------------------------------------
# DySeg
# ---------------------------------------------------------------------------------------------------------------


def test_dyseg_cuts_at_a_hard_scene_cut():
    x = synthetic(16, H, W, C, seed=0, cuts=(0.5,))
    scores = torch.rand(16, H, W, generator=torch.Generator().manual_seed(0))
    # only the tau rule: the one transition below 0.9 is the scene cut
    out = framepress.compress(x, "fastvid", 0.1, scores=scores, min_segments=1)
    assert out.info["segments"] == [8, 8]
    # the defaults (at least 8 segments): the scene cut is one of the boundaries
    lengths = framepress.compress(x, "fastvid", 0.1, scores=scores).info["segments"]
    assert len(lengths) >= 8 and 8 in torch.tensor(lengths).cumsum(0).tolist()
    x3 = synthetic(32, H, W, C, seed=1)  # scene cuts at frames 10 and 21
    bounds = torch.tensor(segment_lengths(frame_features(x3), 8, 0.9)).cumsum(0).tolist()
    assert {10, 21} <= set(bounds)


def test_dyseg_rule():
    # transitions' cosines: frame i vs i+1 of features at angles; the lowest c-1 and every one below tau are cut
    angles = torch.tensor([0.0, 0.1, 0.25, 1.2, 1.3, 1.36, 2.5, 2.62])  # steps .1 .15 .95 .1 .06 1.14 .12
    g = torch.stack([angles.cos(), angles.sin()], 1)
    assert segment_lengths(g, 1, 0.9) == [3, 3, 2]  # below tau: the steps of .95 and 1.14
    assert segment_lengths(g, 2, -1.0) == [6, 2]  # the lowest transition only
    assert segment_lengths(g, 4, -1.0) == [2, 1, 3, 2]  # the 3 lowest
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])
    assert segment_lengths(torch.stack([u, v, u, v]), 2, -1.0) == [1, 3]  # tied transitions: the earliest
    assert segment_lengths(g, 100, 0.9) == [1] * 8  # more segments asked than frames: every frame its own
    assert segment_lengths(g[:1], 8, 0.9) == [1]


# ---------------------------------------------------------------------------------------------------------------
# STPrune: salient tokens, anchors, merging
# ---------------------------------------------------------------------------------------------------------------


def test_salient_tokens_are_each_frames_top_tokens(video):
    x, scores = video
    out = framepress.compress(x, "fastvid", 0.1, scores=scores, context_share=0.0)
    assert out.info["context"] == 0
    reps = reps_of(out)
    per = torch.bincount(reps // N, minlength=T)
    bounds = [0, *torch.tensor(out.info["segments"]).cumsum(0).tolist()]
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert int(per[a:b].max() - per[a:b].min()) <= 1, "salient tokens spread evenly over a segment"
    for t in range(T):
        top = torch.sort(scores[t].reshape(-1), descending=True, stable=True).indices[: int(per[t])]
        assert sorted((t * N + top).tolist()) == reps[reps // N == t].tolist()
    assert bool((out.sizes == 1).all()) and torch.equal(out.features, x.reshape(-1, C)[reps])
    # with the default share every frame still keeps its top tokens, untouched
    out = framepress.compress(x, "fastvid", 0.1, scores=scores)
    salient, anchors = salient_and_anchors(out, scores)
    assert salient.numel() == out.info["salient"] and anchors.numel() == out.info["context"]
    slots = out.source[salient]
    assert bool((slots >= 0).all()) and bool((out.sizes[slots] == 1).all())
    assert torch.equal(out.features[slots], x.reshape(-1, C)[salient])


def anchor_frames(lengths, stride):
    frames, start = set(), 0
    for length in lengths:
        frames |= set(range(start + length - 1, start - 1, -stride))
        start += length
    return frames


@pytest.mark.parametrize("retention", [0.05, 0.1, 0.25])
def test_anchors_are_density_peaks_of_anchor_frames(retention):
    x = synthetic(24, H, W, C, seed=5)
    scores = torch.rand(24, H, W, generator=torch.Generator().manual_seed(2))
    out = framepress.compress(x, "fastvid", retention, scores=scores, min_segments=3)
    assert max(out.info["segments"]) > 4, "some segment has several anchor frames"
    salient, anchors = salient_and_anchors(out, scores)
    frames = anchor_frames(out.info["segments"], 4)
    assert set((anchors // N).tolist()) <= frames
    seg = segment_of(out.info["segments"])
    per = torch.bincount(anchors // N, minlength=24)
    for s in range(len(out.info["segments"])):
        counts = per[[f for f in sorted(frames) if seg[f] == s]]
        assert int(counts.max() - counts.min()) <= 1, "context slots spread evenly over a segment's anchor frames"
    flat = x.reshape(-1, C)
    is_salient = torch.zeros(24 * N, dtype=torch.bool)
    is_salient[salient] = True
    for t in sorted(set((anchors // N).tolist())):
        local = torch.nonzero(~is_salient[t * N : (t + 1) * N]).squeeze(1) + t * N
        distances = torch.cdist(flat[local].double(), flat[local].double()) / math.sqrt(C)
        want = anchors[anchors // N == t]
        centers, _ = ops.dpc_knn(distances, want.numel(), k=4)
        assert local[centers].tolist() == want.tolist()


@pytest.mark.parametrize("beta", [0.6, 0.3, 0.0, 1.0])
def test_each_token_is_the_beta_blend_of_its_anchor_and_members(video, beta):
    """Every output token equals beta' * rep + (1 - beta') * mean(members), beta' = max(beta, 1/(n+1)), n its
    members (the representative included): for a salient token (n = 1) that is itself."""
    x, scores = video
    out = framepress.compress(x, "fastvid", 0.1, scores=scores, beta=beta, min_segments=3)
    flat = x.reshape(-1, C).double()
    reps = reps_of(out)
    assert int((out.sizes > 1).sum()) > 0
    for i in range(len(out)):
        members = torch.nonzero(out.source == i).squeeze(1)
        n = members.numel()
        w = max(beta, 1 / (n + 1))
        want = w * flat[reps[i]] + (1 - w) * flat[members].mean(0)
        torch.testing.assert_close(out.features[i].double(), want, rtol=1e-5, atol=1e-5)


def test_merged_tokens_go_to_the_most_similar_anchor_of_their_own_segment(video):
    x, scores = video
    out = framepress.compress(x, "fastvid", 0.1, scores=scores, min_segments=3)
    salient, anchors = salient_and_anchors(out, scores)
    seg = segment_of(out.info["segments"]).repeat_interleave(N)
    reps = reps_of(out)
    is_salient = torch.zeros(T * N, dtype=torch.bool)
    is_salient[salient] = True
    assert torch.equal(out.source[salient], torch.searchsorted(reps, salient)), "salient tokens stay alone"
    others = torch.nonzero(~is_salient).squeeze(1)
    unit = ops.normalize(x.reshape(-1, C).double())
    for i in others.tolist():
        seg_anchors = anchors[seg[anchors] == seg[i]]
        if seg_anchors.numel() == 0:
            assert out.source[i] == -1
            continue
        assert out.source[i] >= 0
        target = reps[out.source[i]]
        assert target in seg_anchors, "a merged token goes into an anchor of its own segment"
        if target == i:
            continue  # an anchor is its own
        cos = unit[seg_anchors] @ unit[i]
        assert float(unit[target] @ unit[i]) >= float(cos.max()) - 1e-6, "not its most similar anchor"


# ---------------------------------------------------------------------------------------------------------------
# the split of the budget
# ---------------------------------------------------------------------------------------------------------------


def test_split_helpers():
    assert even_split(5, 4) == [1, 1, 1, 2] and even_split(0, 3) == [0, 0, 0] and even_split(9, 3) == [3, 3, 3]
    assert fill(7, [5, 1, 5]) == ([3, 1, 3], 0)
    assert fill(2, [5, 5, 5]) == ([1, 1, 0], 0)
    assert fill(20, [5, 1, 5]) == ([5, 1, 5], 9)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        n = int(torch.randint(1, 30, (1,), generator=g))
        lengths = torch.randint(1, 7, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
        total = sum(lengths)
        budget = int(torch.randint(1, total * n + 1, (1,), generator=g))
        share, stride = float(torch.rand(1, generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        salient, anchors = allocate(budget, lengths, n, share, stride)
        assert sum(salient) + sum(anchors) == budget
        assert all(s + a <= n for s, a in zip(salient, anchors))
        assert salient == split(budget, lengths, n, share)


# ---------------------------------------------------------------------------------------------------------------
# degenerate inputs
# ---------------------------------------------------------------------------------------------------------------


def run(x, budget, **params):
    params.setdefault("scores", torch.rand(x.shape[:3], generator=torch.Generator().manual_seed(7)))
    out = registry.get("fastvid").fn(x, budget, **params)
    out.check()
    assert len(out) == budget
    return out


def test_budget_below_the_number_of_frames_and_segments(video):
    x, _ = video
    for budget in range(1, 2 * T + 1):
        out = run(x, budget)
        assert len(out.info["segments"]) == 8
        if budget <= T:  # one token in as many frames, spread evenly over the video
            assert torch.bincount(out.boxes[:, 0], minlength=T).max() == 1
    out = run(x, 3)
    assert out.boxes[:, 0].tolist() == [2, 5, 7]


def test_single_frame_and_tiny_grids():
    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 5, 6, 4, generator=g)
    for budget in (1, 2, 7, 15, 30):
        assert run(one, budget).info["segments"] == [1]
    for shape in ((8, 1, 1, 3), (8, 1, 5, 3), (5, 4, 1, 3), (1, 1, 1, 3)):
        x = torch.randn(*shape, generator=g)
        for budget in sorted({1, shape[0], shape[0] * shape[1] * shape[2] // 2 or 1, shape[0] * shape[1] * shape[2]}):
            run(x, budget)


def test_identical_tokens():
    same = torch.ones(6, 4, 4, 8)
    for budget in (1, 5, 10, 48, 96):
        out = run(same, budget, scores=torch.ones(6, 4, 4))
        assert torch.equal(out.features, torch.ones(budget, 8))
    zeros = torch.zeros(6, 4, 4, 8)
    out = run(zeros, 20, scores="norm")
    assert torch.equal(out.features, torch.zeros(20, 8))


def test_segments_without_context_slots_drop_their_other_tokens(video):
    x, scores = video
    # 2 tokens a frame: floor(0.4 * 2) = 0 context in every one-frame segment
    out = run(x, 2 * T, scores=scores)
    assert out.info["context"] == 0 and out.info["segments"] == [1] * 8
    assert int((out.source >= 0).sum()) == 2 * T and bool((out.sizes == 1).all())
    # no context share at all: nothing merged, whatever the segments
    out = run(x, 100, scores=scores, context_share=0.0, min_segments=2)
    assert out.info["context"] == 0 and int((out.source >= 0).sum()) == 100
    # only context: no salient tokens, every token of a segment with anchors goes somewhere
    out = run(x, 40, scores=scores, context_share=1.0, min_segments=2)
    assert out.info["salient"] == 0 and bool((out.source >= 0).all())


def test_anchor_stride_one_and_huge(video):
    x, scores = video
    for stride in (1, 2, 100):
        out = run(x, 100, scores=scores, anchor_stride=stride, min_segments=2)
        _, anchors = salient_and_anchors(out, scores)
        assert set((anchors // N).tolist()) <= anchor_frames(out.info["segments"], stride)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------


def test_errors(video):
    x, scores = video
    with pytest.raises(ValueError, match="needs the parameter.*scores"):
        framepress.compress(x, "fastvid", 0.1)
    with pytest.raises(ValueError, match=r"scores must have shape \[T, H, W\]"):
        framepress.compress(x, "fastvid", 0.1, scores=torch.rand(T, N))
    with pytest.raises(TypeError, match="scores"):
        framepress.compress(x, "fastvid", 0.1, scores=[1.0, 2.0])
    with pytest.raises(ValueError, match="scores"):
        framepress.compress(x, "fastvid", 0.1, scores="attention")
    with pytest.raises(ValueError, match="needs a retention"):
        framepress.compress(x, "fastvid", scores=scores)
    for name, value in [
        ("min_segments", 0),
        ("tau", 1.5),
        ("tau", float("nan")),
        ("context_share", -0.1),
        ("context_share", 1.01),
        ("anchor_stride", 0),
        ("beta", 1.5),
        ("k", 0),
    ]:
        with pytest.raises(ValueError, match=name):
            framepress.compress(x, "fastvid", 0.1, scores=scores, **{name: value})
    with pytest.raises(TypeError, match="min_segments"):
        framepress.compress(x, "fastvid", 0.1, scores=scores, min_segments=2.5)
    with pytest.raises(ValueError, match="budget"):
        registry.get("fastvid").fn(x, T * N + 1, scores=scores)
    with pytest.raises(ValueError, match="unknown parameter"):
        framepress.compress(x, "fastvid", 0.1, scores=scores, DySeg_c=8)
