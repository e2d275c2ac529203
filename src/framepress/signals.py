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


def mean_attention_received(attn: torch.nn.Module, hidden: torch.Tensor, frames_per_chunk: int = 4) -> torch.Tensor:
    """[F, P]: the attention each token receives in a CLS-free ViT layer (SigLIP), averaged over heads and
    over all query tokens, per frame (unified spec §4.1, the HoliTom / VisionZip-for-OV recipe).

    ``hidden`` [F, P, d] is the layer's normalized input; a few frames at a time, so only
    [frames_per_chunk, heads, P, P] is ever held, never the maps of all frames."""
    out = []
    for s in range(0, hidden.shape[0], frames_per_chunk):
        h = hidden[s : s + frames_per_chunk]
        shape = (*h.shape[:-1], -1, attn.head_dim)
        q = attn.q_proj(h).view(shape).transpose(1, 2).float()
        k = attn.k_proj(h).view(shape).transpose(1, 2).float()
        probs = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1)  # [f, heads, P, P]
        out.append(probs.mean(dim=(1, 2)))
    return torch.cat(out)


def pseudo_cls_scores(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    frame_of: torch.Tensor,
    merge_unit: int,
) -> torch.Tensor:
    """[M]: Qwen-VL ViT pseudo-CLS scores of the M merged tokens (unified spec §4.4, the FastVID recipe).

    Per temporal frame the query is the mean query of all its patches; each merged token's key is the mean key
    of its ``merge_unit`` patches; softmax of their scaled dot products within the frame, mean over heads.
    ``hidden`` [M*merge_unit, d] is the block's normalized input in its own token order (merge groups
    consecutive), ``frame_of`` [M] the frame of each merged token in that order."""
    n = hidden.shape[0]
    q, k, _ = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
    q, k = rotate(q, k, cos, sin)
    return pseudo_cls_probs(q, k, frame_of, merge_unit, attn.scaling).mean(1)


def pseudo_cls_probs(
    q: torch.Tensor, k: torch.Tensor, frame_of: torch.Tensor, merge_unit: int, scaling: float
) -> torch.Tensor:
    """[M, heads]: the pseudo-CLS softmax of :func:`pseudo_cls_scores` per head, from the block's rotated queries
    and keys ``q``, ``k`` [M*merge_unit, heads, d] (in its own token order, merge groups consecutive): for a
    vision tower whose attention is not transformers' (vLLM's), or whose heads are split over ranks."""
    q, k = q.float(), k.float().reshape(-1, merge_unit, *k.shape[1:]).mean(1)  # [M, heads, d]
    frames = int(frame_of.max()) + 1
    patch_frame = frame_of.repeat_interleave(merge_unit)
    q_frame = torch.zeros(frames, *q.shape[1:], device=q.device).index_add_(0, patch_frame, q)
    q_frame = q_frame / torch.bincount(patch_frame, minlength=frames).clamp_min(1)[:, None, None]
    logits = (q_frame[frame_of] * k).sum(-1) * scaling  # [M, heads]
    peak = torch.full((frames, logits.shape[1]), -torch.inf, device=q.device).scatter_reduce(
        0, frame_of[:, None].expand_as(logits), logits, "amax"
    )
    weights = (logits - peak[frame_of]).exp()
    total = torch.zeros(frames, logits.shape[1], device=q.device).index_add_(0, frame_of, weights)
    return weights / total[frame_of]


