"""FrameFusion equals the official code on the golden vectors (tests/data/framefusion, from
shared/golden/framefusion): the merge on the embeddings, the official cost rule and budget-bound merge, and
the prune by the last query's attention over the merged sequence (computed by framepress.signals from the merged
sequence's q/k, as layer 0 computes them in a model); exact budgets; thread independence; each model family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framepress
from framepress import ops, registry, signals
from framepress.features import synthetic
from framepress.layer import LayerInputs
from framepress.methods.framefusion import pruning_ratio, quotas, run_starts
from framepress.models.tiny import random_frames, tiny_model, video_inputs

DATA = Path(__file__).parent / "data" / "framefusion"
CASES = json.loads((DATA / "manifest.json").read_text())["cases"]
MERGE = registry.get("framefusion")
PRUNE = registry.get("framefusion_prune").fn


def apply_rotary_pos_emb(q, k, cos, sin):
    """The golden q/k carry no RoPE: signals.query_key looks the rotation up in the attention's module."""
    return q, k


class Projection(torch.nn.Module):
    """RMSnorm (unit weight, eps 1e-6) then a [C, heads * d] matrix: the golden recipe for q and k."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6) @ self.weight


class GoldenAttention(torch.nn.Module):
    def __init__(self, wq: torch.Tensor, wk: torch.Tensor, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        self.q_proj, self.k_proj = Projection(wq), Projection(wk)


def case_input(case, data) -> torch.Tensor:
    T, H, W, C, S0 = case["T"], case["H"], case["W"], case["C"], case["S0"]
    return torch.from_numpy(data["hidden"][S0 : S0 + T * H * W]).reshape(T, H, W, C)


def merged_layer(case, data, merged: framepress.Tokens) -> LayerInputs:
    """Layer 1's inputs after the merge: attention rows of the merged sequence [system | merged | text]."""
    hidden = torch.from_numpy(data["hidden"])
    S0, n = case["S0"], case["T"] * case["H"] * case["W"]
    seq = torch.cat([hidden[:S0], merged.features, hidden[S0 + n :]])
    attn = GoldenAttention(torch.from_numpy(data["Wq"]), torch.from_numpy(data["Wk"]), case["head_dim"])
    L, M = seq.shape[0], len(merged)
    zero = torch.zeros(L, case["head_dim"])

    def attention(which: str, heads: str) -> torch.Tensor:
        rows = {"last": torch.tensor([L - 1]), "text": torch.arange(S0 + M, L)}[which]
        probs = signals.attention_rows(attn, seq, zero, zero, rows, torch.ones(L, dtype=torch.bool))[:, :, S0 : S0 + M]
        return probs.mean(0) if heads == "mean" else probs.amax(0)

    return LayerInputs(merged.features, seq[S0 + M :], None, 1, 28, _attention=attention)


def representatives(tokens: framepress.Tokens) -> torch.Tensor:
    T, H, W = tokens.grid
    return tokens.boxes[:, 0] * H * W + tokens.boxes[:, 1] * W + tokens.boxes[:, 2]


def run_case(case, data, budget):
    """The two stages as a model runs them: the merge on the embeddings, the prune at layer 1."""
    similarity = case["params"]["similarity_lower_bound"]
    if budget is None:
        merged = MERGE.fn(case_input(case, data), None, similarity=similarity, cost=case["params"]["cost"])
        pruned = PRUNE(merged_layer(case, data, merged), None, **MERGE.handoff(merged))
    else:
        merged = MERGE.fn(case_input(case, data), budget, similarity=similarity)
        pruned = PRUNE(merged_layer(case, data, merged), budget)
    return merged, pruned


def assert_official(tokens_rep, features, data, prefix):
    rep = torch.from_numpy(data[f"{prefix}_rep"])
    assert torch.equal(tokens_rep, rep)  # which tokens, in sequence order
    torch.testing.assert_close(features, torch.from_numpy(data[f"{prefix}_features"]), rtol=1e-5, atol=1e-5)


