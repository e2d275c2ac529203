"""The method registry: a method is one module and one ``@register`` decorator (as in timm).

A registered method is a pure function ``fn(x, budget, **params) -> Tokens``: ``budget`` is the number of
output tokens asked for (``None`` means the method's own default setting) and ``params`` are its keyword-only
parameters. A "pre-llm" method takes a [T, H, W, C] tensor of visual features; an "in-llm" method takes the
:class:`~framepress.layer.LayerInputs` of decoder layer K (its visual hidden states and attention signals) and
returns tokens over those N visual tokens as a (1, 1, N) grid. The decorator reads the parameters and their defaults from the
signature, so the table of methods and the check for unknown parameters never drift from the code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .tokens import Tokens

BUDGET_KINDS = {
    "exact": "returns exactly the budget",
    "steps": "returns the largest natural setting within the budget",
    "search": "searches its thresholds: at most the budget, at least 98% of it",
}

STAGES = ("pre-llm", "in-llm")

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

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.params.items() if v is _REQUIRED)

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check parameter names against the signature; unknown or missing ones raise naming the argument."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            accepted = ", ".join(self.params) or "none"
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)} for method {self.name!r}; it accepts: {accepted}"
            )
        missing = [k for k in self.required if k not in params]
        if missing:
            raise ValueError(f"method {self.name!r} needs the parameter(s) {', '.join(missing)}")
        return dict(params)


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
) -> Callable[[Callable[..., Tokens]], Callable[..., Tokens]]:
    """Register ``fn(x, budget, *, **params)`` under ``name``; an in-LLM method gives its paper's ``layer``; a
    pre-LLM method whose paper adds an in-LLM part names it in ``inner`` with the share of the pre-LLM tokens it
    keeps by default (so ``framepress.apply`` runs both, "A%/B%"); ``grid="unpooled"`` asks a model for its grid
    before the family's own 2x2 pooling (which the method then replaces)."""
    if budget not in BUDGET_KINDS:
        raise ValueError(f"budget must be one of {sorted(BUDGET_KINDS)}, got {budget!r}")
    if stage not in STAGES or (stage == "in-llm") != (layer is not None):
        raise ValueError(f"stage must be one of {STAGES}, with a layer exactly for in-llm; got {stage!r}, {layer!r}")

    def decorate(fn: Callable[..., Tokens]) -> Callable[..., Tokens]:
        if name in _METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        sig = inspect.signature(fn)
        params = {
            p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        _METHODS[name] = Method(name, fn, paper, budget, stage, query_aware, params, layer, inner, grid)
        return fn

    return decorate


def get(name: str) -> Method:
    """The method registered as ``name``; an unknown name raises listing the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a method name (str), got {type(name).__name__}")
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}") from None


def names(stage: str | None = None) -> list[str]:
    return sorted(n for n, m in _METHODS.items() if stage is None or m.stage == stage)