def decode_attention(
    attn: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past_keys: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """[B, heads, S + 1] softmax attention of one decode step's new token over the S cached keys and itself, as
    the layer computes it (what DyCoke's stage 2 reads at layer L-1).

    ``hidden`` [B, 1, C] is the layer's normalized input, ``cos``/``sin`` [B, 1, d] its rotary tables,
    ``past_keys`` [B, kv_heads, S, d] the layer's cached (rotated) keys, ``valid`` [B, S] which of them are real
    (padding gets no attention)."""
    B, _, _ = hidden.shape
    head_dim = attn.head_dim
    q = attn.q_proj(hidden).view(B, 1, -1, head_dim)
    k = attn.k_proj(hidden).view(B, 1, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm per head before the rotation
        q, k = attn.q_norm(q), attn.k_norm(k)
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q, k = rotate(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # [B, heads, 1, d], [B, kv_heads, 1, d]
    keys = torch.cat([past_keys, k.to(past_keys.dtype)], 2)
    keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
    scores = (q.float() @ keys.float().transpose(-1, -2))[:, :, 0] * attn.scaling  # [B, heads, S + 1]
    allowed = torch.cat([valid, valid.new_ones(B, 1)], 1)
    return scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min).softmax(-1)


def mean_keys(attn: torch.nn.Module, hidden: torch.Tensor, frames_per_chunk: int = 4) -> torch.Tensor:
    """[F, P, head_dim]: a ViT layer's keys averaged over heads (VisionZip's metric: its SigLIP port reads the keys
    of the layer feeding the projector). ``hidden`` [F, P, d] is the layer's normalized input; a few frames at a
    time."""
    out = []
    for s in range(0, hidden.shape[0], frames_per_chunk):
        h = hidden[s : s + frames_per_chunk]
        out.append(attn.k_proj(h).view(*h.shape[:-1], -1, attn.head_dim).mean(-2))
    return torch.cat(out)


class SiglipHead(torch.nn.Module):
    """SigLIP's post-layernorm and attention-pooling (MAP) head, applied to the patches that feed the projector as
    FastVID's official code does (its ``SigLipVisionAbstract``): the llava-hf checkpoints drop the head."""

    def __init__(self, config):
        from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

        super().__init__()
        self.post_layernorm = torch.nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(config)

    def forward(self, hidden: torch.Tensor, frames_per_chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden`` [F, P, C] -> the pooled output [F, C] and the probe's attention [F, P] (mean over heads),
        one attention pass for both, a few frames at a time."""
        pooled, attention = [], []
        head = self.head
        for s in range(0, hidden.shape[0], frames_per_chunk):
            h = self.post_layernorm(hidden[s : s + frames_per_chunk])
            probe = head.probe.expand(h.shape[0], -1, -1)
            out, weights = head.attention(probe, h, h, need_weights=True)  # weights averaged over heads
            out = out + head.mlp(head.layernorm(out))
            pooled.append(out[:, 0])
            attention.append(weights[:, 0])
        return torch.cat(pooled), torch.cat(attention)


def load_siglip_head(source, hidden_size: int) -> SiglipHead:
    """Only the post-layernorm and head weights of the SigLIP checkpoint ``source`` (a hub id, or a local folder
    for offline use), read tensor by tensor from its safetensors files."""
    import json
    import os
    from pathlib import Path

    from safetensors import safe_open
    from transformers import SiglipVisionConfig

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"siglip_head must be a hub id or a local folder (str or path), got {type(source).__name__}")
    local = Path(source).is_dir()
    try:
        config = SiglipVisionConfig.from_pretrained(source)
        if local:
            files = sorted(Path(source).glob("*.safetensors"))
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                files = [hf_hub_download(str(source), "model.safetensors")]
            except EntryNotFoundError:
                index = json.loads(Path(hf_hub_download(str(source), "model.safetensors.index.json")).read_text())
                shards = {f for k, f in index["weight_map"].items() if _head_key(k)}
                files = [hf_hub_download(str(source), f) for f in sorted(shards)]
    except (OSError, ValueError) as e:
        hint = "" if local else " (offline: fetch it with `hf download ID --local-dir DIR` and give the folder)"
        raise ValueError(f"siglip_head={str(source)!r}: cannot read a SigLIP checkpoint there{hint}: {e}") from e
    if config.hidden_size != hidden_size:
        raise ValueError(
            f"siglip_head={str(source)!r}: its hidden size {config.hidden_size} is not the vision tower's {hidden_size}"
        )
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if _head_key(key):
                    state[_head_key(key)] = f.get_tensor(key)
    if not any(k.startswith("head.") for k in state):
        raise ValueError(
            f"siglip_head={str(source)!r} holds no attention-pooling head weights (saved with vision_use_head=False?)"
        )
    module = SiglipHead(config)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"siglip_head={str(source)!r}: its head weights do not fit a SigLIP head: {e}") from e
    return module.eval()


def _head_key(key: str) -> str | None:
    """A checkpoint key of SigLIP's vision post-layernorm or head, without the ``vision_model.`` prefix (the text
    tower's own head is not it)."""
    name = key.removeprefix("vision_model.")
    return name if name.startswith(("head.", "post_layernorm.")) else None
