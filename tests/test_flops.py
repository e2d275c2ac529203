"""The analytical FLOPs count reproduces the unified paper's Table 1 from the model dimensions."""

from __future__ import annotations

import pytest

from framepress.flops import LLM, PRESETS, prefill_flops, retention_flops, run_flops

OV7B = PRESETS["llava-ov-7b"]
M = 32 * 196


def test_full_run_is_41_4_tflops():
    assert run_flops(OV7B, M, text=100) / 1e12 == pytest.approx(41.4, abs=0.15)


@pytest.mark.parametrize(
    "a,b,reported",
    [(0.10, 0.05, 3.4), (0.05, 0.025, 2.0), (0.02, 0.01, 1.1), (0.01, 0.005, 0.8),  # "Ours", with inner merging
     (0.10, None, 4.0), (0.05, None, 2.2), (0.02, None, 1.2), (0.01, None, 0.9)],  # "w/o M"
)
def test_table_1(a, b, reported):
    assert retention_flops(OV7B, M, a, b) / 1e12 == pytest.approx(reported, abs=0.11)


def test_layers_count_their_own_tokens():
    llm = LLM(layers=4, hidden=8, ffn=16)
    f = lambda n: 4 * n * 64 + 2 * n * n * 8 + 2 * n * 8 * 16  # noqa: E731
    assert prefill_flops([10, 10, 4, 4], llm) == 2 * f(10) + 2 * f(4)
    assert run_flops(llm, visual=6, text=4, inner=(2, 0)) == prefill_flops([10, 10, 4, 4], llm)
    with pytest.raises(ValueError, match="4-layer"):
        prefill_flops([1, 2], llm)
