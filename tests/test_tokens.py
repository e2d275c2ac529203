"""The token model and the registry."""

from __future__ import annotations

import pytest
import torch

import framepress
from framepress import registry
from framepress.tokens import Tokens


def test_select_makes_unit_boxes_and_sources():
    x = torch.randn(2, 3, 4, 5)
    out = Tokens.select(x, torch.tensor([1, 13, 23]))
    out.check()
    assert out.boxes.tolist() == [[0, 0, 1, 1, 2], [1, 0, 1, 1, 2], [1, 2, 3, 3, 4]]
    assert out.sizes.tolist() == [1, 1, 1]
    assert out.source[[1, 13, 23]].tolist() == [0, 1, 2] and int((out.source >= 0).sum()) == 3
    assert torch.equal(out.features, x.reshape(-1, 5)[[1, 13, 23]])
    assert out.positions.tolist() == [[0, 0, 1], [1, 0, 1], [1, 2, 3]]
    assert out.keep_mask().sum() == 3 and out.retention == 3 / 24


def test_check_catches_broken_invariants():
    x = torch.randn(1, 2, 2, 3)
    good = Tokens.select(x, torch.tensor([0, 3]))
    bad_sizes = Tokens(good.features, good.boxes, torch.tensor([2, 1]), good.source, good.grid)
    with pytest.raises(ValueError, match="sizes disagree"):
        bad_sizes.check()
    outside = good.boxes.clone()
    outside[0, 3] = 5
    with pytest.raises(ValueError, match="outside the grid"):
        Tokens(good.features, outside, good.sizes, good.source, good.grid).check()
    nan = good.features.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        Tokens(nan, good.boxes, good.sizes, good.source, good.grid).check()
    wrong_source = good.source.clone()
    wrong_source[1] = 7
    with pytest.raises(ValueError, match="source points outside"):
        Tokens(good.features, good.boxes, good.sizes, wrong_source, good.grid).check()


def test_registry_reads_parameters_from_the_signature():
    spec = registry.get("sttm")
    assert spec.params["root_level"] is None and spec.params["variant"] == "fast" and spec.budget == "search" and spec.stage == "pre-llm"
    assert set(framepress.methods()) >= {"sttm", "pool", "frames", "random"}
    with pytest.raises(ValueError, match="already registered"):
        registry.register("pool", paper="x", budget="exact")(lambda x, budget: None)


def test_a_new_method_is_one_function_and_one_decorator():
    @registry.register("test_first_token", paper="test", budget="exact")
    def first(x, budget, *, offset: int = 0):
        """Keep the first tokens."""
        return Tokens.select(x, torch.arange(offset, offset + (budget or 1)))

    try:
        out = framepress.compress(torch.randn(1, 2, 2, 3), "test_first_token", retention=0.5, offset=1)
        assert out.source.tolist() == [-1, 0, 1, -1]
        assert registry.get("test_first_token").summary == "Keep the first tokens."
    finally:
        registry._METHODS.pop("test_first_token")


def test_check_refuses_no_token_for_a_non_empty_grid():
    """A method that returns nothing for a non-empty grid (STTM once did, on sign(x) * 1.6e308) is caught."""
    empty = framepress.Tokens.from_source(
        torch.zeros(0, 3), torch.zeros(0, 5, dtype=torch.long), torch.full((8,), -1), (2, 2, 2)
    )
    with pytest.raises(ValueError, match=r"no output token for a non-empty 2x2x2 grid"):
        empty.check()