IDS = [c["name"] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_equals_the_official(case):
    data = np.load(DATA / case["file"])
    x, similarity = case_input(case, data), case["params"]["similarity_lower_bound"]
    merged = MERGE.fn(x, None, similarity=similarity, cost=case["params"]["cost"])
    merged.check()
    assert len(merged) == case["official_after_merge"]
    assert merged.info["budget_bound"] == case["official_budget_bound_merge"]
    assert_official(representatives(merged), merged.features, data, "official_merged")
    if case["official_budget_bound_merge"]:  # the same bound asked as a token budget
        bound = MERGE.fn(x, case["official_after_merge"], similarity=similarity)
        assert_official(representatives(bound), bound.features, data, "official_merged")


@pytest.mark.parametrize("budget_kind", ["cost", "budget"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_then_prune_equals_the_official(case, budget_kind):
    data = np.load(DATA / case["file"])
    merged, pruned = run_case(case, data, None if budget_kind == "cost" else case["official_tokens"])
    pruned.check()
    if "official_prune_scores" in data.files:  # layer 0's last-query attention over the merged sequence
        scores = merged_layer(case, data, merged).last_attention()
        torch.testing.assert_close(scores, torch.from_numpy(data["official_prune_scores"]), rtol=1e-4, atol=1e-7)
    assert len(pruned) == case["official_tokens"]
    kept = torch.nonzero(pruned.source >= 0).squeeze(1)
    assert torch.equal(pruned.source[kept], torch.arange(kept.numel()))  # sequence order
    assert_official(representatives(merged)[kept], pruned.features, data, "official")


def test_official_cost_rule():
    """f3: 2857 of 6272 merge, so 28 layers at 30% leave round(3415 * remain / (27 * S)) = 1825."""
    assert pruning_ratio([], 0.3) == pytest.approx(0.7)
    assert round(3415 * (1 - pruning_ratio([2857 / 6272], 0.3))) == 1825
    assert pruning_ratio([0.0], 1.0) == 0.0  # more than every token: nothing pruned
    with pytest.raises(ValueError, match="cost=0.01"):
        pruning_ratio([0.5], 0.01)


def test_runs_collapse_into_their_earliest_frame():
    merge = torch.tensor([[False, False], [True, False], [True, True], [False, True]])
    assert run_starts(merge).tolist() == [[0, 0], [0, 1], [0, 1], [3, 1]]


def test_merging_is_the_mean_of_each_run():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 2, 2, 8, generator=g)
    x = torch.cat([base, base + 0.01 * torch.randn(1, 2, 2, 8, generator=g), torch.randn(1, 2, 2, 8, generator=g)])
    out = framepress.compress(x, "framefusion", similarity=0.9)
    out.check()
    assert len(out) == 8 and out.info["merged"] == 4  # frame 1 merges into frame 0, frame 2 stands alone
    torch.testing.assert_close(out.features[:4], x[:2].mean(0).reshape(4, 8))
    assert out.source.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]


def last_inputs(importance: torch.Tensor, text_rows: torch.Tensor | None = None) -> LayerInputs:
    n = importance.numel()
    visual = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
    text = torch.zeros(0 if text_rows is None else text_rows.shape[0], 4)
    signal = {"last": importance[None], "text": text_rows}
    return LayerInputs(visual, text, None, 1, 28, _attention=lambda which, heads: signal[which])


def test_prune_counts_per_video_from_the_handed_quota():
    # two videos of 4 and 3 merged tokens keeping 2 and 1: a model numbers the second's labels after the first's
    labels = torch.tensor([2, 2, 2, 2, 4, 4, 4])
    video, counts = quotas(labels)
    assert video.tolist() == [0, 0, 0, 0, 1, 1, 1] and counts == [2, 1]
    out = PRUNE(last_inputs(torch.tensor([0.1, 0.4, 0.3, 0.2, 0.5, 0.9, 0.0])), None, quota=labels)
    assert torch.nonzero(out.source >= 0).squeeze(1).tolist() == [1, 2, 5]
    assert len(PRUNE(last_inputs(torch.arange(7.0)), 3)) == 3


def test_prune_with_the_last_four_queries():
    text = torch.zeros(6, 5)
    text[-4:, 3] = 1.0  # only the last 4 text rows look at token 3
    text[:2, 0] = 9.0
    out = PRUNE(last_inputs(torch.arange(5.0), text), 1, queries=4)
    assert torch.nonzero(out.source >= 0).squeeze(1).tolist() == [3]
    with pytest.raises(ValueError, match="queries=8"):
        PRUNE(last_inputs(torch.arange(5.0), text), 1, queries=8)


def test_errors_name_the_argument():
    x = synthetic(3, 4, 4, 8, seed=0)
    with pytest.raises(ValueError, match="retention or cost"):
        framepress.compress(x, "framefusion", 0.5, cost=0.3)
    with pytest.raises(ValueError, match="allocation='exact' needs a retention"):
        framepress.compress(x, "framefusion", allocation="exact")
    with pytest.raises(ValueError, match="allocation"):
        framepress.compress(x, "framefusion", 0.5, allocation="exactly")
    with pytest.raises(ValueError, match="cost=0.0"):
        framepress.compress(x, "framefusion", cost=0.0)
    with pytest.raises(ValueError, match="quota: 3 labels for 7"):
        PRUNE(last_inputs(torch.arange(7.0)), None, quota=torch.tensor([1, 1, 1]))
    with pytest.raises(TypeError, match="quota must be"):
        PRUNE(last_inputs(torch.arange(7.0)), None, quota=torch.ones(7))
    with pytest.raises(ValueError, match="needs a retention"):
        PRUNE(last_inputs(torch.arange(7.0)), None)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    T=st.integers(1, 6), H=st.integers(1, 5), W=st.integers(1, 5), seed=st.integers(0, 10_000),
    share=st.floats(0.0, 1.0), similarity=st.sampled_from([-1.0, 0.0, 0.6, 0.95]),
)
def test_budgets(T, H, W, seed, share, similarity):
    """Official: the merge keeps at least the budget (merging within it) and the prune exactly it; exact: the
    merge alone keeps exactly it, merging the most similar same-position pairs first."""
    x = synthetic(T, H, W, 6, seed=seed)
    n = T * H * W
    budget = max(1, round(share * n))
    official = MERGE.fn(x, budget, similarity=similarity)
    official.check()
    assert len(official) >= budget
    importance = torch.rand(len(official), generator=torch.Generator().manual_seed(seed))
    assert len(PRUNE(last_inputs(importance), budget)) == budget
    exact = MERGE.fn(x, budget, similarity=similarity, allocation="exact")
    exact.check()
    assert len(exact) == budget
    assert bool((exact.source >= 0).all()) or len(exact) < H * W  # dropping only once merging cannot reach it
    # every token is one grid position's run of consecutive frames
    members = torch.nonzero(exact.source >= 0).squeeze(1)
    position = members % (H * W)
    group = exact.source[members]
    assert bool((position == representatives(exact)[group] % (H * W)).all())
    assert torch.equal(torch.bincount(group, minlength=len(exact)), exact.sizes)


