"""Pictures of compressed tokens: a contact sheet of the video frames with what each method kept.

:func:`contact_sheet` draws every frame of the video the tokens were computed from, with the token grid laid
over it:

- a *dropped* input token (``source == -1``) is dimmed, its pixels blended 60% toward black;
- a *kept* single token (size 1) is outlined in bright yellow (:data:`KEPT_OUTLINE`);
- a *merged* group (size > 1) is tinted over every member cell, in every frame where it has members, with the
  group's own colour (:func:`group_colour`: a fixed qualitative palette cycled by output index, blended 35%),
  and its representative's box is outlined in that colour.

Layout (all sizes in pixels; :func:`layout` computes it, :class:`SheetLayout` holds it)::

    columns' = min(columns or ceil(sqrt(F)), F)        rows = ceil(F / columns')
    inner    = max(columns' * cell + (columns' - 1) * GAP, LEGEND_SLOT)
    width    = 2 * MARGIN + inner
    legend   = ceil(3 / clamp(inner // LEGEND_SLOT, 1, 3))  lines
    height   = MARGIN + HEADER + rows * (LABEL + cell) + (rows - 1) * GAP + GAP + legend * LEGEND_LINE + MARGIN

Each frame sits in a ``cell`` x ``cell`` square under a LABEL-high band with its number, resized (bilinear,
:data:`RESAMPLE`) to fit the square with its aspect kept and centred in it. The token grid's H x W cells map
proportionally onto the resized frame: pixel row ``p`` lies in token row ``p * H // h``.

With F frames and a token grid of T frames, F must be T or a multiple of it: a model that fuses ``k = F // T``
frames into one temporal token (Qwen-VL: 2) shows all F frames, frame ``f`` drawn with token frame ``f // k``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .files import atomic
from .tokens import Tokens

MARGIN = 8
GAP = 8
HEADER = 24
LABEL = 16
LEGEND_LINE = 20
LEGEND_SLOT = 260
MIN_CELL = 16

DIM = 0.6  # a dropped token's pixels move this far toward black
TINT_ALPHA = 0.35  # a merged group's colour is blended in with this weight
KEPT_OUTLINE = (255, 255, 0)
BACKGROUND = (255, 255, 255)
CELL_BACKGROUND = (225, 225, 225)
TEXT = (20, 20, 20)
LABEL_TEXT = (70, 70, 70)
RESAMPLE = Image.Resampling.BILINEAR

# Tableau 10 without its grey: a tint of grey would read as "dimmed".
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
)

LEGEND = (
    "outlined: kept token",
    "tinted: merged group (one colour per group)",
    "dim: dropped",
)


def group_colour(index: int) -> tuple[int, int, int]:
    """The colour of output token ``index`` when it is a merged group: stable, the palette cycled."""
    return PALETTE[int(index) % len(PALETTE)]


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes on a contact sheet (see the module docstring for the formula)."""

    frames: int
    columns: int
    rows: int
    cell: int
    frame_size: tuple[int, int]  # (h, w) of each frame after resizing into the cell
    grid_size: tuple[int, int]  # (H, W) of the token grid
    legend_lines: int
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow's ``Image.size``."""
        return (self.width, self.height)

    def cell_origin(self, f: int) -> tuple[int, int]:
        """(x, y) of the top-left corner of frame f's cell square on the sheet."""
        row, col = divmod(f, self.columns)
        return MARGIN + col * (self.cell + GAP), MARGIN + HEADER + row * (LABEL + self.cell + GAP) + LABEL

    def frame_origin(self, f: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of frame f's resized image on the sheet."""
        x, y = self.cell_origin(f)
        h, w = self.frame_size
        return x + (self.cell - w) // 2, y + (self.cell - h) // 2

    def token_rect(self, f: int, y0: int, x0: int, y1: int | None = None, x1: int | None = None):
        """Pixel rectangle (left, top, right, bottom), right/bottom exclusive, of token-grid rows y0:y1 and
        columns x0:x1 (default: the one cell y0, x0) on frame f's image on the sheet."""
        y1 = y0 + 1 if y1 is None else y1
        x1 = x0 + 1 if x1 is None else x1
        ox, oy = self.frame_origin(f)
        h, w = self.frame_size
        H, W = self.grid_size
        return ox + _edge(x0, w, W), oy + _edge(y0, h, H), ox + _edge(x1, w, W), oy + _edge(y1, h, H)


def _edge(i: int, pixels: int, cells: int) -> int:
    """First pixel of grid cell i when ``cells`` cells span ``pixels`` pixels (pixel p is in cell p*cells//pixels)."""
    return -(-i * pixels // cells)


def layout(
    frames_shape: tuple[int, ...], grid: tuple[int, int, int], columns: int | None = None, cell: int = 256
) -> SheetLayout:
    """The layout of a contact sheet of frames of shape [F, H, W, 3] over a token grid (T, H, W)."""
    F, fh, fw = int(frames_shape[0]), int(frames_shape[1]), int(frames_shape[2])
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or cell < MIN_CELL:
        raise ValueError(f"cell must be an int >= {MIN_CELL} pixels, got {cell!r}")
    if columns is None:
        columns = math.ceil(math.sqrt(F))
    elif isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise ValueError(f"columns must be a positive int or None, got {columns!r}")
    cell, columns = int(cell), min(int(columns), F)
    rows = math.ceil(F / columns)
    scale = cell / max(fh, fw)
    frame_size = (min(cell, max(1, round(fh * scale))), min(cell, max(1, round(fw * scale))))
    inner = max(columns * cell + (columns - 1) * GAP, LEGEND_SLOT)
    per_line = min(max(inner // LEGEND_SLOT, 1), len(LEGEND))
    legend_lines = math.ceil(len(LEGEND) / per_line)
    width = 2 * MARGIN + inner
    height = MARGIN + HEADER + rows * (LABEL + cell) + (rows - 1) * GAP + GAP + legend_lines * LEGEND_LINE + MARGIN
    return SheetLayout(F, columns, rows, cell, frame_size, (grid[1], grid[2]), legend_lines, width, height)


def contact_sheet(
    frames, tokens: Tokens, columns: int | None = None, cell: int = 256, title: str | None = None
) -> Image.Image:
    """A picture of what ``tokens`` kept of ``frames``: every frame on a grid of cells, dropped tokens dimmed,
    kept single tokens outlined, merged groups tinted (one colour per group) with the representative's box
    outlined, a header line (``title``, by default the retention and counts) and a legend.

    Args:
        frames: uint8 [F, H, W, 3] RGB numpy array (a torch tensor is accepted too) of the frames the tokens
            were computed from; F = T of ``tokens.grid``, or a multiple of T when the model fuses F // T frames
            into one temporal token (Qwen-VL: 2).
        tokens: a :class:`framepress.Tokens`.
        columns: frames per row (default ``ceil(sqrt(F))``; at most F).
        cell: side of the square each frame is fitted into, in pixels.
        title: the header line.
    """
    frames, k = _check(frames, tokens)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    T, H, W = tokens.grid
    lay = layout(frames.shape, tokens.grid, columns, cell)
    boxes = tokens.boxes.detach().cpu().numpy()
    sizes = tokens.sizes.detach().cpu().numpy()
    source = tokens.source.detach().cpu().numpy().reshape(T, H, W)
    n = len(sizes)
    merged = sizes > 1
    colours = np.asarray(PALETTE, dtype=np.float32)[np.arange(n) % len(PALETTE)]

    sheet = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    h, w = lay.frame_size
    pixel_row = np.arange(h) * H // h  # token row of each pixel row
    pixel_col = np.arange(w) * W // w
    per_frame = np.bincount(boxes[:, 0], minlength=T) if n else np.zeros(T, dtype=np.int64)
    label_font = _font(11)

    for f in range(lay.frames):
        t = f // k
        cx, cy = lay.cell_origin(f)
        draw.rectangle([cx, cy, cx + lay.cell - 1, cy + lay.cell - 1], fill=CELL_BACKGROUND)
        img = np.asarray(Image.fromarray(frames[f]).resize((w, h), RESAMPLE), dtype=np.float32)
        src = source[t][pixel_row[:, None], pixel_col[None, :]]  # [h, w] output token of each pixel
        dropped = src < 0
        img[dropped] *= 1.0 - DIM
        if n:
            safe = np.where(dropped, 0, src)
            tinted = ~dropped & merged[safe]
            img[tinted] = img[tinted] * (1.0 - TINT_ALPHA) + colours[safe[tinted]] * TINT_ALPHA
        sheet.paste(Image.fromarray(np.rint(img).clip(0, 255).astype(np.uint8)), lay.frame_origin(f))
        label = f"frame {f}" + (f", t={t}" if k > 1 else "") + f" ({int(per_frame[t])} tokens)"
        _text(draw, (cx, cy - LABEL + 2), label, label_font, LABEL_TEXT, lay.cell)

    # Outlines: each box on every frame showing its token frame; merged groups first, single tokens on top.
    token_px = min(h / H, w / W)
    width = 1 if token_px < 12 else 2
    order = np.concatenate([np.flatnonzero(merged), np.flatnonzero(~merged)])
    for i in order:
        t, y0, x0, y1, x1 = (int(v) for v in boxes[i])
        colour = group_colour(i) if merged[i] else KEPT_OUTLINE
        for f in range(t * k, (t + 1) * k):
            left, top, right, bottom = lay.token_rect(f, y0, x0, y1, x1)
            if right > left and bottom > top:
                draw.rectangle([left, top, right - 1, bottom - 1], outline=colour, width=width)

    inner = lay.width - 2 * MARGIN
    if title is None:
        singles = int((~merged).sum())
        title = (
            f"retention {tokens.retention:.2f}: {n} of {tokens.num_input} tokens "
            f"({singles} kept, {n - singles} merged groups, {int((source < 0).sum())} dropped)"
        )
    _text(draw, (MARGIN, MARGIN + 3), title, _font(14), TEXT, inner)
    _legend(draw, lay)
    return sheet


def save_contact_sheet(path: str | os.PathLike, frames, tokens: Tokens, **kw) -> Path:
    """Write :func:`contact_sheet` (keyword arguments passed on) to ``path``, in the format its suffix names
    (PNG, JPEG, WebP, ... whatever Pillow can write), atomically: a reader sees the old file or the whole new
    one, never a part. Parent directories are created. Returns the path."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(
            f"cannot write a picture to {path}: suffix {path.suffix or '(none)'!r} is not a format Pillow writes "
            "(use e.g. .png or .jpg)"
        )
    image = contact_sheet(frames, tokens, **kw)
    with atomic(path) as tmp, open(tmp, "wb") as handle:
        image.save(handle, format=fmt)
    return path


def _check(frames, tokens) -> tuple[np.ndarray, int]:
    """Validate the inputs; return frames as a numpy array and k, the frames per temporal token."""
    if not isinstance(tokens, Tokens):
        raise TypeError(f"tokens must be a framepress Tokens, got {type(tokens).__name__}")
    try:
        tokens.check()
    except ValueError as exc:
        raise ValueError(f"tokens are inconsistent: {exc}") from None
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames must be a uint8 numpy array [F, H, W, 3], got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (RGB 0-255), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3 or min(frames.shape[1:3], default=0) < 1:
        raise ValueError(f"frames must be [F, H, W, 3] RGB with H, W >= 1, got shape {tuple(frames.shape)}")
    F, T = frames.shape[0], tokens.grid[0]
    if F < T or F % T:
        raise ValueError(
            f"frames: got {F} frames for a token grid of T={T} frames; need F = T, or a multiple of T when the "
            "model fuses several frames into one temporal token (e.g. Qwen-VL: F = 2T)"
        )
    return np.ascontiguousarray(frames), F // T


@cache
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the fixed bitmap font
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill, max_width: int) -> None:
    """Draw one line of text, cut with '...' to fit ``max_width`` pixels."""
    if draw.textlength(text, font=font) > max_width:
        while text and draw.textlength(text + "...", font=font) > max_width:
            text = text[:-1]
        text += "..."
    draw.text(xy, text, font=font, fill=fill)


def _legend(draw: ImageDraw.ImageDraw, lay: SheetLayout) -> None:
    inner = lay.width - 2 * MARGIN
    per_line = min(max(inner // LEGEND_SLOT, 1), len(LEGEND))
    top = lay.height - MARGIN - lay.legend_lines * LEGEND_LINE
    font = _font(11)
    for j, text in enumerate(LEGEND):
        line, slot = divmod(j, per_line)
        x, y = MARGIN + slot * LEGEND_SLOT, top + line * LEGEND_LINE + 3
        box = [x, y, x + 13, y + 13]
        if j == 0:  # kept: a plain swatch with the bright outline
            draw.rectangle(box, fill=(150, 150, 150), outline=KEPT_OUTLINE, width=2)
        elif j == 1:  # merged: three group tints
            for s, (a, b) in enumerate(((0, 4), (5, 8), (9, 13))):
                tint = [round(150 * (1 - TINT_ALPHA) + c * TINT_ALPHA) for c in PALETTE[s]]
                draw.rectangle([x + a, y, x + b, y + 13], fill=tuple(tint))
            draw.rectangle(box, outline=PALETTE[0], width=1)
        else:  # dropped: the swatch dimmed
            draw.rectangle(box, fill=tuple([round(150 * (1 - DIM))] * 3))
        _text(draw, (x + 20, y - 1), text, font, TEXT, LEGEND_SLOT - 22)
