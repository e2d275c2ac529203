"""Attention signals for in-LLM methods, recomputed for the few query rows a method needs.

The model keeps its own attention kernel (SDPA, flash or eager) for the forward pass; a method that needs the
attention of some queries to the visual keys gets it here, from that layer's own q/k projections (with the
per-head q/k norms where the family has them, and its rotary embedding), so only [heads, Q, L] is ever formed
(integration spec §6: no eager attention over the whole sequence)."""

from __future__ import annotations

import sys

import torch


def query_key(attn: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor):
    """Rotated queries of the positions ``rows`` and keys of all positions of one sample.

    ``hidden`` [L, C] is the layer's normalized input (what its ``self_attn`` receives), ``cos``/``sin`` [L, d]."""
    head_dim = attn.head_dim
    q = attn.q_proj(hidden[rows]).view(rows.numel(), -1, head_dim)
    k = attn.k_proj(hidden).view(hidden.shape[0], -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head before the rotation
        q, k = attn.q_norm(q), attn.k_norm(k)
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q, _ = rotate(q.transpose(0, 1)[None], q.transpose(0, 1)[None], cos[rows][None], sin[rows][None])
    k, _ = rotate(k.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    return q[0], k[0]  # [heads, Q, d], [kv_heads, L, d]


def attention_rows(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rows: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """[heads, Q, L] causal softmax attention of the queries ``rows`` over all keys of one sample, as the layer
    computes it; keys where ``valid`` is False (padding) get none."""
    q, k = query_key(attn, hidden, cos, sin, rows)
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    scores = (q.float() @ k.float().transpose(1, 2)) * attn.scaling
    allowed = valid[None, :] & (torch.arange(hidden.shape[0], device=hidden.device)[None, :] <= rows[:, None])
    scores = scores.masked_fill(~allowed[None], torch.finfo(scores.dtype).min)
    return scores.softmax(-1)
