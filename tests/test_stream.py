"""Long videos: compress(window=W), framepress.Stream, the two-level global methods and the streaming decode."""

from __future__ import annotations

import tracemalloc

import av
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framepress
from framepress import budget as _budget
from framepress import video
from framepress.features import synthetic
from framepress.stream import GLOBAL_METHODS

PRE = framepress.methods("pre-llm")
SCORED = ("fastvid", "holitom", "unified", "visionzip")
EXACT = ("random", "divprune", "visionzip", "unified", "gridpool")
# the share each method is tested at: dycoke keeps >= 25%, frames whole frames
RETENTION = {"dycoke": 0.5, "frames": None}


def scores_for(x: torch.Tensor, method: str) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"scores": torch.rand(x.shape[:3], generator=g)} if method in SCORED else {}


def same(a: framepress.Tokens, b: framepress.Tokens) -> None:
    assert a.grid == b.grid
    for name in ("features", "boxes", "sizes", "source"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("method", PRE)
def test_one_window_is_one_shot(method):
    x = synthetic(8, 6, 6, 16, seed=3)
    r = RETENTION.get(method, 0.3)
    kw = scores_for(x, method)
    one = framepress.compress(x, method, r, **kw)
    for window in (8, 50):
        same(framepress.compress(x, method, r, window=window, **kw), one)


@pytest.mark.parametrize("method", EXACT)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(T=st.integers(1, 14), window=st.integers(1, 9), retention=st.floats(0.01, 1.0), even=st.booleans())
def test_exact_methods_keep_the_budget_across_windows(method, T, window, retention, even):
    x = synthetic(T, 4, 4, 8, seed=T)
    kw = scores_for(x, method)
    extra = {"max_tokens": 40} if method in GLOBAL_METHODS else {}
    out = framepress.compress(x, method, retention, window=window, split="even" if even else None, **kw, **extra)
    out.check()
    n_windows = -(-T // window)
    counts = [min(window, T - s) * 16 for s in range(0, T, window)]
    if method in GLOBAL_METHODS and T * 16 <= 40:  # fits in max_tokens: one call, no windows
        assert len(out) == _budget.tokens_for(retention, T * 16) and "windows" not in out.info
        return
    if even:
        expected = sum(_budget.cumulative(retention, counts))
    else:
        expected = max(_budget.tokens_for(retention, T * 16), n_windows)
    assert len(out) == expected == out.info["budget"]
    if method not in GLOBAL_METHODS:  # each window its share (a global method's level 1 keeps more)
        assert [w["budget"] for w in out.info["windows"]] == [w["kept"] for w in out.info["windows"]]


def test_windows_share_by_novelty():
    static = torch.ones(6, 4, 4, 8)
    moving = torch.randn(6, 4, 4, 8, generator=torch.Generator().manual_seed(0))
    x = torch.cat([static, moving])
    out = framepress.compress(x, "random", 0.25, window=6)
    first, second = (w["budget"] for w in out.info["windows"])
    assert first + second == _budget.tokens_for(0.25, 12 * 16) and first < second
    assert first >= 1
    assert out.boxes[out.boxes[:, 0] >= 6].shape[0] == second  # boxes in video time


def test_split_is_largest_remainder():
    assert _budget.split(10, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([9, 9, 9])) == [4, 3, 3]
    assert _budget.split(100, torch.tensor([1.0, 1.0, 10.0]), torch.tensor([50, 50, 50])) == [25, 25, 50]
    assert _budget.split(2, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([5, 5, 5])) == [1, 1, 1]
    assert _budget.split(99, torch.tensor([1.0, 0.0001]), torch.tensor([50, 50])) == [50, 49]


CHUNKS = (3, 1, 7, 0, 12, 2)  # 0: ask for tokens() midway


@pytest.mark.parametrize("method", PRE)
def test_stream_in_uneven_chunks_equals_compress(method):
    x = synthetic(25, 6, 6, 16, seed=5)
    r = RETENTION.get(method, 0.3)
    kw = scores_for(x, method)
    extra = {"max_tokens": 100} if method in GLOBAL_METHODS else {}
    whole = framepress.compress(x, method, r, window=5, split="even", **kw, **extra)
    stream = framepress.Stream(method, r, window=5, **extra)
    at = 0
    for n in CHUNKS:
        if n == 0:
            part = stream.tokens()
            part.check()
            assert part.grid == (at, 6, 6)
            continue
        stream.push(x[at : at + n], **{k: v[at : at + n] for k, v in kw.items()})
        at += n
    assert at == 25 and stream.frames == 25
    out = stream.tokens()
    out.check()
    same(out, whole)


def test_long_video_streamed_end_to_end():
    T, H, W, C, window = 1800, 4, 4, 8, 60
    g = torch.Generator().manual_seed(0)
    base = torch.randn(H, W, C, generator=g)
    streams = {m: framepress.Stream(m, 0.1, window=window, **({"max_tokens": 2000} if m == "divprune" else {}))
               for m in ("random", "pool", "sttm", "divprune")}
    for s in range(0, T, 45):  # generated chunk by chunk, never the whole video
        drift = torch.randn(45, 1, 1, C, generator=g).cumsum(0) * 0.05
        chunk = base + drift + 0.1 * torch.randn(45, H, W, C, generator=g)
        for stream in streams.values():
            stream.push(chunk)
        base = chunk[-1]
    for name, stream in streams.items():
        out = stream.tokens()
        out.check()
        assert out.grid == (T, H, W)
        assert int(out.boxes[:, 0].max()) >= T - window
        if name in ("random", "divprune"):
            assert len(out) == round(0.1 * T * H * W)
        assert len(out.info["windows"]) == T // window


def test_finished_windows_hold_only_their_tokens():
    x = synthetic(8, 4, 4, 8)
    stream = framepress.Stream("frames", 0.5, window=4)  # keeps whole frames: a view into the window
    stream.push(x)
    kept = stream._runner.parts[0].tokens.features
    assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size()


def test_global_methods_run_two_levels_above_max_tokens():
    x = synthetic(12, 6, 6, 16, seed=2)
    one = framepress.compress(x, "divprune", 0.1)
    small = framepress.compress(x, "divprune", 0.1, max_tokens=1000)  # fits: one call
    same(small, one)
    two = framepress.compress(x, "divprune", 0.1, max_tokens=100)
    two.check()
    assert len(two) == len(one) and two.info["max_tokens"] == 100
    assert two.info["window"] == 100 // 36
    assert sum(w["kept"] for w in two.info["windows"]) > len(two)  # level 1 kept more, level 2 chose


def test_bad_arguments_name_them():
    x = synthetic(4, 4, 4, 8)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="window"):
            framepress.compress(x, "random", 0.5, window=bad)
        with pytest.raises(ValueError, match="window"):
            framepress.Stream("random", 0.5, window=bad)
    for bad in ("4", 2.0, True):
        with pytest.raises(TypeError, match="window"):
            framepress.compress(x, "random", 0.5, window=bad)
    with pytest.raises(ValueError, match="max_tokens"):
        framepress.compress(x, "random", 0.5, window=2, max_tokens=10)
    with pytest.raises(ValueError, match="split"):
        framepress.compress(x, "random", 0.5, split="even")
    with pytest.raises(ValueError, match="split"):
        framepress.compress(x, "random", 0.5, window=2, split="novel")
    with pytest.raises(ValueError, match="in-LLM|inside the LLM"):
        framepress.Stream("fastv", 0.5, window=2)
    stream = framepress.Stream("random", 0.5, window=2)
    with pytest.raises(ValueError, match="no frames"):
        stream.tokens()
    with pytest.raises(ValueError, match="frames"):
        stream.push(torch.zeros(4, 4, 8))
    with pytest.raises(TypeError, match="frames"):
        stream.push(np.zeros((1, 4, 4, 8)))
    stream.push(x[:1])
    with pytest.raises(ValueError, match="frames must be"):
        stream.push(torch.zeros(1, 5, 4, 8))
    with pytest.raises(ValueError, match="per-frame"):
        stream.push(x[:1], scores=torch.zeros(1, 4, 4))
    bad = x[:1].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="frames contains NaN"):
        stream.push(bad)  # completes a window: checked as it is compressed
    scored = framepress.Stream("unified", 0.5, window=2)
    with pytest.raises(ValueError, match="scores"):
        scored.push(x[:2])
    with pytest.raises(ValueError, match="scores"):
        scored.push(x[:2], scores=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="scores"):
        framepress.Stream("unified", 0.5, window=2, scores=torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="scores"):
        framepress.compress(x, "unified", 0.5, window=2, scores=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="window of frames"):
        framepress.compress(synthetic(9, 4, 4, 8), "frames", 0.2, window=4)  # a share below one frame


