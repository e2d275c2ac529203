"""Long videos: compress window by window, the budget shared across windows, never holding the video whole.

``framepress.compress(x, method, retention, window=W)`` cuts the T frames into windows of W (the last may be
shorter), gives each window its share of the budget, runs the method on each window and assembles one
:class:`~framepress.Tokens` over the whole grid: boxes' t offset by the window's start, ``source`` pointing at
the assembled tokens, ``info`` with the windows. :class:`Stream` does the same as frames arrive.

**Sharing the budget** (``split``):

- ``"novelty"`` (``compress`` default): in proportion to each window's content, the sum over its frames of
  ``max(NOVELTY_FLOOR, mean over the grid of 1 - cos(token, same token of the previous frame))`` (the video's
  first frame counts 1), each window between 1 token and all of its tokens, rounded by largest remainder: the
  shares sum to exactly the budget ``max(1, round(r * T*H*W))``. An exact method then returns exactly the
  budget; the others do what they do per window with their share.
- ``"even"`` (the only rule a :class:`Stream` can follow, since later windows' novelty is unknown): window w
  keeps ``floor(r * C_w + 1/2) - floor(r * C_(w-1) + 1/2)``, ``C_w`` the tokens of the windows up to w, so
  every prefix keeps its share and the shares of finished windows never change.

Either way a window keeps at least one token, so a budget below the number of windows is exceeded. Without a
retention every window runs the method's own default setting. Per-frame parameters (``scores``, ``metric``,
``frame_features``) are cut with the frames.

**Global methods** (``GLOBAL_METHODS``: divprune, unified) compare every token with every other, so their
memory grows with the square of the input. When the input has more than ``max_tokens`` tokens (default
``DEFAULT_MAX_TOKENS``) they run in two levels: level 1 keeps ``LEVEL1_FACTOR`` times each window's share
within the window (at most all of it); level 2 runs the method again across the survivors of consecutive
windows, in groups of at most ``max_tokens`` survivors (a window joins the open group unless that would pass
``max_tokens``), each group down to the sum of its windows' shares. A whole video within ``max_tokens`` runs in
one call in ``compress``; a :class:`Stream` always runs the two levels. Level 2 sees each survivor as one token
(a merged one as its mean) at its representative's place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import api, checks, registry
from . import budget as _budget
from .tokens import Tokens

GLOBAL_METHODS = ("divprune", "unified")
DEFAULT_MAX_TOKENS = 16384  # divprune's cosine matrix at this size: 1 GiB of float32
LEVEL1_FACTOR = 2
NOVELTY_FLOOR = 0.05
PER_FRAME = ("scores", "metric", "frame_features")
SPLITS = ("novelty", "even")


@dataclass
class _Part:
    """Tokens of consecutive frames [t0, t0 + frames): boxes already in video time, ``source`` local to the part."""

    t0: int
    frames: int
    tokens: Tokens
    share: int | None  # the final tokens these frames are due (level 1 of a global method keeps more)
    scores: torch.Tensor | None = None  # the survivors' scores, for level 2 of a method that takes scores


def windowed(
    x: torch.Tensor,
    spec: registry.Method,
    retention: float | None,
    window: int | None,
    max_tokens: int | None,
    split: str | None,
    params: dict[str, Any],
) -> Tokens:
    """:func:`framepress.compress` with ``window`` and/or ``max_tokens`` (see the module docstring)."""
    x, _ = checks.features_and_peak(x)
    retention = checks.retention(retention)
    T, H, W, _ = x.shape
    glob = spec.name in GLOBAL_METHODS
    if glob and retention is None:
        raise ValueError(f"{spec.name} needs a retention (its budget)")
    max_tokens = _max_tokens(max_tokens, spec)
    split = checks.choice("split", "novelty" if split is None else split, SPLITS)
    if window is None:  # max_tokens alone: windows as large as max_tokens allows
        window = max(1, max_tokens // (H * W))
    window = checks.integer("window", window, 1)
    frame_params, params = _frame_params(params, T)
    spec.bind({**params, **{k: None for k in frame_params}})
    if glob and T * H * W <= max_tokens:  # the whole video fits: one call, as without windows
        return api.compress(x, spec.name, retention, **params, **frame_params)
    starts = list(range(0, T, window))
    counts = [min(window, T - s) * H * W for s in starts]
    if retention is None:
        shares = [None] * len(starts)
    elif split == "even":
        shares = _budget.cumulative(retention, counts)
    else:
        weights = torch.tensor([_novelty(x, s, min(s + window, T)) for s in starts], dtype=torch.float64)
        shares = _budget.split(_budget.tokens_for(retention, T * H * W), weights, torch.tensor(counts))
    runner = _Runner(spec, params, max_tokens if glob else None)
    for s, share in zip(starts, shares):
        e = min(s + window, T)
        runner.add(x[s:e], s, share, {k: v[s:e] for k, v in frame_params.items()})
    return runner.result((T, H, W), {"window": window, "split": split if retention is not None else None})


class Stream:
    """Compress a video as its features arrive, window by window, without ever holding it whole.

    ``push(frames)`` takes [t, H, W, C] features (any t, the same H, W and C each time) and, for a method that
    takes them, the same frames' per-frame parameters (``scores=[t, H, W]``, ...); every complete window is
    compressed at once, with the ``"even"`` split (see :mod:`framepress.stream`), and its frames let go: the
    stream holds the incomplete window and the finished windows' tokens (a global method: their level-1
    survivors until their group closes). ``tokens()`` is the result so far, the incomplete window compressed as
    the last one; pushing on afterwards continues the same stream. ``compress(x, method, retention, window=W,
    split="even")`` gives the same tokens (for a global method: when x has more than ``max_tokens`` tokens).
    """

    def __init__(
        self, method: str, retention: float | None = None, *, window: int, max_tokens: int | None = None,
        **params: Any,
    ) -> None:
        self.spec = registry.get(method)
        if self.spec.stage != "pre-llm":
            raise ValueError(f"{method} runs inside the LLM on hidden states; a Stream takes pre-LLM methods")
        self.retention = checks.retention(retention)
        if self.retention is None and method in GLOBAL_METHODS:
            raise ValueError(f"{method} needs a retention (its budget)")
        self.window = checks.integer("window", window, 1)
        self.max_tokens = _max_tokens(max_tokens, self.spec)
        given = sorted(k for k in PER_FRAME if k in params and isinstance(params[k], torch.Tensor))
        if given:
            raise ValueError(f"{', '.join(given)}: per-frame values go with their frames, to push(frames, {given[0]}=...)")
        self._per_frame = [k for k in PER_FRAME if k in self.spec.params and k not in params]
        self.spec.bind({**params, **{k: None for k in self._per_frame}})  # the values' checks, at once
        self.params = dict(params)
        self._required = [k for k in self._per_frame if k in self.spec.required]
        self._given: list[str] | None = None  # the per-frame values the first push gave; every push gives them
        self._runner = _Runner(self.spec, self.params, self.max_tokens if self.spec.name in GLOBAL_METHODS else None)
        self._pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self._pending_frames = 0
        self._done = 0  # frames in finished windows
        self._tokens_done = 0
        self._shape: tuple[int, int, int] | None = None

    @property
    def frames(self) -> int:
        """Frames pushed so far."""
        return self._done + self._pending_frames

    def push(self, frames: torch.Tensor, **per_frame: torch.Tensor) -> None:
        """Add the next ``t`` frames' features [t, H, W, C]; compresses every window they complete. The values'
        check (finite) runs when their window is compressed, in the same pass that finds their magnitude."""
        _frames_shape(frames)
        if self._shape is not None and tuple(frames.shape[1:]) != self._shape:
            raise ValueError(f"frames must be [t, H, W, C] with H, W, C = {list(self._shape)} as before, got {list(frames.shape)}")
        self._shape = tuple(frames.shape[1:])
        unknown = sorted(set(per_frame) - set(self._per_frame))
        missing = sorted(set(self._required if self._given is None else self._given) - set(per_frame))
        extra = sorted(set(per_frame) - set(self._given)) if self._given is not None else []
        if unknown or missing or extra:
            raise ValueError(
                f"push takes the per-frame parameters {', '.join(self._per_frame) or 'none'} for {self.spec.name}, "
                "the same ones every push" + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else "") + (f"; not in the first push: {', '.join(extra)}" if extra else "")
            )
        t = frames.shape[0]
        for k, v in per_frame.items():
            if not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != t:
                raise ValueError(f"{k} must be a tensor whose first dimension is the {t} frames pushed")
        self._given = sorted(per_frame)
        self._pending.append((frames, dict(per_frame)))
        self._pending_frames += t
        if self._pending_frames < self.window:
            return
        x, extra = self._joined()  # at most one copy, however many windows the push completes
        full = x.shape[0] - x.shape[0] % self.window
        for s in range(0, full, self.window):
            self._finish(x[s : s + self.window], {k: v[s : s + self.window] for k, v in extra.items()}, self._runner)
        # the incomplete rest, copied so that the pushed tensors can be let go
        self._pending = [(x[full:].clone(), {k: v[full:].clone() for k, v in extra.items()})] if full < x.shape[0] else []
        self._pending_frames = x.shape[0] - full

    def tokens(self) -> Tokens:
        """The tokens of every frame pushed so far (the incomplete window compressed as the video's last)."""
        if self._shape is None:
            raise ValueError("no frames pushed yet: push(frames) first")
        runner = self._runner.copy()
        if self._pending_frames:
            x, extra = self._joined()
            self._add(x, extra, runner, self._done)
        H, W, _ = self._shape
        return runner.result((self.frames, H, W), {"window": self.window, "split": "even" if self.retention is not None else None})

    def _joined(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The pending frames and per-frame values as one tensor each."""
        if len(self._pending) == 1:
            return self._pending[0]
        return torch.cat([f for f, _ in self._pending]), {k: torch.cat([e[k] for _, e in self._pending]) for k in self._given}

    def _finish(self, x: torch.Tensor, extra: dict[str, torch.Tensor], runner: _Runner) -> None:
        self._add(x, extra, runner, self._done)
        self._done += x.shape[0]
        self._tokens_done += x.shape[:3].numel()

    def _add(self, x: torch.Tensor, extra: dict[str, torch.Tensor], runner: _Runner, t0: int) -> None:
        share = None
        if self.retention is not None:
            share = _budget.cumulative(self.retention, [self._tokens_done, x.shape[:3].numel()])[1]
        runner.add(x.contiguous(), t0, share, extra)


class _Runner:
    """Runs the method window by window and assembles the parts; for a global method, level 1 per window and
    level 2 across groups of survivors."""

    def __init__(self, spec: registry.Method, params: dict[str, Any], max_tokens: int | None) -> None:
        self.spec, self.params, self.max_tokens = spec, params, max_tokens
        self.parts: list[_Part] = []
        self.group: list[_Part] = []  # level-1 parts of a global method whose group is open
        self.windows: list[dict[str, Any]] = []

    def copy(self) -> _Runner:
        other = _Runner(self.spec, self.params, self.max_tokens)
        other.parts, other.group, other.windows = list(self.parts), list(self.group), list(self.windows)
        return other

    def add(self, x: torch.Tensor, t0: int, share: int | None, extra: dict[str, torch.Tensor]) -> None:
        """Compress frames [t0, t0 + len(x)) for ``share`` final tokens."""
        x, peak = checks.features_and_peak(x, "frames")
        n = x.shape[:3].numel()
        keep = share if self.max_tokens is None or share is None else min(n, LEVEL1_FACTOR * share)
        try:
            out = api.run(self.spec, x, peak, keep, self.spec.bind({**self.params, **extra}))
        except ValueError as err:  # e.g. a share below the method's floor: say which window
            raise ValueError(f"window of frames {t0}-{t0 + x.shape[0] - 1} ({keep} tokens of {n}): {err}") from None
        out = _shift(_own(out), t0)
        self.windows.append({"frames": [t0, t0 + x.shape[0]], "budget": share, "kept": len(out), "info": out.info})
        if self.max_tokens is None:
            self.parts.append(_Part(t0, x.shape[0], out, share))
            return
        scores = extra.get("scores")
        at = None
        if isinstance(scores, torch.Tensor):
            t, y, xx = out.boxes[:, 0] - t0, out.boxes[:, 1], out.boxes[:, 2]
            at = scores[t, y, xx]
        part = _Part(t0, x.shape[0], out, share, at)
        if self.group and sum(len(p.tokens) for p in self.group) + len(out) > self.max_tokens:
            self._close()
        self.group.append(part)

    def _close(self) -> None:
        """Level 2: the method across the open group's survivors, down to the sum of their windows' shares."""
        group, self.group = self.group, []
        survivors = sum(len(p.tokens) for p in group)
        due = sum(p.share for p in group)
        merged = _assemble(group)
        if survivors <= due:
            self.parts.append(merged)
            return
        feats = merged.tokens.features
        x2 = feats.reshape(1, 1, survivors, -1)
        extra = {}
        if "scores" in self.spec.params:
            given = self.params.get("scores")
            extra["scores"] = given if isinstance(given, str) else torch.cat([p.scores for p in group]).reshape(1, 1, -1)
        x2, peak = checks.features_and_peak(x2)
        level2 = api.run(self.spec, x2, peak, due, self.spec.bind({**self.params, **extra}))
        rep = level2.boxes[:, 2]  # its grid is (1, 1, survivors): a token's x0 is its survivor
        first = merged.tokens.source
        source = torch.where(first >= 0, level2.source[first.clamp_min(0)], -1)
        T, H, W = merged.tokens.grid
        tokens = Tokens.from_source(level2.features, merged.tokens.boxes[rep], source, (T, H, W), merged.tokens.info)
        self.parts.append(_Part(merged.t0, merged.frames, tokens, due))

    def result(self, grid: tuple[int, int, int], info: dict[str, Any]) -> Tokens:
        if self.group:
            self._close()
        out = _assemble(self.parts).tokens
        shares = [w["budget"] for w in self.windows]
        info = {**info, "budget": None if None in shares else sum(shares), "windows": self.windows}
        if self.max_tokens is not None:
            info["max_tokens"] = self.max_tokens
        if self.windows and all("segments" in w["info"] for w in self.windows):  # PruneVid's, for its in-LLM part
            info["segments"] = [s for w in self.windows for s in w["info"]["segments"]]
        return Tokens.from_source(out.features, out.boxes, out.source, grid, info)


def _assemble(parts: list[_Part]) -> _Part:
    """Consecutive parts as one: features and boxes stacked, each part's ``source`` moved past the earlier
    parts' tokens, features in the widest dtype among them."""
    dtype = parts[0].tokens.features.dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.tokens.features.dtype)
    offsets = torch.tensor([0] + [len(p.tokens) for p in parts]).cumsum(0).tolist()
    source = torch.cat([torch.where(p.tokens.source >= 0, p.tokens.source + o, -1) for p, o in zip(parts, offsets)])
    features = torch.cat([p.tokens.features.to(dtype) for p in parts])
    boxes = torch.cat([p.tokens.boxes for p in parts])
    frames = sum(p.frames for p in parts)
    _, H, W = parts[0].tokens.grid
    tokens = Tokens.from_source(features, boxes, source, (frames, H, W), parts[0].tokens.info)
    shares = [p.share for p in parts]
    return _Part(parts[0].t0, frames, tokens, None if None in shares else sum(shares))


def _own(out: Tokens) -> Tokens:
    """The tokens with features of their own: a view into the window (a method that keeps whole frames) would
    keep the whole window alive as long as the stream."""
    f = out.features
    if f.untyped_storage().nbytes() > f.numel() * f.element_size():
        return Tokens(f.clone(), out.boxes, out.sizes, out.source, out.grid, out.info)
    return out


def _frames_shape(frames: Any) -> None:
    """A dense floating [t, H, W, C] tensor (the cheap checks; the values' are made with the window's)."""
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor of shape [t, H, W, C], got {type(frames).__name__}")
    checks.plain_tensor(frames, "frames")
    if frames.ndim != 4 or frames.numel() == 0:
        raise ValueError(f"frames must have shape [t, H, W, C] with no empty dimension, got {list(frames.shape)}")
    if not frames.is_floating_point():
        raise TypeError(f"frames must be a floating-point tensor, got {frames.dtype}")


def _shift(out: Tokens, t0: int) -> Tokens:
    """A window's tokens with their boxes in video time."""
    if not t0:
        return out
    boxes = out.boxes.clone()
    boxes[:, 0] += t0
    return Tokens(out.features, boxes, out.sizes, out.source, out.grid, out.info)


def _novelty(x: torch.Tensor, start: int, end: int) -> float:
    """A window's content weight: the sum over frames [start, end) of their novelty against the frame before."""
    frames = x[max(start - 1, 0) : end].float()
    unit = torch.nn.functional.normalize(frames.reshape(frames.shape[0], -1, frames.shape[-1]), dim=-1, eps=1e-12)
    change = (1 - (unit[1:] * unit[:-1]).sum(-1)).mean(1).clamp(NOVELTY_FLOOR, 2.0)
    first = [1.0] if start == 0 else []
    return float(sum(first) + change.sum())


def _frame_params(params: dict[str, Any], T: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The per-frame tensor parameters (cut with the windows) apart from the others."""
    frame = {}
    for k in PER_FRAME:
        v = params.get(k)
        if isinstance(v, torch.Tensor):
            if v.ndim == 0 or v.shape[0] != T:
                raise ValueError(f"{k} must have the video's {T} frames as its first dimension, got {list(v.shape)}")
            frame[k] = v
    return frame, {k: v for k, v in params.items() if k not in frame}


def _max_tokens(value: Any, spec: registry.Method) -> int:
    if value is not None and spec.name not in GLOBAL_METHODS:
        raise ValueError(f"max_tokens applies to the global methods ({', '.join(GLOBAL_METHODS)}), not {spec.name}")
    return DEFAULT_MAX_TOKENS if value is None else checks.integer("max_tokens", value, 1)
