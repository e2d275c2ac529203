"""Frames for a Video-LLM: uniformly sampled RGB frames of a video file, a single image, or a folder of frames.

PyAV (FFmpeg) decodes videos; Pillow reads images and resizes. A frame's index is its 0-based position in the
sequence of frames the decoder outputs (presentation order), and the returned frames are exactly the frames at
the sampled indices, however they were reached.

- **Frame count.** One demux pass reads every packet of the video stream without decoding it (5 ms for 1,000
  frames of 320x240, 50 ms for 9,000 of 640x360): the count of frame packets is the frame count. It is what WebM/MKV need (PyAV reports
  ``stream.frames == 0`` there), and it checks the container's own count (an MP4's sample table): when that
  says more, the file is truncated and a warning says so.
- **Seeking.** The same pass gives every frame's pts and the keyframes. When the keyframe at or before the next
  wanted frame lies at least ``SEEK_MIN_SKIP`` frames beyond the decoder's position, ``load_video`` seeks to it
  and decodes forward to the wanted frame's exact pts; otherwise it keeps decoding. A frame is known by its pts
  (frame i has the i-th smallest packet pts), so this needs distinct pts on every packet; anything unexpected
  (a pts not in the table, a seek landing past the frame) falls back to plain sequential decoding, which
  counts output frames.
- **Memory.** Frames not wanted are decoded but never converted to RGB; only the kept ones are held, each
  shrunk to ``max_side`` as it is taken.
- **Streaming.** :func:`iter_frames` gives the same frames as ``load_video`` in chunks of at most ``chunk``,
  decoding once from the start and holding no more than one chunk, so an hour at 1 fps can feed a
  :class:`framepress.Stream` in bounded memory.
"""

from __future__ import annotations

import math
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .files import describe, stat_input

__all__ = ["Video", "fps_indices", "iter_frames", "load_video", "sample_indices"]

DEFAULT_NUM_FRAMES = 32
MAX_SIDE_LIMIT = 8192  # without max_side, a frame above this many pixels on a side is refused
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
SEEK_MIN_SKIP = 8  # seek only when that skips decoding at least this many frames (a seek flushes the decoder)


@dataclass
class Video:
    """Sampled frames and where they came from.

    ``frames``: uint8 RGB ``[F, H, W, 3]``; ``indices``: each frame's 0-based index in the source; ``fps`` and
    ``duration`` (seconds) of the source when known (None for images); ``total_frames``: frames in the source;
    ``source``: the path given; ``timestamps``: each frame's time in seconds from the stream's start (from its
    pts, else index / fps; None for images).
    """

    frames: np.ndarray
    indices: list[int]
    fps: float | None
    duration: float | None
    total_frames: int
    source: str
    timestamps: list[float] | None = None

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------------


def sample_indices(total: int, n: int) -> list[int]:
    """``n`` indices spread uniformly over ``[0, total)``: ``floor(linspace(0, total - 1, n))``.

    The LLaVA / lmms-eval convention (``np.linspace(0, total - 1, n, dtype=int)``): the first frame always, the
    last one too when ``n >= 2``. When ``n >= total``, all ``total`` frames, fewer than asked.
    """
    total = _count("total", total, 0)
    n = _count("n", n, 1)
    if n >= total:
        return list(range(total))
    return np.linspace(0, total - 1, n).astype(np.int64).tolist()


def fps_indices(total: int, source_fps: float, fps: float) -> list[int]:
    """Indices of frames taken at ``fps`` frames per second from ``total`` frames at ``source_fps``.

    Sample ``k`` is at time ``k / fps``: index ``floor(k * source_fps / fps + 0.5)`` (rounded half up) for every
    ``k >= 0`` with ``k * source_fps / fps < total``, i.e. ``ceil(total * fps / source_fps)`` samples; an index
    that rounds up to ``total`` becomes ``total - 1``, and repeats (when ``fps > source_fps``) are dropped.
    """
    total = _count("total", total, 0)
    source_fps = _rate("source_fps", source_fps)
    fps = _rate("fps", fps)
    k = np.arange(_fps_count(total, source_fps, fps), dtype=np.float64)
    idx = np.minimum(np.floor(k * (source_fps / fps) + 0.5).astype(np.int64), total - 1)
    return np.unique(idx).tolist()


