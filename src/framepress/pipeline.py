"""From a video file and a question to an answer: ``framepress.load(model, method, retention).ask(video, q)``.

The pipeline loads a supported model (hub id or local folder) with its tokenizer and processor, patches it with
:func:`framepress.apply`, decodes and samples the video (:mod:`framepress.video`), and answers with the model's
own ``generate``, measuring what a user compares methods by: visual tokens in and out, retention, the LLM's
prefill FLOPs, time to first token, total time and peak memory.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checks, flops
from .models import ADAPTERS
from .models.base import cache_arg, output_cache
from .patch import Handle, apply
from .prompt import Prompter
from .session import Session


@dataclass
class Answer:
    """One answer and what it cost."""

    text: str
    stats: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


class _FirstToken:
    """A logits processor that notes when the first token's logits are ready (encoding and prefill done) and,
    with a progress bar, ticks once a token."""

    def __init__(self, bar=None):
        self.at: float | None = None
        self.bar = bar

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = time.perf_counter()
            if self.bar is not None:
                self.bar.set_description("generating")
        if self.bar is not None:
            self.bar.update(1)
        return scores


class _Force:
    """A logits processor that makes generation follow ``targets``, one token a step (scoring a continuation)."""

    def __init__(self, targets: list[int]):
        self.targets, self.step = targets, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.targets[min(self.step, len(self.targets) - 1)]] = 0
        self.step += 1
        return forced


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak resident set


class Pipeline:
    """A model, its tokenizer and processor, and the compression applied to it."""

    def __init__(self, model, tokenizer, source: str | None, method: str | None, retention, frames: int, params: dict):
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.frames = checks.integer("frames", frames, 1)
        self.progress = False  # progress bars (the command line turns them on)
        self.prompter = Prompter(model, tokenizer, source)
        self.handle: Handle | None = None
        self.device = next(model.parameters()).device
        self.use(method, retention, **params)

    def use(self, method: str | None, retention=None, **params: Any) -> Pipeline:
        """Switch the compression (None: the model as loaded); returns the pipeline."""
        self.close()
        self.method, self.retention = method, retention
        if method is not None:
            self.handle = apply(self.model, method, retention=retention, **params)
        return self

    def close(self) -> None:
        """Undo the compression (the model is exactly as loaded again)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def load_video(self, video, frames: int | None = None, fps: float | None = None, progress: bool = False):
        """A path is decoded and sampled; an already loaded video (anything with ``frames`` [F, H, W, 3] uint8
        and ``fps``) is used as it is."""
        if isinstance(video, (str, os.PathLike)):
            from .video import load_video

            return load_video(video, num_frames=None if fps else (frames or self.frames), fps=fps, progress=progress)
        return video

    def ask(self, video, question: str, max_new_tokens: int = 64, frames: int | None = None, **generate_kwargs) -> Answer:
        """Answer ``question`` about ``video`` (a path, or a loaded :class:`framepress.video.Video`)."""
        question = _check_question(question)
        video = self.load_video(video, frames)
        inputs = self._to_device(self.prompter.inputs(video.frames, question, video))
        return self._generate(inputs, inputs["input_ids"].shape[1], max_new_tokens, generate_kwargs)

    def score(self, video, question: str, continuation: str, frames: int | None = None) -> Answer:
        """The log-likelihood of ``continuation`` as the answer to ``question``: :meth:`score_choices` of one."""
        return self.score_choices(video, question, [continuation], frames)[0]

    def score_choices(self, video, question: str, continuations: list[str], frames: int | None = None) -> list[Answer]:
        """The log-likelihood of each continuation as the answer to ``question`` (multiple-choice scoring), from one
        decoding, compression and prefill of the prompt shared by all of them (not one per choice).

        Each continuation is fed the way generation would produce it — one decode step a token, from a copy of the
        compressed prompt's cache — so a question-aware stage sees the question, never a candidate answer, and each
        value equals generating the continuation alone after the whole prompt. An answer's text is its
        continuation; ``stats`` adds ``logprob`` (the sum over its tokens), ``greedy`` (whether greedy decoding
        would have produced it) and ``prefix_reused`` (every choice after the first); ``ttft_s`` is the shared
        prefill's time and ``total_s`` the choice's own decode steps plus its share of that prefill.
        """
        question = _check_question(question)
        if isinstance(continuations, str) or not isinstance(continuations, (list, tuple)) or not continuations:
            raise ValueError(f"continuations must be a non-empty list of strings, got {continuations!r}")
        targets = []
        for continuation in continuations:
            if not isinstance(continuation, str) or not continuation:
                raise ValueError(f"continuation must be a non-empty string, got {continuation!r}")
            ids = self.tokenizer(continuation, add_special_tokens=False).input_ids
            if not ids:
                raise ValueError(f"continuation {continuation!r} encodes to no tokens")
            targets.append(ids)
        video = self.load_video(video, frames)
        inputs = self._to_device(self.prompter.inputs(video.frames, question, video))
        prompt_length = inputs["input_ids"].shape[1]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            prefill = self.model(**inputs, use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - start
        compression = self._compression_stats(prompt_length)
        patch = self.model.__dict__.get("_framepress_patch")
        state = patch.current if patch is not None else None  # the decode-step mapping of this prefill
        rope_deltas = getattr(self.model.model, "rope_deltas", None)
        answers = []
        for i, ids in enumerate(targets):
            start = time.perf_counter()
            logits = [prefill.logits[:, -1]]
            if len(ids) > 1:
                if patch is not None:
                    patch.current = state
                if rope_deltas is not None:
                    self.model.model.rope_deltas = rope_deltas
                last = i == len(targets) - 1
                with torch.no_grad():
                    out = self.model.generate(
                        input_ids=torch.tensor([ids[:1]], device=self.device),
                        attention_mask=torch.cat([inputs["attention_mask"], inputs["attention_mask"][:, :1]], 1),
                        **{cache_arg(): output_cache(prefill) if last else copy.deepcopy(output_cache(prefill))},
                        max_new_tokens=len(ids) - 1, do_sample=False, logits_processor=[_Force(ids[1:])],
                        output_logits=True, return_dict_in_generate=True,
                    )
                logits += list(out.logits)
            stats = {
                "ttft_s": round(prefill_s, 4),
                "total_s": round(time.perf_counter() - start + prefill_s / len(targets), 4),
                "prompt_tokens": int(prompt_length),
                "new_tokens": len(ids),
                "peak_memory_mb": round(_peak_memory_mb(self.device), 1),
                **compression,
                **_continuation_logprob(logits, ids),
                "prefix_reused": i > 0,
            }
            answers.append(Answer(self.tokenizer.decode(ids, skip_special_tokens=True).strip(), stats))
        return answers

    def kept(self, video, frames: int | None = None, question: str = "describe the video"):
        """The tokens the method keeps of ``video`` (one prefill, no generation), as a :class:`framepress.Tokens`
        over the grid the first stage read: every stage composed back onto it, an in-LLM merge a group over all
        the cells its members stood for (:func:`framepress.show.composed`)."""
        video = self.load_video(video, frames)
        if self.handle is None:
            raise ValueError("no method is applied: nothing to show")
        inputs = self._to_device(self.prompter.inputs(video.frames, question, video))
        with torch.no_grad():
            self.model(**inputs)
        from .show import composed

        first = self.handle._patch.last_tokens
        return video, composed(self.handle.stats[-1], first[0] if first else None)

    def show(self, video, path=None, frames: int | None = None, **sheet):
        """A contact sheet of the sampled frames with the kept tokens drawn on them (:mod:`framepress.show`)."""
        from .show import contact_sheet, save_contact_sheet

        video, tokens = self.kept(video, frames)
        title = sheet.pop("title", None) or f"{self.method}, retention {self.retention}"
        if path is not None:
            return save_contact_sheet(path, video.frames, tokens, title=title, **sheet)
        return contact_sheet(video.frames, tokens, title=title, **sheet)

    def chat(self, video, frames: int | None = None) -> Chat:
        """A session of questions about one video; the compressed prefix is reused when the method allows."""
        return Chat(self, self.load_video(video, frames))

    def _to_device(self, inputs: dict) -> dict:
        dtype = next(self.model.parameters()).dtype
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, dtype=dtype if v.is_floating_point() else v.dtype)
            out[k] = v
        return out

    def _generate(
        self, inputs: dict, prompt_length: int, max_new_tokens: int, kwargs: dict, session: Session | None = None,
        question=None,
    ) -> Answer:
        max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=max_new_tokens, desc="encoding + prefill", unit="tok", leave=False)
        marker = _FirstToken(bar)
        kwargs = dict(kwargs, max_new_tokens=max_new_tokens)
        kwargs.setdefault("do_sample", False)
        kwargs["logits_processor"] = [*kwargs.get("logits_processor", []), marker]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            if session is None:
                out = self.model.generate(**inputs, **kwargs)
            else:
                out = session.ask(question, **kwargs)
        total = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if session is None:
            out = out[:, prompt_length:]
        text = self.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        stats = {
            "ttft_s": round((marker.at or time.perf_counter()) - start, 4),
            "total_s": round(total, 4),
            "prompt_tokens": int(prompt_length),
            "new_tokens": int(out.shape[1]),
            "peak_memory_mb": round(_peak_memory_mb(self.device), 1),
        }
        stats.update(self._compression_stats(prompt_length))
        return Answer(text, stats)

    def _compression_stats(self, prompt_length: int) -> dict[str, Any]:
        if self.handle is None or not self.handle.stats:
            llm = flops.LLM.from_config(self.model.config)
            return {"method": None, "llm_prefill_flops": flops.prefill_flops([prompt_length] * llm.layers, llm)}
        record = self.handle.stats[-1]
        visual_in = record["tokens_in"][0]
        stages = record["stages"]
        visual_out = [s["visual_out"][0] for s in stages] or [visual_in]
        return {
            "method": self.method,
            "visual_tokens_in": visual_in,
            "visual_tokens_out": visual_out[-1],
            "retention": round(visual_out[-1] / max(visual_in, 1), 4),
            "stages": [{"stage": s["stage"], "visual_out": s["visual_out"][0]} for s in stages],
            "llm_prefill_flops": float(self.handle.flops(record)[0]),
        }


