"""HoliTom: the official window search and counts (golden vectors), exact budgets, static merging and attention selection."""

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
from framepress.methods.holitom import largest_remainder, official_counts, static_windows, typed_retention


def brute_force_windows(static, max_window):
    """Best saving over every partition of the frames into windows (exponential; small T only)."""
    T = static.shape[0] + 1

    def saved(a, b):
        return int(static[a:b].all(0).sum()) * (b - a) if b > a else 0

    best = {0: (0, [])}
    for end in range(1, T + 1):
        best[end] = max(
            ((best[start][0] + saved(start, end - 1), best[start][1] + [(start, end - 1)])
             for start in range(max(0, end - max_window), end)),
            key=lambda v: v[0],
        )
    return best[T]


@pytest.mark.parametrize("seed", range(5))
def test_window_search_is_optimal(seed):
    g = torch.Generator().manual_seed(seed)
    static = torch.rand(7, 6, generator=g) > 0.35  # 8 frames, 6 positions
    windows, saved = static_windows(static, max_window=4)
    assert saved == brute_force_windows(static, 4)[0]
    assert windows[0][0] == 0 and windows[-1][1] == 7
    assert all(b[0] == a[1] + 1 for a, b in zip(windows, windows[1:]))  # a partition of the frames
    assert all(last - first + 1 <= 4 for first, last in windows)


def test_largest_remainder_is_exact_and_capped():
    counts = largest_remainder(torch.tensor([2.5, 0.4, 3.1, 1.0], dtype=torch.float64), torch.tensor([2, 5, 9, 1]), 7)
    assert counts.tolist() == [2, 1, 3, 1] and int(counts.sum()) == 7


