"""The method registry: a method is one module and one ``@register`` decorator (as in timm).

A registered method is a pure function ``fn(x, budget, **params) -> Tokens``: ``budget`` is the number of
output tokens asked for (``None`` means the method's own default setting) and ``params`` are its keyword-only
parameters. A "pre-llm" method takes a [T, H, W, C] tensor of visual features; an "in-llm" method takes the
:class:`~framepress.layer.LayerInputs` of decoder layer K (its visual hidden states and attention signals) and
returns tokens over those N visual tokens as a (1, 1, N) grid. The decorator reads the parameters and their defaults from the
signature, so the table of methods and the check for unknown parameters never drift from the code.

A method's value checks that need no input (types, ranges, how parameters combine) are one ``check`` function
registered beside it: :meth:`Method.bind` runs it, so ``framepress.apply`` refuses a bad value at once, and the
registered function runs it on every call, so the same code validates both. Checks that need the grid (a window
larger than the frame, more frames than the clip) stay in the method.
"""

from __future__ import annotations

import importlib

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .tokens import Tokens

BUDGET_KINDS = {
    "exact": "returns exactly the budget",
    "official": "the official code's own count by default, near the budget (above or below it); "
    "allocation='exact' returns exactly the budget",
    "steps": "returns the largest natural setting within the budget",
    "search": "searches its thresholds: at most the budget, at least 98% of it",
}

#: "decode": a part that runs at every generated token in a model (DyCoke's KV selection), named by its method
STAGES = ("pre-llm", "in-llm", "decode")

_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Method:
    """A registered compression method and what the table of methods says about it."""

    name: str
    fn: Callable[..., Tokens]
    paper: str
    budget: str
    stage: str
    query_aware: bool
    params: Mapping[str, Any]
    default_layer: int | None = None
    inner: tuple[str, float] | None = None  # (in-LLM method, default share it keeps) run after this one in a model
    grid: str = "model"  # "unpooled": in a model it takes the grid before the family's own pooling
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # value checks: all parameters in, checked out
    shown: Mapping[str, str] | None = None  # what a default of None means, for the table of methods
    scale_invariant: bool = False  # tokens unchanged and features scaled when x is scaled (cosines and means only)
    handoff: Callable[[Tokens], dict[str, Any]] | None = None  # per-token labels this method's tokens give its inner part
    decode: str | None = None  # the "decode" method run at every generated token after this one in a model
    signals: Mapping[str, str] = field(default_factory=dict)  # parameter -> vision signal a model computes for it
    positions: str | None = None  # 1-D RoPE positions of its tokens in a model by default (None: the stage's default)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.params.items() if v is _REQUIRED)

    @property
    def defaults(self) -> dict[str, str]:
        """Each parameter's default as the table of methods shows it ("required" for one without)."""
        shown = self.shown or {}
        return {k: shown.get(k, "required" if v is _REQUIRED else repr(v)) for k, v in self.params.items()}

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check parameter names against the signature and values with the method's ``check``; a bad one raises
        naming the argument. Returns every parameter given or defaulted, as the check normalized it."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            accepted = ", ".join(self.params) or "none"
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} for method {self.name!r}; it accepts: {accepted}"
            )
        missing = [k for k in self.required if k not in params]
        if missing:
            raise ValueError(f"method {self.name!r} needs the parameter(s) {', '.join(missing)}")
        full = {k: v for k, v in self.params.items() if v is not _REQUIRED}
        full.update(params)
        return self.check(full) if self.check is not None else full


_METHODS: dict[str, Method] = {}


def register(
    name: str,
    *,
    paper: str,
    budget: str,
    stage: str = "pre-llm",
    query_aware: bool = False,
    layer: int | None = None,
    inner: tuple[str, float] | None = None,
    grid: str = "model",
    check: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    shown: Mapping[str, str] | None = None,
    scale_invariant: bool = False,
    handoff: Callable[[Tokens], dict[str, Any]] | None = None,
    decode: str | None = None,
    signals: Mapping[str, str] | None = None,
    positions: str | None = None,
) -> Callable[[Callable[..., Tokens]], Callable[..., Tokens]]:
    """Register ``fn(x, budget, *, **params)`` under ``name``; an in-LLM method gives its paper's ``layer``; a
    pre-LLM method whose paper adds an in-LLM part names it in ``inner`` with the share of the pre-LLM tokens it
    keeps by default (so ``framepress.apply`` runs both, "A%/B%"); ``grid="unpooled"`` asks a model for its grid
    before the family's own 2x2 pooling (which the method then replaces).

    ``check(params) -> params`` validates and normalizes the values of all parameters (defaults filled in)
    without the input; the function returned (and registered) runs it before every call. ``shown`` gives the
    table's text for defaults of None that stand for a value ("T//2"). ``scale_invariant`` says the method reads
    only cosines and forms only means and sums, so ``compress`` may rescale an input of extreme magnitude by a
    power of two (exactly) and scale the features back. ``handoff(tokens)`` gives the ``inner`` part parameters
    read off this method's output: [N] integer labels per output token, in output order (PruneVid's blocks).
    ``decode`` names a "decode"-stage method that a model runs after this one at every generated token
    (``fn(attention [N], state, **params)``: which visual KV entries the layers from its ``layer`` on attend to).
    ``positions`` ("original" or "reassign") is the 1-D position rule its tokens take in a model by default where
    the official code differs from the stage's default (FrameFusion keeps the original positions).
    ``signals`` maps parameters to the vision signals a model computes for them while its tower encodes
    (``framepress.models.base.SIGNALS``, e.g. VisionZip's ``metric`` from the keys); a ``scores`` parameter takes
    the vision ``scores`` unless given otherwise."""
    if budget not in BUDGET_KINDS:
        raise ValueError(f"budget must be one of {sorted(BUDGET_KINDS)}, got {budget!r}")
    if stage not in STAGES or (stage != "pre-llm") != (layer is not None):
        raise ValueError(f"stage must be one of {STAGES}, with a layer exactly for in-llm and decode; got {stage!r}, {layer!r}")

    def decorate(fn: Callable[..., Tokens]) -> Callable[..., Tokens]:
        if name in _METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        sig = inspect.signature(fn)
        params = {
            p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        wanted = dict(signals) if signals is not None else {"scores": "scores"} if "scores" in params else {}
        if set(wanted) - set(params):
            raise ValueError(f"signals: {name} has no parameter(s) {', '.join(sorted(set(wanted) - set(params)))}")

        @functools.wraps(fn)
        def checked(x, n_tokens, **kwargs):
            return fn(x, n_tokens, **method.bind(kwargs))

        method = Method(
            name, checked, paper, budget, stage, query_aware, params, layer, inner, grid, check, shown, scale_invariant,
            handoff, decode, wanted, positions,
        )
        _METHODS[name] = method
        return checked

    return decorate


def get(name: str) -> Method:
    """The method registered as ``name``; an unknown name raises listing the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a method name (str), got {type(name).__name__}")
    _builtins()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}") from None


def names(stage: str | None = None) -> list[str]:
    _builtins()
    return sorted(n for n, m in _METHODS.items() if stage is None or m.stage == stage)


def _builtins() -> None:
    """Register the built-in methods on first use (``import framepress`` itself stays light)."""
    importlib.import_module(f"{__package__}.methods")


def parts() -> set[str]:
    """Names of methods that run as another method's part in a model (an in-LLM ``inner`` or a ``decode`` part)."""
    _builtins()
    return {m.inner[0] for m in _METHODS.values() if m.inner} | {m.decode for m in _METHODS.values() if m.decode}
