"""Plug compression into a Hugging Face Video-LLM: ``framepress.apply(model, method, retention, **params)``.

The model is patched in place with hooks only (no fork of its code, no processor change), so its own
``generate(**inputs)`` and ``forward`` keep working with the processor's usual inputs:

- a pre-hook on ``model.model`` and a wrapper of its ``get_video_features`` note where each video's tokens are;
- **pre-LLM**: a pre-hook on the language model rewrites the prefill — each video's grid of features is
  compressed, the sequence, attention mask and position ids are rebuilt — and, at every decode step, maps the
  attention mask and 1-D positions onto the shorter prefix (integration spec §4b);
- **in-LLM** at layer K: a pre-hook on layer K rewrites the hidden states (and rotary embeddings, positions and
  mask) so that layer K and all later layers, and their KV cache, hold only the kept tokens; later layers get
  the same rewrite of what the decoder loop hands them (spec §7). Layers before K keep everything.

Stages stack: every ``apply`` adds one, its handle removes it, and the hooks go when the last stage does.
"""

from __future__ import annotations

import collections
import functools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from . import budget as _budget
from . import checks, flops, registry, signals
from .api import compress
from .layer import HEADS, LayerInputs
from .models import Adapter, adapter_for
from .models.base import HEAD_SIGNALS, SIGNALS, STAND_IN, _Restore, cache_of
from .signals import attention_rows
from .tokens import Tokens

log = logging.getLogger("framepress")

POSITIONS = ("reassign", "original")
#: framepress.compress's arguments that a pre-LLM stage passes on (window by window compression, framepress.stream)
WINDOW_ARGS = ("window", "max_tokens", "split")
#: ``Handle.stats`` keeps the records of this many prefills (a long evaluation must not grow without bound)
STATS_KEPT = 1024


@dataclass
class Stage:
    """One ``apply``: a method, its budget and where it runs (``layer`` None: before the LLM)."""

    method: registry.Method
    retention: float | None
    params: dict[str, Any]
    layer: int | None
    positions: str
    handoff: Any = None  # the pre-LLM stage's registry handoff, on the in-LLM part of the same apply
    signals: dict[str, str] = field(default_factory=dict)  # parameter -> the vision signal the model computes for it
    head: Any = None  # the SigLIP attention-pooling head its head signals run (models.base.HEAD_SIGNALS)

    @property
    def label(self) -> str:
        where = "pre-LLM" if self.layer is None else f"layer {self.layer}"
        return f"{self.method.name}@{where}"

    @property
    def unpooled(self) -> bool:
        """The method takes the grid before the family's own pooling (and replaces that pooling)."""
        return self.method.grid == "unpooled"


