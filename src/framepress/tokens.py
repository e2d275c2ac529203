"""The token model: the one currency between methods, model adapters, pictures and benchmarks.

Every method returns a :class:`Tokens`. Its four tensors say what came out and where each output token
came from, so a model adapter can place the tokens (positions), a picture can draw them (boxes, source) and a
benchmark can count them (len, sizes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True, eq=False)
class Tokens:
    """Compressed visual tokens of a [T, H, W, C] input grid.

    Attributes:
        features: [N, C] the output tokens, in output order, in the input's dtype.
        boxes: [N, 5] int64 ``(t, y0, x0, y1, x1)``: the region of the input grid that the token's
            representative covers (y1, x1 exclusive). A kept input token is a 1x1 box; a pooled window is
            its window; a merged group is the box of its representative.
        sizes: [N] int64, how many input tokens each output token stands for (dropped ones are not counted).
        source: [T*H*W] int64, for each input token (row-major over t, y, x) the output token it went
            into, or -1 where it was dropped.
        grid: (T, H, W) of the input.
        info: what the method chose, e.g. the thresholds a budget search found.
    """

    features: torch.Tensor
    boxes: torch.Tensor
    sizes: torch.Tensor
    source: torch.Tensor
    grid: tuple[int, int, int]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_source(
        cls,
        features: torch.Tensor,
        boxes: torch.Tensor,
        source: torch.Tensor,
        grid: tuple[int, int, int],
        info: dict[str, Any] | None = None,
    ) -> Tokens:
        """Build tokens whose sizes are read off ``source`` (so the two always agree)."""
        kept = source[source >= 0]
        sizes = torch.bincount(kept, minlength=features.shape[0]) if kept.numel() else source.new_zeros(
            features.shape[0]
        )
        return cls(features, boxes.long(), sizes.long(), source.long(), tuple(grid), dict(info or {}))

    @classmethod
    def select(
        cls, x: torch.Tensor, index: torch.Tensor, info: dict[str, Any] | None = None
    ) -> Tokens:
        """Keep the input tokens at the flat indices ``index`` (ascending), drop the rest."""
        T, H, W, C = x.shape
        index = index.to(device=x.device, dtype=torch.long)
        source = torch.full((T * H * W,), -1, dtype=torch.long, device=x.device)
        source[index] = torch.arange(index.numel(), device=x.device)
        return cls.at_representatives(x, x.reshape(-1, C)[index], index, source, info)

    @classmethod
    def at_representatives(
        cls,
        x: torch.Tensor,
        features: torch.Tensor,
        representative: torch.Tensor,
        source: torch.Tensor,
        info: dict[str, Any] | None = None,
    ) -> Tokens:
        """Tokens each standing at one input token of x [T, H, W, C] (``representative``: flat indices, one per
        row of ``features``; ``source``: for each input, the row it went into or -1), put in spatiotemporal
        order of the representatives, each box the representative's 1x1 cell."""
        T, H, W, _ = x.shape
        order = torch.argsort(representative)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        source = torch.where(source >= 0, rank[source.clamp_min(0)], -1)
        rep = representative[order]
        t, rem = rep // (H * W), rep % (H * W)
        y, xx = rem // W, rem % W
        boxes = torch.stack([t, y, xx, y + 1, xx + 1], 1)
        return cls.from_source(features[order], boxes, source, (T, H, W), info)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_input(self) -> int:
        T, H, W = self.grid
        return T * H * W

    @property
    def retention(self) -> float:
        """Output tokens over input tokens."""
        return len(self) / self.num_input

    @property
    def positions(self) -> torch.Tensor:
        """[N, 3] (t, y, x) of each token's representative: the top-left corner of its box."""
        return self.boxes[:, :3]

    def keep_mask(self) -> torch.Tensor:
        """[T, H, W] bool: which input tokens went into some output token."""
        return (self.source >= 0).reshape(self.grid)

    def to(self, device: torch.device | str) -> Tokens:
        return Tokens(
            self.features.to(device),
            self.boxes.to(device),
            self.sizes.to(device),
            self.source.to(device),
            self.grid,
            dict(self.info),
        )

    def check(self) -> None:
        """Raise ``ValueError`` if an invariant of the token model does not hold."""
        T, H, W = self.grid
        n = len(self)
        problems = []
        if self.features.ndim != 2:
            problems.append(f"features must be [N, C], got {tuple(self.features.shape)}")
        if tuple(self.boxes.shape) != (n, 5) or self.boxes.dtype != torch.long:
            problems.append(f"boxes must be int64 [{n}, 5], got {self.boxes.dtype} {tuple(self.boxes.shape)}")
        if tuple(self.sizes.shape) != (n,) or self.sizes.dtype != torch.long:
            problems.append(f"sizes must be int64 [{n}], got {self.sizes.dtype} {tuple(self.sizes.shape)}")
        if tuple(self.source.shape) != (T * H * W,) or self.source.dtype != torch.long:
            problems.append(f"source must be int64 [{T * H * W}], got {tuple(self.source.shape)}")
        if problems:
            raise ValueError("; ".join(problems))
        if n == 0 and T * H * W > 0:
            problems.append(f"no output token for a non-empty {T}x{H}x{W} grid (a method keeps at least one)")
        t, y0, x0, y1, x1 = self.boxes.unbind(1)
        if not bool(((t >= 0) & (t < T) & (y0 >= 0) & (x0 >= 0) & (y1 <= H) & (x1 <= W)).all()):
            problems.append("a box lies outside the grid")
        if not bool(((y1 > y0) & (x1 > x0)).all()):
            problems.append("a box is empty")
        if not bool(((self.source >= -1) & (self.source < n)).all()):
            problems.append("source points outside [-1, N)")
        kept = self.source[self.source >= 0]
        counted = torch.bincount(kept, minlength=n) if kept.numel() else torch.zeros_like(self.sizes)
        if not torch.equal(counted, self.sizes):
            problems.append("sizes disagree with source")
        if not bool((self.sizes >= 1).all()):
            problems.append("an output token stands for no input token")
        if not bool(torch.isfinite(self.features).all()):
            problems.append("features are not finite")
        if problems:
            raise ValueError("; ".join(problems))

    def __repr__(self) -> str:
        T, H, W = self.grid
        return (
            f"Tokens({len(self)} of {T}x{H}x{W}={self.num_input}, retention={self.retention:.4f}, "
            f"dim={self.features.shape[-1]}, dtype={self.features.dtype}, info={self.info})"
        )
