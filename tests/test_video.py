"""Video loading: exact frames at the sampled indices, from H.264 MP4, VP9 WebM, image folders and single images.

Every file is written here with PyAV or Pillow. Each frame carries its own index as a barcode: bit b of the
index is a vertical stripe of 8 px, white for 1, black for 0 (LSB at the left), which survives lossy coding, so
a decoded frame says which source frame it is.
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from framepress import video
from framepress.video import Video, fps_indices, load_video, sample_indices

W, H, STRIPE = 64, 48, 8  # 8 stripes: indices up to 255
N = 50  # frames in the generated videos
RATE = 25
H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"
VP9 = "libvpx-vp9" if "libvpx-vp9" in av.codecs_available else None


def barcode(i: int, w: int = W, h: int = H) -> np.ndarray:
    bits = ((i >> np.arange(w // STRIPE)) & 1).astype(np.uint8) * 255
    return np.ascontiguousarray(np.broadcast_to(np.repeat(bits, STRIPE)[None, :, None], (h, w, 3)))


def read_barcode(frame: np.ndarray) -> int:
    """The index a frame shows: each stripe's mean brightness (its middle columns) against mid-grey."""
    cols = frame.astype(np.float64).mean(axis=(0, 2))
    stripes = cols[: len(cols) // STRIPE * STRIPE].reshape(-1, STRIPE)[:, 2:-2].mean(axis=1)
    return int(((stripes > 128) * (1 << np.arange(len(stripes)))).sum())


def shown(v: Video) -> list[int]:
    return [read_barcode(f) for f in v.frames]


def write_video(path, n=N, codec=H264, gop=12, bframes=2, keep=lambda packet: True, **options) -> str:
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.gop_size = gop
        if bframes:
            stream.codec_context.max_b_frames = bframes
        stream.options = options
        frames = (av.VideoFrame.from_ndarray(barcode(i), format="rgb24") for i in range(n))
        for frame in [*frames, None]:  # None flushes the encoder
            for packet in stream.encode(frame):
                if keep(packet):
                    out.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    """H.264 (High profile: B-frames), GOP 12, no scene-cut keyframes, 50 frames of 64x48 (MPEG-4 Part 2 with
    B-frames where this PyAV build lacks libx264)."""
    options = {"crf": "12", "x264-params": "scenecut=0"} if H264 == "libx264" else {"qscale": "2"}
    return write_video(tmp_path_factory.mktemp("mp4") / "clip.mp4", **options)


@pytest.fixture(scope="module")
def webm(tmp_path_factory):
    if VP9 is None:
        pytest.skip("this PyAV build has no libvpx-vp9 encoder")
    path = tmp_path_factory.mktemp("webm") / "clip.webm"
    return write_video(path, codec=VP9, bframes=0, crf="12", b="0", deadline="realtime", **{"cpu-used": "8"})


@pytest.fixture(params=["mp4", "webm"])
def clip(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def quiet():
    """Any warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture(params=["seek", "sequential"])
def path_mode(request, monkeypatch):
    """Force one decoding path: seeking (at every chance, the sequential path disabled) or sequential only."""
    if request.param == "seek":
        monkeypatch.setattr(video, "SEEK_MIN_SKIP", 1)

        def no_fallback(*args, **kwargs):
            raise AssertionError("the seek path fell back to sequential decoding")

        monkeypatch.setattr(video, "_decode_sequential", no_fallback)
    else:
        monkeypatch.setattr(video, "_decode_seeking", lambda *args, **kwargs: None)
    return request.param


# ---------------------------------------------------------------------------------------------------------------
# index formulas
# ---------------------------------------------------------------------------------------------------------------


def test_sample_indices_is_the_lmms_eval_formula():
    for total in (1, 2, 7, 50, 101, 1000, 9001):
        for n in (1, 2, 3, 7, 16, 32, 64):
            got = sample_indices(total, n)
            if n >= total:
                assert got == list(range(total))
            else:
                assert got == np.linspace(0, total - 1, n, dtype=int).tolist()
                assert len(set(got)) == n and got[0] == 0 and (n == 1 or got[-1] == total - 1)
    assert sample_indices(50, 7) == [0, 8, 16, 24, 32, 40, 49]
    assert sample_indices(0, 4) == []


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((10, 0), ValueError, "n must be >= 1"),
        ((-1, 3), ValueError, "total must be >= 0"),
        ((10, 2.0), TypeError, "n must be an int"),
    ],
)
def test_sample_indices_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        sample_indices(*args)


def test_fps_indices():
    assert fps_indices(50, 25, 5) == list(range(0, 50, 5))
    assert fps_indices(50, 25, 2) == [0, 13, 25, 38]  # 12.5 and 37.5 round half up
    assert fps_indices(50, 25, 25) == list(range(50))
    assert fps_indices(50, 25, 100) == list(range(50))  # faster than the source: every frame once
    assert fps_indices(1000, 29.97, 1) == [round(k * 29.97) for k in range(34)]
    assert fps_indices(50, Fraction(30000, 1001), 0.5) == [0]
    for total, src, fps in [(50, 25, 3), (1000, 30, 2), (7, 24, 7.5)]:
        k = math.ceil(total * fps / src)
        expected = sorted({min(math.floor(j * src / fps + 0.5), total - 1) for j in range(k)})
        assert fps_indices(total, src, fps) == expected


# ---------------------------------------------------------------------------------------------------------------
# exact frames from videos
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 16, N])
def test_exact_frames(clip, n, quiet):
    v = load_video(clip, num_frames=n)
    assert v.total_frames == N
    assert v.indices == sample_indices(N, n) == shown(v)
    assert v.frames.dtype == np.uint8 and v.frames.shape == (len(v.indices), H, W, 3)
    assert v.fps == RATE and v.duration == pytest.approx(N / RATE)
    assert v.timestamps == pytest.approx([i / RATE for i in v.indices])
    assert v.source == clip and len(v) == len(v.indices)


@pytest.mark.parametrize("n", [1, 5, 7, 16, 32, N])
def test_seek_and_sequential_give_the_same_exact_frames(clip, path_mode, n):
    v = load_video(clip, num_frames=n)
    assert v.indices == sample_indices(N, n) == shown(v)
    reference = load_video(clip, num_frames=n)  # the same path again: deterministic
    assert np.array_equal(v.frames, reference.frames)


def test_seek_path_pixels_equal_sequential(clip, monkeypatch):
    monkeypatch.setattr(video, "SEEK_MIN_SKIP", 1)
    sought = load_video(clip, num_frames=6)
    monkeypatch.setattr(video, "_decode_seeking", lambda *args, **kwargs: None)
    assert np.array_equal(sought.frames, load_video(clip, num_frames=6).frames)


def test_mp4_has_b_frames_and_several_gops(mp4):
    """The premise of the exactness tests: decode order differs from presentation order, and there are GOPs."""
    with av.open(mp4) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    pts = [p.pts for p in packets]
    assert pts != sorted(pts) and sum(p.is_keyframe for p in packets) >= 4


def test_seeks_happen(clip, monkeypatch):
    """With far-apart wanted frames the seek path really seeks (to keyframes) and still returns exact frames."""
    monkeypatch.setattr(video, "SEEK_MIN_SKIP", 1)
    seeks = []
    open_ = video._open

    class Spy:
        def __init__(self, p):
            self.container = open_(p)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.container.close()

        def __getattr__(self, name):
            return getattr(self.container, name)

        def seek(self, offset, **kwargs):
            seeks.append(offset)
            return self.container.seek(offset, **kwargs)

    monkeypatch.setattr(video, "_open", Spy)
    v = load_video(clip, num_frames=4)
    assert shown(v) == v.indices == sample_indices(N, 4) and len(seeks) >= 2


def test_more_frames_than_exist_warns_once_and_returns_all(clip):
    with pytest.warns(UserWarning, match=r"num_frames=80 asked, but only 50 frames exist") as record:
        v = load_video(clip, num_frames=80)
    assert len(record) == 1
    assert v.indices == list(range(N)) == shown(v)


def test_default_is_32_frames(mp4, quiet):
    assert load_video(mp4).indices == sample_indices(N, 32)


@pytest.mark.parametrize("fps", [5, 2, 3, 12.5, 25])
def test_fps_sampling(clip, fps, quiet):
    v = load_video(clip, fps=fps)
    assert v.indices == fps_indices(N, RATE, fps) == shown(v)
    assert v.timestamps == pytest.approx([i / RATE for i in v.indices])


def test_fps_above_the_source_rate_warns_and_returns_all(mp4):
    with pytest.warns(UserWarning, match=r"fps=100 asks for 200 frames"):
        v = load_video(mp4, fps=100)
    assert v.indices == list(range(N)) == shown(v)


def test_webm_frame_count_by_demux(webm):
    with av.open(webm) as c:
        assert c.streams.video[0].frames == 0  # why the packets are counted
    v = load_video(webm, num_frames=3)
    assert v.total_frames == N and v.duration == pytest.approx(N / RATE) and shown(v) == [0, 24, 49]


def test_truncated_webm_warns_and_gives_what_is_there(webm, tmp_path):
    """A WebM cut in half still opens and decodes: the frames that are there, sampled, and a warning."""
    cut = tmp_path / "cut.webm"
    options = {"deadline": "realtime", "cpu-used": "8"}
    longer = write_video(tmp_path / "long.webm", n=250, codec=VP9, bframes=0, **options)
    data = Path(longer).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="truncated"):
        v = load_video(cut, num_frames=5)
    assert 0 < v.total_frames < 250 and v.indices == sample_indices(v.total_frames, 5) == shown(v)


def test_max_side(clip, quiet):
    v = load_video(clip, num_frames=3, max_side=32)
    assert v.frames.shape == (3, 24, 32, 3)
    assert load_video(clip, num_frames=3, max_side=500).frames.shape == (3, H, W, 3)  # never enlarged


def test_huge_frames_need_max_side(mp4, monkeypatch):
    monkeypatch.setattr(video, "MAX_SIDE_LIMIT", 60)
    with pytest.raises(ValueError, match=r"clip\.mp4: frames of 64x48 exceed 60 px on a side; pass max_side"):
        load_video(mp4)
    assert load_video(mp4, num_frames=2, max_side=32).frames.shape == (2, 24, 32, 3)


def test_progress_bar(mp4, capsys):
    v = load_video(mp4, num_frames=4, progress=True)
    assert shown(v) == sample_indices(N, 4)
    assert "clip.mp4" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------


def test_folder_of_frames_in_natural_order(tmp_path, quiet):
    for i in range(40):
        Image.fromarray(barcode(i)).save(tmp_path / f"frame_{i + 1}.png")  # frame_2 before frame_10
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    v = load_video(tmp_path, num_frames=7)
    assert v.total_frames == 40 and v.indices == sample_indices(40, 7) == shown(v)
    assert v.fps is None and v.duration is None and v.timestamps is None
    assert shown(load_video(tmp_path, num_frames=40)) == list(range(40))
    assert load_video(tmp_path, num_frames=3, max_side=16).frames.shape == (3, 12, 16, 3)
    with pytest.raises(ValueError, match="has no frame rate"):
        load_video(tmp_path, fps=2)


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "bmp"])
def test_single_image(tmp_path, ext, quiet):
    path = tmp_path / f"still.{ext}"
    Image.fromarray(barcode(37)).save(path)
    v = load_video(path)
    assert v.frames.shape == (1, H, W, 3) and v.indices == [0] and v.total_frames == 1 and shown(v) == [37]


def test_single_image_asked_for_more_warns(tmp_path):
    path = tmp_path / "still.png"
    Image.fromarray(barcode(5)).convert("RGBA").save(path)
    with pytest.warns(UserWarning, match="only 1 frame exist"):
        v = load_video(path, num_frames=4)
    assert v.frames.shape == (1, H, W, 3)


def test_huge_image_needs_max_side(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (9000, 4), "white").save(path)
    with pytest.raises(ValueError, match=r"wide\.png: frames of 9000x4 exceed 8192 px on a side; pass max_side"):
        load_video(path)
    assert load_video(path, max_side=900).frames.shape == (1, 1, 900, 3)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------


def clean(err: pytest.ExceptionInfo) -> None:
    """A short error of ours: no chained PyAV exception behind it."""
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such video, image or folder: .*nothing\.mp4"):
        load_video(tmp_path / "nothing.mp4")


def test_truncated_mp4(mp4, tmp_path):
    data = Path(mp4).read_bytes()
    cut = tmp_path / "half.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read video .*half\.mp4: .*corrupt or truncated") as err:
        load_video(cut)
    clean(err)


@pytest.mark.parametrize("content", [b"", b"hello world\n" * 100])
def test_not_a_video(tmp_path, content):
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot read video .*fake\.mp4") as err:
        load_video(path)
    clean(err)


def test_corrupt_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_video(path)


def write_audio(path, cover: bool = False) -> None:
    """A second of silence; with ``cover``, an MP3 with cover art (a one-picture video stream)."""
    with av.open(str(path), "w") as out:
        codec, fmt, dtype = ("mp3", "fltp", np.float32) if cover else ("pcm_s16le", "s16", np.int16)
        stream = out.add_stream(codec, rate=16000, layout="mono")
        if cover:
            art = out.add_stream("mjpeg", rate=1)
            art.width, art.height, art.pix_fmt = W, H, "yuvj420p"
            art.disposition = av.stream.Disposition.attached_pic
            for packet in [*art.encode(av.VideoFrame.from_ndarray(barcode(3), format="rgb24")), *art.encode(None)]:
                out.mux(packet)
        for k in range(14):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), dtype), format=fmt, layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1152
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_audio_only(tmp_path):
    write_audio(tmp_path / "voice.wav")
    with pytest.raises(ValueError, match=r"voice\.wav has no video stream \(streams: audio\)"):
        load_video(tmp_path / "voice.wav")


def test_audio_with_cover_art_is_not_a_video(tmp_path):
    write_audio(tmp_path / "song.mp3", cover=True)
    with av.open(str(tmp_path / "song.mp3")) as c:
        assert len(c.streams.video) == 1  # the cover is a video stream to FFmpeg
    with pytest.raises(ValueError, match=r"song\.mp3 has no video stream \(streams: audio, cover art\)"):
        load_video(tmp_path / "song.mp3")


def test_no_decodable_frame(tmp_path):
    """Packets but no keyframe: the decoder outputs nothing."""
    if H264 != "libx264":
        pytest.skip("needs libx264 (FFmpeg's H.264 decoder drops frames until a keyframe)")
    path = write_video(tmp_path / "nokey.mkv", n=20, gop=100, keep=lambda packet: not packet.is_keyframe)
    with pytest.raises(ValueError, match=r"nokey\.mkv: no frame could be decoded"):
        load_video(path)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no frames here")
    with pytest.raises(ValueError, match=r"folder .* contains no image frames"):
        load_video(tmp_path)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_frames": 8, "fps": 2}, ValueError, "give num_frames or fps, not both"),
        ({"num_frames": 0}, ValueError, "num_frames must be >= 1"),
        ({"num_frames": -3}, ValueError, "num_frames must be >= 1"),
        ({"num_frames": 2.5}, TypeError, "num_frames must be an int"),
        ({"num_frames": True}, TypeError, "num_frames must be an int"),
        ({"fps": 0}, ValueError, "fps must be a finite number > 0"),
        ({"fps": -1.5}, ValueError, "fps must be a finite number > 0"),
        ({"fps": float("nan")}, ValueError, "fps must be a finite number > 0"),
        ({"fps": "2"}, TypeError, "fps must be a number"),
        ({"max_side": 0}, ValueError, "max_side must be >= 1"),
        ({"progress": 1}, TypeError, "progress must be a bool"),
    ],
)
def test_bad_arguments(mp4, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_video(mp4, **kwargs)


def test_bad_path_type():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        load_video(123)


def test_paths_that_are_not_videos_are_refused_before_opening(tmp_path):
    with pytest.raises(ValueError, match=r"no such video, image or folder: the path is empty"):
        load_video("")  # not the current folder
    (tmp_path / "loop.mp4").symlink_to(tmp_path / "loop.mp4")
    with pytest.raises(ValueError, match=r"loop\.mp4 is a symlink loop"):
        load_video(tmp_path / "loop.mp4")
    for name in ("pipe.mp4", "pipe.png"):
        os.mkfifo(tmp_path / name)  # opening it would block until a writer comes: it is never opened
        with pytest.raises(ValueError, match=rf"{name} is a FIFO \(named pipe\), not a video, image or folder"):
            load_video(tmp_path / name)


def test_a_folder_with_a_fifo_among_its_frames(tmp_path):
    Image.fromarray(barcode(0)).save(tmp_path / "0.png")
    os.mkfifo(tmp_path / "1.png")
    with pytest.raises(ValueError, match=r"frame 1\.png is a FIFO \(named pipe\), not an image file"):
        load_video(tmp_path, num_frames=2)
    (tmp_path / "1.png").unlink()
    (tmp_path / "1.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match=r"a frame is missing or a broken link: .*1\.png"):
        load_video(tmp_path, num_frames=2)


def test_the_size_limit_names_the_command_line_option_too(tmp_path):
    Image.new("RGB", (10000, 10)).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=r"pass max_side \(e\.g\. max_side=1024; --max-side 1024 on the command line\)"):
        load_video(tmp_path / "wide.png")
