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

**The real regime** (:data:`REAL_KINDS`): 32 frames at 216 px, a 27x27 patch grid (patch 8) that LLaVA-OneVision's
pooling turns into 14x14 tokens a frame, 6,272 video tokens as in LLaVA-OneVision-7B at 32 frames. Sizes are in
token cells (``size / 14``, 15.4 px): a needle is about one cell, so a method that drops or averages the wrong few
tokens loses it, and most evidence sits in one or two of the 32 frames, so uniform frame dropping at low retention
misses it. The kinds:

- ``needle32``: a one-cell square of an answer colour in 1 of 32 frames; distractors in other colours throughout
  (one of them a bigger object in another answer colour).
- ``second``: three one-cell flashes of three answer colours at three times; which colour came second.
- ``events``: how many separate times (one to four, each one or two frames) a small square flashes.
- ``detail``: where (left, right, up, down) a one-cell white mark sits inside a big object.
- ``cut``: a late scene cut changes the background and the object's colour; the colour after the cut.
- ``direction``: a small object drifts about 0.15 cells a frame (one or two frames cannot tell the way it moves).
- ``still``: the colour of the one still object among moving distractors, a control.

They are balanced and split like the others; :func:`generate` defaults to 32 frames at 216 px for them
(:data:`REAL_FRAMES`, :data:`REAL_SIZE`) and renders every frame at once (about 30 ms an item at 216 px).
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
#: kind -> (question, answers) of the real regime (32 frames of 14x14 tokens); see the module docstring
REAL_KINDS = {
    "needle32": ("what color is the small object that appears briefly", ANSWER_COLORS),
    "second": ("which color appears second", ANSWER_COLORS),
    "events": ("how many times does the square appear", NUMBERS),
    "detail": ("where is the mark on the big object", DIRECTIONS),
    "cut": ("what color is the object after the cut", ANSWER_COLORS),
    "direction": ("which way does the small object move", DIRECTIONS),
    "still": ("what color is the still object", ANSWER_COLORS),
}
REAL_FRAMES, REAL_SIZE = 32, 216  # 27x27 patches of 8 px, pooled to 14x14 tokens a frame
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