@dataclass
class Rewrite:
    """How one stage maps a batch's sequence of length ``old_length`` onto a shorter one.

    ``index`` [B, L'] is the old position of each new slot (left padding points at 0) and ``valid`` [B, L'] says
    which slots are real. Per sample, ``groups`` = (new slots [M], old members [K], group of each member [K])
    lists the slots that stand for several old tokens; ``features`` = (new slots, [M, C]) what the method put
    in the slots it rewrote.
    """

    index: torch.Tensor
    valid: torch.Tensor
    old_length: int
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    features: list[tuple[torch.Tensor, torch.Tensor | None]]

    def gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Gather ``t`` (batch first, or broadcast over it) along its sequence dim ``dim``."""
        B, L = self.index.shape
        t = t.expand(B, *t.shape[1:]) if t.shape[0] == 1 and B > 1 else t
        shape = [B] + [1] * (t.ndim - 1)
        shape[dim] = L
        index = self.index.view(shape).expand(*[L if d == dim else s for d, s in enumerate(t.shape)])
        return t.gather(dim, index)

    def apply(self, hidden: torch.Tensor, use_features: bool) -> torch.Tensor:
        """[B, L, C] -> [B, L', C]: kept rows, each group's slot set to the method's feature (or the mean of
        its members), padding zeroed."""
        out = self.gather(hidden, 1)
        for b, ((slots, members, group), (f_slots, feats)) in enumerate(zip(self.groups, self.features)):
            if use_features and feats is not None and f_slots.numel():
                out[b, f_slots] = feats.to(out.dtype)
            elif slots.numel():
                total = torch.zeros(slots.numel(), hidden.shape[-1], dtype=torch.float32, device=hidden.device)
                total.index_add_(0, group, hidden[b, members].float())
                count = torch.bincount(group, minlength=slots.numel()).clamp_min(1)
                out[b, slots] = (total / count[:, None]).to(out.dtype)
        return out * self.valid[..., None].to(out.dtype)

    @property
    def ragged(self) -> bool:
        return not bool(self.valid.all())


def _rewrite(parts: list[tuple], old_length: int, device) -> Rewrite:
    """Left-pad the per-sample layouts (see :func:`_sample_parts`) into one [B, L'] layout."""
    width = max(int(order.numel()) for order, _, _ in parts)
    index = torch.zeros(len(parts), width, dtype=torch.long, device=device)
    valid = torch.zeros(len(parts), width, dtype=torch.bool, device=device)
    groups, features = [], []
    for b, (order, (slots, members, group), (f_slots, feats)) in enumerate(parts):
        pad = width - order.numel()
        index[b, pad:] = order
        valid[b, pad:] = True
        groups.append((slots + pad, members, group))
        features.append((f_slots + pad, feats))
    return Rewrite(index, valid, old_length, groups, features)


@dataclass
class _Plan:
    """What a method did to one block of a sample: the block's ``slots`` go; each output token takes its place
    at ``anchor`` (an old position: its representative's slot, or the block's start when the method worked on
    another grid), with ``features``; ``members``/``group`` say which old slots each output stands for."""

    slots: torch.Tensor
    anchor: torch.Tensor
    features: torch.Tensor
    members: torch.Tensor
    group: torch.Tensor


def _plan(tokens: Tokens, slots: torch.Tensor) -> _Plan:
    """A method's tokens over a block whose inputs sit at sequence ``slots``, placed at their representatives."""
    T, H, W = tokens.grid
    t, y0, x0 = tokens.boxes[:, 0], tokens.boxes[:, 1], tokens.boxes[:, 2]
    rep = slots[t * (H * W) + y0 * W + x0]
    if torch.unique(rep).numel() != rep.numel():
        raise RuntimeError("two output tokens share a representative; cannot place them in the sequence")
    kept_input = tokens.source >= 0
    return _Plan(slots, rep, tokens.features, slots[kept_input], tokens.source[kept_input])


def _plan_replacing(tokens: Tokens, slots: torch.Tensor) -> _Plan:
    """A method's tokens over another grid than the block's (the unpooled grid): they replace the whole block,
    in output order, from its first slot."""
    anchor = slots[:1].expand(len(tokens))
    return _Plan(slots, anchor, tokens.features, slots[:0], slots[:0])


def _sample_parts(valid: torch.Tensor, plans: list[_Plan]) -> tuple[torch.Tensor, tuple, tuple]:
    """One sample's new layout from the plans of its blocks: the old position behind each new slot (an output
    token's anchor, which may repeat), and per output its new slot, members and features."""
    gone = ~valid.clone()
    for plan in plans:
        gone[plan.slots] = True
    stay = torch.nonzero(~gone).squeeze(1)
    empty = valid.new_zeros(0, dtype=torch.long)
    anchors = torch.cat([pl.anchor for pl in plans]) if plans else empty
    position = torch.cat([stay, anchors])
    order = torch.sort(position, stable=True).indices  # outputs at one anchor keep their order
    local = torch.empty_like(order)
    local[order] = torch.arange(order.numel(), device=valid.device)
    out_slots = local[stay.numel() :]
    members = torch.cat([pl.members for pl in plans]) if plans else empty
    offsets, start = [], 0
    for pl in plans:
        offsets.append(pl.group + start)
        start += pl.anchor.numel()
    group = torch.cat(offsets) if plans else empty
    features = torch.cat([pl.features for pl in plans]) if plans else None
    return position[order], (out_slots, members, group), (out_slots, features)


class Record(dict):
    """One prefill's statistics (a plain dict underneath). It prints short, without the per-sample index lists
    (``blocks``, and each stage's ``kept``, ``slots``, ``members`` and ``group``); index it to get them."""

    INDEX_KEYS = frozenset({"blocks", "kept", "slots", "members", "group"})

    def __repr__(self) -> str:
        def short(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: short(v) for k, v in value.items() if k not in self.INDEX_KEYS}
            return [short(v) for v in value] if isinstance(value, list) else value

        return repr(short(dict(self)))


@dataclass
class _Pass:
    """State of one prefill and the decode steps after it."""

    blocks: list[list[Any]] = field(default_factory=list)  # per sample: (slots, grid) of intact video grids
    visual: torch.Tensor | None = None  # [B, L] visual tokens in the current layout
    valid: torch.Tensor | None = None  # [B, L] real (not padding) tokens in the current layout
    entry: Rewrite | None = None
    entry_shift: torch.Tensor | None = None  # [B, 1] how far 1-D decode positions move after a reassign
    entry_positions: str = "original"
    original_visual: list[int] = field(default_factory=list)
    layers: dict[int, dict[str, Any]] = field(default_factory=dict)  # per layer >= K: prefill replacements
    cut_at: list[int] = field(default_factory=list)  # layers where an in-LLM stage cut
    key_valid: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, L_layer] prefix keys valid
    signal: dict[int, tuple] = field(default_factory=dict)
    cuts: list[Rewrite] = field(default_factory=list)  # the in-LLM rewrites, in layer order
    reassigned: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, 1] tokens a reassign cut dropped
    append_pending: int = 0  # a Session is about to append this many prompt tokens to the cached prefix
    appending: bool = False  # this pass appends prompt tokens (not generated ones)
    record: dict[str, Any] = field(default_factory=dict)
    entry_plans: list[list[tuple[Tokens, torch.Tensor]]] = field(default_factory=list)  # per sample: (tokens, anchors)
    decode_memory: dict[int, dict] = field(default_factory=dict)  # per sample: what a decode part keeps across steps
    step_keys: torch.Tensor | None = None  # [B, L'] prefix keys the layers from a decode part's layer on attend to now


