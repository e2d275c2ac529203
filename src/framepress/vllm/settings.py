"""What a served model compresses, read from ``--hf-overrides '{"framepress": {...}}'`` and checked at start-up.

vLLM lays out a request's placeholder tokens while it processes the prompt, before the vision encoder runs, so
the number of tokens a video keeps must follow from its grid alone. That holds for a method whose budget is
exact, for an "official" one run with ``allocation="exact"``, and for a step method (its count is the largest
natural setting within the budget, a function of the grid); :meth:`Settings.count` gives it. Threshold searches
(STTM) give a count that depends on the features, and in-LLM stages would cut the paged KV cache, whose block
table is shared by every layer: both are refused with the reason. A pre-LLM method whose paper adds an in-LLM
or a decode part runs its pre-LLM part alone, and start-up says so.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import budget as _budget
from .. import checks, registry
from ..api import compress
from ..models.base import HEAD_SIGNALS, SIGNALS, STAND_IN
from ..tokens import Tokens

log = logging.getLogger("vllm.framepress")  # a child of the logger vLLM configures, so it prints with its own

#: the keys of the ``framepress`` entry of the model config
KEYS = ("method", "retention", "params")
#: :func:`framepress.compress`'s own arguments that a setting may give among its params (long videos)
WINDOW_ARGS = ("window", "max_tokens", "split")


@dataclass(frozen=True)
class Settings:
    """One served model's compression: a pre-LLM method, its retention and its checked parameters.

    ``signals`` maps parameters to the vision signals the model must compute for them while its tower encodes
    (:data:`framepress.models.base.SIGNALS`)."""

    method: str
    retention: float | None
    params: Mapping[str, Any] = field(default_factory=dict)
    signals: Mapping[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> registry.Method:
        return registry.get(self.method)

    @property
    def grid(self) -> str:
        """"unpooled": the method replaces the family's 2x2 pooling (ST-GridPool on LLaVA-OneVision)."""
        return self.spec.grid

    def count(self, grid: tuple[int, int, int]) -> int:
        """The number of tokens a video of LLM grid (T, H, W) keeps: what the prompt's placeholders must be."""
        return _count(self.method, self.retention, json.dumps(dict(self.params), sort_keys=True), tuple(grid))

    def compress(self, x: torch.Tensor, signals: Mapping[str, torch.Tensor] | None = None) -> Tokens:
        """Compress one video's features ``x`` [T, H, W, C]; the count must be the one its placeholders have."""
        signals = dict(signals or {})
        missing = sorted(set(self.signals) - set(signals))
        if missing:
            raise RuntimeError(f"framepress: {self.method} needs the vision signal(s) {', '.join(missing)}, "
                               "which the model did not compute; the video cannot be compressed")
        tokens = compress(x, self.method, self.retention, **self.params, **signals)
        T, H, W, _ = x.shape
        if self.grid != "unpooled" and len(tokens) != self.count((T, H, W)):
            raise RuntimeError(
                f"framepress: {self.method} kept {len(tokens)} tokens of a {T}x{H}x{W} video, but its prompt has "
                f"{self.count((T, H, W))} placeholders; refusing to serve a misaligned request"
            )
        return tokens


def from_config(
    config: Any, family: str, family_signals: Mapping[str, str], hf_signals: Collection[str]
) -> Settings | None:
    """The checked settings in a model config's ``framepress`` entry (a dict or a JSON string) for a family (see
    :func:`parse`); None when the config has none (the model then runs uncompressed, as vLLM's own)."""
    raw = getattr(config, "framepress", None)
    return None if raw is None else parse(raw, family, family_signals, hf_signals)


