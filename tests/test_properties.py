"""Property tests (hypothesis) for every registered compression method and for the token model.

The generic tests are parametrized over ``framepress.methods()``, so a newly registered method is covered
without editing this file: it gets its budget checked by its registry ``budget`` kind, its tokens checked
against the token model, and its determinism checked. Method-specific properties (STTM, pool, frames,
random) follow.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

import framepress
from framepress import registry
from framepress.features import synthetic
from framepress.methods.sttm import GROUPINGS, INVALID_SLOTS, VARIANTS, level_sizes

# ---------------------------------------------------------------------------------------------------------------
# settings and strategies
# ---------------------------------------------------------------------------------------------------------------

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=40, **SETTINGS)
SOME = settings(max_examples=50, **SETTINGS)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
METHODS = framepress.methods("pre-llm")
#: Methods that cannot run without a budget; any other method must run with its defaults (retention=None).
NEEDS_BUDGET = {"random", "unified", "visionzip", "holitom", "fastvid", "divprune"}
#: "exact" methods with a floor below which they refuse a budget (DyCoke keeps every window's first frame)
HAS_MINIMUM = {"dycoke"}
#: Relative precision of each dtype, for comparisons of computed means.
EPS = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _required(name: str) -> tuple[str, ...]:
    return registry.get(name).required


def _inputs_for(name: str, x: torch.Tensor) -> dict:
    """Required parameters the generic tests can supply: vision ``scores`` (seeded random [T, H, W]); a method
    needing anything else is skipped."""
    req = set(_required(name))
    if req - {"scores"}:
        pytest.skip(f"method {name!r} needs parameter(s) {sorted(req)} the generic tests cannot supply")
    if "scores" in req:
        return {"scores": torch.rand(x.shape[:3], generator=torch.Generator().manual_seed(x.numel()))}
    return {}


@st.composite
def videos(draw, max_t=16, max_hw=20, max_c=8, dtypes=DTYPES, min_hw=1):
    """A [T, H, W, C] float tensor of one of several kinds: iid noise, smooth fields with scene cuts (like real
    features), a constant, a few integer levels (ties and all-zero vectors), or a static clip (identical
    frames, so every temporal cosine is 1)."""
    T = draw(st.integers(1, max_t), label="T")
    H = draw(st.integers(min_hw, max_hw), label="H")
    W = draw(st.integers(min_hw, max_hw), label="W")
    C = draw(st.integers(1, max_c), label="C")
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    kind = draw(st.sampled_from(["normal", "smooth", "constant", "levels", "static"]), label="kind")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]), label="scale")
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        x = torch.randn(T, H, W, C, generator=g, dtype=torch.float64)
    elif kind == "smooth":
        x = synthetic(T, H, W, C, seed=seed % 10_000).double()
    elif kind == "constant":
        x = torch.full((T, H, W, C), draw(st.sampled_from([0.0, 1.0, -0.5]), label="value"), dtype=torch.float64)
    elif kind == "levels":
        x = torch.randint(-2, 3, (T, H, W, C), generator=g).double()
    else:
        x = torch.randn(1, H, W, C, generator=g, dtype=torch.float64).expand(T, H, W, C).clone()
    return (x * scale).to(dtype)


retentions = st.one_of(
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False),
    st.sampled_from([1.0, 0.5, 0.25, 0.1, 1e-3, 1e-9]),
)


def budget_for(x: torch.Tensor, retention: float) -> int:
    T, H, W, _ = x.shape
    return max(1, round(retention * (T * H * W)))  # as framepress.budget.tokens_for (mind the float order)


# ---------------------------------------------------------------------------------------------------------------
# the token model, checked independently of Tokens.check
# ---------------------------------------------------------------------------------------------------------------


def assert_token_model(out: framepress.Tokens, x: torch.Tensor) -> None:
    T, H, W, C = x.shape
    out.check()  # the library's own check ...
    # ... and the same invariants, restated here
    n = len(out)
    assert out.grid == (T, H, W)
    assert isinstance(out.info, dict)
    assert n >= 1
    assert out.features.shape == (n, C)
    assert out.features.dtype == x.dtype
    assert bool(torch.isfinite(out.features.double()).all()), "features are not finite"
    assert out.boxes.dtype == torch.int64 and out.boxes.shape == (n, 5)
    assert out.sizes.dtype == torch.int64 and out.sizes.shape == (n,)
    assert out.source.dtype == torch.int64 and out.source.shape == (T * H * W,)
    t, y0, x0, y1, x1 = out.boxes.unbind(1)
    assert bool(((t >= 0) & (t < T)).all())
    assert bool(((y0 >= 0) & (y0 < y1) & (y1 <= H)).all())
    assert bool(((x0 >= 0) & (x0 < x1) & (x1 <= W)).all())
    assert bool(((out.source >= -1) & (out.source < n)).all())
    kept = out.source[out.source >= 0]
    assert int(out.sizes.sum()) == kept.numel()
    assert torch.equal(torch.bincount(kept, minlength=n), out.sizes)
    assert bool((out.sizes >= 1).all())
    # each token's box is the region of its representative, a member: some member lies inside the box
    idx = torch.nonzero(out.source >= 0).squeeze(1)
    mt, rem = idx // (H * W), idx % (H * W)
    my, mx = rem // W, rem % W
    b = out.boxes[out.source[idx]]
    inside = (mt == b[:, 0]) & (my >= b[:, 1]) & (my < b[:, 3]) & (mx >= b[:, 2]) & (mx < b[:, 4])
    assert bool((torch.bincount(out.source[idx][inside], minlength=n) >= 1).all()), "a box holds none of its members"


def assert_same(a: framepress.Tokens, b: framepress.Tokens) -> None:
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.sizes, b.sizes)
    assert torch.equal(a.source, b.source)
    assert a.grid == b.grid
    assert a.info == b.info


def members_inside_boxes(out: framepress.Tokens) -> bool:
    """Every kept input token lies inside the box of the token it went into."""
    T, H, W = out.grid
    idx = torch.nonzero(out.source >= 0).squeeze(1)
    mt, rem = idx // (H * W), idx % (H * W)
    my, mx = rem // W, rem % W
    b = out.boxes[out.source[idx]]
    return bool(((mt == b[:, 0]) & (my >= b[:, 1]) & (my < b[:, 3]) & (mx >= b[:, 2]) & (mx < b[:, 4])).all())


def compress_or_budget_error(x, name, retention, **params):
    """Run a method with a budget; for "steps"/"search" methods a ValueError naming retention is accepted
    (the budget is below the method's minimum). Returns the tokens or None."""
    kind = registry.get(name).budget
    try:
        return framepress.compress(x, name, retention, **params)
    except ValueError as exc:
        if kind in ("steps", "search") or name in HAS_MINIMUM:
            assert "retention" in str(exc), f"budget error does not name retention: {exc}"
            budget = budget_for(x, retention)
            asked = re.search(r"asks for (\d+) tokens", str(exc))
            if asked:
                assert int(asked.group(1)) == budget
            least = re.search(r"keeps at least (\d+)", str(exc))
            if least:
                assert int(least.group(1)) > budget, "the minimum named in the error fits the budget"
            note(f"budget error: {exc}")
            event(f"{name}: budget below the minimum")
            return None
        raise


# ---------------------------------------------------------------------------------------------------------------
# every method
# ---------------------------------------------------------------------------------------------------------------


def test_methods_are_registered():
    assert {"sttm", "pool", "frames", "random"} <= set(METHODS)
    for name in METHODS:
        assert registry.get(name).budget in registry.BUDGET_KINDS


@pytest.mark.parametrize("name", METHODS)
@SOME
@given(x=videos(), retention=retentions)
def test_budget_and_token_model(name, x, retention):
    extra = _inputs_for(name, x)
    budget = budget_for(x, retention)
    kind = registry.get(name).budget
    out = compress_or_budget_error(x, name, retention, **extra)
    if out is None:
        assert kind != "exact" or name in HAS_MINIMUM
        return
    assert_token_model(out, x)
    if kind == "exact":
        assert len(out) == budget
    elif kind == "official":  # the official count by default; exactly the budget by choice
        exact = compress_or_budget_error(x, name, retention, allocation="exact", **extra)
        if exact is not None:
            assert_token_model(exact, x)
            assert len(exact) == budget
    else:  # "steps" and "search" never exceed the budget
        assert len(out) <= budget
    again = framepress.compress(x, name, retention, **extra)
    assert_same(out, again)


@pytest.mark.parametrize("name", METHODS)
@FEW
@given(x=videos())
def test_defaults_without_budget(name, x):
    extra = _inputs_for(name, x)
    if name in NEEDS_BUDGET:
        with pytest.raises(ValueError, match="retention"):
            framepress.compress(x, name, **extra)
        return
    out = framepress.compress(x, name)
    assert_token_model(out, x)
    assert len(out) <= x.shape[0] * x.shape[1] * x.shape[2]
    assert_same(out, framepress.compress(x, name))


@pytest.mark.parametrize("name", METHODS)
def test_full_retention_keeps_every_token(name):
    """retention=1 asks for every token; every built-in method then returns all of them (the "official" ones with
    allocation="exact": their official rule may merge over time even then, as HoliTom's does)."""
    x = synthetic(5, 7, 6, 3, seed=1)
    exact = {"allocation": "exact"} if registry.get(name).budget == "official" else {}
    out = framepress.compress(x, name, 1.0, **exact, **_inputs_for(name, x))
    assert_token_model(out, x)
    assert len(out) == x.shape[0] * x.shape[1] * x.shape[2]
    assert bool((out.source >= 0).all())


@pytest.mark.parametrize("name", METHODS)
def test_results_do_not_depend_on_the_thread_count(name, on_threads):
    """Near-ties must not flip with the number of threads (float32 reductions split differently): every method
    gives identical tokens with 1 and 2 threads on realistic redundant features."""
    x = synthetic(16, 14, 14, 64, seed=7)
    extra = _inputs_for(name, x)
    assert_same(*(on_threads(n, lambda: framepress.compress(x, name, 0.25, **extra)) for n in (1, 2)))


# ---------------------------------------------------------------------------------------------------------------
# STTM
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def sttm_options(draw, x, variants=VARIANTS):
    n_sizes = len(level_sizes(x.shape[1], x.shape[2]))
    return dict(
        root_level=draw(st.integers(-n_sizes, 3), label="root_level"),
        variant=draw(st.sampled_from(variants), label="variant"),
        grouping=draw(st.sampled_from(GROUPINGS), label="grouping"),
        invalid_slots=draw(st.sampled_from(INVALID_SLOTS), label="invalid_slots"),
    )


small_videos = videos(max_t=8, max_hw=16, max_c=6)
taus = st.floats(min_value=-1.0, max_value=1.2, allow_nan=False)


@SOME
@given(data=st.data(), x=small_videos, retention=retentions)
def test_sttm_thresholds_reproduce_the_budget_run(data, x, retention):
    """The thresholds in ``info`` of a budget run, passed back, give exactly the same tokens."""
    opts = data.draw(sttm_options(x), label="options")
    out = compress_or_budget_error(x, "sttm", retention, **opts)
    if out is None:
        return
    assert len(out) <= budget_for(x, retention)
    again = framepress.compress(x, "sttm", tau_s=out.info["tau_s"], tau_t=out.info["tau_t"], **opts)
    assert torch.equal(out.features, again.features)
    assert torch.equal(out.boxes, again.boxes)
    assert torch.equal(out.source, again.source)
    assert torch.equal(out.sizes, again.sizes)


def test_sttm_slow_variant_thresholds_reproduce_the_budget_run_with_ties():
    x = torch.tensor([2.0, 0, -1, 2, -2, -1, 1, 2, -1, -2]).reshape(2, 1, 5, 1)
    out = framepress.compress(x, "sttm", 0.5, variant="slow", root_level=0)
    again = framepress.compress(x, "sttm", tau_s=out.info["tau_s"], tau_t=out.info["tau_t"], variant="slow", root_level=0)
    assert len(out) == len(again) == 5
    assert torch.equal(out.source, again.source)


def test_sttm_search_reaches_the_98_percent_floor_when_a_threshold_pair_allows_it():
    x = torch.tensor([2.0, 2, 1, -2, 1, 2]).reshape(2, 1, 3, 1)
    reachable = framepress.compress(x, "sttm", tau_s=1.0, tau_t=1.5, root_level=0)
    assert len(reachable) == 5
    out = framepress.compress(x, "sttm", 5 / 6, root_level=0)  # a budget of 5 tokens
    assert 0.98 * 5 <= len(out) <= 5


@SOME
@given(data=st.data(), x=small_videos, tau_s=taus)
def test_sttm_spatial_only_tiles_each_frame(data, x, tau_s):
    """With temporal merging off, each frame's tokens are a partition of its HxW grid into boxes."""
    opts = data.draw(sttm_options(x), label="options")
    T, H, W, _ = x.shape
    out = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=-1.0, **opts)
    assert_token_model(out, x)
    assert bool((out.source >= 0).all()), "spatial merging drops nothing"
    t, y0, x0, y1, x1 = out.boxes.unbind(1)
    assert torch.equal(out.sizes, (y1 - y0) * (x1 - x0)), "a spatial token's size is its box area"
    assert members_inside_boxes(out)
    # cover count of every cell by the boxes (2-D difference array, integrated twice): exactly 1 everywhere
    diff = torch.zeros(T, H + 1, W + 1, dtype=torch.long)
    for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        diff.index_put_((t, ys, xs), torch.full_like(t, sign), accumulate=True)
    cover = diff.cumsum(1).cumsum(2)[:, :H, :W]
    assert bool((cover == 1).all()), "boxes of a frame overlap or leave a gap"
    # output order: by frame, then by the top-left corner (row-major)
    key = t * (H * W) + y0 * W + x0
    assert bool((key[1:] > key[:-1]).all())


