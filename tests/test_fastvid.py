"""FastVID (specs/baselines.md §3) against the official code: the golden vectors of both forks (tests/data/fastvid,
see its PROVENANCE), the official counts and merge rules restated, the documented behaviour where the official
code raises, ``allocation="exact"`` and thread-count independence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framepress
from framepress import ops, registry
from framepress.features import synthetic
from framepress.methods.fastvid import (
    allocate,
    anchor_offsets,
    fill,
    frame_features,
    merges_alone,
    segment_lengths,
    spread,
)

GOLDEN = Path(__file__).parent / "data" / "fastvid"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
CASES = [c for c in MANIFEST["cases"] if c["output"]]
FORK = {"fastvid_llavaonevision": "onevision", "fastvid_llavavideo": "llavavideo"}

T, H, W, C = 8, 14, 14, 32
N = H * W


def load(name):
    data = np.load(GOLDEN / name)
    return {k: torch.from_numpy(data[k]) for k in data.files}


def call_of(case, inputs):
    """The framepress call of a golden case (golden README, "A case as a framepress call")."""
    p = case["official_params"]
    return dict(
        scores=inputs["scores"], min_segments=p["c"], tau=p["tau"], context_share=p["d"], anchor_stride=p["p"],
        beta=p["beta"], k=4, fork=FORK[case["fork"]],
    )


def reps_of(out):
    """Flat input index of each output token's representative."""
    _, h, w = out.grid
    return out.boxes[:, 0] * h * w + out.boxes[:, 1] * w + out.boxes[:, 2]


@pytest.fixture(scope="module")
def video():
    x = synthetic(T, H, W, C, seed=3)
    scores = torch.rand(T, H, W, generator=torch.Generator().manual_seed(1))
    return x, scores


