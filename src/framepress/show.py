"""Pictures of compressed tokens: a contact sheet of the video frames with what each method kept.

:func:`contact_sheet` draws every frame of the video the tokens were computed from, with the token grid laid
over it:

- a *dropped* input token (``source == -1``) is dimmed, its pixels blended 60% toward black;
- a *kept* single token (size 1) is outlined in bright yellow (:data:`KEPT_OUTLINE`);
- a *merged* group (size > 1) is tinted over every member cell, in every frame where it has members, with the
  group's own colour (:func:`group_colour`: a fixed qualitative palette cycled by output index, blended 35%),
  and its representative's box is outlined in that colour.

A run inside a model can have several stages (a pre-LLM method, then an in-LLM merge or prune at a later layer,
"A%/B%"); each stage's record counts positions in the sequence *it* received. :func:`composed` follows the
stages back to the original grid, so the picture shows the tokens that really reached the last stage, and an
in-LLM merge as one group over all the cells its members stood for.

Layout (all sizes in pixels; :func:`layout` computes it, :class:`SheetLayout` holds it)::

    columns' = min(columns or ceil(sqrt(F)), F)        rows = ceil(F / columns')
    (h, w)   = a frame resized so its longer side is ``cell``, its aspect kept (each tile is h x w: no bands)
    inner    = max(columns' * w + (columns' - 1) * GAP, LEGEND_SLOT)
    width    = 2 * MARGIN + inner
    legend   = ceil(4 / clamp(inner // LEGEND_SLOT, 1, 4))  lines
    height   = MARGIN + HEADER + rows * (LABEL + h) + (rows - 1) * GAP + GAP + legend * LEGEND_LINE + MARGIN

Each tile sits under a LABEL-high band with its frame number and how many output tokens have their
representative there; the frame is resized with :data:`RESAMPLE`. The header holds the title and two lines of
counts. The token grid's H x W cells map proportionally onto the tile: pixel row ``p`` lies in token row
``p * H // h``.

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
HEADER = 54  # the title (14 px type) and two lines of counts (11 px)
LABEL = 16
LEGEND_LINE = 20
LEGEND_SLOT = 260
MIN_CELL = 16
WORD_GAP = 0.35  # space between words, in ems: the default font's own space is about 0.18 em, too narrow to read

DIM = 0.6  # a dropped token's pixels move this far toward black
TINT_ALPHA = 0.35  # a merged group's colour is blended in with this weight
KEPT_OUTLINE = (255, 255, 0)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
LABEL_TEXT = (70, 70, 70)
SWATCH = (150, 150, 150)
RESAMPLE = Image.Resampling.BILINEAR

# Tableau 10 without its grey (a grey tint reads as "dimmed") and its olive (an olive outline reads as the
# yellow one of a kept token).
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
)

LEGEND = (
    "yellow outline: kept token",
    "tint: merged group (one colour per group)",
    "coloured outline: a group's representative",
    "dim: dropped",
)


def group_colour(index: int) -> tuple[int, int, int]:
    """The colour of output token ``index`` when it is a merged group: stable, the palette cycled."""
    return PALETTE[int(index) % len(PALETTE)]


def plural(n: int, word: str) -> str:
    """``1 token``, ``2 tokens``, ``0 tokens`` (a word whose plural is a plain -s)."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes on a contact sheet (see the module docstring for the formula)."""

    frames: int
    columns: int
    rows: int
    cell: int  # the longer side of each tile
    frame_size: tuple[int, int]  # (h, w) of each tile: a frame resized to fit ``cell``, aspect kept
    grid_size: tuple[int, int]  # (H, W) of the token grid
    legend_lines: int
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow's ``Image.size``."""
        return (self.width, self.height)

    def frame_origin(self, f: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of frame f's tile on the sheet."""
        row, col = divmod(f, self.columns)
        h, w = self.frame_size
        return MARGIN + col * (w + GAP), MARGIN + HEADER + row * (LABEL + h + GAP) + LABEL

    def token_rect(self, f: int, y0: int, x0: int, y1: int | None = None, x1: int | None = None):
        """Pixel rectangle (left, top, right, bottom), right/bottom exclusive, of token-grid rows y0:y1 and
        columns x0:x1 (default: the one cell y0, x0) on frame f's tile on the sheet."""
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
    h, w = min(cell, max(1, round(fh * scale))), min(cell, max(1, round(fw * scale)))
    inner = max(columns * w + (columns - 1) * GAP, LEGEND_SLOT)
    per_line = min(max(inner // LEGEND_SLOT, 1), len(LEGEND))
    legend_lines = math.ceil(len(LEGEND) / per_line)
    width = 2 * MARGIN + inner
    height = MARGIN + HEADER + rows * (LABEL + h) + (rows - 1) * GAP + GAP + legend_lines * LEGEND_LINE + MARGIN
    return SheetLayout(F, columns, rows, cell, (h, w), (grid[1], grid[2]), legend_lines, width, height)


def composed(record: dict, first: Tokens | None = None, sample: int = 0) -> Tokens:
    """What a run inside a model kept of one video, on the grid its first stage read: every stage of ``record``
    (one entry of ``Handle.stats``) followed back to that grid.

    A stage's record counts positions in the sequence that stage received: ``kept`` (each output's
    representative), ``slots`` (where each output went in the new sequence) and, in the LLM, ``members`` and
    ``group`` (every input it kept and the output it went into). An output of a later stage therefore stands for
    the cells of every earlier output it took in, and its box is its representative's. ``first`` is the
    pre-LLM stage's tokens of this video (``_Patch.last_tokens``), needed when the run has one; without a
    pre-LLM stage the grid is the video's grid in the LLM and each of its tokens starts as itself.

    Returns :class:`Tokens` whose features are zeros [N, 1] (a picture needs none) and whose ``info`` says
    ``visual_in``, ``llm_grid`` (the video's grid in the LLM) and ``stages`` ((label, tokens out) in order).
    """
    if not isinstance(record, dict) or "stages" not in record or "blocks" not in record:
        raise TypeError("record must be one entry of Handle.stats (a dict with 'blocks' and 'stages')")
    sample = int(sample)
    if not 0 <= sample < len(record["blocks"]):
        raise ValueError(f"sample must be in [0, {len(record['blocks'])}), got {sample}")
    blocks, stages = record["blocks"][sample], record["stages"]
    if len(blocks) != 1:
        raise ValueError(f"record: sample {sample} holds {len(blocks)} videos; a picture shows exactly one")
    slots, llm_grid = blocks[0]
    if any("members" not in s for s in stages[1:]):
        raise ValueError("record: only the first stage may run before the LLM")
    pre = stages[0] if stages and "members" not in stages[0] else None
    inner = stages[1:] if pre is not None else stages
    if pre is not None:
        if not isinstance(first, Tokens):
            raise ValueError(f"first: the run has a pre-LLM stage ({pre['stage']}); pass its Tokens of this video")
        at = torch.tensor(pre["slots"][sample], dtype=torch.long)
        if at.numel() != len(first):
            raise ValueError(f"first: {len(first)} tokens, but the record's pre-LLM stage placed {at.numel()}")
        source, boxes, grid = first.source.cpu(), first.boxes.cpu(), first.grid
    else:
        if first is not None:
            raise ValueError("first: the run has no pre-LLM stage; pass None")
        grid = tuple(llm_grid)
        at = torch.tensor(slots, dtype=torch.long)
        n = at.numel()
        if n != math.prod(grid):
            raise ValueError(f"record: the video's block has {n} slots for a grid {grid}")
        source = torch.arange(n)
        cell = torch.arange(n)
        t, y, x = cell // (grid[1] * grid[2]), cell // grid[2] % grid[1], cell % grid[2]
        boxes = torch.stack([t, y, x, y + 1, x + 1], 1)
    for stage in inner:
        kept = torch.tensor(stage["kept"][sample], dtype=torch.long)
        members = torch.tensor(stage["members"][sample], dtype=torch.long)
        group = torch.tensor(stage["group"][sample], dtype=torch.long)
        length = int(torch.cat([at, kept, members]).max()) + 1
        lookup = torch.full((length,), -1, dtype=torch.long)  # sequence position -> current output
        lookup[at] = torch.arange(at.numel())
        rep, took = lookup[kept], lookup[members]
        if bool((rep < 0).any()) or bool((took < 0).any()):
            raise ValueError(f"record: {stage['stage']} kept a position that no earlier stage left to this video")
        into = torch.full((at.numel(),), -1, dtype=torch.long)
        into[took] = group
        source = torch.where(source >= 0, into[source.clamp_min(0)], -1)
        boxes = boxes[rep]
        at = torch.tensor(stage["slots"][sample], dtype=torch.long)
    info = {
        "visual_in": int(record["tokens_in"][sample]),
        "llm_grid": tuple(int(v) for v in llm_grid),
        "stages": [(s["stage"], int(s["visual_out"][sample])) for s in stages],
    }
    return Tokens.from_source(torch.zeros(boxes.shape[0], 1), boxes, source, grid, info)


def header_lines(tokens: Tokens) -> tuple[str, str]:
    """The header's two lines under the title: the visual tokens through each stage (a run inside a model:
    ``tokens.info`` from :func:`composed`; standalone: what the method chose, its numeric ``info``), and what the
    picture draws on which grid."""
    T, H, W = tokens.grid
    singles, groups = int((tokens.sizes == 1).sum()), int((tokens.sizes > 1).sum())
    dropped = int((tokens.source < 0).sum())
    drawn = f"{singles} single, {plural(groups, 'merged group')}, {dropped} of {tokens.num_input} cells dropped"
    stages = tokens.info.get("stages")
    if not stages:
        chosen = [f"{k}={v:.4g}" for k, v in tokens.info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return ("chosen: " + ", ".join(chosen) if chosen else ""), f"{T}x{H}x{W} grid: {drawn}"
    llm = tuple(tokens.info["llm_grid"])
    where = ["before the LLM" if label.endswith("@pre-LLM") else f"at {label.split('@')[-1]}" for label, _ in stages]
    flow = " -> ".join([str(tokens.info["visual_in"])] + [f"{n} {w}" for (_, n), w in zip(stages, where)])
    if llm == (T, H, W):
        return f"visual tokens: {flow}", f"{T}x{H}x{W} grid: {drawn}"
    return (f"visual tokens: {flow} (the LLM's grid: {'x'.join(map(str, llm))})",
            f"{T}x{H}x{W} grid before pooling: {drawn}")


def contact_sheet(
    frames, tokens: Tokens, columns: int | None = None, cell: int = 256, title: str | None = None
) -> Image.Image:
    """A picture of what ``tokens`` kept of ``frames``: every frame on a grid of tiles, dropped tokens dimmed,
    kept single tokens outlined, merged groups tinted (one colour per group) with the representative's box
    outlined, a header (``title``, by default the retention; then :func:`header_lines`) and a legend.

    Args:
        frames: uint8 [F, H, W, 3] RGB numpy array (a torch tensor is accepted too) of the frames the tokens
            were computed from; F = T of ``tokens.grid``, or a multiple of T when the model fuses F // T frames
            into one temporal token (Qwen-VL: 2).
        tokens: a :class:`framepress.Tokens` (a run inside a model: :func:`composed`).
        columns: frames per row (default ``ceil(sqrt(F))``; at most F).
        cell: the longer side of each frame's tile, in pixels (the other follows the frames' aspect).
        title: the header's first line.
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
        ox, oy = lay.frame_origin(f)
        img = np.asarray(Image.fromarray(frames[f]).resize((w, h), RESAMPLE), dtype=np.float32)
        src = source[t][pixel_row[:, None], pixel_col[None, :]]  # [h, w] output token of each pixel
        dropped = src < 0
        img[dropped] *= 1.0 - DIM
        if n:
            safe = np.where(dropped, 0, src)
            tinted = ~dropped & merged[safe]
            img[tinted] = img[tinted] * (1.0 - TINT_ALPHA) + colours[safe[tinted]] * TINT_ALPHA
        sheet.paste(Image.fromarray(np.rint(img).clip(0, 255).astype(np.uint8)), (ox, oy))
        label = f"frame {f}" + (f", t={t}" if k > 1 else "") + f" ({plural(int(per_frame[t]), 'token')})"
        _text(draw, (ox, oy - LABEL + 2), label, label_font, LABEL_TEXT, w)

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
        title = f"retention {tokens.retention:.2f}: {len(tokens)} of {tokens.num_input} tokens"
    _text(draw, (MARGIN, MARGIN + 1), title, _font(14), TEXT, inner)
    for j, line in enumerate(header_lines(tokens)):
        _text(draw, (MARGIN, MARGIN + 21 + 15 * j), line, label_font, LABEL_TEXT, inner)
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


def _words(text: str, font) -> tuple[list[str], list[float], float]:
    """The words of a line, their widths and the gap drawn between two of them."""
    words = text.split(" ")
    gap = max(font.getlength(" "), WORD_GAP * getattr(font, "size", 11))
    return words, [font.getlength(word) for word in words], gap


def _line_width(text: str, font) -> float:
    words, widths, gap = _words(text, font)
    return sum(widths) + gap * (len(words) - 1)


def _text(draw: ImageDraw.ImageDraw, xy, text: str, font, fill, max_width: int) -> None:
    """Draw one line of text word by word with a readable gap, cut with '...' to fit ``max_width`` pixels."""
    if _line_width(text, font) > max_width:
        while text and _line_width(text + "...", font) > max_width:
            text = text[:-1]
        text += "..."
    words, widths, gap = _words(text, font)
    x, y = xy
    for word, width in zip(words, widths):
        draw.text((x, y), word, font=font, fill=fill)
        x += width + gap


def _legend(draw: ImageDraw.ImageDraw, lay: SheetLayout) -> None:
    inner = lay.width - 2 * MARGIN
    per_line = min(max(inner // LEGEND_SLOT, 1), len(LEGEND))
    top = lay.height - MARGIN - lay.legend_lines * LEGEND_LINE
    font = _font(11)
    tint = [tuple(round(a * (1 - TINT_ALPHA) + c * TINT_ALPHA) for a, c in zip(SWATCH, PALETTE[s])) for s in range(3)]
    for j, text in enumerate(LEGEND):
        line, slot = divmod(j, per_line)
        x, y = MARGIN + slot * LEGEND_SLOT, top + line * LEGEND_LINE + 3
        box = [x, y, x + 13, y + 13]
        if j == 0:  # kept: a plain swatch with the bright outline
            draw.rectangle(box, fill=SWATCH, outline=KEPT_OUTLINE, width=2)
        elif j == 1:  # merged: three group tints
            for s, (a, b) in enumerate(((0, 4), (5, 8), (9, 13))):
                draw.rectangle([x + a, y, x + b, y + 13], fill=tint[s])
        elif j == 2:  # a group's representative: its tint, outlined in its colour
            draw.rectangle(box, fill=tint[0], outline=PALETTE[0], width=2)
        else:  # dropped: the swatch dimmed
            draw.rectangle(box, fill=tuple(round(c * (1 - DIM)) for c in SWATCH))
        _text(draw, (x + 20, y - 1), text, font, TEXT, LEGEND_SLOT - 22)
