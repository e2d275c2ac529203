"""The lmms-eval model ``framepress``: any supported Video-LLM, compressed by any registered method.

``--model framepress --model_args pretrained=<hub id or folder>,method=<name>,retention=<r>[,<key>=<value>...]``

Model args (everything else is a parameter of the method, checked against its signature):

- ``pretrained`` (required): the checkpoint, as for :func:`framepress.load`; ``packaged`` names framepress's
  packaged synthetic-domain model (:mod:`framepress.packaged`; a folder of that name is ``./packaged``).
- ``method`` (required): a registered method, or ``none`` for the full-token reference run.
- ``retention``: the method's budget (``0.1``, ``10%``, ``"10%/5%"``); required unless ``method=none``.
- ``frames`` (32) or ``fps``: how the video is sampled; ``device``, ``dtype``; ``layer``, ``inner_layer``,
  ``positions``, ``window`` (the pre-LLM stage compresses each video window by window of that many frames,
  :mod:`framepress.stream`) as for :func:`framepress.apply`.
- ``max_new_tokens`` (64): used when the task's generation settings give none.
- ``journal``: a folder where every finished sample is recorded at once; a rerun with the same folder answers
  finished samples from it (:mod:`framepress.evaluation.journal`).

Per sample, the logged results (``--log_samples``) carry under ``token_counts``: ``input_tokens`` (the prompt),
``output_tokens``, ``visual_tokens_in``/``visual_tokens_out``, ``retention``, ``stages``,
``llm_prefill_flops``, ``prefill_s`` (time to the first token: decoding excluded, vision encoding, compression and
prefill included), ``total_s`` and ``peak_memory_mb``.

Data parallel: under ``accelerate launch --num_processes N -m lmms_eval ...`` on GPUs (on CPUs
``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...``: the plain form starts one process
there) each process loads its own model on its own device (``cuda:<local rank>``, or the CPU) and lmms-eval splits
the samples between them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from tqdm import tqdm

from .. import __version__, packaged, registry
from ..pipeline import Pipeline, load
from ..video import load_video
from .journal import Journal

log = logging.getLogger("framepress")

#: the plugin's own model args (besides the method's parameters)
PLUGIN_ARGS = ("pretrained", "method", "retention", "frames", "fps", "device", "dtype", "layer", "inner_layer",
               "positions", "window", "max_new_tokens", "journal", "batch_size", "max_batch_size")
#: generation settings of lmms-eval tasks that are passed to ``generate``
GENERATE_KEYS = ("max_new_tokens", "temperature", "top_p", "num_beams", "do_sample")
#: ``pretrained=packaged``: the synthetic-domain model inside the package
PACKAGED = packaged.NAME
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: what each statistic is called in the logged samples
STAT_KEYS = ("visual_tokens_in", "visual_tokens_out", "retention", "stages", "llm_prefill_flops", "total_s",
             "peak_memory_mb", "prefix_reused")


@dataclass
class Counts(TokenCounts):
    """lmms-eval's per-sample token counts, with framepress's measurements beside them."""

    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **self.stats}


def _counts(record: dict[str, Any]) -> Counts:
    stats = record["stats"]
    return Counts(input_tokens=stats.get("prompt_tokens"), output_tokens=stats.get("new_tokens"),
                  stats={k: v for k, v in stats.items() if k not in ("prompt_tokens", "new_tokens")})


def _public_stats(stats: dict[str, Any]) -> dict[str, Any]:
    out = {k: stats[k] for k in STAT_KEYS if k in stats}
    out["prefill_s"] = stats.get("ttft_s")
    for k in ("prompt_tokens", "new_tokens", "logprob", "greedy"):
        if k in stats:
            out[k] = stats[k]
    return out


class FramepressLMM(lmms):
    """lmms-eval's simple-model interface over :class:`framepress.pipeline.Pipeline`."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        method: str | None = None,
        retention: Any = None,
        frames: int = 32,
        fps: float | None = None,
        device: str | None = None,
        dtype: str | None = None,
        layer: int | None = None,
        inner_layer: int | None = None,
        positions: str | None = None,
        window: int | None = None,
        max_new_tokens: int = 64,
        journal: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        if pretrained is None:
            raise ValueError("framepress model_args: pretrained=<hub id or checkpoint folder> is required")
        if method is None:
            raise ValueError(
                "framepress model_args: method=<name> is required (method=none for the full-token run); methods: "
                + ", ".join(registry.names())
            )
        name = str(pretrained)
        if name == PACKAGED:
            pretrained = packaged.path()
        method = None if str(method).lower() in ("none", "full") else str(method)
        self._check_keys(method, params)
        if str(batch_size) not in ("1", "auto"):
            raise ValueError(f"framepress model_args: batch_size must be 1 (one video at a time), got {batch_size!r}")
        if method is not None and retention is None:
            raise ValueError(f"framepress model_args: retention=<r> is required with method={method}")
        if method is None and (retention is not None or params or layer is not None):
            raise ValueError("framepress model_args: method=none runs the full model; drop retention and method "
                             "parameters")
        from accelerate import Accelerator

        self.accelerator = Accelerator()
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        if device is None:
            device = str(self.accelerator.device)
        elif self._world_size > 1 and str(device).startswith("cuda"):
            device = f"cuda:{self.accelerator.local_process_index}"
        apply_args = {k: v for k, v in (("layer", layer), ("inner_layer", inner_layer), ("positions", positions),
                                        ("window", window)) if v is not None}
        try:
            self.pipeline: Pipeline = load(str(pretrained), method, retention, frames=int(frames), device=device,
                                           dtype=dtype, **apply_args, **params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"framepress model_args: {exc}") from None
        self.fps = float(fps) if fps is not None else None
        self.frames = int(frames)
        self.max_new_tokens = int(max_new_tokens)
        self.config = {
            "pretrained": name, "method": method, "retention": retention, "frames": self.frames,
            "fps": self.fps, "dtype": dtype, **apply_args, "params": params, "framepress": __version__,
        }
        self.journal = Journal(journal, self.config, self._rank) if journal else None
        self._warned: set[str] = set()

    @property
    def device(self):
        """The device of this process's model (lmms-eval gathers per-rank counts on it)."""
        return self.pipeline.device

    @staticmethod
    def _check_keys(method: str | None, params: dict[str, Any]) -> None:
        if method is not None and method not in registry.names():
            raise ValueError(f"framepress model_args: unknown method {method!r}; methods: {', '.join(registry.names())}")
        accepted: list[str] = []
        if method is not None:
            spec = registry.get(method)
            for part in (spec, registry.get(spec.inner[0]) if spec.inner else None, spec.decode and registry.get(spec.decode)):
                if part:  # a model computes a method's vision signals (scores, keys, ...): they are not model_args
                    accepted += [k for k in part.params if k not in part.signals and k not in accepted]
            accepted += ["siglip_head"] + (["max_tokens", "split"] if spec.stage == "pre-llm" else [])
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(
                f"framepress model_args: unknown key(s) {', '.join(unknown)}; the plugin takes {', '.join(PLUGIN_ARGS)}"
                + (f" and {method}'s parameters: {', '.join(accepted) or 'none'}" if method else "")
            )

    # ------------------------------------------------------------------------------------------------------
    def _video(self, visuals: Any, task: str, doc_id: Any):
        """The one video of a sample, decoded and sampled; anything else is an error naming the task."""
        items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
        items = [v for v in items if v is not None]
        if len(items) != 1:
            raise ValueError(
                f"task {task!r} doc {doc_id}: framepress evaluates one video per question, the task gives "
                f"{len(items)} visuals"
            )
        item = items[0]
        if not isinstance(item, (str, Path)):
            raise ValueError(
                f"task {task!r} doc {doc_id}: its visual is a {type(item).__name__}, not a video file; framepress "
                "evaluates video tasks"
            )
        if Path(item).suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError(f"task {task!r} doc {doc_id}: its visual {item} is an image; framepress evaluates video tasks")
        return load_video(item, num_frames=None if self.fps else self.frames, fps=self.fps)

    def _doc(self, task: str, split: str, doc_id: Any):
        return self.task_dict[task][split][doc_id]

    def _generate_kwargs(self, gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        kwargs = {k: gen_kwargs.pop(k) for k in GENERATE_KEYS if k in gen_kwargs}
        for k in gen_kwargs:
            if k not in self._warned:
                self._warned.add(k)
                log.warning("framepress: generation setting %r of the task is not used", k)
        kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        temperature = kwargs.pop("temperature", 0) or 0
        if kwargs.get("do_sample") or temperature > 0:
            kwargs["do_sample"] = True
            kwargs["temperature"] = temperature or 1.0
        else:
            kwargs["do_sample"] = False
            kwargs.pop("top_p", None)
        return kwargs, until

    def _key(self, kind: str, task: str, split: str, doc_id: Any, *parts: Any) -> str:
        digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return f"{kind}|{task}|{split}|{doc_id}|{digest}"

    def _run(self, key: str, compute) -> dict[str, Any]:
        """A journaled computation: the recorded result when the journal has it, else computed and recorded."""
        if self.journal is not None and (record := self.journal.get(key)) is not None:
            return record
        record = compute()
        if self.journal is not None:
            self.journal.put(key, record)
        return record

    def _bar(self, requests, desc: str):
        return tqdm(requests, disable=self.rank != 0, desc=desc, unit="sample")

    # ------------------------------------------------------------------------------------------------------
    def generate_until(self, requests) -> list[GenerationResult]:
        results = []
        for request in self._bar(requests, "framepress generate"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            kwargs, until = self._generate_kwargs(gen_kwargs)

            def compute():
                video = self._video(doc_to_visual(self._doc(task, split, doc_id)), task, doc_id)
                answer = self.pipeline.ask(video, context, **kwargs)
                return {"text": _cut(answer.text, until), "stats": _public_stats(answer.stats)}

            record = self._run(self._key("generate", task, split, doc_id, context, kwargs, until), compute)
            results.append(GenerationResult(text=record["text"], token_counts=_counts(record)))
        return results

    def loglikelihood(self, requests) -> list[GenerationResult]:
        """(loss, is_greedy) per request, lmms-eval's convention: the loss is the mean negative log-likelihood of the
        continuation's tokens (lmms-eval's multiple-choice metric takes the argmin, like its built-in models'
        losses); the summed log-likelihood is logged as ``logprob``. The choices of one question share one video
        decoding, compression and prefill (:meth:`Pipeline.score_choices`); each is journaled on its own."""
        keys, questions = [], {}
        for request in requests:
            context, target, doc_to_visual, doc_id, task, split = request.args
            continuation = target(self._doc(task, split, doc_id)) if callable(target) else target
            if isinstance(continuation, list):
                continuation = continuation[0]
            key = self._key("loglikelihood", task, split, doc_id, context, continuation)
            keys.append(key)
            question = questions.setdefault((task, split, doc_id, context),
                                            {"visual": doc_to_visual, "choices": {}, "requests": 0})
            question["choices"][key] = str(continuation)
            question["requests"] += 1
        records: dict[str, dict[str, Any]] = {}
        with tqdm(total=len(requests), disable=self.rank != 0, desc="framepress loglikelihood", unit="sample") as bar:
            for (task, split, doc_id, context), question in questions.items():
                choices = question["choices"]
                if self.journal is not None:
                    records.update({k: r for k in choices if (r := self.journal.get(k)) is not None})
                todo = [k for k in choices if k not in records]
                if todo:
                    video = self._video(question["visual"](self._doc(task, split, doc_id)), task, doc_id)
                    for key, scored in zip(todo, self.pipeline.score_choices(video, context, [choices[k] for k in todo])):
                        loss = -scored.stats["logprob"] / scored.stats["new_tokens"]
                        records[key] = {"loss": loss, "greedy": scored.stats["greedy"],
                                        "stats": _public_stats(scored.stats)}
                        if self.journal is not None:
                            self.journal.put(key, records[key])
                bar.update(question["requests"])
        # lmms-eval stringifies a bare tuple; inside a GenerationResult it reaches the metric as is
        return [GenerationResult(text=(records[k]["loss"], records[k]["greedy"]), token_counts=_counts(records[k]))
                for k in keys]

    def generate_until_multi_round(self, requests) -> list[GenerationResult]:
        """Rounds of one video: the task's ``doc_to_text`` gives each round's visuals and context; a method that
        ignores the question answers every round from one cached compressed prefix (a :class:`Chat`)."""
        results = []
        for request in self._bar(requests, "framepress multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            kwargs, until = self._generate_kwargs(gen_kwargs)

            def compute():
                doc = self._doc(task, split, doc_id)
                visuals, question, rounds, info, chat, seen = doc_to_visual(doc), context, [], None, None, None
                stats: list[dict[str, Any]] = []
                round_idx = 0
                while True:
                    if round_idx > 0:
                        visuals, question, terminal, rounds, info = doc_to_text(
                            doc, previous_output=list(rounds), round_idx=round_idx, previous_round_info=info
                        )
                        if terminal:
                            break
                    if chat is None or visuals != seen:
                        chat, seen = self.pipeline.chat(self._video(visuals, task, doc_id)), visuals
                    answer = chat.ask(question, **kwargs)
                    rounds = [*rounds, _cut(answer.text, until)]
                    stats.append(_public_stats(answer.stats))
                    round_idx += 1
                merged = dict(stats[-1])
                merged["rounds"] = len(stats)
                merged["new_tokens"] = sum(s.get("new_tokens", 0) for s in stats)
                merged["total_s"] = round(sum(s.get("total_s", 0) for s in stats), 4)
                return {"text": list(rounds), "stats": merged}

            record = self._run(self._key("multi_round", task, split, doc_id, context, kwargs, until), compute)
            results.append(GenerationResult(text=record["text"], token_counts=_counts(record)))
        return results


def _cut(text: str, until: list[str]) -> str:
    """The text up to the first stop string."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text