def _fps_count(total: int, source_fps: float, fps: float) -> int:
    """How many samples ``fps`` sampling asks for: ``ceil(total * fps / source_fps)`` (float noise forgiven)."""
    return max(0, math.ceil(total * fps / source_fps - 1e-9))


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def load_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    max_side: int | None = None,
    progress: bool = False,
) -> Video:
    """Sample frames from a video file, a single image or a folder of image frames.

    Give at most one of ``num_frames`` (uniform, :func:`sample_indices`; 32 when neither is given) and ``fps``
    (a rate, :func:`fps_indices`; video files only). ``max_side`` shrinks each kept frame so that its longest
    side is at most that many pixels (Pillow, bicubic; never enlarged). A folder's images are taken in natural
    name order (``2.png`` before ``10.png``). When fewer frames exist than ``num_frames`` or ``fps`` explicitly
    asked for, all are returned with one warning. ``progress`` shows a tqdm bar over the kept frames.

    Raises ``TypeError``/``ValueError`` for bad arguments, ``FileNotFoundError`` for a missing path, and
    ``ValueError`` naming the file when it cannot be read (corrupt, truncated, no video stream, no decodable
    frame, an empty folder, frames over ``MAX_SIDE_LIMIT`` px without ``max_side``).
    """
    want, max_side = _wanted(path, num_frames, fps, max_side)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")

    source = os.fspath(path)
    p = Path(source)
    st = stat_input(source, "no such video, image or folder")  # "" is not ".", a symlink loop is said as such
    if stat.S_ISDIR(st.st_mode):
        video = _load_folder(p, want, max_side, progress)
    elif not stat.S_ISREG(st.st_mode):  # a FIFO or device would block the decoder forever
        raise ValueError(f"{source} is {describe(st)}, not a video, image or folder")
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        video = _load_image(p, want, max_side)
    else:
        video = _load_file(p, want, max_side, progress)
    for note in want.notes:
        warnings.warn(f"{source}: {note}", stacklevel=2)
    video.source = source
    return video


def iter_frames(
    path: str | os.PathLike,
    fps: float | None = None,
    num_frames: int | None = None,
    chunk: int = 16,
    max_side: int | None = None,
) -> Iterator[np.ndarray]:
    """The frames :func:`load_video` would return for these arguments, as uint8 RGB arrays [n, H, W, 3] of
    ``n <= chunk`` frames, decoded as they are asked for: at most one chunk is held at a time (an hour at
    ``fps=1`` never sits in memory whole). Video files decode once from the start (one demux pass first, to
    count the frames); an image or a folder of frames is read as ``load_video`` reads it and cut into chunks.
    The same errors as ``load_video``, raised before the first chunk where they concern the arguments."""
    want, max_side = _wanted(path, num_frames, fps, max_side)
    chunk = _count("chunk", chunk, 1)
    return _iter_frames(path, want, max_side, chunk)


def _iter_frames(path: str | os.PathLike, want: _Want, max_side: int | None, chunk: int) -> Iterator[np.ndarray]:
    source = os.fspath(path)
    p = Path(source)
    st = stat_input(source, "no such video, image or folder")
    if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and p.suffix.lower() in IMAGE_EXTENSIONS):
        frames = load_video(p, want.num_frames, want.fps, max_side).frames if want.explicit else load_video(p, max_side=max_side).frames
        for s in range(0, len(frames), chunk):
            yield frames[s : s + chunk]
        return
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{source} is {describe(st)}, not a video, image or folder")
    with _open(p) as container:
        stream = _video_stream(container)
        if stream is None:
            raise ValueError(f"{p} has no video stream")
        _check_size(stream.codec_context.width, stream.codec_context.height, max_side, p)
        table = _demux_table(container, stream, p)
        source_fps = _stream_fps(stream)
    if table.count == 0:
        raise ValueError(f"{p} has a video stream but no frames")
    indices = want.plan(table.count, source_fps, str(p))
    for note in want.notes:
        warnings.warn(f"{source}: {note}", stacklevel=3)
    held: list[np.ndarray] = []
    first: list[np.ndarray] = []  # the first frame's size, which later frames are brought to
    taken, i = 0, -1
    with _open(p) as container:
        try:
            for i, frame in enumerate(container.decode(_video_stream(container))):
                if i != indices[taken]:
                    continue
                rgb = _same_size(_rgb(frame, max_side, p), first)
                first = first or [rgb]
                held.append(rgb)
                taken += 1
                if len(held) == chunk or taken == len(indices):
                    out, held = np.stack(held), []
                    yield out
                if taken == len(indices):
                    return
        except av.FFmpegError as err:
            raise ValueError(f"cannot decode {p} at frame {i + 1}: corrupt or truncated ({_why(err)})") from None
    if held:
        yield np.stack(held)
    if taken == 0:
        raise ValueError(f"{p}: no frame could be decoded (corrupt or truncated file?)")
    warnings.warn(f"{source}: decoding stopped within {i + 1} frames; returned {taken} of {len(indices)}", stacklevel=3)


