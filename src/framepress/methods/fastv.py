"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; specs/baselines.md §1).

At decoder layer K (2), keep the visual tokens that the last prompt token attends to most in layer K-1,
averaged over heads; every later layer and its KV cache see only those. Query-aware (the last prompt token is
the end of the question), so a cached prefix cannot be reused across questions. The attention row is
recomputed from layer K-1's own q/k (:mod:`framepress.signals`), so the model keeps its fast attention kernel.
"""

from __future__ import annotations

import math

from .. import ops
from ..layer import LayerInputs
from ..registry import register
from ..tokens import Tokens


@register(
    "fastv",
    paper="Chen et al., FastV, ECCV 2024 (arXiv 2403.06764)",
    budget="exact",
    stage="in-llm",
    query_aware=True,
    layer=2,
)
def fastv(inputs: LayerInputs, budget: int | None) -> Tokens:
    """Keep the visual tokens the last prompt token attends to most at layer K-1 (mean over heads).

    Without a retention it keeps half of them (the paper's R = 50%). Kept tokens stay in sequence order and
    keep their original positions (FastV's "inplace" variant).
    """
    n, c = inputs.visual.shape
    keep = math.ceil(n / 2) if budget is None else budget
    scores = inputs.last_attention()
    index = ops.top_indices(scores.float(), keep)
    return Tokens.select(inputs.visual.reshape(1, 1, n, c), index, {"layer": inputs.layer})
