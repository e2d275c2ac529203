"""FastV's selection equals the official code's on the golden vectors (tests/data/fastv, from
shared/golden/fastv), with the attention row computed by framepress.signals from the stored q/k; the default
count is the official int(N * 0.5); exact budgets; thread independence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framepress import registry, signals
from framepress.layer import LayerInputs

DATA = Path(__file__).parent / "data" / "fastv"
CASES = json.loads((DATA / "manifest.json").read_text())["cases"]
FASTV = registry.get("fastv").fn


def apply_rotary_pos_emb(q, k, cos, sin):
    """The stored q/k are already rotated: signals.query_key looks the rotation up in the attention's module."""
    return q, k


class Lookup(torch.nn.Module):
    """A projection returning stored rows: its input is each position's index."""

    def __init__(self, rows: torch.Tensor):  # [heads, L, d]
        super().__init__()
        self.rows = rows

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.rows[:, index[:, 0].long()].transpose(0, 1).reshape(index.shape[0], -1)


class StoredAttention(torch.nn.Module):
    def __init__(self, q: torch.Tensor, k: torch.Tensor):
        super().__init__()
        self.head_dim = q.shape[-1]
        self.scaling = self.head_dim**-0.5
        self.q_proj, self.k_proj = Lookup(q), Lookup(k)


def layer_inputs(case, data) -> LayerInputs:
    L, S0, N = case["L"], case["S0"], case["N"]
    attn = StoredAttention(torch.from_numpy(data["q"]), torch.from_numpy(data["k"]))
    index = torch.arange(L, dtype=torch.float32)[:, None]
    cos = sin = torch.zeros(L, case["head_dim"])
    hidden = torch.from_numpy(data["hidden"])

    def attention(which: str, heads: str) -> torch.Tensor:
        assert which == "last" and heads == "mean"
        rows = torch.tensor([L - 1])
        return signals.attention_rows(attn, index, cos, sin, rows, torch.ones(L, dtype=torch.bool)).mean(0)[:, S0 : S0 + N]

    grid = (case["T"], case["H"], case["W"])
    return LayerInputs(hidden[S0 : S0 + N], hidden[S0 + N :], grid, 2, 28, _attention=attention)


RUNS = [(c, b) for c in CASES for b in ([c["attention_rank"]] + ([None] if c["default_rule"] else []))]


@pytest.mark.parametrize("case,budget", RUNS, ids=[f"{c['name']}-{'default' if b is None else b}" for c, b in RUNS])
def test_equals_the_official_selection(case, budget):
    data = np.load(DATA / case["file"])
    inputs = layer_inputs(case, data)
    torch.testing.assert_close(inputs.last_attention(), torch.from_numpy(data["official_scores"]), rtol=1e-5, atol=1e-7)
    out = FASTV(inputs, budget)
    out.check()
    keep = torch.from_numpy(data["official_keep"])
    assert len(out) == case["official_tokens"] == keep.numel()
    kept = torch.nonzero(out.source >= 0).squeeze(1)
    assert torch.equal(kept, keep) and torch.equal(out.source[kept], torch.arange(keep.numel()))  # sequence order
    torch.testing.assert_close(out.features, torch.from_numpy(data["hidden"])[case["S0"] + keep], rtol=0, atol=1e-4)


def random_inputs(n: int, seed: int) -> LayerInputs:
    g = torch.Generator().manual_seed(seed)
    visual, scores = torch.randn(n, 8, generator=g), torch.rand(1, n, generator=g)
    return LayerInputs(visual, visual[:0], None, 2, 28, _attention=lambda which, heads: scores)


@pytest.mark.parametrize("n,kept", [(1, 1), (2, 1), (7, 3), (1183, 591), (64, 32)])
def test_default_keeps_the_official_half(n, kept):
    assert len(FASTV(random_inputs(n, n), None)) == kept  # int(N * 0.5), at least one


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 300), share=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_exactly_the_budget(n, share, seed):
    budget = max(1, round(share * n))
    inputs = random_inputs(n, seed)
    out = FASTV(inputs, budget)
    out.check()
    assert len(out) == budget
    top = torch.sort(inputs.last_attention(), descending=True, stable=True).indices[:budget]
    assert set(torch.nonzero(out.source >= 0).squeeze(1).tolist()) == set(top.tolist())


def test_thread_count_does_not_change_the_selection(on_threads):
    case = CASES[0]
    data = np.load(DATA / case["file"])
    outs = [on_threads(n, lambda: FASTV(layer_inputs(case, data), case["attention_rank"])) for n in (1, 2)]
    assert torch.equal(outs[0].source, outs[1].source) and torch.equal(outs[0].features, outs[1].features)
