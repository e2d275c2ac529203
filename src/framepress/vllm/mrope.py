"""Qwen2.5-VL M-RoPE positions of a compressed prompt, equal to transformers' ``get_rope_index`` (no vLLM here).

HF numbers a prompt's text tokens consecutively on all three rows; a video of LLM grid (T, h, w) that starts at
position ``s`` gives its token (t, y, x) the positions (s + int(t * interval), s + y, s + x), ``interval`` =
``tokens_per_second * second_per_grid_t`` computed in float32, and the text after it resumes at ``s + max(h, w)``.
framepress keeps a kept token's own (t, y, x) positions (its representative's, for a merged group) and every
text position unchanged, as its HF adapter does. vLLM differs in both places (its unpruned path resumes at
``s + max(positions) + 1``, EVS at ``s + w``), so a served model computes its positions here.

vLLM lays out positions while it processes the prompt, before the encoder chooses the kept tokens:
:func:`prompt_positions` gives every text position and placeholder positions for the videos; after encoding,
each video's embeddings carry their kept tokens' relative positions in :data:`CHANNELS` extra channels
(:func:`attach`), which :func:`rewrite` strips and writes into the sequence; :func:`delta` places the generated
tokens as ``generate`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: extra channels appended to a media item's embeddings: (t, y, x) each as hi * 256 + lo (exact in bfloat16, whose
#: integers are exact only up to 256), then a flag: 1 for a compressed video row, 0 for a row that keeps its place
CHANNELS = 7
_BASE = 256


@dataclass(frozen=True)
class Media:
    """One image or video in a prompt: its first placeholder's ``offset``, its ``length`` in placeholders, its LLM
    ``grid`` (T, h, w) and the temporal ``interval`` (1 for an image)."""

    offset: int
    length: int
    grid: tuple[int, int, int]
    interval: float = 1.0


def grid_positions(grid: tuple[int, int, int], interval: float = 1.0) -> torch.Tensor:
    """[3, T*h*w] the relative (t, y, x) positions HF gives a grid's tokens in raster order (start 0)."""
    T, h, w = grid
    t = (torch.arange(T) * torch.tensor(interval, dtype=torch.float32)).long()
    rows = torch.meshgrid(t, torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack(rows).reshape(3, -1)


def time_interval(tokens_per_second: float, second_per_grid_t: float) -> float:
    """HF's temporal step between temporal patches: the product taken in float32, as a tensor of the processor's
    ``second_per_grid_ts`` times the config's int ``tokens_per_second`` is."""
    return float(torch.tensor(second_per_grid_t, dtype=torch.float32) * tokens_per_second)


def prompt_positions(n_tokens: int, media: Sequence[Media]) -> tuple[torch.Tensor, int]:
    """[3, n_tokens] positions of a prompt whose media sit at ``media`` (any order), and its :func:`delta`.

    An item with fewer placeholders than grid tokens (a compressed video) takes its first ``length`` grid
    positions as placeholders, which :func:`rewrite` replaces once the kept tokens are known; text positions are
    final here."""
    pieces, at, current = [], 0, 0
    for item in sorted(media, key=lambda m: m.offset):
        text = item.offset - at
        if text < 0:
            raise ValueError(f"media overlap: an item starts at {item.offset}, before the previous one ends ({at})")
        pieces.append(torch.arange(text).expand(3, -1) + current)
        current += text
        pieces.append(grid_positions(item.grid, item.interval)[:, : item.length] + current)
        current += max(item.grid[1], item.grid[2])
        at = item.offset + item.length
    pieces.append(torch.arange(n_tokens - at).expand(3, -1) + current)
    positions = torch.cat(pieces, 1)
    return positions, delta(positions)


def delta(positions: torch.Tensor) -> int:
    """What a generated token adds to its index for its positions: transformers' ``generate`` gives each new
    token the last token's positions plus one on every row (a chat prompt ends in text, whose rows agree), so
    the first generated token, at index N, sits one past the prompt's last position. (vLLM's own rule and HF's
    cached ``rope_deltas`` go one past the largest position instead; they differ when a video's last temporal
    position lies beyond all the text after it.)"""
    return int(positions[:, -1].max()) + 1 - positions.shape[1] if positions.shape[1] else 0


def kept_positions(boxes: torch.Tensor, grid: tuple[int, int, int], interval: float) -> torch.Tensor:
    """[K, 3] relative (t, y, x) positions of tokens whose representatives are ``boxes[:, :3]`` (t, y0, x0)."""
    T, h, w = grid
    flat = boxes[:, 0] * (h * w) + boxes[:, 1] * w + boxes[:, 2]
    return grid_positions(grid, interval).to(boxes.device)[:, flat].T


def attach(features: torch.Tensor, relative: torch.Tensor | None) -> torch.Tensor:
    """``features`` [K, C] with the :data:`CHANNELS` position channels appended (``relative`` [K, 3]; None: rows
    that keep the positions the prompt gave them, as an uncompressed image does)."""
    K = features.shape[0]
    extra = features.new_zeros(K, CHANNELS)
    if relative is not None:
        if relative.numel() and int(relative.max()) >= _BASE * _BASE:
            raise ValueError(f"a relative position of {int(relative.max())} exceeds {_BASE * _BASE - 1}")
        rel = relative.to(features.device)
        extra[:, 0:6:2] = (rel // _BASE).to(features.dtype)
        extra[:, 1:6:2] = (rel % _BASE).to(features.dtype)
        extra[:, 6] = 1
    return torch.cat([features, extra], 1)


def detach(embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Undo :func:`attach`: the features, the [K, 3] relative positions and the [K] bool compressed flag."""
    extra = embeds[:, -CHANNELS:].float().round().long()
    relative = extra[:, 0:6:2] * _BASE + extra[:, 1:6:2]
    return embeds[:, :-CHANNELS], relative, extra[:, 6] == 1


def rewrite(
    positions: torch.Tensor,
    input_ids: torch.Tensor,
    relative: torch.Tensor,
    compressed: torch.Tensor,
    num_computed: int,
    media_ids: Sequence[int],
) -> torch.Tensor:
    """Write the kept tokens' positions into a prompt's [3, N] ``positions``; returns them and the delta.

    ``relative`` [M, 3] and ``compressed`` [M] are the rows of the media embeddings one prefill step gathers,
    in order: the media placeholders (tokens in ``media_ids``) from the first at or after ``num_computed`` on.
    A compressed row's positions are its video's start (one past its vision-start token's) plus its relative
    positions; the other rows keep theirs."""
    positions = positions.clone()
    ids = torch.as_tensor(input_ids, device=positions.device).long()
    is_media = torch.isin(ids, torch.tensor(list(media_ids), device=ids.device))
    where = torch.nonzero(is_media).squeeze(1)
    index = torch.arange(ids.numel(), device=ids.device)
    starts = torch.where(is_media & ~torch.cat([is_media.new_zeros(1), is_media[:-1]]), index, 0).cummax(0).values
    first = int(is_media[:num_computed].sum())
    rows = where[first : first + relative.shape[0]]
    if rows.numel() != relative.shape[0]:
        raise RuntimeError(
            f"framepress: {relative.shape[0]} media rows for {rows.numel()} placeholders left in the prompt"
        )
    rows, relative = rows[compressed.to(rows.device)], relative[compressed].to(positions.device)
    start = starts[rows]
    base = torch.where(start > 0, positions[0, (start - 1).clamp_min(0)] + 1, 0)
    positions[:, rows] = (relative + base[:, None]).T.to(positions.dtype)
    return positions
