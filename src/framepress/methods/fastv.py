"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024; specs/baselines.md §1).

At decoder layer K (2), keep the visual tokens that the last prompt token attends to most in layer K-1,
averaged over heads; every later layer and its KV cache see only those. Query-aware (the last prompt token is
the end of the question), so a cached prefix cannot be reused across questions. The attention row is
recomputed from layer K-1's own q/k (:mod:`framepress.signals`), so the model keeps its fast attention kernel.
"""

from __future__ import annotations

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

    Equals the official selection (pkunlp-icler/FastV, modeling_llama.py:737-750; golden/fastv/README.md): the
    top ``budget`` (the official ATTENTION_RANK, so exactly the budget) by the last row's attention, ties as
    torch.topk picks them. Without a retention it keeps int(N * 0.5) (R = 50%, the rule of the official KV-cache
    variant, fastv_kvcache.py:125), at least one (the official keeps none of a single visual token). Kept tokens
    stay in sequence order and keep their original positions (FastV's "inplace" variant).
    """
    n, c = inputs.visual.shape
    keep = max(1, int(n * 0.5)) if budget is None else budget
    scores = inputs.last_attention()
    index = ops.top_indices(scores.float(), keep)
    return Tokens.select(inputs.visual.reshape(1, 1, n, c), index, {"layer": inputs.layer})
