"""STTM against the official implementation: golden vectors, the spec's reference run, its two quirks, and the
budget search."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import framepress
from framepress import ops
from framepress.methods.sttm import level_sizes

GOLDEN = Path(__file__).parent / "data" / "sttm"
CASES = [
    (entry["name"], case)
    for entry in json.loads((GOLDEN / "manifest.json").read_text())
    for case in entry["cases"]
]


@pytest.mark.parametrize("name,case", CASES, ids=[f"{n}-{c['id']}" for n, c in CASES])
def test_matches_official_golden(name, case):
    data = np.load(GOLDEN / f"{name}.npz")
    out = framepress.compress(
        torch.from_numpy(data["x"]),
        "sttm",
        tau_s=case["tau_s"],
        tau_t=case["tau_t"],
        root_level=case["root_level"],
        variant=case["variant"],
    )
    cid = case["id"]
    assert len(out) == case["n_tokens"] == len(data[f"{cid}_features"])
    np.testing.assert_array_equal(out.boxes.numpy(), data[f"{cid}_boxes"])
    np.testing.assert_array_equal(out.sizes.numpy(), data[f"{cid}_sizes"])
    np.testing.assert_allclose(out.features.numpy(), data[f"{cid}_features"], rtol=0, atol=1e-5)
    out.check()


def spec_video() -> torch.Tensor:
    """The synthetic parity input of specs/sttm.md §5.4, as [T, H, W, C]."""
    torch.manual_seed(0)
    base = F.interpolate(torch.randn(1, 64, 4, 4), (14, 14), mode="bilinear", align_corners=False)
    cut = F.interpolate(torch.randn(1, 64, 4, 4), (14, 14), mode="bilinear", align_corners=False)
    frames = []
    for t in range(8):
        drift = 0.05 * t * torch.randn(1, 64, 1, 1)
        frames.append((base if t < 5 else cut) + drift + 0.35 * torch.randn(1, 64, 14, 14))
    video = torch.cat(frames)
    assert hashlib.sha256(video.numpy().tobytes()).hexdigest().startswith("1ff53d71cf49721c")
    return video.permute(0, 2, 3, 1).contiguous()


def sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def video():
    return spec_video()


# (tau_s, tau_t, official tokens, official tokens per frame of the representative or None)
SPEC_COUNTS = [
    (1.01, -1, 1568, [196] * 8),
    (0.95, -1, 1478, None),
    (0.90, -1, 1136, [151, 163, 157, 145, 154, 118, 136, 112]),
    (0.85, -1, 626, None),
    (0.80, -1, 359, [67, 46, 61, 49, 46, 34, 31, 25]),
    (0.75, -1, 242, None),
    (0.70, -1, 189, None),
    (0.50, -1, 165, None),
    (1.01, 0.90, 1535, None),
    (0.90, 0.80, 827, [148, 83, 85, 91, 104, 117, 111, 88]),
    (0.85, 0.65, 225, None),
    (0.85, 0.55, 166, None),
    (0.80, 0.60, 91, [48, 2, 6, 3, 1, 29, 2, 0]),
    (0.80, 0.50, 77, None),
    (0.75, 0.50, 55, None),
]


@pytest.mark.parametrize("tau_s,tau_t,n,per_frame", SPEC_COUNTS)
def test_spec_reference_counts(video, tau_s, tau_t, n, per_frame):
    out = framepress.compress(video, "sttm", tau_s=tau_s, tau_t=tau_t)
    assert len(out) == n
    if per_frame is not None:
        assert torch.bincount(out.boxes[:, 0], minlength=8).tolist() == per_frame


def test_spec_reference_bits(video):
    """Features equal the official code's bit for bit (sha256 of the raw float32 bytes, spec §5.4)."""
    assert sha(framepress.compress(video, "sttm", tau_s=0.8, tau_t=-1).features) == "7e4c0360c8c1919d"
    out = framepress.compress(video, "sttm", tau_s=0.8, tau_t=0.6)
    assert sha(out.features) == "4acd0061b801d2df"
    assert out.boxes[0].tolist() == [0, 0, 0, 2, 2] and out.sizes[0] == 20  # a corner merged over 5 frames
    slow = framepress.compress(video, "sttm", tau_s=0.8, tau_t=0.6, variant="slow")
    assert len(slow) == 96 and sha(slow.features) == "7ad2eef19306abb2"


@pytest.mark.parametrize("tau_s,tau_t,official,exact", [(0.9, 0.8, 827, 822), (0.85, 0.65, 225, 198), (0.8, 0.6, 91, 82), (0.8, 0.5, 77, 68)])
def test_exact_grouping_option(video, tau_s, tau_t, official, exact):
    assert len(framepress.compress(video, "sttm", tau_s=tau_s, tau_t=tau_t)) == official
    assert len(framepress.compress(video, "sttm", tau_s=tau_s, tau_t=tau_t, grouping="exact")) == exact