def parse(raw: Any, family: str | None = None, family_signals: Mapping[str, str] | None = None,
          hf_signals: Collection[str] | None = None) -> Settings:
    """Check a ``framepress`` entry. ``family`` and ``family_signals`` (signal -> how the family computes it in
    vLLM) check that the model can give the signals the method reads; every error names the setting.

    ``hf_signals``, the signals framepress's HF adapter computes for the family (its ``vision_signals``), makes
    each signal parameter read what the adapter gives it (:func:`resolve_signals`: the registry's signal, else
    its stand-in, else the method's default); without it every parameter reads the registry's signal."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"framepress: the setting is not valid JSON ({exc})") from None
    if not isinstance(raw, Mapping):
        raise TypeError(
            f"framepress: the setting must be a mapping with keys {', '.join(KEYS)}, got {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"framepress: unknown key(s) {', '.join(unknown)}; the setting accepts: {', '.join(KEYS)}")
    if "method" not in raw:
        raise ValueError('framepress: the setting needs a "method" (e.g. {"method": "divprune", "retention": 0.1})')
    spec = registry.get(raw["method"])
    params = raw.get("params") or {}
    if not isinstance(params, Mapping):
        raise TypeError(
            f"framepress: params must be a mapping of {spec.name}'s parameters, got {type(params).__name__}"
        )
    _refuse_stage(spec)
    retention = checks.retention(raw.get("retention"))
    params = dict(params)
    if spec.budget == "official":
        allocation = params.setdefault("allocation", "exact")
        if allocation != "exact":
            raise ValueError(
                f"framepress: {spec.name} with allocation={allocation!r} keeps a count that depends on the features; "
                "vLLM must know each video's count before the encoder runs, so it serves allocation='exact'"
            )
        log.info("framepress: %s runs with allocation='exact' (exactly the budget; the official count is "
                 "data-dependent)", spec.name)
    if retention is None and spec.budget != "steps":
        raise ValueError(f"framepress: {spec.name} needs a retention (a share of the video tokens in (0, 1])")
    own = {k: v for k, v in params.items() if k not in WINDOW_ARGS}
    signals = {p: s for p, s in spec.signals.items() if params.get(p) is None}
    if hf_signals is not None:
        signals = resolve_signals(spec, signals, hf_signals, family)
    bad = sorted(p for p in spec.signals if p in own and not _is_plain(own[p]))
    if bad:
        raise TypeError(f"framepress: {', '.join(bad)} of {spec.name} are tensors the model computes; leave them out")
    spec.bind({**{p: None for p in signals}, **own})
    for name in ("window", "max_tokens"):
        if params.get(name) is not None:
            checks.integer(name, params[name], 1)
    if family_signals is not None:
        missing = sorted({s for s in signals.values() if s not in family_signals})
        if missing:
            raise ValueError(
                f"framepress: {spec.name} reads the vision signal(s) {', '.join(missing)}, which framepress cannot "
                f"compute in vLLM's {family} yet; choose a method that needs none of them "
                f"(e.g. divprune, random, pool, prunevid)"
            )
    for part in filter(None, (spec.inner and spec.inner[0], spec.decode)):
        log.warning("framepress: %s's %s part does not run in vLLM (the paged KV cache keeps one block table for "
                    "all layers); only its pre-LLM part compresses", spec.name, part)
    settings = Settings(spec.name, retention, params, signals)
    log.info("framepress: serving %s at retention %s with %s", spec.name, retention, params or "its defaults")
    return settings


def resolve_signals(spec: registry.Method, signals: Mapping[str, str], hf_signals: Collection[str],
                    family: str | None) -> dict[str, str]:
    """parameter -> the signal framepress's HF adapter hands it on the family (``framepress.patch._signals``,
    no SigLIP head): the registry's signal, else its stand-in (``models.base.STAND_IN``), else none (the method's
    default, as the adapter leaves it); a required parameter the adapter cannot give is refused."""
    chosen = {}
    for param, name in signals.items():
        for candidate in (name, STAND_IN.get(name)):
            if candidate in hf_signals and candidate not in HEAD_SIGNALS:
                chosen[param] = candidate
                break
        else:
            if spec.params[param] is registry._REQUIRED:
                raise ValueError(f"framepress: {spec.name} needs {param} from the vision encoder, which "
                                 f"{family or 'the model'} cannot give ({SIGNALS[name]})")
        if chosen.get(param) != name:
            log.info("framepress: %s on %s: %s reads %s", spec.name, family or "the model", param,
                     f"the signal {chosen[param]!r} (standing in for {name!r})" if param in chosen
                     else f"the method's default ({name!r} is not computed for this family)")
    return chosen


def _refuse_stage(spec: registry.Method) -> None:
    if spec.stage != "pre-llm":
        raise ValueError(
            f"framepress: {spec.name} runs inside the LLM; vLLM's paged KV cache keeps one block table for all layers, "
            "so a layer cannot drop tokens. Choose a pre-LLM method: " + ", ".join(pre_llm_methods())
        )
    if spec.budget == "search":
        raise ValueError(
            f"framepress: {spec.name} searches its thresholds, so its count depends on the features; vLLM must know "
            "each video's count before the encoder runs. Choose an exact-budget method: " + ", ".join(pre_llm_methods())
        )


def pre_llm_methods() -> list[str]:
    """The methods a served model can run: pre-LLM, with a count that follows from the grid."""
    return [n for n in registry.names("pre-llm") if registry.get(n).budget != "search"]


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple, dict))


@functools.lru_cache(maxsize=4096)
def _count(method: str, retention: float | None, params: str, grid: tuple[int, int, int]) -> int:
    """The count for a grid, found by running the method once on a seeded feature-free probe of that shape when
    it reads no vision signal: a step method's count is its natural setting for the grid, and a grid the method
    cannot serve at this retention (DyCoke keeps every 4-frame window's first frame whole) fails here, in the
    prompt's processing, with the method's own message, instead of in the encoder."""
    spec = registry.get(method)
    T, H, W = grid
    if spec.signals and spec.budget != "steps":
        return _budget.tokens_for(retention, T * H * W)
    probe = torch.rand(T, H, W, 1, generator=torch.Generator().manual_seed(0))
    return len(compress(probe, method, retention, **json.loads(params)))