@SOME
@given(data=st.data(), x=small_videos, tau_s=taus, tau_t=st.floats(min_value=0.0, max_value=1.01))
def test_sttm_exact_grouping_never_yields_more_tokens(data, x, tau_s, tau_t):
    opts = data.draw(sttm_options(x), label="options")
    opts.pop("grouping")
    official = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=tau_t, grouping="official", **opts)
    exact = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=tau_t, grouping="exact", **opts)
    assert_token_model(official, x)
    assert_token_model(exact, x)
    assert len(exact) <= len(official)
    # exact groups are unions of official groups: two inputs together in an official token stay together
    kept = official.source >= 0
    pair = torch.stack([official.source[kept], exact.source[kept]], 1).unique(dim=0)
    assert pair[:, 0].unique().numel() == pair.shape[0], "an official group is split by exact grouping"


@FEW
@given(
    data=st.data(),
    x=small_videos,
    tau_s=st.floats(min_value=1.001, max_value=2.0),
    tau_t=st.floats(min_value=-2.0, max_value=0.0, exclude_max=True),
)
def test_sttm_everything_off_returns_the_input(data, x, tau_s, tau_t):
    """tau_s > 1 and tau_t < 0 switch both merges off: the output is the input, token for token."""
    opts = data.draw(sttm_options(x), label="options")
    T, H, W, C = x.shape
    out = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=tau_t, **opts)
    assert_token_model(out, x)
    assert len(out) == T * H * W
    assert torch.equal(out.features, x.reshape(-1, C))
    assert torch.equal(out.source, torch.arange(T * H * W))
    assert bool((out.sizes == 1).all())