def test_root_levels(video):
    counts = [len(framepress.compress(video, "sttm", tau_s=0.8, tau_t=-1, root_level=r)) for r in (0, 1, 2)]
    assert counts == [359, 359, 542]
    leaf = framepress.compress(video, "sttm", tau_s=0.5, tau_t=-1, root_level=-1)
    assert len(leaf) == 1568


def test_level_sizes():
    assert level_sizes(14, 14) == [(2, 2), (4, 4), (7, 7), (14, 14)]
    assert level_sizes(13, 13) == [(2, 2), (4, 4), (7, 7), (13, 13)]
    assert level_sizes(20, 37) == [(2, 3), (3, 5), (5, 10), (10, 19), (20, 37)]
    assert level_sizes(1, 1) == [(1, 1)]  # the official loop never ends here


def test_quirk_missing_child_slots():
    """Spec §2.3.2: a frame uniform but for its top-left 2x2 block gives 22 tokens, not 16, because the
    official code compares missing slots of edge nodes with the top-left child."""
    x = torch.zeros(1, 14, 14, 8)
    x[..., 0] = 1
    x[:, :2, :2, 1] = 1
    assert len(framepress.compress(x, "sttm", tau_s=0.9, tau_t=-1)) == 22
    assert len(framepress.compress(x, "sttm", tau_s=0.9, tau_t=-1, invalid_slots="ignore")) == 16


def test_quirk_grouping_loop_stops_early():
    """Spec §2.5.3: the official loop stops at the star property, not at full connected components."""
    edges = torch.tensor([[0, 5], [3, 5]])
    assert ops.min_label_official(edges, 6).tolist() == [0, 1, 2, 3, 4, 0]
    assert ops.connected_components(edges, 6).tolist() == [0, 1, 2, 0, 4, 0]
    chain = torch.tensor([[0, 5], [3, 5], [6, 7], [7, 8], [8, 9], [9, 10]])
    assert ops.min_label_official(chain, 11)[3] == 0


def test_no_merging_returns_the_input():
    x = torch.randn(3, 5, 6, 4)
    out = framepress.compress(x, "sttm", tau_s=1.5, tau_t=-1)
    assert torch.equal(out.features, x.reshape(-1, 4))
    assert torch.equal(out.source, torch.arange(90))


def test_single_frame_and_thin_grids():
    for shape in [(1, 14, 14, 8), (3, 1, 1, 4), (2, 1, 9, 4), (2, 9, 1, 4), (2, 2, 2, 4)]:
        out = framepress.compress(torch.randn(*shape), "sttm", tau_s=-1.0, tau_t=0.0)
        out.check()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_close_to_float32(video, dtype):
    ref = framepress.compress(video, "sttm", tau_s=0.8, tau_t=-1)
    out = framepress.compress(video.to(dtype), "sttm", tau_s=0.8, tau_t=-1)
    assert out.features.dtype == dtype
    # precision flips a few threshold decisions (spec §5.4: bf16 gives 92 tokens instead of 91 at 0.8/0.6)
    assert abs(len(out) - len(ref)) <= 0.05 * len(ref)


@pytest.mark.parametrize("retention", [1.0, 0.5, 0.3, 0.1, 0.05, 0.02])
def test_budget_search(video, retention):
    budget = round(retention * video.shape[:3].numel())
    out = framepress.compress(video, "sttm", retention=retention)
    assert 0.98 * budget <= len(out) <= budget
    assert out.info["budget"] == budget and out.info["search_evaluations"] <= 100
    again = framepress.compress(video, "sttm", tau_s=out.info["tau_s"], tau_t=out.info["tau_t"])
    assert torch.equal(again.features, out.features) and torch.equal(again.boxes, out.boxes)


@pytest.mark.parametrize("fixed", [{"tau_t": -1}, {"tau_t": 0.6}, {"tau_s": 0.85}, {"tau_s": 0.9, "grouping": "exact"}])
def test_budget_search_with_a_fixed_threshold(video, fixed):
    out = framepress.compress(video, "sttm", retention=0.2, **fixed)
    assert len(out) <= 314
    for name in ("tau_s", "tau_t"):
        if name in fixed:
            assert out.info[name] == fixed[name]
    again = framepress.compress(video, "sttm", tau_s=out.info["tau_s"], tau_t=out.info["tau_t"],
                                grouping=fixed.get("grouping", "official"))
    assert torch.equal(again.features, out.features)


def test_budget_below_the_minimum_is_a_clear_error(video):
    with pytest.raises(ValueError, match="retention asks for 16 tokens"):
        framepress.compress(video, "sttm", retention=0.01, root_level=1)


def test_default_root_level_falls_back_to_coarser_roots_for_a_budget(video):
    out = framepress.compress(video, "sttm", retention=0.01)  # 4x4 roots cannot get to 16 tokens; 2x2 can
    assert out.info["root_level"] == 0 and len(out) <= 16
    assert framepress.compress(video, "sttm", retention=0.3).info["root_level"] == 1
