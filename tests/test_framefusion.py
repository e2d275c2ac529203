"""FrameFusion: cascaded same-position merging, importance pruning, compute budgets; its attention signal."""

from __future__ import annotations

import pytest
import torch

import framepress
from framepress.layer import LayerInputs
from framepress.methods.framefusion import framefusion, run_starts
from framepress.models.tiny import random_frames, tiny_model, video_inputs


def test_runs_collapse_into_their_earliest_frame():
    merge = torch.tensor([[False, False], [True, False], [True, True], [False, True]])
    assert run_starts(merge).tolist() == [[0, 0], [0, 1], [0, 1], [3, 1]]


def layer_inputs(visual, grid, received=None, n_layers=4, layer=1):
    attention = lambda which, heads: received[None]  # noqa: E731
    return LayerInputs(visual, visual[:0], grid, layer, n_layers, _attention=attention)


def test_merging_is_the_mean_of_each_run():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 8, generator=g)
    frames = torch.cat([base, base + 0.01 * torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)])
    visual = frames.reshape(12, 8)
    out = framefusion(layer_inputs(visual, (3, 2, 2)), None, similarity=0.9)
    out.check()
    assert len(out) == 8  # frame 1 merges into frame 0, frame 2 stands alone
    torch.testing.assert_close(out.features[:4], frames[:2].mean(0))
    assert out.source.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]


def test_pruning_keeps_the_most_attended_and_cost_sets_the_budget():
    visual = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))  # unrelated frames: nothing merges
    received = torch.arange(16, dtype=torch.float32)
    out = framefusion(layer_inputs(visual, (4, 2, 2), received), 5, similarity=0.99)
    assert out.boxes[:, 2].tolist() == [11, 12, 13, 14, 15]
    cost = framefusion(layer_inputs(visual, (4, 2, 2), received, n_layers=4, layer=1), None, similarity=0.99, cost=0.5)
    assert len(cost) == round((4 * 0.5 - 1) / 3 * 16)  # (L*cost - K) / (L - K) of them go on
    with pytest.raises(ValueError, match="cost=0.2"):
        framefusion(layer_inputs(visual, (4, 2, 2), received), None, cost=0.2)
    with pytest.raises(ValueError, match="whole grid"):
        framefusion(layer_inputs(visual, None, received), 5)


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


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "qwen3_vl"])
def test_framefusion_in_each_family(family):
    model = tiny_model(family)
    inputs = video_inputs(model, [random_frames(model, 4, seed=s) for s in (0, 1)])
    for params, expect in [({"retention": 0.25}, lambda n: round(0.25 * n)), ({"cost": 0.5}, lambda n: round(n / 3))]:
        with framepress.apply(model, "framefusion", **params) as handle, torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, suppress_tokens=[250, 251, 252, 253])
            record = handle.stats[-1]
            n = record["tokens_in"][0]
            assert record["stages"][0]["visual_out"] == [expect(n)] * 2