def _wanted(path: Any, num_frames: Any, fps: Any, max_side: Any) -> tuple[_Want, int | None]:
    """The checked sampling request and ``max_side`` shared by :func:`load_video` and :func:`iter_frames`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if num_frames is not None and fps is not None:
        raise ValueError(f"give num_frames or fps, not both (got num_frames={num_frames!r}, fps={fps!r})")
    want = _Want(
        num_frames=_count("num_frames", num_frames, 1) if num_frames is not None else None,
        fps=_rate("fps", fps) if fps is not None else None,
        explicit=num_frames is not None or fps is not None,
    )
    if want.num_frames is None and want.fps is None:
        want.num_frames = DEFAULT_NUM_FRAMES
    if max_side is not None:
        max_side = _count("max_side", max_side, 1)
    return want, max_side


@dataclass
class _Want:
    """What the caller asked for, and the warnings the load gathered."""

    num_frames: int | None
    fps: float | None
    explicit: bool
    notes: list[str] = field(default_factory=list)

    def plan(self, total: int, source_fps: float | None, what: str) -> list[int]:
        """The indices to take from ``total`` frames; notes a shortfall the caller asked for explicitly."""
        if self.fps is not None:
            if not source_fps:
                raise ValueError(f"{what}: fps sampling needs the source's frame rate, which it lacks; use num_frames")
            idx = fps_indices(total, source_fps, self.fps)
            asked = _fps_count(total, source_fps, self.fps)
            if len(idx) < asked:
                self.notes.append(
                    f"fps={self.fps:g} asks for {asked} frames, but the source has only {_frames(total)} "
                    f"at {source_fps:g} fps; returning all"
                )
            return idx
        idx = sample_indices(total, self.num_frames)
        if self.explicit and len(idx) < self.num_frames:
            self.notes.append(f"num_frames={self.num_frames} asked, but only {_frames(total)} exist; returning all")
        return idx


def _load_image(p: Path, want: _Want, max_side: int | None) -> Video:
    """A single image: one frame."""
    if want.fps is not None:
        raise ValueError(f"{p}: fps sampling needs a video, and a single image has one frame; use num_frames")
    indices = want.plan(1, None, str(p))
    return Video(_read_image(p, max_side)[None], indices, None, None, 1, str(p), None)


def _load_folder(p: Path, want: _Want, max_side: int | None, progress: bool) -> Video:
    """A folder of image frames in natural name order; only the sampled images are read."""
    files = sorted(
        (f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".") and not f.is_dir()),
        key=lambda f: (_natural_key(f.name), f.name),
    )
    if not files:
        raise ValueError(f"folder {p} contains no image frames (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if want.fps is not None:
        raise ValueError(f"folder {p}: a folder of images has no frame rate, hence no fps sampling; use num_frames")
    indices = want.plan(len(files), None, str(p))
    for i in indices:  # before reading any: a FIFO among the frames would block the reader forever
        st = stat_input(files[i], f"folder {p}: a frame is missing or a broken link")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"folder {p}: frame {files[i].name} is {describe(st)}, not an image file")
    frames: list[np.ndarray] = []
    for i in tqdm(indices, desc=p.name, unit="frame", disable=not progress):
        frames.append(_same_size(_read_image(files[i], max_side), frames))
    return Video(np.stack(frames), indices, None, None, len(files), str(p), None)


def _natural_key(name: str) -> tuple:
    """``frame10.png`` after ``frame9.png``: digit runs compare as numbers, the rest case-insensitively."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(s) if i % 2 else s for i, s in enumerate(parts))


def _read_image(f: Path, max_side: int | None) -> np.ndarray:
    """One image file as uint8 RGB [H, W, 3], EXIF orientation applied, shrunk to ``max_side``."""
    try:
        im = Image.open(f)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {f}: {err}") from None
    with im:
        _check_size(im.width, im.height, max_side, f)
        try:
            if max_side is not None and im.format == "JPEG":
                im.draft("RGB", _fit(im.width, im.height, max_side))  # a JPEG decodes at a reduced scale
            rgb = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read image {f}: corrupt or truncated ({err})") from None
    return _shrink(rgb, max_side)


