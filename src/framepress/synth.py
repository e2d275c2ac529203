"""Synthetic videos with questions, deterministic from a seed: the offline proxy for video QA benchmarks.

Moving shapes on plain or textured backgrounds, each clip paired with a question whose answer is one word. The
question kinds stress what compression loses (see :data:`KINDS`):

- ``needle``: a small object of an answer colour shows in only one or two frames; the rest are distractors in
  other colours. Temporal pooling and frame dropping lose it.
- ``count``: how many objects there are (one to four), all present throughout.
- ``color``: the colour of the big object (a small object of another answer colour is there too).
- ``order``: the colour of the first of two objects to appear (the second appears later; both stay).
- ``motion``: the direction the one answer-coloured object moves; needs positions over time.
- ``static``: the colour of the one object of a still scene, a control every method should keep.

Answers are balanced by construction (item ``i`` of a kind has answer ``choices[i % len(choices)]``), train and
test items come from disjoint seed streams, and :func:`test_set` is the fixed held-out set. Frames are uint8 RGB
[F, S, S, 3]; the default 16 frames at 96 px give the 6x6 token grid of the packaged tiny model (patch 8, then
the family's 2x2 pooling). :func:`demo_video` is a longer two-scene clip with a cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
}
#: Colours an answer can be; distractors of the needle kind use the others.
ANSWER_COLORS = ("red", "green", "blue", "yellow")
OTHER_COLORS = ("purple", "orange", "white")
SHAPES = ("square", "circle", "triangle")
NUMBERS = ("one", "two", "three", "four")
DIRECTIONS = ("left", "right", "up", "down")

#: kind -> (question, the answers it can have)
KINDS = {
    "needle": ("what color is the object that appears briefly", ANSWER_COLORS),
    "count": ("how many objects are there", NUMBERS),
    "color": ("what color is the big object", ANSWER_COLORS),
    "order": ("what color is the first object to appear", ANSWER_COLORS),
    "motion": ("which way does the object move", DIRECTIONS),
    "static": ("what color is the object", ANSWER_COLORS),
}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Item:
    """One clip and its question. ``evidence``: the frames that show what the answer depends on."""

    frames: np.ndarray
    question: str
    answer: str
    kind: str
    choices: tuple[str, ...]
    evidence: tuple[int, ...]


def draw(canvas: np.ndarray, shape: str, cy: float, cx: float, radius: float, color) -> None:
    """Paint one filled shape centered at (cy, cx) on an [H, W, 3] canvas, in place (vectorized masks)."""
    H, W, _ = canvas.shape
    y, x = np.mgrid[0:H, 0:W]
    dy, dx = y - cy, x - cx
    if shape == "square":
        mask = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    elif shape == "circle":
        mask = dy**2 + dx**2 <= radius**2
    elif shape == "triangle":  # apex up
        mask = (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
    else:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    canvas[mask] = color


def _check(kind: str, index: int, frames: int, size: int, split: str, textured) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    if not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or not 8 <= frames <= 256:
        raise ValueError(f"frames must be an integer in [8, 256], got {frames!r}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 48 <= size <= 1024:
        raise ValueError(f"size must be an integer in [48, 1024] pixels, got {size!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if textured not in (True, False, None):
        raise ValueError(f"textured must be True, False or None (either, by item), got {textured!r}")


class _Scene:
    """Objects with a position per frame; rendered onto a background."""

    def __init__(self, rng: np.random.Generator, frames: int, size: int, textured: bool):
        self.rng, self.frames, self.size = rng, frames, size
        base = rng.integers(15, 75, size=3)
        self.background = np.broadcast_to(base, (size, size, 3)).astype(np.int16)
        if textured:  # low-contrast blotches: smooth noise upsampled from a coarse grid
            coarse = rng.normal(0, 14, size=(size // 16 + 2, size // 16 + 2, 1))
            texture = np.kron(coarse, np.ones((16, 16, 1)))[:size, :size]
            self.background = np.clip(self.background + texture, 0, 255).astype(np.int16)
        self.objects: list[tuple[str, tuple, float, np.ndarray, np.ndarray]] = []

    def place(self, radius: float, avoid: list[np.ndarray] = ()) -> np.ndarray:
        """A random center inside the frame, away from the centers in ``avoid``."""
        margin = radius + 1
        for _ in range(64):
            c = self.rng.uniform(margin, self.size - margin, 2)
            if all(np.hypot(*(c - a)) > 2.2 * radius + 4 for a in avoid):
                return c
        return c

    def add(self, color: str, radius: float, path: np.ndarray, visible: np.ndarray, shape: str | None = None):
        """An object at ``path`` [F, 2] (y, x), drawn in the frames where ``visible`` [F] holds."""
        shape = shape or SHAPES[int(self.rng.integers(0, len(SHAPES)))]
        self.objects.append((shape, COLORS[color], radius, path, visible))

    def moving(self, radius: float, speed: float) -> np.ndarray:
        """A straight path [F, 2] that stays inside the frame, at ``speed`` pixels a frame."""
        margin = radius + 1
        angle = self.rng.uniform(0, 2 * np.pi)
        step = speed * np.array([np.sin(angle), np.cos(angle)])
        span = step * (self.frames - 1)
        low = np.maximum(margin, margin - span)
        high = np.minimum(self.size - margin, self.size - margin - span)
        start = self.rng.uniform(low, np.maximum(low, high))
        return start + np.arange(self.frames)[:, None] * step

    def render(self) -> np.ndarray:
        video = np.empty((self.frames, self.size, self.size, 3), dtype=np.uint8)
        for t in range(self.frames):
            frame = self.background.copy()
            for shape, color, radius, path, visible in self.objects:
                if visible[t]:
                    draw(frame, shape, path[t, 0], path[t, 1], radius, color)
            video[t] = frame
        return video


def generate(
    kind: str, index: int, *, split: str = "train", frames: int = 16, size: int = 96, textured: bool | None = None,
    seed: int = 0,
) -> Item:
    """Item ``index`` of ``kind`` in ``split`` (the same arguments always give the same item).

    Args:
        kind: one of :data:`KINDS`.
        index: the item's number; its answer is ``choices[index % len(choices)]``.
        split: "train" or "test": disjoint seed streams.
        frames, size: clip length and frame side in pixels.
        textured: True or False for a textured or plain background; None picks one per item.
        seed: another stream of items altogether.
    """
    _check(kind, index, frames, size, split, textured)
    question, choices = KINDS[kind]
    answer = choices[index % len(choices)]
    rng = np.random.default_rng([seed, SPLITS.index(split), list(KINDS).index(kind), index])
    if textured is None:
        textured = bool(rng.integers(0, 2))
    scene = _Scene(rng, frames, size, textured)
    unit = size / 12  # half a token of the 6x6 grid at 96 px
    always = np.ones(frames, dtype=bool)
    evidence: tuple[int, ...] = tuple(range(frames))

    if kind == "needle":
        for _ in range(2):
            color = OTHER_COLORS[int(rng.integers(0, len(OTHER_COLORS)))]
            scene.add(color, unit * rng.uniform(1.0, 1.6), scene.moving(unit * 1.6, unit * 0.25), always)
        length = int(rng.integers(1, 3))
        start = int(rng.integers(1, frames - length))
        visible = np.zeros(frames, dtype=bool)
        visible[start : start + length] = True
        radius = unit * 0.8
        where = scene.place(radius)
        scene.add(answer, radius, np.broadcast_to(where, (frames, 2)), visible, shape="square")
        evidence = tuple(range(start, start + length))
    elif kind == "count":
        centers: list[np.ndarray] = []
        for _ in range(NUMBERS.index(answer) + 1):
            radius = unit * rng.uniform(0.9, 1.3)
            c = scene.place(radius * 1.5, centers)
            centers.append(c)
            color = list(COLORS)[int(rng.integers(0, len(COLORS)))]
            drift = rng.uniform(-0.08, 0.08, 2) * unit
            scene.add(color, radius, c + np.arange(frames)[:, None] * drift, always)
    elif kind == "color":
        small = [c for c in ANSWER_COLORS if c != answer][int(rng.integers(0, 3))]
        scene.add(answer, unit * 2.2, scene.moving(unit * 2.2, unit * 0.15), always)
        scene.add(small, unit * 0.8, scene.moving(unit * 0.8, unit * 0.3), always)
    elif kind == "order":
        second = [c for c in ANSWER_COLORS if c != answer][int(rng.integers(0, 3))]
        first_at = int(rng.integers(0, frames // 3))
        second_at = int(rng.integers(frames // 2, frames - 2))
        radius = unit * 1.3
        a = scene.place(radius)
        b = scene.place(radius, [a])
        scene.add(answer, radius, np.broadcast_to(a, (frames, 2)), np.arange(frames) >= first_at)
        scene.add(second, radius, np.broadcast_to(b, (frames, 2)), np.arange(frames) >= second_at)
        evidence = tuple(range(first_at, second_at + 1))
    elif kind == "motion":
        color = ANSWER_COLORS[int(rng.integers(0, 4))]
        radius = unit * 1.2
        travel = size - 2 * radius - 4
        step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[answer]
        along = np.linspace(-travel / 2, travel / 2, frames) * rng.uniform(0.6, 1.0)
        across = rng.uniform(radius + 2 - size / 2, size / 2 - radius - 2)
        path = np.empty((frames, 2))
        path[:, 0] = size / 2 + (along * step[0] if step[0] else across)
        path[:, 1] = size / 2 + (along * step[1] if step[1] else across)
        scene.add(color, radius, path, always)
        other = OTHER_COLORS[int(rng.integers(0, 3))]
        scene.add(other, unit * 0.9, np.broadcast_to(scene.place(unit), (frames, 2)), always)
    else:  # static
        radius = unit * rng.uniform(1.2, 2.0)
        scene.add(answer, radius, np.broadcast_to(scene.place(radius), (frames, 2)), always)
    return Item(scene.render(), question, answer, kind, choices, evidence)


def items(kind: str, count: int, *, split: str = "train", start: int = 0, **options) -> list[Item]:
    """``count`` consecutive items of ``kind`` from ``start`` (balanced when ``count`` is a multiple of the number of
    answers)."""
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    return [generate(kind, start + i, split=split, **options) for i in range(count)]


def test_set(kind: str, count: int = 300, **options) -> list[Item]:
    """The fixed held-out items of ``kind`` (the "test" stream from index 0)."""
    return items(kind, count, split="test", **options)


def demo_video(frames: int = 48, size: int = 224, seed: int = 0) -> np.ndarray:
    """[frames, size, size, 3] uint8: two scenes of moving shapes, with a small white square that shows in only two
    frames of the first scene."""
    rng = np.random.default_rng(seed)
    cut = int(frames * 0.6)
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    scenes = []
    for _ in range(2):
        background = rng.integers(20, 90, size=3)
        objects = [
            (SHAPES[i % 3], list(COLORS.values())[int(rng.integers(0, 6))], rng.uniform(0.2, 0.8, 2) * size,
             rng.uniform(-1.5, 1.5, 2) * size / 64, size * rng.uniform(0.06, 0.12))
            for i in range(3)
        ]
        scenes.append((background, objects))
    flash = int(cut * 0.4)
    for t in range(frames):
        background, objects = scenes[0] if t < cut else scenes[1]
        frame = np.empty((size, size, 3), dtype=np.uint8)
        frame[:] = background
        local = t if t < cut else t - cut
        for shape, color, start, velocity, radius in objects:
            cy, cx = (start + velocity * local) % size
            draw(frame, shape, cy, cx, radius, color)
        if t in (flash, flash + 1):
            draw(frame, "square", size * 0.15, size * 0.85, size * 0.03, COLORS["white"])
        video[t] = frame
    return video