def _mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """Where a filled ``shape`` of ``radius`` covers the pixels at offsets (dy, dx) from its center."""
    if shape == "square":
        return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "triangle":  # apex up
        return (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def draw(canvas: np.ndarray, shape: str, cy: float, cx: float, radius: float, color) -> None:
    """Paint one filled shape centered at (cy, cx) on an [H, W, 3] canvas, in place (vectorized masks)."""
    H, W, _ = canvas.shape
    y, x = np.mgrid[0:H, 0:W]
    canvas[_mask(shape, y - cy, x - cx, radius)] = color


#: the fewest frames and pixels a real-regime kind is drawn at (four events with gaps; a one-cell needle of 6 px)
REAL_MIN_FRAMES, REAL_MIN_SIZE = 24, 84


def _check(kind: str, index: int, frames: int, size: int, split: str, textured) -> None:
    if kind not in KINDS and kind not in REAL_KINDS:
        raise ValueError(f"kind must be one of {', '.join([*KINDS, *REAL_KINDS])}, got {kind!r}")
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    low_frames, low_size = (REAL_MIN_FRAMES, REAL_MIN_SIZE) if kind in REAL_KINDS else (8, 48)
    if not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or not low_frames <= frames <= 256:
        raise ValueError(f"frames must be an integer in [{low_frames}, 256] for kind {kind!r}, got {frames!r}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not low_size <= size <= 1024:
        raise ValueError(f"size must be an integer in [{low_size}, 1024] pixels for kind {kind!r}, got {size!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if textured not in (True, False, None):
        raise ValueError(f"textured must be True, False or None (either, by item), got {textured!r}")


class _Scene:
    """Objects with a position per frame; rendered onto a background."""

    def __init__(self, rng: np.random.Generator, frames: int, size: int, textured: bool):
        self.rng, self.frames, self.size, self.textured = rng, frames, size, textured
        self.background = self.new_background()
        self.objects: list[tuple[str, tuple, float, np.ndarray, np.ndarray]] = []

    def new_background(self) -> np.ndarray:
        """[S, S, 3] int16: a dark plain colour, with low-contrast blotches (smooth noise upsampled from a coarse
        grid) when the scene is textured."""
        size = self.size
        base = self.rng.integers(15, 75, size=3)
        background = np.broadcast_to(base, (size, size, 3)).astype(np.int16)
        if self.textured:
            coarse = self.rng.normal(0, 14, size=(size // 16 + 2, size // 16 + 2, 1))
            texture = np.kron(coarse, np.ones((16, 16, 1)))[:size, :size]
            background = np.clip(background + texture, 0, 255).astype(np.int16)
        return background

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

    def render(self, background: np.ndarray | None = None) -> np.ndarray:
        """[F, S, S, 3] uint8: the objects in order (later ones on top) over ``background`` ([F, S, S, 3]; default
        the scene's own in every frame), each drawn in all its visible frames at once."""
        F, S = self.frames, self.size
        video = np.empty((F, S, S, 3), dtype=np.uint8)
        video[:] = self.background if background is None else background
        y, x = np.arange(S)[None, :, None], np.arange(S)[None, None, :]
        for shape, color, radius, path, visible in self.objects:
            shown = np.nonzero(visible)[0]
            if shown.size:
                mask = _mask(shape, y - path[shown, 0, None, None], x - path[shown, 1, None, None], radius)
                frames = video[shown]
                frames[mask] = color
                video[shown] = frames
        return video


def generate(
    kind: str, index: int, *, split: str = "train", frames: int | None = None, size: int | None = None,
    textured: bool | None = None, seed: int = 0,
) -> Item:
    """Item ``index`` of ``kind`` in ``split`` (the same arguments always give the same item).

    Args:
        kind: one of :data:`KINDS` or :data:`REAL_KINDS`.
        index: the item's number; its answer is ``choices[index % len(choices)]``.
        split: "train" or "test": disjoint seed streams.
        frames, size: clip length and frame side in pixels (default: 16 and 96 for :data:`KINDS`, 32 and 216 for
            :data:`REAL_KINDS`).
        textured: True or False for a textured or plain background; None picks one per item.
        seed: another stream of items altogether.
    """
    real = kind in REAL_KINDS
    frames = (REAL_FRAMES if real else 16) if frames is None else frames
    size = (REAL_SIZE if real else 96) if size is None else size
    _check(kind, index, frames, size, split, textured)
    question, choices = REAL_KINDS[kind] if real else KINDS[kind]
    answer = choices[index % len(choices)]
    number = 100 + list(REAL_KINDS).index(kind) if real else list(KINDS).index(kind)  # disjoint seed streams
    rng = np.random.default_rng([seed, SPLITS.index(split), number, index])
    if textured is None:
        textured = bool(rng.integers(0, 2))
    scene = _Scene(rng, frames, size, textured)
    if real:
        frames_shown, evidence = _real(kind, answer, scene)
        return Item(frames_shown, question, answer, kind, choices, evidence)
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


def _other(rng: np.random.Generator, pool: tuple[str, ...], but: str | None = None) -> str:
    """A random colour of ``pool`` other than ``but``."""
    options = [c for c in pool if c != but]
    return options[int(rng.integers(0, len(options)))]


def _flashes(rng: np.random.Generator, frames: int, count: int, gap: int) -> list[tuple[int, int]]:
    """``count`` runs (start, length) of one or two frames, in order, at least ``gap`` frames apart, away from the
    clip's first and last frame: the slack is spread at random between them."""
    lengths = rng.integers(1, 3, count)
    slack = frames - 2 - int(lengths.sum()) - gap * (count - 1)
    cuts = np.sort(rng.integers(0, slack + 1, count))
    starts = 1 + cuts + np.concatenate([[0], np.cumsum(lengths[:-1] + gap)])
    return [(int(s), int(n)) for s, n in zip(starts, lengths)]


def _real(kind: str, answer: str, scene: _Scene) -> tuple[np.ndarray, tuple[int, ...]]:
    """The frames and evidence of a real-regime item (see the module docstring); sizes in token cells."""
    rng, F, S = scene.rng, scene.frames, scene.size
    cell = S / 14  # one token of the 14x14 grid
    always = np.ones(F, dtype=bool)
    everything = tuple(range(F))

    def still(radius: float, avoid=()) -> np.ndarray:
        return np.broadcast_to(scene.place(radius, list(avoid)), (F, 2))

    def only(runs: list[tuple[int, int]]) -> np.ndarray:
        visible = np.zeros(F, dtype=bool)
        for start, length in runs:
            visible[start : start + length] = True
        return visible

    def distractors(count: int, speed: float, shapes=SHAPES, pool=OTHER_COLORS) -> None:
        for _ in range(count):
            radius = cell * rng.uniform(0.8, 1.3)
            shape = shapes[int(rng.integers(0, len(shapes)))]
            scene.add(_other(rng, pool), radius, scene.moving(radius, cell * speed), always, shape=shape)

    if kind == "needle32":
        big = cell * 1.6
        scene.add(_other(rng, ANSWER_COLORS, answer), big, scene.moving(big, cell * 0.1), always)
        distractors(2, 0.15)
        at = int(rng.integers(1, F - 1))
        scene.add(answer, cell * 0.5, still(cell * 0.5), only([(at, 1)]), shape="square")
        return scene.render(), (at,)
    if kind == "second":
        distractors(2, 0.15)
        first, third = rng.permutation([c for c in ANSWER_COLORS if c != answer])[:2]
        runs = _flashes(rng, F, 3, gap=3)
        placed: list[np.ndarray] = []
        for color, run in zip((first, answer, third), runs):
            path = still(cell * 0.6, placed)
            placed.append(path[0])
            scene.add(str(color), cell * 0.6, path, only([run]))
        return scene.render(), tuple(t for start, length in runs for t in range(start, start + length))
    if kind == "events":
        distractors(2, 0.15, shapes=("circle", "triangle"))
        runs = _flashes(rng, F, NUMBERS.index(answer) + 1, gap=3)
        visible = only(runs)
        scene.add(_other(rng, ANSWER_COLORS), cell * 0.7, still(cell * 0.7), visible, shape="square")
        return scene.render(), tuple(np.nonzero(visible)[0].tolist())
    if kind == "detail":
        distractors(1, 0.2, pool=("purple", "orange"))
        big = cell * 3.0
        path = scene.moving(big, cell * 0.03)
        scene.add(_other(rng, ANSWER_COLORS), big, path, always, shape="square")
        offset = 1.9 * cell * np.array({"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[answer])
        scene.add("white", cell * 0.45, path + offset, always, shape="square")
        return scene.render(), everything
    if kind == "cut":
        at = int(rng.integers(round(0.7 * F), F - 1))
        before, after = np.arange(F) < at, np.arange(F) >= at
        radius = cell * 1.2
        for colour, shown in ((_other(rng, ANSWER_COLORS, answer), before), (answer, after)):
            for _ in range(2):
                distractor = cell * rng.uniform(0.8, 1.2)
                scene.add(_other(rng, OTHER_COLORS), distractor, scene.moving(distractor, cell * 0.15), shown)
            scene.add(colour, radius, scene.moving(radius, cell * 0.1), shown)
        background = np.where(before[:, None, None, None], scene.background, scene.new_background())
        return scene.render(background), tuple(range(at, F))
    if kind == "direction":
        for _ in range(2):
            radius = cell * rng.uniform(1.0, 1.4)
            scene.add(_other(rng, OTHER_COLORS), radius, still(radius), always)
        radius = cell * 0.6
        step = 0.15 * cell * np.array({"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[answer])
        span = step * (F - 1)
        low = np.maximum(radius + 1, radius + 1 - span)
        high = np.minimum(S - radius - 1, S - radius - 1 - span)
        start = rng.uniform(low, np.maximum(low, high))
        scene.add(_other(rng, ANSWER_COLORS), radius, start + np.arange(F)[:, None] * step, always)
        return scene.render(), everything
    # still
    distractors(2, 0.3)
    radius = cell * rng.uniform(1.2, 1.8)
    scene.add(answer, radius, still(radius), always)
    return scene.render(), everything


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