@pytest.mark.parametrize("tau_s", [1 + 1e-9, 1.0000000000000002])
def test_sttm_tau_s_just_above_one_switches_spatial_merging_off(tau_s):
    x = torch.ones(1, 4, 4, 1)
    out = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=-1.0, root_level=0)
    assert len(out) == 16


@SOME
@given(
    data=st.data(),
    x=videos(max_t=8, max_hw=16, max_c=6, dtypes=[torch.float32, torch.float64]),
    tau_s=taus,
    tau_t=st.floats(min_value=0.0, max_value=1.01),
)
def test_sttm_temporal_tokens_are_means_of_spatial_tokens(data, x, tau_s, tau_t):
    """Temporal merging joins whole spatial tokens; a merged token is the unweighted mean of its members'
    spatial features (spec sttm §2.5.4) and sits at its first member's box."""
    opts = data.draw(sttm_options(x), label="options")
    spatial = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=-1.0, **opts)
    merged = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=tau_t, **opts)
    assert_token_model(merged, x)
    n_sp = len(spatial)
    # output of each spatial token: the same for all of its leaves
    pair = torch.stack([spatial.source, merged.source], 1).unique(dim=0)
    assert pair.shape[0] == n_sp, "a spatial token is split by temporal merging"
    group = pair[torch.argsort(pair[:, 0]), 1]  # spatial token -> merged token
    n = len(merged)
    count = torch.bincount(group, minlength=n).double()
    mean = torch.zeros(n, x.shape[-1], dtype=torch.float64).index_add_(0, group, spatial.features.double())
    mean /= count[:, None]
    scale = float(x.double().abs().max()) + 1e-30
    assert torch.allclose(merged.features.double(), mean, rtol=10 * EPS[x.dtype], atol=10 * EPS[x.dtype] * scale)
    # the box of a merged token is that of its first (lowest-index) spatial member
    first = torch.full((n,), n_sp, dtype=torch.long).scatter_reduce(0, group, torch.arange(n_sp), "amin")
    assert torch.equal(merged.boxes, spatial.boxes[first])
    if opts["grouping"] != "exact":
        return
    # exact groups are connected by edges between consecutive frames, so a group spans contiguous frames
    frames = spatial.boxes[:, 0]
    lo = torch.full((n,), 10**9, dtype=torch.long).scatter_reduce(0, group, frames, "amin")
    hi = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, group, frames, "amax")
    assert bool((hi - lo + 1 <= count.long()).all())


