"""VisionZip (HoliTom's LLaVA-OneVision port): equal to the official code on the golden vectors, with the features
or SigLIP-key-like vectors as the metric; the per-frame split, exact budgets and thread independence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framepress

DATA = Path(__file__).parent / "data" / "visionzip"
CASES = json.loads((DATA / "manifest.json").read_text())["cases"]


def run_case(case, keys: bool):
    inputs = np.load(DATA / case["input"])
    metric = torch.from_numpy(inputs["keys"]) if keys else None
    return framepress.compress(
        torch.from_numpy(inputs["x"]), "visionzip", retention=case["retention"], scores=torch.from_numpy(inputs["scores"]),
        dominant_share=case["official_params"]["dominant_ratio"], contextual="sum", metric=metric,
    )


@pytest.mark.parametrize("keys", [False, True], ids=["metric=x", "metric=keys"])
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_equals_the_official_code(case, keys):
    out = run_case(case, keys)
    out.check()
    want = np.load(DATA / case["output"])
    suffix = "_keys" if keys else ""
    T, H, W = case["grid"]
    assert len(out) == case["count"] == T * case["spatial_tokens"]
    assert out.info == {"dominant": T * case["dominant_num"], "contextual": T * case["contextual_num"]}
    ours = {(int(b[0]), int(b[1]) * W + int(b[2])): i for i, b in enumerate(out.boxes)}
    theirs = list(zip(want["rep_t" + suffix].tolist(), want["rep_pos" + suffix].tolist()))
    assert set(ours) == set(theirs)
    row = torch.tensor([ours[key] for key in theirs])  # the official row i is our row row[i]
    torch.testing.assert_close(out.features[row], torch.from_numpy(want["features" + suffix]), rtol=0, atol=1e-4)
    source = torch.from_numpy(want["source" + suffix])
    assert torch.equal(out.source, torch.where(source >= 0, row[source.clamp_min(0)], -1))
    if case["official_params"]["mode"] == "one_token":  # LLaVA-OV: the official order itself
        assert torch.equal(row, torch.arange(len(out)))


def test_the_metric_only_changes_the_assignment():
    case = next(c for c in CASES if c["id"] == "c11_t32_14_c64_static_S30")
    plain, keyed = run_case(case, False), run_case(case, True)
    assert torch.equal(plain.boxes, keyed.boxes)
    assert not torch.equal(plain.source, keyed.source)


def test_split_floors_the_dominant_share():
    x, scores = torch.randn(2, 5, 5, 8), torch.rand(2, 5, 5)
    out = framepress.compress(x, "visionzip", retention=20 / 25, scores=scores)
    assert out.info == {"dominant": 2 * 16, "contextual": 2 * 4}  # int(20 * 54/64) = 16, not round() = 17
    alone = framepress.compress(x, "visionzip", retention=1 / 25, scores=scores)
    assert alone.info == {"dominant": 0, "contextual": 2}  # int(0.84) = 0: one contextual token a frame
    full = framepress.compress(x, "visionzip", retention=0.4, scores=scores, dominant_share=1.0)
    assert full.info == {"dominant": 20, "contextual": 0}  # the official code divides by zero here


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    T=st.integers(1, 6), H=st.integers(1, 7), W=st.integers(1, 7), C=st.integers(1, 6), D=st.integers(1, 5),
    retention=st.floats(0.001, 1.0), share=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
)
def test_exactly_the_budget_with_any_metric(T, H, W, C, D, retention, share, seed):
    g = torch.Generator().manual_seed(seed)
    x, metric = torch.randn(T, H, W, C, generator=g), torch.randn(T, H, W, D, generator=g)
    out = framepress.compress(x, "visionzip", retention=retention, scores=torch.rand(T, H, W, generator=g),
                              dominant_share=share, metric=metric)
    out.check()
    assert len(out) == max(1, round(retention * (T * H * W)))


def test_thread_count_does_not_change_the_output(on_threads):
    case = next(c for c in CASES if c["id"] == "c11_t32_14_c64_static_S30")
    one, two = (on_threads(n, lambda: [run_case(case, keys) for keys in (False, True)]) for n in (1, 2))
    for a, b in zip(one, two):
        assert torch.equal(a.features, b.features) and torch.equal(a.boxes, b.boxes) and torch.equal(a.source, b.source)


def test_bad_metric_is_named():
    x = torch.randn(2, 3, 3, 4)
    with pytest.raises(ValueError, match=r"metric must have shape \[T, H, W, D\] = \[2, 3, 3, D\]"):
        framepress.compress(x, "visionzip", retention=0.5, scores="norm", metric=torch.randn(2, 3, 4, 4))
    with pytest.raises(TypeError, match="metric must be"):
        framepress.compress(x, "visionzip", retention=0.5, scores="norm", metric=[1.0])
    with pytest.raises(ValueError, match="metric must be finite"):
        framepress.compress(x, "visionzip", retention=0.5, scores="norm", metric=torch.full((2, 3, 3, 2), float("nan")))