class Chat:
    """Questions about one video: each answered from the cached ``[prompt][compressed video]`` prefix when every
    stage ignores the question, else from a fresh prefill (:class:`framepress.Session`)."""

    def __init__(self, pipeline: Pipeline, video):
        self.pipeline, self.video = pipeline, video
        prefix, self.tail = pipeline.prompter.split(video.frames, video)
        start = time.perf_counter()
        self.session = Session(pipeline.model, pipeline._to_device(prefix))
        self.prefill_s = time.perf_counter() - start

    @property
    def reuses_prefix(self) -> bool:
        return self.session.reuse

    def ask(self, question: str, max_new_tokens: int = 64, **generate_kwargs) -> Answer:
        question = _check_question(question)
        ids = self.pipeline.prompter.question_ids(question, self.tail).to(self.pipeline.device)
        length = self.session.prefix["input_ids"].shape[1] + ids.numel()
        answer = self.pipeline._generate({}, length, max_new_tokens, generate_kwargs, session=self.session, question=ids)
        answer.stats["prefix_reused"] = self.session.reuse
        return answer


def _continuation_logprob(logits: tuple[torch.Tensor, ...], targets: list[int]) -> dict[str, Any]:
    """Sum of log-probabilities of ``targets`` under the raw logits of each decode step, and whether every one was
    the greedy choice."""
    if len(logits) != len(targets):
        raise ValueError(f"the continuation's {len(targets)} tokens were scored over {len(logits)} steps "
                         "(an end-of-sequence token inside the continuation stops generation)")
    steps = torch.stack([step[0].float() for step in logits])
    target = torch.tensor(targets, device=steps.device)
    logprob = steps.log_softmax(-1).gather(1, target[:, None]).sum()
    return {"logprob": float(logprob), "greedy": bool((steps.argmax(-1) == target).all())}