@FEW
@given(
    data=st.data(),
    T=st.integers(1, 6),
    H=st.sampled_from([1, 2, 4, 8, 16]),
    W=st.sampled_from([1, 2, 4, 8, 16]),
    C=st.integers(1, 6),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
    tau_s=taus,
)
def test_sttm_spatial_features_are_box_means_on_power_of_two_grids(data, T, H, W, C, dtype, seed, tau_s):
    """On grids whose sides are powers of two every pyramid node averages equal-area children, so a spatial
    token's feature is the mean of the input over its box."""
    x = synthetic(T, H, W, C, seed=seed % 10_000).to(dtype)
    opts = data.draw(sttm_options(x), label="options")
    out = framepress.compress(x, "sttm", tau_s=tau_s, tau_t=-1.0, **opts)
    xd = x.double()
    ref = torch.stack([xd[t, a:c, b:d].reshape(-1, C).mean(0) for t, a, b, c, d in out.boxes.tolist()])
    scale = float(xd.abs().max()) + 1e-30
    assert torch.allclose(out.features.double(), ref, rtol=10 * EPS[dtype], atol=10 * EPS[dtype] * scale)


@pytest.mark.parametrize("retention", [0.05, 0.15, 0.3, 0.5, 0.9])
def test_sttm_search_meets_the_98_percent_floor_on_smooth_features(retention):
    """On realistic (smooth, redundant) features the threshold search lands within 2% below the budget."""
    x = synthetic(8, 14, 14, 16, seed=3)
    out = framepress.compress(x, "sttm", retention)
    budget = budget_for(x, retention)
    assert 0.98 * budget <= len(out) <= budget


