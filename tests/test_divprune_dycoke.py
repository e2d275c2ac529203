"""DivPrune (max-min diversity) and DyCoke stage 1 (windowed temporal dropping): their defining properties."""

from __future__ import annotations

import pytest
import torch

import framepress
from framepress.features import synthetic
from framepress.methods.dycoke import references


def max_min_reference(x, k):
    unit = torch.nn.functional.normalize(x, dim=-1)
    d = 1 - unit @ unit.T
    d.fill_diagonal_(float("inf"))
    chosen = [int(torch.argmax(d.min(1).values))]
    while len(chosen) < k:
        rest = torch.ones(x.shape[0], dtype=torch.bool)
        rest[chosen] = False
        score = d[:, chosen].min(1).values
        score[~rest] = -float("inf")
        chosen.append(int(torch.argmax(score)))
    return sorted(chosen)


@pytest.mark.parametrize("retention", [0.02, 0.1, 0.3])
def test_divprune_is_the_greedy_max_min_selection(retention):
    x = synthetic(4, 6, 6, 16, seed=5)
    out = framepress.compress(x, "divprune", retention=retention)
    out.check()
    k = round(retention * 144)
    assert len(out) == k
    kept = torch.nonzero(out.source >= 0).squeeze(1).tolist()
    assert kept == max_min_reference(x.reshape(-1, 16), k)


def test_divprune_degenerate():
    same = framepress.compress(torch.ones(2, 3, 3, 4), "divprune", retention=0.5)
    assert len(same) == 9
    assert len(framepress.compress(torch.randn(1, 1, 1, 4), "divprune", retention=1.0)) == 1


def test_dycoke_windows_and_references():
    assert references(9).tolist() == [-1, 0, 0, 2, -1, 4, 4, 6, -1]


def test_dycoke_keeps_the_least_similar_tokens():
    x = synthetic(8, 7, 7, 16, seed=6)
    out = framepress.compress(x, "dycoke", retention=0.5)
    out.check()
    assert len(out) == 196
    kept = (out.source >= 0).reshape(8, 49)
    assert bool(kept[0].all()) and bool(kept[4].all())  # each window's first frame stays whole
    unit = torch.nn.functional.normalize(x.reshape(8, 49, 16), dim=-1)
    for t, r in [(1, 0), (2, 0), (3, 2), (5, 4), (6, 4), (7, 6)]:
        sim = (unit[t] * unit[r]).sum(-1)
        n = int(kept[t].sum())
        assert set(torch.nonzero(kept[t]).squeeze(1).tolist()) == set(torch.sort(sim, stable=True).indices[:n].tolist())


def test_dycoke_default_ratio_and_floor():
    x = synthetic(8, 14, 14, 8)
    assert len(framepress.compress(x, "dycoke")) == 2 * 196 + 6 * round(0.3 * 196)  # ~47.5%
    with pytest.raises(ValueError, match="retention asks for 314 tokens.*first frame of every 4-frame window"):
        framepress.compress(x, "dycoke", retention=0.2)