class _Patch:
    """All framepress hooks on one model, shared by its stages."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter):
        self.model, self.adapter = model, adapter
        self.stages: list[Stage] = []
        self.hooks: list[Any] = []
        self.captured: dict[str, Any] = {}
        self.current = _Pass()
        self.stats: collections.deque[dict[str, Any]] = collections.deque(maxlen=STATS_KEPT)
        self.warned = False
        self.prefills = 0  # prefills this patch rewrote (or recorded), to check that each video prefill was seen
        self.expecting: tuple[int, int] = (0, 0)  # (video tokens in the base forward now running, prefills before it)
        self.signal_hooks: dict[str, list[Any]] = {}  # vision signal -> its installed hooks
        self.unpooled_hooks: list[Any] = []
        self.signals: dict[str, list[torch.Tensor]] = {}  # vision signal -> its maps of the videos being encoded, in order
        self.unpooled: list[torch.Tensor] = []  # [frames, H, W, C] grids before the family's pooling, in order
        self.encoding = False
        self.last_tokens: list[Tokens] = []  # the pre-LLM stage's tokens of the last prefill, video by video

    # installing -----------------------------------------------------------------------------------------------
    def install(self) -> None:
        a = self.adapter
        self.hooks.append(a.base.register_forward_pre_hook(self._on_base, with_kwargs=True))
        self.hooks.append(a.base.register_forward_hook(self._after_base, with_kwargs=True))
        self.hooks.append(a.language_model.register_forward_pre_hook(self._on_lm, with_kwargs=True))
        for i, layer in enumerate(a.layers):
            self.hooks.append(layer.register_forward_pre_hook(functools.partial(self._on_layer, i), with_kwargs=True))
            self.hooks.append(
                layer.self_attn.register_forward_pre_hook(functools.partial(self._on_attention, i), with_kwargs=True)
            )
        original = a.base.get_video_features
        previous = a.base.__dict__.get("get_video_features")

        @functools.wraps(original)
        def get_video_features(*args, **kwargs):
            grid = kwargs.get("video_grid_thw", args[1] if len(args) > 1 else None)
            if grid is not None:
                self.captured["video_grid_thw"] = grid
            for queue in self.signals.values():
                queue.clear()
            self.unpooled.clear()
            self.encoding = True
            try:
                return original(*args, **kwargs)
            finally:
                self.encoding = False

        a.base.get_video_features = get_video_features
        self.hooks.append(_Restore(a.base, "get_video_features", previous))
        if hasattr(a.language_model, "_deepstack_process"):
            deepstack = a.language_model._deepstack_process
            previous = a.language_model.__dict__.get("_deepstack_process")

            def deepstack_process(hidden_states, visual_pos_masks, visual_embeds):
                return self._on_deepstack(deepstack, hidden_states, visual_pos_masks, visual_embeds)

            a.language_model._deepstack_process = deepstack_process
            self.hooks.append(_Restore(a.language_model, "_deepstack_process", previous))

    def uninstall(self) -> None:
        self.update_score_hooks(force_off=True)
        for hook in reversed(self.hooks):
            hook.remove()
        self.hooks.clear()

    def update_score_hooks(self, force_off: bool = False) -> None:
        """Vision hooks cost work while the tower runs: installed only while a stage needs them (a signal, one
        hook factory per name in the adapter: e.g. the scores, a second attention pass of one ViT layer; the
        unpooled grid: a copy of the projector output)."""
        wanted = {} if force_off else {name: s.head for s in self.stages for name in s.signals.values()}
        for name in [n for n in self.signal_hooks if n not in wanted]:
            for hook in self.signal_hooks.pop(name):
                hook.remove()
            self.signals.pop(name, None)
        for name, head in wanted.items():
            if name not in self.signal_hooks:
                queue = self.signals.setdefault(name, [])
                self.signal_hooks[name] = self.adapter.signal_hooks(name, functools.partial(self._on_vision, queue), head)
        wanted_unpooled = not force_off and self.adapter.pooled and any(s.unpooled for s in self.stages)
        if wanted_unpooled and not self.unpooled_hooks:
            self.unpooled_hooks = self.adapter.unpooled_hooks(functools.partial(self._on_vision, self.unpooled))
        if not wanted_unpooled:
            for hook in self.unpooled_hooks:
                hook.remove()
            self.unpooled_hooks = []

    def _on_vision(self, queue: list[torch.Tensor], frames: torch.Tensor) -> None:
        if self.encoding:
            queue.append(frames)

    def _take(self, queue: list[torch.Tensor], grid: tuple[int, ...]) -> torch.Tensor:
        """The next video's frames ([T, ...], T = grid[0]) from a queue the vision hooks filled while encoding;
        with a full grid (T, H, W), also checks the map's shape."""
        taken, need = [], grid[0]
        while need:
            if not queue:
                raise ValueError(
                    "this method needs the vision encoder's outputs (its signals or the unpooled grid), but the video "
                    "was not encoded here (precomputed features were passed); give pixel values"
                )
            head = queue[0]
            taken.append(head[:need])
            if head.shape[0] > need:
                queue[0] = head[need:]
            else:
                queue.pop(0)
            need -= taken[-1].shape[0]
        out = torch.cat(taken)
        if len(grid) == 3 and out.ndim >= 3 and tuple(out.shape[:3]) != tuple(grid):
            raise RuntimeError(f"a vision signal of shape {tuple(out.shape)} for a video grid {grid}")
        return out

    # capturing --------------------------------------------------------------------------------------------------
    def _on_base(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        if kwargs.get("video_grid_thw") is not None:
            self.captured["video_grid_thw"] = kwargs["video_grid_thw"]
        self.captured["input_ids"] = ids
        self.captured["inputs_embeds"] = embeds if ids is None else None
        videos = 0 if ids is None and embeds is None else int(self.adapter.video_mask(self.captured).sum())
        self.expecting = (videos, self.prefills)

    def _after_base(self, module, args, kwargs, output):
        """Never silently uncompressed: a forward whose inputs hold video tokens must have been rewritten by
        every installed stage (a transformers change, or inputs the hooks cannot read, would otherwise give
        full-token answers and timings under a compression label)."""
        videos, before = self.expecting
        self.expecting = (0, self.prefills)
        if not videos:
            return None
        if self.prefills == before:
            raise RuntimeError(
                f"framepress: the model's inputs hold {videos} video tokens, but its language model ran no prefill "
                "that framepress saw (was the KV cache passed under a name this transformers version does not use?); "
                "the output would be uncompressed, so it is refused"
            )
        ran = {record["stage"] for record in self.current.record["stages"]}
        missing = [stage.label for stage in self.stages if stage.label not in ran and stage.method.stage != "decode"]
        if missing:
            raise RuntimeError(
                f"framepress: {', '.join(missing)} did not run on a prefill holding {videos} video tokens "
                f"(framepress found {sum(self.current.original_visual)} of them in the language model's input); "
                "the output would not be what was asked, so it is refused"
            )
        return None

    # the language model's entry -----------------------------------------------------------------------------
    def _on_lm(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        cache = cache_of(kwargs)
        if embeds is None:
            return None
        prefill = cache is None or cache.get_seq_length() == 0
        if prefill:
            return args, self._prefill(embeds, kwargs)
        p = self.current
        p.appending = p.append_pending == embeds.shape[1] > 0
        p.append_pending = 0
        return args, self._decode_entry(embeds, kwargs, cache)

    def _prefill(self, embeds: torch.Tensor, kwargs: dict) -> dict:
        B, L, C = embeds.shape
        mask2d = kwargs.get("attention_mask")
        valid = torch.ones(B, L, dtype=torch.bool, device=embeds.device) if mask2d is None else mask2d.bool()
        p = self.current = _Pass(valid=valid)
        captured = dict(self.captured)
        if captured.get("input_ids") is not None and captured["input_ids"].shape[-1] != L:
            captured = {}
        blocks = self.adapter.video_blocks(captured) if captured else [[] for _ in range(B)]
        self.captured.pop("video_grid_thw", None)
        p.blocks = [[(blk.slots, blk.grid) for blk in sample] for sample in blocks]
        p.visual = torch.zeros(B, L, dtype=torch.bool, device=embeds.device)
        for b, sample in enumerate(p.blocks):
            for slots, _ in sample:
                p.visual[b, slots] = True
        p.original_visual = [int(p.visual[b].sum()) for b in range(B)]
        p.record = Record(tokens_in=p.original_visual, stages=[], layer_tokens={0: valid.sum(1).tolist()},
                          blocks=[[(slots.tolist(), grid) for slots, grid in sample] for sample in p.blocks])
        self.last_tokens = []
        self.stats.append(p.record)
        self.prefills += 1
        if not any(p.original_visual):
            if not self.warned:
                log.warning("framepress: the inputs hold no video tokens; compression does nothing")
                self.warned = True
            return kwargs
        entry = next((s for s in self.stages if s.layer is None), None)
        if entry is None:
            return kwargs
        parts = []
        for b in range(B):
            plans = [self._entry_block(entry, embeds[b, slots].reshape(*grid, C), slots, grid) for slots, grid in p.blocks[b]]
            videos = self.last_tokens[len(self.last_tokens) - len(plans) :]
            p.entry_plans.append([(tokens, plan.anchor) for tokens, plan in zip(videos, plans)])
            parts.append(_sample_parts(valid[b], plans))
            p.blocks[b] = []
        rewrite = _rewrite(parts, L, embeds.device)
        p.entry = rewrite
        kwargs = dict(kwargs)
        kwargs["inputs_embeds"] = rewrite.apply(embeds, use_features=True)
        kwargs["attention_mask"] = rewrite.valid.long() if mask2d is not None or rewrite.ragged else None
        kwargs["position_ids"] = self._entry_positions(rewrite, kwargs.get("position_ids"), valid, entry.positions)
        if kwargs.get("visual_pos_masks") is not None:
            kwargs.update(self._entry_deepstack(rewrite, kwargs["visual_pos_masks"], kwargs["deepstack_visual_embeds"]))
        p.visual = rewrite.gather(p.visual, 1) & rewrite.valid
        p.valid = rewrite.valid
        new_count = rewrite.valid.sum(1, keepdim=True)
        p.record["layer_tokens"][0] = new_count[:, 0].tolist()
        p.entry_shift = valid.sum(1, keepdim=True) - new_count
        p.entry_positions = entry.positions
        p.record["stages"].append(
            {"stage": entry.label, "visual_out": p.visual.sum(1).tolist(), "length": rewrite.index.shape[1],
             "kept": [rewrite.index[b, g[0]].tolist() for b, g in enumerate(rewrite.groups)],
             "slots": [g[0].tolist() for g in rewrite.groups]}
        )
        return kwargs

    def _entry_block(self, stage: Stage, x: torch.Tensor, slots: torch.Tensor, grid: tuple[int, int, int]) -> _Plan:
        """Run the pre-LLM stage on one video's grid (or its unpooled grid, if the method asks for it)."""
        params = dict(stage.params, **{param: self._take(self.signals[name], grid) for param, name in stage.signals.items()})
        if stage.unpooled and self.adapter.pooled:
            raw = self._take(self.unpooled, grid[:1])
            share = None if stage.retention is None else _budget.tokens_for(stage.retention, slots.numel()) / raw.shape[:3].numel()
            tokens = compress(raw.to(x.dtype), stage.method.name, retention=share, **params)
            self.last_tokens.append(tokens)
            return _plan_replacing(tokens, slots)
        tokens = compress(x, stage.method.name, retention=stage.retention, **params)
        self.last_tokens.append(tokens)
        return _plan(tokens, slots)

    def _entry_positions(self, rw: Rewrite, position_ids, valid: torch.Tensor, mode: str):
        contiguous = (rw.valid.long().cumsum(1) - 1).clamp_min(0)
        if self.adapter.rope == "1d":
            if mode == "reassign":
                return contiguous
            if position_ids is None:
                position_ids = (valid.long().cumsum(1) - 1).clamp_min(0)
            return rw.gather(position_ids.expand(valid.shape[0], -1), 1)
        if position_ids is None or position_ids.ndim != 3:
            raise ValueError(f"{self.adapter.name}: M-RoPE positions are missing at the language model's entry")
        rows = torch.stack([rw.gather(r, 1) for r in position_ids])
        if rows.shape[0] == 4:  # row 0: the text positions the mask is built from
            rows[0] = contiguous
        return rows

    def _entry_deepstack(self, rw: Rewrite, masks: torch.Tensor, embeds: list[torch.Tensor]) -> dict:
        """Qwen3-VL DeepStack features follow the kept tokens (merged ones: mean of their members)."""
        B, L = masks.shape
        new_masks = rw.gather(masks, 1) & rw.valid
        out = []
        for layer_embeds in embeds:
            dense = layer_embeds.new_zeros(B, L, layer_embeds.shape[-1])
            dense[masks] = layer_embeds
            out.append(rw.apply(dense, use_features=False)[new_masks])
        return {"visual_pos_masks": new_masks, "deepstack_visual_embeds": out}

    def _decode_entry(self, embeds: torch.Tensor, kwargs: dict, cache) -> dict:
        p = self.current
        if p.entry is None:
            return kwargs
        kwargs = dict(kwargs)
        q = embeds.shape[1]
        mask2d = kwargs.get("attention_mask")
        if mask2d is not None:
            kwargs["attention_mask"] = torch.cat([p.entry.valid.long(), mask2d[:, p.entry.old_length :].long()], 1)
        elif p.entry.ragged:
            extra = cache.get_seq_length() + q - p.entry.index.shape[1]
            kwargs["attention_mask"] = torch.cat(
                [p.entry.valid.long(), torch.ones(embeds.shape[0], extra, dtype=torch.long, device=embeds.device)], 1
            )
        pos = kwargs.get("position_ids")
        if pos is None:
            return kwargs
        shift = p.entry_shift.to(pos.device)
        if self.adapter.rope == "1d" and p.entry_positions == "reassign":
            kwargs["position_ids"] = pos - shift
        elif self.adapter.rope == "mrope" and pos.ndim == 3 and pos.shape[0] == 4:
            kwargs["position_ids"] = torch.cat([pos[:1] - shift[None], pos[1:]])  # row 0 counts the new prefix
        return kwargs

    # decoder layers ------------------------------------------------------------------------------------------
    def _on_attention(self, i: int, module, args, kwargs):
        """Keep what layer K-1's attention needs for signals (the normalized input, rotary tables, validity); at a
        decode step, let a decode part choose the keys of the layers from K on."""
        p = self.current
        if p.valid is None or not any(s.layer == i + 1 for s in self.stages):
            return
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cache = cache_of(kwargs)
        decode = next((s for s in self.stages if s.layer == i + 1 and s.method.stage == "decode"), None)
        if decode is not None and hidden is not None and not _prefill(cache, i):
            self._choose_keys(decode, i, module, hidden, kwargs["position_embeddings"], cache)
            return
        if hidden is None or not _prefill(cache, i) or hidden.shape[1] != p.valid.shape[1]:
            return
        cos, sin = kwargs["position_embeddings"]
        p.signal[i + 1] = (module, hidden, cos, sin, p.valid)
        return

    def _on_layer(self, i: int, module, args, kwargs):
        p = self.current
        if p.valid is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = cache_of(kwargs)
        prefill = _prefill(cache, i)
        stages = [s for s in self.stages if s.layer == i and s.method.stage != "decode"]
        if prefill and stages and any(p.original_visual):
            return self._cut(i, stages[0], hidden, args, kwargs)
        chooser = next((s for s in self.stages if s.method.stage == "decode"), None)
        if not prefill and p.step_keys is not None and chooser is not None and i >= chooser.layer:
            kwargs = dict(kwargs, attention_mask=self._decode_mask(p.step_keys, hidden, kwargs.get("attention_mask"), cache, i))
            return args, kwargs
        cuts = [k for k in p.cut_at if (k < i if prefill else k <= i)]
        if not cuts:
            return None
        k = max(cuts)
        kwargs = dict(kwargs)
        if prefill:  # the decoder loop hands every layer the full-length tables: give the cut ones
            kwargs.update({key: v for key, v in p.layers[k].items() if key != "position_ids" or key in kwargs})
        else:  # decode: keys of this layer are the kept prefix, then the new tokens
            kwargs["attention_mask"] = self._decode_mask(p.key_valid[k], hidden, kwargs.get("attention_mask"), cache, i)
            shift = sum(v for c, v in p.reassigned.items() if c <= i)
            if p.appending and isinstance(shift, torch.Tensor) and kwargs.get("position_ids") is not None:
                # appended prompt tokens continue the reassigned layout, as in a single prefill of the whole prompt
                positions = kwargs["position_ids"] - shift.to(kwargs["position_ids"].device)
                kwargs["position_embeddings"] = self.adapter.language_model.rotary_emb(hidden, positions)
        return args, kwargs

    def _choose_keys(self, stage: Stage, i: int, module, hidden: torch.Tensor, position_embeddings, cache) -> None:
        """A decode part (DyCoke stage 2) reads the new token's attention at layer ``i`` = K-1 and chooses which
        visual prefix keys the layers from K on attend to in this step (a mask: the cache keeps every entry)."""
        p = self.current
        p.step_keys = None
        B, q = hidden.shape[:2]
        if q != 1 or p.appending or not any(p.original_visual):
            return  # prompt tokens a Session appends are not a generated step
        if p.cut_at:
            raise ValueError(f"{stage.label} chooses keys of the prefix layout, which an in-LLM cut changed; it cannot follow one")
        past = cache.layers[i].keys
        prefix = p.valid.shape[1]
        valid = torch.cat([p.valid, p.valid.new_ones(B, past.shape[2] - prefix)], 1)
        cos, sin = position_embeddings
        attention = signals.decode_attention(module, hidden, cos, sin, past, valid).mean(1)[:, :prefix]
        keys = p.valid.clone()
        skipped = 0
        for b in range(B):
            visual = torch.nonzero(p.visual[b]).squeeze(1)
            if not visual.numel():
                continue
            with torch.inference_mode():
                chosen = stage.method.fn(attention[b, visual], p.decode_memory.setdefault(b, {}), **stage.params)
            if chosen is not None:
                dropped = torch.ones(visual.numel(), dtype=torch.bool, device=visual.device)
                dropped[chosen] = False
                keys[b, visual[dropped]] = False
                skipped += int(dropped.sum())
        record = p.record.setdefault("decode", {"stage": stage.label, "steps": 0, "pruned_steps": 0, "keys_skipped": 0})
        record["steps"] += 1
        record["pruned_steps"] += int(skipped > 0)
        record["keys_skipped"] += skipped * (len(self.adapter.layers) - stage.layer)  # per layer from K on
        p.step_keys = keys if skipped else None

    def _cut(self, i: int, stage: Stage, hidden: torch.Tensor, args, kwargs):
        p = self.current
        B, L, C = hidden.shape
        parts = []
        for b in range(B):
            vis = torch.nonzero(p.visual[b]).squeeze(1)
            plans = []
            if vis.numel():
                grid = p.blocks[b][0][1] if len(p.blocks[b]) == 1 else None
                if stage.method.stage == "pre-llm":
                    if grid is None:
                        raise ValueError(
                            f"{stage.label}: a grid method needs the video's whole grid at layer {i}, but an earlier "
                            "stage cut it (or the sample has several videos)"
                        )
                    x = hidden[b, vis].reshape(*grid, C)
                    tokens = compress(x, stage.method.name, retention=stage.retention, **stage.params)
                else:
                    tokens = self._layer_method(stage, i, b, hidden, vis, grid)
                plans.append(_plan(tokens, vis))
            parts.append(_sample_parts(p.valid[b], plans))
        rw = _rewrite(parts, L, hidden.device)
        new_hidden = rw.apply(hidden, use_features=True)
        cos, sin = kwargs["position_embeddings"]
        new_pos = None
        if stage.positions == "reassign":
            p.reassigned[i] = p.valid.sum(1, keepdim=True) - rw.valid.sum(1, keepdim=True)
            contiguous = (rw.valid.long().cumsum(1) - 1).clamp_min(0)
            cos, sin = self.adapter.language_model.rotary_emb(new_hidden, contiguous)
            new_pos = contiguous
        else:
            cos, sin = rw.gather(cos, 1), rw.gather(sin, 1)
            if kwargs.get("position_ids") is not None:
                new_pos = rw.gather(kwargs["position_ids"].expand(B, -1), 1)
        mask = self._prefill_mask(rw.valid, kwargs.get("attention_mask"), new_hidden.dtype)
        p.layers[i] = {"position_embeddings": (cos, sin), "attention_mask": mask}
        if new_pos is not None:
            p.layers[i]["position_ids"] = new_pos
        p.cut_at.append(i)
        p.cuts.append(rw)
        p.record["layer_tokens"][i] = rw.valid.sum(1).tolist()
        p.key_valid[i] = rw.valid
        p.visual = rw.gather(p.visual, 1) & rw.valid
        p.valid = rw.valid
        p.blocks = [[] for _ in range(B)]
        p.record["stages"].append(
            {"stage": stage.label, "visual_out": p.visual.sum(1).tolist(), "length": rw.index.shape[1],
             "kept": [rw.index[b, g[0]].tolist() for b, g in enumerate(rw.groups)],
             "slots": [g[0].tolist() for g in rw.groups], "members": [g[1].tolist() for g in rw.groups],
             "group": [g[2].tolist() for g in rw.groups]}
        )
        kwargs = dict(kwargs)
        kwargs["position_embeddings"] = (cos, sin)
        kwargs["attention_mask"] = mask
        if new_pos is not None:
            kwargs["position_ids"] = new_pos
        args = (new_hidden, *args[1:]) if args else args
        if not args:
            kwargs["hidden_states"] = new_hidden
        return args, kwargs

    def _layer_method(self, stage: Stage, i: int, b: int, hidden, vis, grid) -> Tokens:
        p = self.current
        first_visual = int(vis.min())
        text_rows = torch.nonzero(p.valid[b] & ~p.visual[b] & (torch.arange(hidden.shape[1], device=hidden.device) > first_visual)).squeeze(1)
        signal = p.signal.get(i)

        rows_of = {
            "last": torch.nonzero(p.valid[b]).squeeze(1)[-1:],
            "text": text_rows,
            "all": torch.nonzero(p.valid[b]).squeeze(1),
        }

        def attention(which: str, heads: str) -> torch.Tensor:
            checks.choice("heads", heads, HEADS)
            if signal is None:
                raise ValueError(f"{stage.label} needs attention signals from layer {i - 1}, which did not run")
            attn, normed, cos, sin, valid = signal
            c = cos[b] if cos.shape[0] > 1 else cos[0]
            s = sin[b] if sin.shape[0] > 1 else sin[0]
            rows = rows_of[which]
            if which == "all":  # a mean over every query, a block of queries at a time
                total = torch.zeros(vis.numel(), device=hidden.device)
                for part in rows.split(256):
                    total += attention_rows(attn, normed[b], c, s, part, valid[b]).mean(0)[:, vis].sum(0)
                return (total / max(rows.numel(), 1))[None]
            probs = attention_rows(attn, normed[b], c, s, rows, valid[b])[:, :, vis]
            return probs.mean(0) if heads == "mean" else probs.amax(0)

        inputs = LayerInputs(
            visual=hidden[b, vis],
            text=hidden[b, text_rows],
            grid=grid,
            layer=i,
            n_layers=len(self.adapter.layers),
            _attention=attention,
        )
        budget = None
        if stage.retention is not None:
            budget = min(vis.numel(), _budget.tokens_for(stage.retention, p.original_visual[b]))
        params = {**self._handed(stage, b, vis.numel()), **stage.params}
        with torch.inference_mode():
            return stage.method.fn(inputs, budget, **params)

    def _handed(self, stage: Stage, b: int, n_visual: int) -> dict[str, torch.Tensor]:
        """What the pre-LLM stage of the same apply hands its in-LLM part (e.g. PruneVid's blocks): per-token
        labels in the pre-LLM output order, put in sequence order (the order of the tokens' anchors) and
        numbered apart video by video."""
        plans = self.current.entry_plans[b] if stage.handoff is not None and self.current.entry_plans else []
        if not plans:
            return {}
        labels: dict[str, list[torch.Tensor]] = {}
        for tokens, anchor in plans:
            order = torch.sort(anchor, stable=True).indices
            for name, value in stage.handoff(tokens).items():
                start = int(labels[name][-1].max()) + 1 if labels.get(name) else 0
                labels.setdefault(name, []).append(value[order] + start)
        handed = {name: torch.cat(parts) for name, parts in labels.items()}
        for name, value in handed.items():
            if value.numel() != n_visual:
                raise RuntimeError(f"{stage.label}: {value.numel()} {name} labels from the pre-LLM stage for {n_visual} visual tokens")
        return handed

    def _prefill_mask(self, valid: torch.Tensor, incoming, dtype):
        """The 4-D causal mask of a rewritten prefill, in the format the attention kernel takes (None when
        plain causal attention over all keys is right)."""
        if incoming is None and bool(valid.all()):
            return None
        L = valid.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
        allowed = causal[None, None] & valid[:, None, None, :]
        allowed |= torch.eye(L, dtype=torch.bool, device=valid.device)[None, None] & ~valid[:, None, :, None]
        return self._mask_format(allowed, dtype)

    def _decode_mask(self, prefix: torch.Tensor, hidden, incoming, cache, i: int):
        """The 4-D mask of a decode step at layer ``i``: the prefix keys ``prefix`` [B, L'] allows, then the
        tokens generated since, causally."""
        if incoming is None and bool(prefix.all()):
            return None
        B, q = hidden.shape[:2]
        new = cache.get_seq_length(i) - prefix.shape[1] + q if cache is not None else q
        tail = torch.ones(q, new, dtype=torch.bool, device=hidden.device).tril(new - q)
        allowed = torch.cat([prefix[:, None, None, :].expand(B, 1, q, -1), tail[None, None].expand(B, 1, q, new)], -1)
        return self._mask_format(allowed, hidden.dtype)

    def _mask_format(self, allowed: torch.Tensor, dtype):
        if self.adapter.text_config._attn_implementation == "eager":
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        return allowed

    def _on_deepstack(self, original, hidden_states, visual_pos_masks, visual_embeds):
        """Qwen3-VL adds DeepStack features after its first layers; after an in-LLM cut they follow the cut."""
        for rw in self.current.cuts:
            if visual_pos_masks.shape[1] == hidden_states.shape[1]:
                break
            if visual_pos_masks.shape[1] == rw.old_length:
                dense = visual_embeds.new_zeros(*visual_pos_masks.shape, visual_embeds.shape[-1])
                dense[visual_pos_masks] = visual_embeds
                visual_pos_masks = rw.gather(visual_pos_masks, 1) & rw.valid
                visual_embeds = rw.apply(dense, use_features=False)[visual_pos_masks]
        return original(hidden_states, visual_pos_masks, visual_embeds)


def _prefill(cache, layer: int) -> bool:
    """Whether this pass is a prefill for ``layer``: nothing cached there yet."""
    return cache is None or cache.get_seq_length(layer) == 0


class Handle:
    """Returned by :func:`apply`: ``remove()`` undoes it; also a context manager. ``stats`` has one record per
    prefill (the last ``STATS_KEPT``): visual tokens in per sample, and per stage the visual tokens out, the
    sequence length and the kept positions."""

    def __init__(self, patch: _Patch, stages: list[Stage]):
        self._patch, self.stages = patch, stages
        self.removed = False

    @property
    def stats(self) -> collections.deque[dict[str, Any]]:
        return self._patch.stats

    def flops(self, record: dict[str, Any] | None = None) -> list[float]:
        """Analytical prefill FLOPs of the language model per sample of a record (the last by default): every
        layer counted with the tokens it held (:mod:`framepress.flops`)."""
        record = self.stats[-1] if record is None else record
        llm = flops.LLM.from_config(self._patch.model.config)
        changes = sorted(record["layer_tokens"].items())
        per_sample = []
        for b in range(len(record["tokens_in"])):
            counts = [next(c[b] for k, c in reversed(changes) if k <= layer) for layer in range(llm.layers)]
            per_sample.append(flops.prefill_flops(counts, llm))
        return per_sample

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        patch = self._patch
        for stage in self.stages:
            patch.stages.remove(stage)
        if not patch.stages:
            patch.uninstall()
            patch.model.__dict__.pop("_framepress_patch", None)
        else:
            patch.update_score_hooks()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply(
    model: torch.nn.Module,
    method: str,
    retention: float | str | None = None,
    *,
    layer: int | None = None,
    inner_layer: int | None = None,
    positions: str | None = None,
    siglip_head: Any = None,
    **params: Any,
) -> Handle:
    """Compress the video tokens of ``model`` with ``method`` until the returned handle is removed.

    Args:
        model: a supported Hugging Face Video-LLM (``framepress.models.ADAPTERS``), patched in place.
        method: a registered method. Grid methods (``sttm``, ``pool``, ...) run before the LLM by default;
            in-LLM methods (``fastv``) at their paper's layer.
        retention: share of each video's visual tokens to keep, in (0, 1]; an in-LLM stage's share counts the
            video's original tokens, so stacked stages read "A%/B%". A method whose paper adds an in-LLM part
            (``unified``, ``holitom``) runs both: a number r means "r / r*R" with the paper's R, "A%/B%" sets
            both, "A%" runs the pre-LLM part alone.
        layer: run at the input of this decoder layer instead (a grid method needs the whole grid there, so it
            cannot follow another stage).
        inner_layer: the layer of the in-LLM part, when the method has one (default: its paper's, e.g. 18).
        positions: 1-D RoPE models: "reassign" (contiguous positions for the kept tokens; default for grid methods,
            STTM's choice) or "original" (the kept tokens keep their original positions, gaps left; default for
            in-LLM methods, FastV's). M-RoPE models always keep each token's original (t, h, w).
        siglip_head: a SigLIP checkpoint (hub id or local folder, e.g. "google/siglip-so400m-patch14-384") whose
            attention-pooling head gives FastVID its official frame features and saliency in LLaVA-OneVision (the
            llava-hf checkpoints drop the head; only its weights are read).
        **params: the method's parameters (and its in-LLM part's).
    """
    adapter = adapter_for(model)
    spec = registry.get(method)
    first, second = checks.retention_pair(retention)
    if second is not None and spec.inner is None:
        raise ValueError(f'{method} has no in-LLM part: retention "A%/B%" needs one (stack a second apply instead)')
    inner = None
    if spec.inner is not None and layer is None and not (isinstance(retention, str) and second is None):
        inner_name, share = spec.inner
        inner = registry.get(inner_name)
        if second is None and first is not None:
            second = first * share
    decode = registry.get(spec.decode) if spec.decode is not None and layer is None else None
    parts = [part for part in (inner, decode) if part is not None]
    own = {k: v for k, v in params.items() if k in spec.params or not any(k in part.params for part in parts)}
    stages = [_stage(adapter, spec, first, own, layer, positions, siglip_head=siglip_head)]
    if inner is not None:
        inner_params = {k: v for k, v in params.items() if k not in own and k in inner.params}
        stages.append(_stage(adapter, inner, second, inner_params, inner_layer, None, layer_name="inner_layer"))
        stages[-1].handoff = spec.handoff
    elif inner_layer is not None:
        raise ValueError(f"inner_layer: {method} runs no in-LLM part here")
    if decode is not None:
        decode_params = {k: v for k, v in params.items() if k not in own and k in decode.params}
        stages.append(_stage(adapter, decode, None, decode_params, None, None))
    patch = model.__dict__.get("_framepress_patch")
    taken = {s.layer: s.label for s in patch.stages} if patch is not None else {}
    for stage in stages:
        if stage.layer in taken:
            raise ValueError(f"{stage.label}: that stage is taken by {taken[stage.layer]}; remove it first")
        taken[stage.layer] = stage.label
    fresh = patch is None
    if fresh:
        patch = _Patch(model, adapter)
    patch.stages.extend(stages)
    try:
        if fresh:
            patch.install()
        patch.update_score_hooks()
    except Exception:
        for stage in stages:
            patch.stages.remove(stage)
        if fresh:
            patch.uninstall()
        raise
    if fresh:
        model.__dict__["_framepress_patch"] = patch
    return Handle(patch, stages)


def _stage(
    adapter: Adapter, spec: registry.Method, retention, params, layer, positions, layer_name="layer", siglip_head=None
) -> Stage:
    """Check one stage's settings against the model and the method (a pre-LLM method's ``window``, ``max_tokens``
    and ``split`` are :func:`framepress.compress`'s own: they stay in the stage's parameters, unbound)."""
    own = {k: v for k, v in params.items() if spec.stage != "pre-llm" or k not in WINDOW_ARGS}
    spec.bind({**{param: None for param in spec.signals}, **own})
    if params.get("window") is not None:
        checks.integer("window", params["window"], 1)
    if params.get("max_tokens") is not None:
        checks.integer("max_tokens", params["max_tokens"], 1)
    n_layers = len(adapter.layers)
    if layer is None and spec.stage in ("in-llm", "decode"):
        layer = spec.default_layer
        if layer >= n_layers:
            raise ValueError(f"{spec.name} runs at layer {layer} by default, but the model has {n_layers} layers; give {layer_name}")
    if layer is not None:
        layer = checks.integer(layer_name, layer, 1, n_layers - 1)
    if positions is None:
        positions = spec.positions or ("original" if spec.stage == "in-llm" or adapter.rope == "mrope" else "reassign")
    positions = checks.choice("positions", positions, POSITIONS)
    if adapter.rope == "mrope" and positions != "original":
        raise ValueError(f"{adapter.name} uses M-RoPE: kept tokens keep their (t, h, w) positions; positions must be 'original'")
    stage = Stage(spec, retention, dict(params), layer, positions, signals=_signals(adapter, spec, params, siglip_head))
    if stage.unpooled and adapter.pooled:
        if layer is not None:
            raise ValueError(f"{spec.name} replaces the family's pooling, so it runs before the LLM (no layer)")
        if positions != "reassign":
            raise ValueError(f"{spec.name} gives a new grid: its tokens take contiguous positions (positions='reassign')")
    if stage.signals and layer is not None:
        raise ValueError(f"{spec.name} uses the vision encoder's {', '.join(stage.signals)}, so it runs before the LLM (no layer)")
    if HEAD_SIGNALS & set(stage.signals.values()):
        stage.head = adapter.load_head(siglip_head)
    return stage


def _signals(adapter: Adapter, spec: registry.Method, params, siglip_head) -> dict[str, str]:
    """Which vision signal the model computes for each of the method's signal parameters: the one the registry
    names, else its stand-in (``models.base.STAND_IN``), else none (the method's default). A head signal the
    family would compute from a SigLIP head that is not named gives one warning naming what is missing."""
    chosen, headless = {}, []
    for param, name in spec.signals.items():
        if param in params:
            raise ValueError(f"{spec.name}: inside a model {param} comes from its vision encoder; do not pass {param}")
        for candidate in (name, STAND_IN.get(name)):
            if candidate in adapter.vision_signals and (candidate not in HEAD_SIGNALS or siglip_head is not None):
                chosen[param] = candidate
                break
        if chosen.get(param) != name and name in adapter.vision_signals:
            headless.append(param)
        if param not in chosen and spec.params[param] is registry._REQUIRED:
            raise ValueError(f"{spec.name} needs {param} from the vision encoder, which {adapter.name} cannot give ({SIGNALS[name]})")
    if siglip_head is not None and not HEAD_SIGNALS & set(chosen.values()):
        raise ValueError(f"siglip_head: {spec.name} takes no signal of SigLIP's attention-pooling head on {adapter.name}")
    if headless:
        official = ", ".join(f"{p} (signal {spec.signals[p]!r})" for p in headless)
        instead = "; ".join(f"{p}: signal {chosen[p]!r}" if p in chosen else f"{p}: the method's default" for p in headless)
        warnings.warn(
            f"{spec.name} on {adapter.name}: SigLIP's attention-pooling head is missing (the checkpoint drops it), so "
            f"the official {official} are not computed and stand-ins run ({instead}); give siglip_head= a SigLIP "
            "checkpoint (a hub id or local folder, e.g. 'google/siglip-so400m-patch14-384')",
            stacklevel=4,
        )
    return chosen