@pytest.fixture(scope="module")
def clip():
    x = synthetic(8, 10, 10, 32, seed=4, noise=0.05)  # low noise: many static positions
    return x, torch.rand(8, 10, 10, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("retention", [0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0])
def test_exact_budget(clip, retention):
    x, scores = clip
    out = framepress.compress(x, "holitom", retention=retention, scores=scores, allocation="exact")
    out.check()
    assert len(out) == max(1, round(retention * 800))


def test_static_tokens_and_dynamic_selection(clip):
    x, scores = clip
    out = framepress.compress(x, "holitom", retention=0.2, scores=scores, beta=0.6)
    windows = out.info["windows"]
    assert any(last > first for first, last in windows) and out.info["static_saved"] > 0
    grid = x.reshape(8, 100, 32)
    reps = out.boxes[:, 0] * 100 + out.boxes[:, 1] * 10 + out.boxes[:, 2]
    for i in range(len(out)):
        members = torch.nonzero(out.source == i).squeeze(1)
        frames = (members // 100).unique()
        if frames.numel() == 1 and members.numel() == 1:  # a dynamic token: kept as it is
            assert torch.equal(out.features[i], x.reshape(-1, 32)[members[0]])
            continue
        first = int(out.boxes[i, 0])
        window = next(w for w in windows if w[0] == first)
        positions = (members % 100).unique()
        assert set(frames.tolist()) == set(range(window[0], window[1] + 1))  # all frames of its window
        averaged = grid[window[0] : window[1] + 1][:, positions].mean(0)
        center = int(reps[i] % 100)
        center_row = (positions == center).nonzero().item()
        others = torch.cat([averaged[:center_row], averaged[center_row + 1 :]])
        want = averaged[center_row] if others.numel() == 0 else 0.6 * averaged[center_row] + 0.4 * others.mean(0)
        torch.testing.assert_close(out.features[i], want, rtol=1e-4, atol=1e-5)


def test_dynamic_tokens_are_the_most_attended(clip):
    x, _ = clip
    noisy = synthetic(4, 6, 6, 16, seed=9, noise=2.0)  # nothing static
    scores = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(3))
    out = framepress.compress(noisy, "holitom", retention=0.25, scores=scores)
    assert all(first == last for first, last in out.info["windows"])
    for t in range(4):
        mine = out.boxes[out.boxes[:, 0] == t]
        top = torch.sort(scores[t].reshape(-1), descending=True, stable=True).indices[: mine.shape[0]]
        assert set((mine[:, 1] * 6 + mine[:, 2]).tolist()) == set(top.tolist())


def test_degenerate_inputs(clip):
    same = torch.ones(4, 3, 3, 8)
    out = framepress.compress(same, "holitom", retention=0.2, scores=torch.ones(4, 3, 3), allocation="exact")
    out.check()
    assert len(out) == 7
    # one window, all static: r' = min(0.3 * 36 / 9, 1) = 1, so the official keeps the 9 time-averaged tokens (under
    # the budget of 11); exact drops the window to reach 11
    official = framepress.compress(same, "holitom", retention=0.3, scores=torch.ones(4, 3, 3))
    assert len(official) == 9 and official.info["windows"] == [(0, 3)]
    assert len(framepress.compress(same, "holitom", retention=0.3, scores=torch.ones(4, 3, 3), allocation="exact")) == 11
    one = framepress.compress(torch.randn(1, 4, 4, 8), "holitom", retention=0.25, scores="norm")
    assert len(one) == 4
    few = framepress.compress(
        torch.randn(6, 2, 2, 8), "holitom", retention=1 / 24, scores=torch.rand(6, 2, 2), allocation="exact"
    )
    assert len(few) == 1
    lone = framepress.compress(torch.ones(6, 2, 2, 8), "holitom", retention=1 / 24, scores=torch.rand(6, 2, 2))
    lone.check()
    assert len(lone) == 1  # official: round(4 * 1/24 * 6) = 1 cluster of the one window


# ---------------------------------------------------------------------------------------------------------------
# the official code's outputs (tests/data/holitom, from shared/golden/holitom; see its README)
# ---------------------------------------------------------------------------------------------------------------

DATA = Path(__file__).parent / "data" / "holitom"
CASES = json.loads((DATA / "manifest.json").read_text())["cases"]


def run_case(case, **extra):
    inputs = np.load(DATA / case["input"])
    p = case["official_params"]
    out = framepress.compress(
        torch.from_numpy(inputs["x"]), "holitom", retention=case["retention"], scores=torch.from_numpy(inputs["scores"]),
        tau=p["tau"], beta=p["Beta"], k=p["K"], max_window=p["max_window_size"], **extra,
    )
    return out, np.load(DATA / case["output"])


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_equals_the_official_code(case):
    out, want = run_case(case)
    out.check()
    T, H, W = case["grid"]
    assert len(out) == case["count"]
    assert [list(w) for w in out.info["windows"]] == case["windows"]
    ours = {(int(b[0]), int(b[1]) * W + int(b[2])): i for i, b in enumerate(out.boxes)}
    theirs = list(zip(want["rep_t"].tolist(), want["rep_pos"].tolist()))
    assert set(ours) == set(theirs)
    row = torch.tensor([ours[key] for key in theirs])  # the official row i is our row row[i]
    torch.testing.assert_close(out.features[row], torch.from_numpy(want["features"]), rtol=0, atol=1e-4)
    source = torch.from_numpy(want["source"])
    assert torch.equal(out.source, torch.where(source >= 0, row[source.clamp_min(0)], -1))
    if case["official_params"]["mode"] == "one_token":  # LLaVA-OV: the official order itself
        assert torch.equal(row, torch.arange(len(out)))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_exact_allocation_on_the_official_cases(case):
    out, _ = run_case(case, allocation="exact")
    out.check()
    T, H, W = case["grid"]
    assert len(out) == max(1, round(case["retention"] * T * H * W)) and out.info["allocation"] == "exact"


def test_official_counts_overshoot_and_clamp():
    by_id = {c["id"]: c for c in CASES}
    assert (by_id["c14_t32_14_c64_static_r0.1"]["count"], by_id["c15_t32_14_c64_static_r0.02"]["count"]) == (644, 141)
    assert typed_retention(627, 6272) == 0.1 and typed_retention(125, 6272) == 0.02 and typed_retention(1, 10**6) > 0
    assert official_counts([5, 7], [True, False], 0.5) == [2, 4]  # round half to even (2.5 -> 2), ceil(3.5) = 4
    assert official_counts([3], [True], 0.1) == [1]  # nothing would be kept: one token


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    T=st.integers(1, 8), H=st.integers(1, 7), W=st.integers(1, 7), C=st.integers(1, 6),
    retention=st.floats(0.001, 1.0), seed=st.integers(0, 2**16), static=st.booleans(), tau=st.sampled_from([0.5, 0.8]),
)
def test_exact_allocation_is_exactly_the_budget(T, H, W, C, retention, seed, static, tau):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1 if static else T, H, W, C, generator=g).expand(T, H, W, C) + 0.1 * torch.randn(T, H, W, C, generator=g)
    scores = torch.rand(T, H, W, generator=g)
    out = framepress.compress(x, "holitom", retention=retention, scores=scores, tau=tau, allocation="exact")
    out.check()
    assert len(out) == max(1, round(retention * (T * H * W)))
    official = framepress.compress(x, "holitom", retention=retention, scores=scores, tau=tau)
    official.check()
    assert len(official) >= 1


def test_thread_count_does_not_change_the_output(on_threads):
    case = next(c for c in CASES if c["id"] == "c14_t32_14_c64_static_r0.1")
    outs = []
    for n in (1, 2):
        outs += on_threads(n, lambda: [run_case(case)[0], run_case(case, allocation="exact")[0]])
    for a, b in ((outs[0], outs[2]), (outs[1], outs[3])):
        assert torch.equal(a.features, b.features) and torch.equal(a.boxes, b.boxes) and torch.equal(a.source, b.source)


def test_allocation_is_checked():
    with pytest.raises(ValueError, match="allocation"):
        framepress.compress(torch.randn(2, 3, 3, 4), "holitom", retention=0.5, scores="norm", allocation="floor")