def test_thread_count_does_not_change_the_output(on_threads):
    case = CASES[0]
    data = np.load(DATA / case["file"])
    outs = [on_threads(n, lambda: run_case(case, data, None)) for n in (1, 2)]
    for a, b in zip(*outs):
        assert torch.equal(a.features, b.features) and torch.equal(a.source, b.source)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_framefusion_in_each_family(family):
    """The merge before layer 0 and the prune at layer 1 run in each family; the default keeps the official cost
    rule's count for the merged share, a retention exactly its tokens."""
    model = tiny_model(family)
    moving = random_frames(model, 4, seed=1)
    static = moving[:1].expand_as(moving).clone()  # every temporal cosine 1: the cost bounds the merge (LLaVA)
    inputs = video_inputs(model, [static, moving])
    with framepress.apply(model, "framefusion") as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, suppress_tokens=[250, 251, 252, 253])
        record = handle.stats[-1]
    n = record["tokens_in"][0]
    merged, pruned = record["stages"][0]["visual_out"], record["stages"][1]["visual_out"]
    for m, kept in zip(merged, pruned):
        bound = m == n - int(pruning_ratio([], 0.3) * n)
        assert kept == (m if bound else round(m * (1 - pruning_ratio([(n - m) / n], 0.3))))
        assert kept < n
    with framepress.apply(model, "framefusion", retention=0.25) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, suppress_tokens=[250, 251, 252, 253])
        record = handle.stats[-1]
    assert record["stages"][1]["visual_out"] == [round(0.25 * n)] * 2
    assert all(m >= round(0.25 * n) for m in record["stages"][0]["visual_out"])


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_prune_ranks_by_layer_0_attention_over_the_merged_sequence(family):
    """In a model the prune keeps the merged tokens the last query attends to most in layer 0, which ran on the
    merged sequence (the official order: merge before layer 0, prune after its attention)."""
    model = tiny_model(family, attn_implementation="eager")
    inputs = video_inputs(model, [random_frames(model, 4, seed=s) for s in (1, 2)])
    with framepress.apply(model, "framefusion") as handle, torch.no_grad():
        maps = model(**inputs, output_attentions=True).attentions[0]  # layer 0 over the merged, left-padded rows
        merge, prune = handle.stats[-1]["stages"]
    for b in range(2):
        slots = torch.tensor(merge["slots"][b])
        scores = maps[b, :, -1, slots].mean(0)
        assert slots[ops.top_indices(scores, len(prune["kept"][b]))].tolist() == prune["kept"][b]


def test_received_attention_equals_the_eager_maps():
    model = tiny_model("llava_onevision")
    eager = tiny_model("llava_onevision", attn_implementation="eager")
    inputs = video_inputs(model, [random_frames(model, 4)])
    slots = torch.nonzero(inputs["input_ids"][0] == 251).squeeze(1)[:-1]
    with torch.no_grad():
        maps = eager(**inputs, output_attentions=True).attentions[0][0]  # layer K-1 = 0: [heads, L, L]
    want = maps.mean(0).mean(0)[slots]
    seen = {}

    @framepress.register("test_received", paper="test", budget="exact", stage="in-llm", layer=1)
    def spy(inputs, budget):
        seen["received"] = inputs.received_attention()
        n = inputs.visual.shape[0]
        return framepress.Tokens.select(inputs.visual.reshape(1, 1, n, -1), torch.arange(n))

    try:
        with framepress.apply(model, "test_received"), torch.no_grad():
            model(**inputs)
    finally:
        framepress.registry._METHODS.pop("test_received")
    torch.testing.assert_close(seen["received"], want, rtol=1e-4, atol=1e-6)