def _load_file(p: Path, want: _Want, max_side: int | None, progress: bool) -> Video:
    """A video file through PyAV (any container and codec its FFmpeg opens)."""
    try:
        container = _open(p)
    except ValueError:
        if _pillow_can_open(p):  # an image with an unusual extension
            return _load_image(p, want, max_side)
        raise
    with container:
        stream = _video_stream(container)
        if stream is None:
            kinds = ", ".join(sorted({_kind(s) for s in container.streams})) or "none"
            raise ValueError(f"{p} has no video stream (streams: {kinds})")
        _check_size(stream.codec_context.width, stream.codec_context.height, max_side, p)
        table = _demux_table(container, stream, p)
        source_fps = _stream_fps(stream)
        time_base, start = stream.time_base, stream.start_time or 0
        duration = _duration(container, stream, table, source_fps)
        if 0 < table.count < stream.frames:
            want.notes.append(f"the container lists {stream.frames} frames but holds {table.count}: truncated?")
        elif stream.frames <= 0 and container.duration and duration:
            lasts = container.duration / av.time_base
            if lasts > duration + 2:  # e.g. a WebM cut short: its header still has the full duration
                want.notes.append(f"the container lasts {lasts:.1f} s, its video frames {duration:.1f} s: truncated?")
    if table.count == 0:
        raise ValueError(f"{p} has a video stream but no frames")
    indices = want.plan(table.count, source_fps, str(p))
    with tqdm(total=len(indices), desc=p.name, unit="frame", disable=not progress) as bar:
        got = _decode_seeking(p, table, indices, max_side, bar) if table.clean else None
        if got is None:  # no usable pts table, or the seek path met something it cannot vouch for
            bar.reset()
            got = _decode_sequential(p, indices, max_side, bar)
    frames, kept, pts = got
    if not frames:
        raise ValueError(f"{p}: no frame could be decoded (corrupt or truncated file?)")
    if len(kept) < len(indices):
        want.notes.append(f"decoding stopped within {kept[-1] + 1} frames; returning {len(kept)} of {len(indices)}")
    if time_base and all(t is not None for t in pts):
        timestamps = [float((t - start) * time_base) for t in pts]
    else:
        timestamps = [i / source_fps for i in kept] if source_fps else None
    return Video(np.stack(frames), kept, source_fps, duration, table.count, str(p), timestamps)