def write_clip(path, frames=1800, rate=10):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            f = np.zeros((48, 64, 3), np.uint8)
            f[:, i % 64] = 255
            f[(i // 64) % 48] = (i * 7) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_iter_frames_streams_what_load_video_loads(tmp_path):
    path = tmp_path / "long.mp4"
    write_clip(path)  # 3 minutes at 10 fps
    loaded = video.load_video(path, fps=1)
    assert len(loaded) == 180
    frame_bytes = loaded.frames[0].nbytes
    chunks, sizes = [], []
    tracemalloc.start()
    try:
        for chunk in video.iter_frames(path, fps=1, chunk=8):
            sizes.append(len(chunk))
            chunks.append(chunk.copy())
            del chunk
            tracemalloc.reset_peak() if len(chunks) == 1 else None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert max(sizes) <= 8 and sum(sizes) == 180
    assert np.array_equal(np.concatenate(chunks), loaded.frames)
    kept = sum(c.nbytes for c in chunks)
    assert peak - kept < 3 * 8 * frame_bytes + 2**20  # beyond what the test keeps: about one chunk in flight

    def features(frames):  # 8x8 pixel patches as tokens: [n, 6, 8, 192]
        t = torch.from_numpy(frames).float() / 255
        return t.reshape(len(frames), 6, 8, 8, 8, 3).permute(0, 1, 3, 2, 4, 5).reshape(len(frames), 6, 8, -1)

    stream = framepress.Stream("pool", 0.25, window=16)
    for chunk in video.iter_frames(path, fps=1, chunk=7):
        stream.push(features(chunk))
    same(stream.tokens(), framepress.compress(features(loaded.frames), "pool", 0.25, window=16, split="even"))


def test_iter_frames_bad_chunk(tmp_path):
    with pytest.raises(ValueError, match="chunk"):
        video.iter_frames(tmp_path / "x.mp4", fps=1, chunk=0)
    with pytest.raises(TypeError, match="chunk"):
        video.iter_frames(tmp_path / "x.mp4", fps=1, chunk=2.5)


def test_cli_compress_window(capsys):
    from framepress import cli

    assert cli.main(["compress", "--synthetic", "20x4x4x8", "-r", "0.5", "--window", "6", "-m", "random",
                     "--repeat", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"window": 6' in out and '"split": "novelty"' in out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compress", "--synthetic", "20x4x4x8", "--window", "0", "-m", "random"])
    assert exit_.value.code == 2
    assert "--window" in capsys.readouterr().err
