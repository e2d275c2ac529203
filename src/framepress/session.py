"""Several questions about one video: prefill the prompt and the compressed video once, answer from that cache.

A method that ignores the question (STTM, pooling, ...) compresses the video the same way whatever is asked,
so the KV cache of ``[system prompt][video]`` can be computed once and copied for every question (spec sttm
§2.11). A query-aware stage (FastV, text-aware merging) depends on the question, so the session recomputes the
whole prompt for each one. Either way an answer equals what one ``generate`` over the whole prompt gives.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from .models.base import cache_arg, output_cache
from .patch import _Patch


class Session:
    """Questions about one video, with a model patched by :func:`framepress.apply`.

    Args:
        model: the patched model (apply first; without any stage the cache is reused as is).
        prefix: the model inputs of everything before the question (the processor's output for the system
            prompt and the video, up to where the question's text starts), batch first.
    """

    def __init__(self, model: torch.nn.Module, prefix: dict[str, Any]):
        self.model = model
        self.prefix = dict(prefix)
        patch: _Patch | None = model.__dict__.get("_framepress_patch")
        self.reuse = patch is None or not any(s.method.query_aware for s in patch.stages)
        self.prefill_seconds = 0.0
        self._cache = None
        if self.reuse:
            start = time.perf_counter()
            with torch.no_grad():
                out = model(**self.prefix, use_cache=True)
            self.prefill_seconds = time.perf_counter() - start
            self._cache = output_cache(out)
            self._pass = patch.current if patch is not None else None
            self._rope_deltas = getattr(model.model, "rope_deltas", None)

    def ask(self, question: torch.Tensor | list[int], **generate_kwargs: Any):
        """Generate the answer to ``question`` (token ids, [q] or [B, q]) and return the new token ids [B, n]
        (or, with ``return_dict_in_generate=True``, generate's output with ``sequences`` cut to them)."""
        batch = self.prefix["input_ids"].shape[0]
        question = torch.as_tensor(question, device=self.prefix["input_ids"].device)
        if question.ndim == 1:
            question = question.expand(batch, -1)
        if question.ndim != 2 or question.shape[0] != batch:
            raise ValueError(f"question must be [q] or [{batch}, q] token ids for this prefix, got {tuple(question.shape)}")
        mask = torch.cat([self.prefix["attention_mask"], torch.ones_like(question)], 1)
        with torch.no_grad():
            if not self.reuse:
                inputs = dict(self.prefix, input_ids=torch.cat([self.prefix["input_ids"], question], 1), attention_mask=mask)
                if "mm_token_type_ids" in inputs:
                    inputs["mm_token_type_ids"] = torch.cat(
                        [self.prefix["mm_token_type_ids"], torch.zeros_like(question)], 1
                    )
                return _answer(self.model.generate(**inputs, **generate_kwargs), inputs["input_ids"].shape[1])
            patch: _Patch | None = self.model.__dict__.get("_framepress_patch")
            if patch is not None:
                patch.current = self._pass
                self._pass.append_pending = question.shape[1]
            if self._rope_deltas is not None:
                self.model.model.rope_deltas = self._rope_deltas
            out = self.model.generate(
                input_ids=question,
                attention_mask=mask,
                **{cache_arg(): copy.deepcopy(self._cache)},
                **generate_kwargs,
            )
            return _answer(out, question.shape[1])


def _answer(out, prompt_length: int):
    if isinstance(out, torch.Tensor):
        return out[:, prompt_length:]
    out.sequences = out.sequences[:, prompt_length:]
    return out