def _check_question(question: Any) -> str:
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise ValueError("question is empty")
    return question.strip()


def load(
    model: str | os.PathLike,
    method: str | None = None,
    retention=None,
    *,
    frames: int = 32,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    window: int | None = None,
    **params: Any,
) -> Pipeline:
    """Load a supported Video-LLM (hub id or local folder) and compress its video tokens with ``method``.

    Args:
        model: e.g. "llava-hf/llava-onevision-qwen2-7b-ov-hf", a folder with the checkpoint, or "packaged":
            framepress's packaged synthetic-domain model (:mod:`framepress.packaged`; trained at 16 frames).
        method, retention, **params: as for :func:`framepress.apply` (no method: the model as is).
        frames: frames sampled from each video (uniformly; see :func:`framepress.video.sample_indices`).
        device: "cpu", "cuda", ... (default: cuda when available); dtype: e.g. "bfloat16" (default: the
            checkpoint's, float32 on CPU).
        window: the pre-LLM stage compresses each video window by window of this many frames, the budget
            shared across windows (``framepress.compress(window=)``, :mod:`framepress.stream`); for long videos.
    """
    import transformers

    from . import packaged

    source = str(packaged.path()) if str(model) == packaged.NAME else str(model)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        architecture = (getattr(config, "architectures", None) or [""])[0]
        if architecture not in ADAPTERS:
            raise TypeError(f"{source} is a {architecture or config.model_type}; framepress supports: {', '.join(ADAPTERS)}")
        net = transformers.AutoModelForImageTextToText.from_pretrained(source, dtype=dtype or (torch.float32 if device.type == "cpu" else "auto"))
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        local = Path(source).exists()
        raise FileNotFoundError(
            f"model {source!r} could not be loaded: "
            + (f"{exc}" if local else "it is not on this machine and could not be downloaded (offline?). "
               f"Download it where the hub is reachable (hf download {source} --local-dir DIR), copy "
               "DIR here and pass the folder: --model DIR")
        ) from None
    except Exception:
        # safetensors raises its own SafetensorError for a damaged or truncated weights file: name the file
        from .packaged import damaged_weights

        damaged = damaged_weights(source) if Path(source).is_dir() else None
        if damaged is None:
            raise
        raise ValueError(f"model {source!r} could not be loaded: {damaged}; copy or download it again") from None
    net = net.to(device).eval()
    if window is not None:
        params["window"] = window
    return Pipeline(net, tokenizer, source, method, retention, frames, params)
