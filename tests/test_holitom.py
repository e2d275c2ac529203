"""HoliTom: the official window search, exact budgets, static merging and attention selection."""

from __future__ import annotations

import pytest
import torch

import framepress
from framepress.features import synthetic
from framepress.methods.holitom import largest_remainder, static_windows


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
    out = framepress.compress(x, "holitom", retention=retention, scores=scores)
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
    out = framepress.compress(same, "holitom", retention=0.2, scores=torch.ones(4, 3, 3))
    out.check()
    assert len(out) == 7
    one = framepress.compress(torch.randn(1, 4, 4, 8), "holitom", retention=0.25, scores="norm")
    assert len(one) == 4
    few = framepress.compress(torch.randn(6, 2, 2, 8), "holitom", retention=1 / 24, scores=torch.rand(6, 2, 2))
    assert len(few) == 1
