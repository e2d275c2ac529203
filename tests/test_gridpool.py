"""ST-GridPool against the official code's outputs, and its defining properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import framepress
from framepress.methods.gridpool import level_indices, mosaics, norm_pool

GOLDEN = Path(__file__).parent / "data" / "gridpool"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
CASES = [(f["file"], c) for f in MANIFEST["files"] for c in f["cases"]]


@pytest.fixture(scope="module")
def golden():
    return {f["file"]: np.load(GOLDEN / f["file"]) for f in MANIFEST["files"]}


def settings_to_params(st: dict) -> dict:
    params = {"ptg": st["ptg"], "nsp": st.get("nsp", False), "temp": st.get("temp", 1.0), "p": st.get("p", 2)}
    if st.get("nsp"):
        params.update(kernel=st["kernel_size"], padding=st["padding"])
    if st.get("spatial", "").startswith("avg"):  # the official "temp=0" route to 2x2 average pooling
        params.update(nsp=True, kernel=2, temp=0.0)
    return params


@pytest.mark.parametrize("file,case", CASES, ids=[f"{f}-{c['key']}-{c['name']}" for f, c in CASES])
def test_matches_the_official_code(golden, file, case):
    data = golden[file]
    x = torch.from_numpy(data["x"])
    T = x.shape[0]
    expected = data[case["key"]]
    if case["name"] == "ptg_bilinear14":  # PTG, then LLaVA's own bilinear 2x2 downsampling
        gridded, _ = mosaics(x, (4, 4, 4), (2, 4, 8))
        got = F.interpolate(gridded.permute(0, 3, 1, 2), (14, 14), mode="bilinear", align_corners=False)
        got = got.permute(0, 2, 3, 1)
    elif case["name"] == "ptg_nsp_pathA_seq":  # LLaVA-Video's sequence: a newline after every row
        grid = framepress.compress(x, "gridpool").features.reshape(T, 13, 13, -1)
        newline = torch.from_numpy(data["newline"]).expand(T, 13, 1, -1)
        got = torch.cat([grid, newline], 2)
    else:
        got = framepress.compress(x, "gridpool", **settings_to_params(case["settings"])).features
    np.testing.assert_allclose(got.reshape(expected.shape).numpy(), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("entry", MANIFEST["files"], ids=[f["file"] for f in MANIFEST["files"]])
def test_ptg_writes_where_the_official_schedule_says(golden, entry):
    x = torch.from_numpy(golden[entry["file"]]["x"])
    gridded, written = mosaics(x, (4, 4, 4), (2, 4, 8))
    expected = [w for level in entry["ptg_schedule"] for w in level["written"]]
    assert written == expected
    untouched = [t for t in range(x.shape[0]) if t not in written]
    assert torch.equal(gridded[untouched], x[untouched])  # PTG never changes the token count or other frames
    for level in entry["ptg_schedule"]:
        assert level_indices(x.shape[0], level["grid_freq"]).tolist() == level["sample_indices"]


def test_frame_indices_round_as_the_code_does():
    assert level_indices(50, 4).tolist()[:4] == [3, 7, 12, 16]  # not round((i+1)N/S) - 1
    _, written = mosaics(torch.randn(50, 6, 6, 2), (4, 4, 4), (2, 4, 8))
    assert sorted(set(written)) == [7, 15, 16, 23, 31, 32, 39, 47, 49]  # levels stop nesting for T = 50


def test_identical_frames_make_a_tiled_downsampled_copy():
    frame = torch.randn(1, 27, 27, 8)
    x = frame.expand(8, -1, -1, -1).contiguous()
    gridded, written = mosaics(x, (4,), (2,))
    small = F.adaptive_avg_pool2d(frame.permute(0, 3, 1, 2), (14, 14)).permute(0, 2, 3, 1)[0]
    tiled = torch.cat([torch.cat([small, small], 1)] * 2, 0)[:27, :27]
    for t in written:
        torch.testing.assert_close(gridded[t], tiled)


def test_nsp_is_the_norm_softmax_weighted_sum_of_its_window():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 6, 5, generator=g) * torch.rand(2, 7, 6, 1, generator=g) * 3
    out = norm_pool(x, kernel=2, temp=1.5, p=2)
    assert out.shape == (2, 3, 3, 5)
    for t in range(2):
        for i in range(3):
            for j in range(3):
                window = x[t, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(-1, 5)
                weights = torch.softmax(1.5 * window.norm(dim=-1) / 5**0.5, 0)
                torch.testing.assert_close(out[t, i, j], (weights[:, None] * window).sum(0))
    average = norm_pool(x, kernel=2, temp=0.0)
    torch.testing.assert_close(average, F.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1))
    sharp = norm_pool(x, kernel=2, temp=1e4)
    window = x[0, :2, :2].reshape(-1, 5)
    torch.testing.assert_close(sharp[0, 0, 0], window[window.norm(dim=-1).argmax()])


@pytest.mark.parametrize("setting,per_frame,dropped", [("4:1", 169, 729 - 676), ("8:1", 81, 0)])
def test_native_settings(setting, per_frame, dropped):
    out = framepress.compress(torch.randn(8, 27, 27, 4), "gridpool", setting=setting)
    out.check()
    assert len(out) == 8 * per_frame
    assert int((out.source == -1).sum()) == 8 * dropped  # 2x2 windows never reach row 26 or column 26
    assert bool((out.sizes == (2 if setting == "4:1" else 3) ** 2).all())


@pytest.mark.parametrize("retention", [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
def test_retention_is_exact(retention):
    x = torch.randn(8, 27, 27, 4, generator=torch.Generator().manual_seed(1))
    out = framepress.compress(x, "gridpool", retention=retention)
    out.check()
    assert len(out) == max(1, round(retention * 8 * 729))
    order = out.boxes[:, 0] * 10_000 + out.boxes[:, 1] * 100 + out.boxes[:, 2]
    assert bool((order[1:] > order[:-1]).all())


def test_short_videos_and_odd_grids():
    assert framepress.compress(torch.randn(3, 27, 27, 4), "gridpool").info["ptg_written"] == []  # no full group
    assert framepress.compress(torch.randn(1, 5, 5, 4), "gridpool").features.shape == (4, 4)
    assert len(framepress.compress(torch.randn(2, 1, 3, 4), "gridpool")) == 6  # native window clamped to the grid
    one = framepress.compress(torch.randn(2, 1, 1, 4), "gridpool", retention=1.0)
    assert len(one) == 2
    with pytest.raises(ValueError, match="kernel=9"):
        framepress.compress(torch.randn(2, 4, 4, 4), "gridpool", kernel=9)
    with pytest.raises(ValueError, match="group_sizes and strides"):
        framepress.compress(torch.randn(2, 4, 4, 4), "gridpool", group_sizes=(4,), strides=(2, 4))
    with pytest.raises(ValueError, match="setting"):
        framepress.compress(torch.randn(2, 4, 4, 4), "gridpool", setting="2:1")