def _open(p: Path) -> Any:
    """An open PyAV container, or a ValueError naming the file."""
    try:
        return av.open(str(p), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read video {p}: unknown format, or corrupt or truncated ({_why(err)})") from None


def _video_stream(container: Any) -> Any:
    """The first video stream that is not a still (cover art), set to decode with threads; None if none."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            stream.thread_type = "AUTO"  # frame and slice threads: the same frames in the same order
            return stream
    return None


def _kind(stream: Any) -> str:
    if stream.type == "video" and stream.disposition & av.stream.Disposition.attached_pic:
        return "cover art"
    return stream.type


@dataclass
class _Table:
    """One demux pass over the video packets: how many, the sorted pts, the keyframes' pts."""

    count: int
    pts: np.ndarray  # sorted: pts[i] is frame i's
    key_pts: np.ndarray  # sorted; also the seek targets (MP4 and WebM land exactly on them, an MP4's dts a GOP early)
    clean: bool  # every packet has a distinct pts, so a frame's pts tells its index; there is a keyframe


def _demux_table(container: Any, stream: Any, p: Path) -> _Table:
    """Read every video packet once, without decoding: count the frames, note their pts and the keyframes."""
    pts, key_pts = [], []
    clean = True
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:  # the final flush packet; samples an edit list cuts away
                continue
            if packet.pts is None:
                clean = False
                pts.append(0)
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
    except (av.FFmpegError, OSError) as err:
        raise ValueError(f"cannot read video {p}: corrupt or truncated ({_why(err)})") from None
    pts_arr = np.sort(np.asarray(pts, dtype=np.int64))
    clean = clean and len(key_pts) > 0 and bool(np.all(np.diff(pts_arr) > 0))
    return _Table(len(pts), pts_arr, np.sort(np.asarray(key_pts, dtype=np.int64)), clean)


_Decoded = tuple[list[np.ndarray], list[int], list[int | None]]  # frames, their indices, their pts


def _decode_sequential(p: Path, indices: list[int], max_side: int | None, bar: Any) -> _Decoded:
    """Decode from the start, counting the frames the decoder outputs; keep those at ``indices``."""
    frames: list[np.ndarray] = []
    kept: list[int] = []
    pts: list[int | None] = []
    i = -1
    with _open(p) as container:
        try:
            for i, frame in enumerate(container.decode(_video_stream(container))):
                if i == indices[len(kept)]:
                    frames.append(_same_size(_rgb(frame, max_side, p), frames))
                    kept.append(i)
                    pts.append(frame.pts)
                    bar.update(1)
                    if len(kept) == len(indices):
                        break
        except av.FFmpegError as err:
            raise ValueError(f"cannot decode {p} at frame {i + 1}: corrupt or truncated ({_why(err)})") from None
    return frames, kept, pts


def _decode_seeking(p: Path, table: _Table, indices: list[int], max_side: int | None, bar: Any) -> _Decoded | None:
    """:func:`_decode_sequential`, but seeking to the keyframe before a wanted frame when that skips enough.

    Returns None, for the caller to decode sequentially instead, when a frame's pts is not in the table or does
    not increase, a seek lands past the wanted frame, the stream ends first, or FFmpeg reports an error.
    """
    rank = {int(t): i for i, t in enumerate(table.pts)}
    key_rank = np.searchsorted(table.pts, table.key_pts)  # index of each keyframe
    frames: list[np.ndarray] = []
    kept: list[int] = []
    pts: list[int | None] = []
    with _open(p) as container:
        stream = _video_stream(container)
        decoded = None
        at = -1  # index of the last frame the decoder gave
        try:
            for want in indices:
                k = int(np.searchsorted(table.key_pts, table.pts[want], side="right")) - 1
                if k >= 0 and key_rank[k] - (at + 1) >= SEEK_MIN_SKIP:
                    container.seek(int(table.key_pts[k]), backward=True, any_frame=False, stream=stream)
                    decoded, at = None, -1
                if decoded is None:
                    decoded = container.decode(stream)
                for frame in decoded:
                    i = rank.get(frame.pts) if frame.pts is not None else None
                    if i is None or i <= at or i > want:
                        return None
                    at = i
                    if i == want:
                        frames.append(_same_size(_rgb(frame, max_side, p), frames))
                        kept.append(i)
                        pts.append(frame.pts)
                        bar.update(1)
                        break
                else:
                    return None
        except av.FFmpegError:
            return None  # the sequential pass reports it, with the frame
    return frames, kept, pts


def _rgb(frame: Any, max_side: int | None, p: Path) -> np.ndarray:
    """One decoded frame as uint8 RGB [H, W, 3], shrunk to ``max_side``."""
    _check_size(frame.width, frame.height, max_side, p)
    if max_side is None or max(frame.width, frame.height) <= max_side:
        return frame.to_ndarray(format="rgb24")
    return _shrink(frame.to_image(), max_side)


def _same_size(frame: np.ndarray, frames: list[np.ndarray]) -> np.ndarray:
    """A frame resized to the first kept frame's size, should the source change size midway."""
    if frames and frame.shape != frames[0].shape:
        h, w = frames[0].shape[:2]
        frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC))
    return frame


def _fit(w: int, h: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled so that the longest side is ``max_side`` (aspect kept, at least 1 px)."""
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _shrink(im: Image.Image, max_side: int | None) -> np.ndarray:
    """A Pillow image as an array, its longest side brought down to ``max_side`` (never enlarged)."""
    if max_side is not None and max(im.size) > max_side:
        im = im.resize(_fit(*im.size, max_side), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _check_size(w: int, h: int, max_side: int | None, p: Path) -> None:
    if max_side is None and max(w, h) > MAX_SIDE_LIMIT:
        raise ValueError(
            f"{p}: frames of {w}x{h} exceed {MAX_SIDE_LIMIT} px on a side; pass max_side (e.g. max_side=1024; "
            "--max-side 1024 on the command line) to shrink each frame as it is read"
        )


def _stream_fps(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return None


def _duration(container: Any, stream: Any, table: _Table, source_fps: float | None) -> float | None:
    """Seconds: the stream's own duration, else the span of its frames' pts (plus one frame), else the
    container's duration, else frames / fps."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if table.count and stream.time_base and source_fps and table.clean:
        return float((table.pts[-1] - table.pts[0]) * stream.time_base) + 1 / source_fps
    if container.duration:
        return container.duration / av.time_base
    return table.count / source_fps if source_fps else None


def _pillow_can_open(p: Path) -> bool:
    try:
        with Image.open(p) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001  (any failure only means "not an image")
        return False


def _frames(n: int) -> str:
    return f"{n} frame" + ("" if n == 1 else "s")


def _why(err: BaseException) -> str:
    """A one-line reason from an FFmpeg error, without its traceback or file name."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _count(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def _rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Fraction, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value
