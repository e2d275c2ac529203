"""Synthetic videos for demos and tests: moving shapes on plain backgrounds, deterministic from a seed.

:func:`demo_video` makes the clip ``framepress demo`` runs on: shapes moving across a plain background, a scene
cut (new background, new shapes) partway through, and a small object that shows in only two frames — the kind of
detail compression can lose. Numpy only; frames are uint8 RGB [F, H, W, 3].
"""

from __future__ import annotations

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
SHAPES = ("square", "circle", "triangle")


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


def demo_video(frames: int = 48, size: int = 224, seed: int = 0) -> np.ndarray:
    """[frames, size, size, 3] uint8: two scenes of moving shapes, with a small white star-like square that shows
    in only two frames of the first scene."""
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