# ---------------------------------------------------------------------------------------------------------------
# the official outputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("glob", ["mean", "map"])
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_the_official_code(case, glob):
    """Count, kept positions and features (to 1e-4) equal the official run; ``glob_mean`` is framepress's own
    stand-in (the default), ``glob_map`` a MAP-head-like global feature passed as ``frame_features``."""
    inputs, want = load(case["input"]), load(case["output"])
    suffix = "" if glob == "mean" else "_map"
    extra = {} if glob == "mean" else {"frame_features": inputs["glob_map"]}
    x = inputs["x"]
    out = framepress.compress(x, "fastvid", case["retention"], **call_of(case, inputs), **extra)
    out.check()
    _, h, w, _ = x.shape
    assert out.info["segments"] == want["segments" + suffix].tolist()
    assert torch.equal(reps_of(out), want["rep_t" + suffix] * h * w + want["rep_pos" + suffix])
    torch.testing.assert_close(out.features, want["features" + suffix], rtol=0, atol=1e-4)
    if glob == "mean":
        assert len(out) == case["count"]
        assert (out.info["salient"], out.info["context"]) == (case["salient"], case["context"])


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_official_slots_per_frame(case):
    """The salient and anchor counts of each frame are the official ones (manifest)."""
    t, h, w = case["grid"]
    budget = max(1, round(case["retention"] * t * h * w))
    p = case["official_params"]
    salient, anchors = allocate(
        [budget // t] * t, case["segments"], h * w, p["d"], p["p"], FORK[case["fork"]], official=True
    )
    assert salient == case["frame_salient_slots"] and anchors == case["frame_context_slots"]
    assert budget // t == case["frame_retain_num"]


def test_official_crash_case_gives_valid_tokens():
    """c00: one frame, fewer than c = 8 (the official ``torch.topk`` raises): one segment, the official counts."""
    (case,) = [c for c in MANIFEST["cases"] if c.get("official_error")]
    inputs = load(case["input"])
    out = framepress.compress(inputs["x"], "fastvid", case["retention"], **call_of(case, inputs))
    out.check()
    assert out.info["segments"] == [1]
    assert len(out) <= round(case["retention"] * 196)


@pytest.mark.parametrize("fork", ["onevision", "llavavideo"])
def test_thread_count_does_not_change_the_output(fork, on_threads):
    inputs = load("in_t64_13_c64_video.npz")
    a, b = (on_threads(n, lambda: framepress.compress(inputs["x"], "fastvid", 0.1, scores=inputs["scores"], fork=fork))
            for n in (1, 2))
    assert torch.equal(a.features, b.features) and torch.equal(a.source, b.source) and torch.equal(a.boxes, b.boxes)


# ---------------------------------------------------------------------------------------------------------------
# the official counts
# ---------------------------------------------------------------------------------------------------------------


def test_onevision_counts():
    # R = 19, S = 19 - int(7.6) = 12, X = 7; a segment of L frames: (7 L) // ceil(L / 4) on each anchor frame
    salient, anchors = allocate([19] * 12, [1, 5, 6], 196, 0.4, 4, "onevision", official=True)
    assert salient == [12] * 12
    assert anchors == [7] + [17, 0, 0, 0, 17] + [0, 21, 0, 0, 0, 21]
    assert anchor_offsets(6, 4) == [1, 5] and anchor_offsets(1, 4) == [0] and anchor_offsets(5, 1) == [0, 1, 2, 3, 4]
    # frames holding exactly X anchors merge alone: one-frame segments, stride 1, and (X L) // A == X by chance
    assert merges_alone([1, 5, 6], 19, 0.4, 4) == [True, False, False]
    assert merges_alone([3, 5], 19, 0.4, 1) == [True, True]
    assert merges_alone([3, 4], 3, 0.4, 2) == [True, False]  # X = 1: (1 * 3) // 2 = 1


def test_llavavideo_counts():
    # R = 16, a segment of 5: int(80 * 0.4) = 32 anchors over frames 0 and 4 (the last one more when odd), 48
    # salient over 5 frames (the first ones one more)
    salient, anchors = allocate([16] * 5, [5], 169, 0.4, 4, "llavavideo", official=True)
    assert salient == [10, 10, 10, 9, 9] and anchors == [16, 0, 0, 0, 16]
    salient, anchors = allocate([42] * 6, [6], 169, 0.4, 4, "llavavideo", official=True)
    assert salient == [26, 26, 25, 25, 25, 25] and anchors == [0, 50, 0, 0, 0, 50]  # int(252 * .4) = 100
    assert spread(7, 3, extra_last=True) == [2, 2, 3] and spread(7, 3, extra_last=False) == [3, 2, 2]


def test_anchors_beyond_a_frame_spill_over_the_segment():
    """Where the official code raises (more anchors than an anchor frame's non-salient tokens), the extra go to
    the segment's other frames, spread evenly (the extra ones to the latest); the count is the official rule's."""
    salient, anchors = allocate([12] * 4, [4], 16, 0.5, 4, "onevision", official=True)
    assert salient == [6] * 4 and sum(anchors) == 24 and anchors == [4, 5, 5, 10]
    assert fill(7, [5, 1, 5]) == ([3, 1, 3], 0) and fill(20, [5, 1, 5]) == ([5, 1, 5], 9)


# ---------------------------------------------------------------------------------------------------------------
# the official merge rules, restated token by token
# ---------------------------------------------------------------------------------------------------------------


def expected_features(x, out, scores, fork, context_share=0.4, anchor_stride=4, beta=0.6):
    """Each output token from the official rules, restated in plain loops: salient tokens as they are; for each
    anchor frame f of a segment (each frame alone where the official code merges alone), every candidate token
    joins f's most similar anchor; an anchor is w a + (1 - w) mean(members), w = max(1 / (n + 1), beta)."""
    t_, h, w = out.grid
    n = h * w
    flat = x.reshape(-1, x.shape[-1]).double()
    unit = ops.normalize(flat)
    lengths = out.info["segments"]
    retain = [out.info["per_frame"]] * t_
    salient_n, _ = allocate(retain, lengths, n, context_share, anchor_stride, fork, official=True)
    order = torch.sort(scores.reshape(t_, n), dim=1, descending=True, stable=True).indices
    salient = set(torch.cat([t * n + order[t, : salient_n[t]] for t in range(t_)]).tolist())
    reps = reps_of(out).tolist()
    anchors = [r for r in reps if r not in salient]
    alone = merges_alone(lengths, retain[0], context_share, anchor_stride) if fork == "onevision" else [False] * len(lengths)
    want = {r: flat[r] for r in reps}
    start = 0
    for length, own in zip(lengths, alone):
        for f in range(start, start + length):
            mine = [a for a in anchors if a // n == f]
            if not mine:
                continue
            frames = [f] if own else range(start, start + length)
            cands = [i for g in frames for i in range(g * n, (g + 1) * n) if i not in salient]
            if fork == "llavavideo":
                cands = [i for i in cands if i not in mine]
            members = {a: [] for a in mine}
            for i in cands:
                members[mine[int((unit[mine] @ unit[i]).argmax())]].append(i)
            for a, m in members.items():
                if m:
                    wa = max(1 / (len(m) + 1), beta)
                    want[a] = wa * flat[a] + (1 - wa) * flat[m].mean(0)
        start += length
    return torch.stack([want[r] for r in reps])


@pytest.mark.parametrize("fork", ["onevision", "llavavideo"])
@pytest.mark.parametrize("anchor_stride", [4, 2, 1])
def test_merge_rules_restated(fork, anchor_stride):
    x = synthetic(16, 6, 7, 8, seed=5)
    scores = torch.rand(16, 6, 7, generator=torch.Generator().manual_seed(2))
    out = framepress.compress(
        x, "fastvid", 0.3, scores=scores, min_segments=2, fork=fork, anchor_stride=anchor_stride, tau=-1.0
    )
    assert max(out.info["segments"]) > anchor_stride, "some segment has several anchor frames"
    got = expected_features(x, out, scores, fork, anchor_stride=anchor_stride)
    torch.testing.assert_close(out.features.double(), got, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# budgets
# ---------------------------------------------------------------------------------------------------------------


def test_official_undershoot_on_the_golden_inputs():
    """The official rule keeps fewer tokens than the budget (numbers in the module docstring)."""
    clip = load("in_t32_14_c64_static.npz")
    long = load("in_t64_13_c64_video.npz")
    counts = {
        (name, r, fork): len(framepress.compress(v["x"], "fastvid", r, scores=v["scores"], fork=fork))
        for name, v, r in (("32x14x14", clip, 0.1), ("32x14x14", clip, 0.02), ("64x13x13", long, 0.1))
        for fork in ("onevision", "llavavideo")
    }
    assert counts == {
        ("32x14x14", 0.1, "onevision"): 607, ("32x14x14", 0.1, "llavavideo"): 608,  # of 627
        ("32x14x14", 0.02, "onevision"): 95, ("32x14x14", 0.02, "llavavideo"): 96,  # of 125
        ("64x13x13", 0.1, "onevision"): 1024, ("64x13x13", 0.1, "llavavideo"): 1024,  # of 1082
    }
    exact = framepress.compress(clip["x"], "fastvid", 0.02, scores=clip["scores"], allocation="exact")
    assert len(exact) == 125


small = st.tuples(st.integers(1, 10), st.integers(1, 6), st.integers(1, 6), st.integers(1, 5))
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(
    shape=small,
    seed=st.integers(0, 10_000),
    retention=st.floats(0.001, 1.0),
    fork=st.sampled_from(["onevision", "llavavideo"]),
    min_segments=st.integers(1, 6),
    anchor_stride=st.integers(1, 5),
    context_share=st.sampled_from([0.0, 0.4, 0.5, 1.0]),
    kind=st.sampled_from(["smooth", "levels"]),
)
def test_exact_allocation_returns_the_budget(shape, seed, retention, fork, min_segments, anchor_stride, context_share, kind):
    t, h, w, c = shape
    g = torch.Generator().manual_seed(seed)
    x = synthetic(t, h, w, c, seed=seed) if kind == "smooth" else torch.randint(-1, 2, (t, h, w, c), generator=g).float()
    scores = torch.rand(t, h, w, generator=g)
    params = dict(scores=scores, fork=fork, min_segments=min_segments, anchor_stride=anchor_stride, context_share=context_share)
    budget = max(1, round(retention * (t * h * w)))
    exact = framepress.compress(x, "fastvid", retention, allocation="exact", **params)
    exact.check()
    assert len(exact) == budget
    assert exact.info["salient"] + exact.info["context"] == budget
    official = framepress.compress(x, "fastvid", retention, **params)
    official.check()
    assert len(official) <= budget
    # with R + 1 or R tokens a frame, each frame keeps at least its official salient tokens, the same segments
    assert exact.info["segments"] == official.info["segments"]
    if budget % t == 0 and (fork == "llavavideo" or anchor_stride == 1):  # no official floor to make up
        assert torch.equal(exact.features, official.features) and torch.equal(exact.source, official.source)


@PROPS
@given(shape=small, seed=st.integers(0, 10_000), retention=st.floats(0.001, 1.0), fork=st.sampled_from(["onevision", "llavavideo"]))
def test_exact_salient_tokens_are_each_frames_top_tokens_kept_as_they_are(shape, seed, retention, fork):
    t, h, w, c = shape
    n = h * w
    x = synthetic(t, h, w, c, seed=seed)
    scores = torch.rand(t, h, w, generator=torch.Generator().manual_seed(seed))
    out = framepress.compress(x, "fastvid", retention, scores=scores, fork=fork, allocation="exact", min_segments=2)
    budget = max(1, round(retention * (t * n)))
    retain = [budget * (f + 1) // t - budget * f // t for f in range(t)]
    salient_n, anchors_n = allocate(retain, out.info["segments"], n, 0.4, 4, fork, official=False)
    assert sum(salient_n) + sum(anchors_n) == budget
    order = torch.sort(scores.reshape(t, n), dim=1, descending=True, stable=True).indices
    salient = torch.cat([f * n + order[f, : salient_n[f]] for f in range(t)])
    slots = out.source[salient]
    assert bool((slots >= 0).all()) and bool((out.sizes[slots] == 1).all())
    assert torch.equal(out.features[slots], x.reshape(-1, c)[salient])
    assert torch.equal(torch.bincount(reps_of(out) // n, minlength=t), torch.tensor(salient_n) + torch.tensor(anchors_n))


# ---------------------------------------------------------------------------------------------------------------
# where the official code raises
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fork", ["onevision", "llavavideo"])
def test_no_anchor_slot_keeps_the_salient_tokens_only(video, fork):
    x, scores = video
    out = framepress.compress(x, "fastvid", 0.01, scores=scores, fork=fork)  # R = 1 (2 tokens: R = 2), no anchor
    out.check()
    assert out.info["context"] == 0 and bool((out.sizes == 1).all())
    assert len(out) == T * (round(0.01 * T * N) // T)
    none = framepress.compress(x, "fastvid", 0.1, scores=scores, fork=fork, context_share=0.0)
    assert none.info["context"] == 0 and len(none) == T * 19


@pytest.mark.parametrize("fork", ["onevision", "llavavideo"])
def test_high_retention_spills_and_stays_valid(fork):
    x = synthetic(16, 7, 6, 8, seed=1)
    scores = torch.rand(16, 7, 6, generator=torch.Generator().manual_seed(0))
    for retention in (0.5, 0.75, 1.0):
        out = framepress.compress(x, "fastvid", retention, scores=scores, fork=fork, min_segments=2, tau=-1.0)
        out.check()
        assert len(out) <= round(retention * 16 * 42)
        exact = framepress.compress(x, "fastvid", retention, scores=scores, fork=fork, min_segments=2, tau=-1.0, allocation="exact")
        assert len(exact) == round(retention * 16 * 42)
    assert torch.equal(exact.features, x.reshape(-1, 8)) and torch.equal(exact.source, torch.arange(16 * 42))


def test_zero_per_frame_slots_use_the_exact_split(video):
    x, scores = video
    out = framepress.compress(x, "fastvid", 3 / (T * N), scores=scores)  # 3 tokens for 8 frames: R = 0
    assert len(out) == 3 and out.boxes[:, 0].tolist() == [2, 5, 7]


# ---------------------------------------------------------------------------------------------------------------
# DySeg and the global features
# ---------------------------------------------------------------------------------------------------------------


def test_dyseg_cuts_at_a_hard_scene_cut():
    x = synthetic(16, H, W, C, seed=0, cuts=(0.5,))
    scores = torch.rand(16, H, W, generator=torch.Generator().manual_seed(0))
    out = framepress.compress(x, "fastvid", 0.1, scores=scores, min_segments=1)
    assert out.info["segments"] == [8, 8]
    lengths = framepress.compress(x, "fastvid", 0.1, scores=scores).info["segments"]
    assert len(lengths) >= 8 and 8 in torch.tensor(lengths).cumsum(0).tolist()


def test_dyseg_rule():
    angles = torch.tensor([0.0, 0.1, 0.25, 1.2, 1.3, 1.36, 2.5, 2.62])  # steps .1 .15 .95 .1 .06 1.14 .12
    g = torch.stack([angles.cos(), angles.sin()], 1)
    assert segment_lengths(g, 1, 0.9) == [3, 3, 2]  # below tau: the steps of .95 and 1.14
    assert segment_lengths(g, 2, -1.0) == [6, 2]  # the lowest transition only
    assert segment_lengths(g, 4, -1.0) == [2, 1, 3, 2]  # the 3 lowest
    u, v = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])
    assert segment_lengths(torch.stack([u, v, u, v]), 2, -1.0) == [1, 3]  # tied transitions: the earliest
    assert segment_lengths(g, 100, 0.9) == [1] * 8  # fewer frames than c (the official code raises): all cut
    assert segment_lengths(g[:1], 8, 0.9) == [1]


def test_frame_features_drive_dyseg_only(video):
    x, scores = video
    default = framepress.compress(x, "fastvid", 0.1, scores=scores)
    same = framepress.compress(x, "fastvid", 0.1, scores=scores, frame_features=frame_features(x))
    assert torch.equal(default.features, same.features) and default.info == same.info
    # a global feature with one sharp change: the cut lands there, the per-segment rules follow
    g = torch.zeros(T, 3)
    g[:5, 0], g[5:, 1] = 1.0, 1.0
    out = framepress.compress(x, "fastvid", 0.1, scores=scores, frame_features=g, min_segments=1)
    assert out.info["segments"] == [5, 3]


# ---------------------------------------------------------------------------------------------------------------
# registry, dtypes, determinism, degenerate inputs, errors
# ---------------------------------------------------------------------------------------------------------------


def test_registry_entry():
    spec = registry.get("fastvid")
    assert spec.budget == "official" and spec.stage == "pre-llm" and not spec.query_aware
    assert spec.required == ("scores",)
    assert spec.params == {
        "scores": spec.params["scores"], "min_segments": 8, "tau": 0.9, "context_share": 0.4, "anchor_stride": 4,
        "beta": 0.6, "k": 4, "fork": "onevision", "allocation": "official", "frame_features": None,
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(video, dtype):
    x, scores = video
    out = framepress.compress(x.to(dtype), "fastvid", 0.1, scores=scores)
    out.check()
    assert len(out) == len(framepress.compress(x, "fastvid", 0.1, scores=scores)) and out.features.dtype == dtype


def test_determinism_and_norm_scores(video):
    x, scores = video
    a = framepress.compress(x, "fastvid", 0.05, scores=scores)
    b = framepress.compress(x.clone(), "fastvid", 0.05, scores=scores.clone())
    assert torch.equal(a.features, b.features) and torch.equal(a.source, b.source) and a.info == b.info
    out = framepress.compress(x, "fastvid", 0.1, scores="norm")
    assert torch.equal(out.source, framepress.compress(x, "fastvid", 0.1, scores=x.norm(dim=-1)).source)


def test_identical_tokens_and_tiny_grids():
    same = torch.ones(6, 4, 4, 8)
    for retention in (0.1, 0.5, 1.0):
        for allocation in ("official", "exact"):
            out = framepress.compress(same, "fastvid", retention, scores=torch.ones(6, 4, 4), allocation=allocation)
            out.check()
            assert torch.equal(out.features, torch.ones(len(out), 8))
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 5, 6, 4), (8, 1, 1, 3), (8, 1, 5, 3), (5, 4, 1, 3), (1, 1, 1, 3)):
        x = torch.randn(*shape, generator=g)
        for retention in (1e-3, 0.3, 1.0):
            for fork in ("onevision", "llavavideo"):
                framepress.compress(x, "fastvid", retention, scores="norm", fork=fork).check()


def test_errors(video):
    x, scores = video
    with pytest.raises(ValueError, match="needs the parameter.*scores"):
        framepress.compress(x, "fastvid", 0.1)
    with pytest.raises(ValueError, match=r"scores must have shape \[T, H, W\]"):
        framepress.compress(x, "fastvid", 0.1, scores=torch.rand(T, N))
    with pytest.raises(ValueError, match="needs a retention"):
        framepress.compress(x, "fastvid", scores=scores)
    for name, value in [
        ("min_segments", 0), ("tau", 1.5), ("tau", float("nan")), ("context_share", 1.01), ("anchor_stride", 0),
        ("beta", 1.5), ("k", 0), ("fork", "qwen"), ("allocation", "floor"),
    ]:
        with pytest.raises(ValueError, match=name):
            framepress.compress(x, "fastvid", 0.1, scores=scores, **{name: value})
    with pytest.raises(TypeError, match="frame_features"):
        framepress.compress(x, "fastvid", 0.1, scores=scores, frame_features=[[1.0]])
    for bad in (torch.rand(T + 1, 4), torch.rand(T), torch.full((T, 4), float("nan")), torch.ones(T, 4, dtype=torch.long)):
        with pytest.raises(ValueError, match="frame_features"):
            framepress.compress(x, "fastvid", 0.1, scores=scores, frame_features=bad)
    with pytest.raises(ValueError, match="unknown parameter"):
        framepress.compress(x, "fastvid", 0.1, scores=scores, DySeg_c=8)