# ---------------------------------------------------------------------------------------------------------------
# pool
# ---------------------------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@SOME
@given(data=st.data(), x=videos(max_t=6))
def test_pool_average_over_exact_windows_is_the_box_mean(data, x):
    T, H, W, C = x.shape
    h = data.draw(st.sampled_from(_divisors(H)), label="h")
    w = data.draw(st.sampled_from(_divisors(W)), label="w")
    out = framepress.compress(x, "pool", mode="average", size=(h, w))
    assert_token_model(out, x)
    assert len(out) == T * h * w
    assert out.info["grid"] == (h, w)
    assert bool((out.source >= 0).all())
    assert members_inside_boxes(out)
    t, y0, x0, y1, x1 = out.boxes.unbind(1)
    assert bool(((y1 - y0) == H // h).all()) and bool(((x1 - x0) == W // w).all())
    assert torch.equal(out.sizes, (y1 - y0) * (x1 - x0))
    xd = x.double()
    ref = xd.reshape(T, h, H // h, w, W // w, C).mean((2, 4)).reshape(-1, C)
    scale = float(xd.abs().max()) + 1e-30
    assert torch.allclose(out.features.double(), ref, rtol=4 * EPS[x.dtype], atol=4 * EPS[x.dtype] * scale)


@SOME
@given(data=st.data(), x=videos(max_t=6), mode=st.sampled_from(["bilinear", "average"]))
def test_pool_members_lie_in_their_window(data, x, mode):
    T, H, W, _ = x.shape
    how = data.draw(st.sampled_from(["stride", "size", "retention"]), label="how")
    if how == "stride":
        stride = data.draw(st.integers(1, 6), label="stride")
        assume(mode == "bilinear" or stride <= min(H, W))
        out = framepress.compress(x, "pool", mode=mode, stride=stride)
        h, w = ((-(-H // stride), -(-W // stride)) if mode == "bilinear" else (H // stride, W // stride))
        assert out.info["grid"] == (h, w)
        if mode == "average":  # avg_pool2d drops the rows/columns past the last whole window
            kept = torch.zeros(T, H, W, dtype=torch.bool)
            kept[:, : h * stride, : w * stride] = True
            assert torch.equal(out.keep_mask(), kept)
    elif how == "size":
        h = data.draw(st.integers(1, H), label="h")
        w = data.draw(st.integers(1, W), label="w")
        out = framepress.compress(x, "pool", mode=mode, size=(h, w))
        assert bool((out.source >= 0).all())
    else:
        retention = data.draw(retentions, label="retention")
        out = compress_or_budget_error(x, "pool", retention, mode=mode)
        if out is None:
            return
        assert len(out) <= budget_for(x, retention)
        h, w = out.info["grid"]
        # steps: the next larger grid of the same rule would not fit
        if h < H:
            w2 = min(W, max(1, round((h + 1) * W / H)))
            assert T * (h + 1) * w2 > budget_for(x, retention)
    assert_token_model(out, x)
    assert len(out) == T * out.info["grid"][0] * out.info["grid"][1]
    assert members_inside_boxes(out)


@SOME
@given(x=videos(), retention=retentions)
def test_pool_budget_error_only_below_one_token_per_frame_region(x, retention):
    """pool may refuse a budget only when even its smallest grid does not fit."""
    T, H, W, _ = x.shape
    budget = budget_for(x, retention)
    if budget >= T:  # the smallest grid is 1x1
        out = framepress.compress(x, "pool", retention)
        assert len(out) <= budget
    else:
        with pytest.raises(ValueError, match="retention"):
            framepress.compress(x, "pool", retention)


@pytest.mark.parametrize("shape, retention", [((1, 1, 3, 1), 1 / 3), ((4, 1, 3, 1), 0.5), ((2, 2, 8, 1), 0.125)])
def test_pool_accepts_any_budget_of_at_least_one_token_per_frame(shape, retention):
    x = torch.randn(*shape)
    T = shape[0]
    assert budget_for(x, retention) >= T
    out = framepress.compress(x, "pool", retention)
    assert T <= len(out) <= budget_for(x, retention)


# ---------------------------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------------------------


def _assert_whole_frames(out, x, n_frames):
    T, H, W, C = x.shape
    kept = out.info["frames"]
    assert len(kept) == n_frames
    assert kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] <= T - 1
    assert len(out) == n_frames * H * W
    assert torch.equal(out.features, x[kept].reshape(-1, C))
    mask = torch.zeros(T, H, W, dtype=torch.bool)
    mask[kept] = True
    assert torch.equal(out.keep_mask(), mask)
    assert torch.equal(out.source[out.source >= 0], torch.arange(len(out)))
    assert bool((out.sizes == 1).all())


@SOME
@given(x=videos(), retention=retentions)
def test_frames_keep_whole_input_frames(x, retention):
    T, H, W, _ = x.shape
    budget = budget_for(x, retention)
    if budget < H * W:
        with pytest.raises(ValueError, match="retention"):
            framepress.compress(x, "frames", retention)
        return
    out = framepress.compress(x, "frames", retention)
    assert_token_model(out, x)
    _assert_whole_frames(out, x, budget // (H * W))  # the largest number of whole frames within the budget


@FEW
@given(data=st.data(), x=videos())
def test_frames_num_frames(data, x):
    n = data.draw(st.integers(1, x.shape[0]), label="num_frames")
    out = framepress.compress(x, "frames", num_frames=n)
    assert_token_model(out, x)
    _assert_whole_frames(out, x, n)
    assert out.info["frames"][0] == 0
    if n > 1:
        assert out.info["frames"][-1] == x.shape[0] - 1


# ---------------------------------------------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------------------------------------------


@SOME
@given(x=videos(), retention=retentions, seed=st.integers(0, 2**40))
def test_random_keeps_exactly_the_budget_in_order(x, retention, seed):
    T, H, W, C = x.shape
    budget = budget_for(x, retention)
    out = framepress.compress(x, "random", retention, seed=seed)
    assert_token_model(out, x)
    assert len(out) == budget
    assert out.info["seed"] == seed
    kept = torch.nonzero(out.source >= 0).squeeze(1)
    assert torch.equal(out.source[kept], torch.arange(budget)), "sources are not increasing in input order"
    assert torch.equal(out.features, x.reshape(-1, C)[kept])
    assert bool((out.sizes == 1).all())
    assert_same(out, framepress.compress(x, "random", retention, seed=seed))


@FEW
@given(x=videos().filter(lambda v: v.shape[0] * v.shape[1] * v.shape[2] >= 4), retention=retentions)
def test_random_seeds_change_the_selection(x, retention):
    T, H, W, _ = x.shape
    assume(budget_for(x, retention) < T * H * W)
    masks = {tuple(framepress.compress(x, "random", retention, seed=s).source.tolist()) for s in range(6)}
    assert len(masks) >= 2, "six seeds chose the same tokens"


# ---------------------------------------------------------------------------------------------------------------
# numeric range
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape, params",
    [
        ("pool", (1, 4, 4, 2), {"mode": "average"}),
        ("sttm", (2, 1, 1, 2), {"tau_t": 0.0}),  # temporal merging: the group mean
    ],
)
def test_large_finite_features_stay_finite(name, shape, params):
    x = torch.full(shape, 3e38, dtype=torch.float32)
    out = framepress.compress(x, name, **params)
    assert bool(torch.isfinite(out.features).all())


#: Magnitudes near each dtype's limits: the fuzzed overflows (float16 sums near 40000, float32 squares from
#: 1e19 and sums near 3e38, float64 squares from 1e154 and sums near 1.6e308) and tiny ones.
EXTREMES = {
    torch.float16: [4e4, 6e4, 1e-4],
    torch.bfloat16: [1e19, 3e38, 1e-30],
    torch.float32: [1e19, 1e30, 3e38, 1e-30],
    torch.float64: [1e154, 1e300, 1.6e308, 1e-300],
}


@pytest.mark.parametrize("name", METHODS)
@FEW
@given(data=st.data(), x=videos(max_t=6, max_hw=9, max_c=6), retention=retentions, sign=st.booleans())
def test_finite_input_gives_finite_output_at_extreme_magnitudes(name, data, x, retention, sign):
    """Any finite input gives finite features and at least one token, whatever its magnitude: sign(x) * m
    (every token at the same magnitude) or x / max|x| * m. A method whose output truly exceeds float64 (VisionZip's
    contextual sums near its maximum) says so."""
    m = data.draw(st.sampled_from(EXTREMES[x.dtype]), label="magnitude")
    unit = x.double().sign() if sign else x.double() / x.double().abs().amax().clamp_min(1e-300)
    x = (unit * m).to(x.dtype)
    assume(bool(torch.isfinite(x).all()))
    extra = _inputs_for(name, x)
    try:
        out = compress_or_budget_error(x, name, retention, **extra)
    except ValueError as exc:
        assert name == "visionzip" and "exceed the float64 range" in str(exc), exc
        return
    if out is None:
        return
    out.check()
    assert len(out) >= 1
    assert bool(torch.isfinite(out.features.double()).all())


SCALE_INVARIANT = [n for n in METHODS if registry.get(n).scale_invariant]


def _unit_peak(x: torch.Tensor) -> torch.Tensor:
    """x times the power of two that puts its largest magnitude in [1, 2) (exact)."""
    peak = float(x.abs().amax())
    return x if peak == 0 else x * 2.0 ** -(math.frexp(peak)[1] - 1)


@pytest.mark.parametrize("name", SCALE_INVARIANT)
@FEW
@given(x=videos(max_t=6, max_hw=9, max_c=6, dtypes=[torch.float32, torch.float64]), retention=retentions)
def test_scale_invariant_methods_keep_their_tokens_under_powers_of_two(name, x, retention):
    """Cosine-and-mean methods choose the same tokens for x * 2**-33 (~1e-10) and x * 2**66 (~7e19) as for x,
    and their features scale exactly: the norms of tiny inputs never meet the 1e-8 clamp, huge ones never
    overflow."""
    x = _unit_peak(x)
    extra = _inputs_for(name, x)
    out = compress_or_budget_error(x, name, retention, **extra)
    if out is None:
        return
    for k in (-33, 66):
        scaled = compress_or_budget_error(x * 2.0**k, name, retention, **extra)
        assert torch.equal(scaled.boxes, out.boxes) and torch.equal(scaled.sizes, out.sizes)
        assert torch.equal(scaled.source, out.source) and scaled.info == out.info
        assert torch.equal(scaled.features, out.features * 2.0**k)


@pytest.mark.parametrize("name", SCALE_INVARIANT)
@FEW
@given(x=videos(max_t=6, max_hw=9, max_c=6, dtypes=[torch.float64]), retention=retentions)
def test_scale_invariant_methods_keep_their_tokens_for_1e_minus10_and_1e20(name, x, retention):
    """The same for the decimal factors of the issue (rounding differs, so features agree to rounding)."""
    x = _unit_peak(x)
    assume(torch.unique(x).numel() > 0.9 * x.numel())  # continuous values (no "levels"/"constant"): no exact ties
    extra = _inputs_for(name, x)
    out = compress_or_budget_error(x, name, retention, **extra)
    if out is None:
        return
    for factor in (1e-10, 1e20):
        scaled = compress_or_budget_error(x * factor, name, retention, **extra)
        assert torch.equal(scaled.boxes, out.boxes) and torch.equal(scaled.sizes, out.sizes)
        assert torch.equal(scaled.source, out.source)
        torch.testing.assert_close(scaled.features / factor, out.features, rtol=1e-9, atol=1e-12)  # x peaks in [1, 2)


def test_gridpool_high_norm_order_stays_finite():
    """p=16 on randn * 100 (|t|^16 overflows float32) and |x| ~ 1e19 (squares overflow) used to give NaN."""
    x = torch.randn(2, 8, 8, 64, generator=torch.Generator().manual_seed(0))
    for scale, params in ((100.0, {"p": 16.0}), (1e19, {}), (1e-30, {"p": 16.0})):
        out = framepress.compress(x * scale, "gridpool", **params)
        out.check()
        ref = framepress.compress(x.double() * scale, "gridpool", **params)
        torch.testing.assert_close(out.features.double(), ref.features, rtol=1e-3, atol=0)


def test_visionzip_sum_beyond_float16_comes_back_in_float32():
    x = torch.full((1, 4, 4, 2), 40000.0, dtype=torch.float16)
    x[..., 1] = 30000.0
    out = framepress.compress(x, "visionzip", 0.5, scores=torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)))
    out.check()
    assert out.features.dtype == torch.float32 and float(out.features.max()) == 80000.0


def test_holitom_float64_stays_float64():
    x = synthetic(4, 6, 6, 8, seed=3).double()
    out = framepress.compress(x, "holitom", 0.3, scores="norm")
    ref = framepress.compress(x.float(), "holitom", 0.3, scores="norm")
    assert out.features.dtype == torch.float64
    assert not torch.equal(out.features.float(), ref.features)  # float32 means were taken before
