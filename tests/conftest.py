"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def on_threads():
    """``on_threads(n, fn)``: ``fn()`` with torch using ``n`` threads, the count restored after (thread-count
    independence: a near-tie must not flip with how float32 reductions are split)."""

    def run(n: int, fn):
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run
