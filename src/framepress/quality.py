"""``framepress bench-quality``: accuracy per question kind of every method at every retention, offline.

The packaged synthetic-domain model (:mod:`framepress.packaged`) answers the held-out :mod:`framepress.synth`
test sets with its video tokens compressed by each method; the answer is the greedy first token (what
``generate`` would say first). The numbers are a proxy for the papers' benchmarks, not a substitute: a toy model
on toy videos, but the needle and order columns show which methods keep the few tokens an answer depends on.

Methods run with their defaults as in a real model (positions re-assigned for grid methods, kept for in-LLM ones);
an in-LLM stage runs at layer 2 of the 4-layer model, and methods with an in-LLM part are measured both alone
("A%") and with it ("A%/B%", B = A/2, the papers' two-stage setting).

``--regime real`` (:func:`run_real`) scores a model trained with ``python -m framepress.training --regime real`` on
the real-regime kinds (:data:`framepress.synth.REAL_KINDS`: 32 frames of 14x14 tokens, 6,272 video tokens). There
the vision tower costs as much as a compressed prefill, so the loop runs item-major: each chunk of clips is encoded
once (the pooled features, the vision signals and the unpooled grid the methods read) and every setting replays
that encoding (:class:`Replay`); each finished chunk is appended to a journal beside the table, so an interrupted
run resumes where it stopped. Each cell has its standard error (binomial, sqrt(p(1-p)/n)).

By default it scores every method at 2% and 1% (and their two-stage forms), where the papers separate them, and
the instrument's calibration (full tokens, random dropping, pooling, uniform frame dropping) at every retention;
``--retentions`` and ``--calibration`` widen it. The chunks take the kinds in turns, ``--minutes`` stops starting
new ones after a time budget (the table then covers the chunks done), and a rerun with a larger ``--per-kind``
extends the journal instead of starting over. Every setting answers the same items, so the page compares methods
by paired differences (:func:`paired`), whose errors are far below the cells' own.

Its cost, measured on a randomly initialised model of the real regime's shape (the methods' work does not depend on
the weights), one thread of this project's 2-core machine shared with a training run: a clip's encoding is 1.5 s,
the full-token prefill 1.8 s (6,273 tokens through 4 layers), and every method at 2% about 7.7 s together (unified
and its two-stage form 3.3 s, FastV 1.0 s, PruneVid 0.8 s, DivPrune 0.4 s, the rest 0.1-0.4 s each).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from . import packaged, registry, synth
from .files import write_bytes, write_text
from .models.base import HEAD_SIGNALS

RETENTIONS = (0.5, 0.3, 0.1, 0.05, 0.02, 0.01)
METHODS = ("random", "pool", "frames", "sttm", "fastv", "visionzip", "fastvid", "holitom", "gridpool", "dycoke",
           "divprune", "prunevid", "framefusion", "unified")
INNER_LAYER = 2  # of the packaged 4-layer model
PACKAGED = "packaged"  # how the results name the model inside the package (no machine path)
#: the question kinds the packaged model learned; "motion" stayed at chance (25%) in training, so ranking methods
#: on it would measure noise (the generator keeps it, for a longer or GPU training run)
KINDS = ("needle", "count", "color", "order", "static")


#: where the real-regime model ships (built by :data:`REAL_BUILD`)
REAL_FOLDER = Path(__file__).parent / "models" / "synthetic-real"
REAL_BUILD = ("python -m framepress.training --regime real --out runs/synthetic-real --steps 260 --batch 16 --lr 1e-3 "
              "--threads 2 --eval-every 0 (from the packaged tiny model; resumable from runs/synthetic-real.resume/: add "
              "--resume, and --until STEP to stop early), then copy runs/synthetic-real to "
              "src/framepress/models/synthetic-real or pass --model runs/synthetic-real")
#: the real-regime kinds the shipped model learned (held-out accuracy at full tokens after training, 12 items a kind:
#: needle32 83%, second 67%, cut 100%, still 100%; events 33%, detail and direction 25%, chance, are left out: a
#: ranking on them would measure noise; the generator and the training keep all seven)
REAL_KINDS = ("needle32", "second", "cut", "still")
REAL_CHUNK = 10  # clips encoded at once and journaled together
#: the real bench's default grid, sized for an hour of 2 cores: every method where the papers separate them (2% and
#: 1%), and the instrument's calibration (full, random, pooling, frame dropping) at every retention
REAL_RETENTIONS = (0.02, 0.01)
CALIBRATION = ("random", "pool", "frames")


@dataclass
class Setting:
    method: str | None
    retention: str | float | None
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "full" if self.method is None else f"{self.method} {self.retention}"

    @property
    def key(self) -> str:
        """The label and the parameters: unique among :func:`settings` (the journal's name for a row)."""
        return self.label + (" " + json.dumps(self.params, sort_keys=True) if self.params else "")

    @property
    def name(self) -> str:
        """The method as a results row names it."""
        name = self.method or "full"
        return name + (" (original positions)" if self.params.get("positions") == "original" else "")


def settings(methods=METHODS, retentions=RETENTIONS, inner_layer: int = INNER_LAYER, every=()) -> list[Setting]:
    """Full tokens, then every method at every retention (and its two-stage form where it has one); in-LLM stages
    at ``inner_layer`` (or their own default layer, if earlier). Methods in ``every`` (the instrument's
    calibration) run at every one of :data:`RETENTIONS` too."""
    out = [Setting(None, None)]
    for name in methods:
        spec = registry.get(name)
        for r in sorted(set(retentions) | set(RETENTIONS if name in every else ()), reverse=True):
            a = f"{100 * r:g}%"
            if spec.inner:
                out.append(Setting(name, a))
                out.append(Setting(name, f"{a}/{50 * r:g}%", {"inner_layer": inner_layer}))
            elif spec.stage == "in-llm":
                out.append(Setting(name, r, {"layer": min(spec.default_layer, inner_layer)}))
            else:
                out.append(Setting(name, r))
    if "random" in methods:  # the position control: the same random drop with the kept tokens' original positions
        drawn = set(retentions) | set(RETENTIONS if "random" in every else ())
        out += [Setting("random", r, {"positions": "original"}) for r in (0.5, 0.1) if r in drawn]
    return out


class Bench:
    """The model, its prompts and the held-out items, ready to score settings one after another."""

    def __init__(self, model_path=None, per_kind: int = 300, batch: int = 50, kinds=KINDS, seed: int = 0):
        from .pipeline import load

        self.pipeline = load(packaged.path() if model_path is None else model_path, device="cpu")
        self.batch = batch
        prompter, tokenizer = self.pipeline.prompter, self.pipeline.tokenizer
        self.items = {k: synth.test_set(k, per_kind, seed=seed) for k in kinds}
        self.inputs = {}
        for kind, items in self.items.items():
            one = prompter.inputs(items[0].frames, items[0].question)
            ids = tokenizer.convert_tokens_to_ids([it.answer for it in items])
            self.inputs[kind] = (one["input_ids"], torch.tensor(ids))

    def _batches(self, kind: str):
        from .training import pixels

        ids, answers = self.inputs[kind]
        items = self.items[kind]
        for i in range(0, len(items), self.batch):
            chunk = items[i : i + self.batch]
            video = torch.stack([pixels(it.frames) for it in chunk])
            yield ({"input_ids": ids.expand(len(chunk), -1), "attention_mask": torch.ones(len(chunk), ids.shape[1],
                    dtype=torch.long), "pixel_values_videos": video}, answers[i : i + len(chunk)])

    @torch.no_grad()
    def score(self, setting: Setting) -> dict:
        pipe = self.pipeline
        pipe.use(setting.method, setting.retention, **setting.params)
        name = setting.method or "full"
        if setting.params.get("positions") == "original":
            name += " (original positions)"
        result = {"method": name, "retention": setting.retention, "accuracy": {}}
        kept, flops, seconds = [], [], 0.0
        try:
            for kind in self.items:
                hits = []
                for inputs, answers in self._batches(kind):
                    start = time.perf_counter()
                    logits = pipe.model(**inputs).logits[:, -1]
                    seconds += time.perf_counter() - start
                    hits.append(logits.argmax(-1) == answers)
                    if pipe.handle is not None:
                        record = pipe.handle.stats[-1]
                        visual_in = record["tokens_in"]
                        visual_out = record["stages"][-1]["visual_out"]
                        kept += [o / i for o, i in zip(visual_out, visual_in)]
                        flops += pipe.handle.flops(record)
                result["accuracy"][kind] = torch.cat(hits).float().mean().item()
        finally:
            pipe.close()
        if not flops:
            from . import flops as flops_module

            llm = flops_module.LLM.from_config(pipe.model.config)
            length = self.inputs[next(iter(self.items))][0].shape[1]
            flops = [flops_module.prefill_flops([length] * llm.layers, llm)]
        result["kept"] = statistics.fmean(kept) if kept else 1.0
        result["llm_prefill_flops"] = statistics.fmean(flops)
        result["overall"] = statistics.fmean(result["accuracy"].values())
        result["seconds"] = round(seconds, 2)
        return result


def run(out_md: Path, per_kind: int = 300, methods=METHODS, retentions=RETENTIONS, model_path=None, batch: int = 50,
        progress: bool = True, command: str = "framepress bench-quality", kinds=KINDS) -> list[dict]:
    """Score every setting and write the table (``out_md``), the raw numbers (``.json``) and the plot (``.png``)."""
    from tqdm import tqdm

    for name in methods:
        registry.get(name)
    _check_kinds(kinds, synth.KINDS)
    bench = Bench(model_path, per_kind, batch, kinds)
    rows = []
    started = time.time()
    for setting in tqdm(settings(methods, retentions), desc="bench-quality", unit="setting", disable=not progress):
        try:
            rows.append(bench.score(setting))
        except ValueError as exc:  # a budget the method cannot meet (e.g. pooling keeps a token per frame)
            rows.append({"method": setting.method, "retention": setting.retention, "error": str(exc)})
    meta = {"per_kind": per_kind, "command": command, "date": date.today().isoformat(),
            "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads",
            "minutes": round((time.time() - started) / 60, 1), "model": PACKAGED if model_path is None else str(model_path)}
    out_md = Path(out_md)
    write_text(out_md.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    render(out_md)
    return rows


def _check_kinds(kinds, allowed) -> None:
    unknown = [k for k in kinds if k not in allowed]
    if unknown or not kinds:
        raise ValueError(f"kinds must be some of {', '.join(allowed)}, got {', '.join(kinds) or 'none'}")


def real_path(folder=None) -> Path:
    """The real-regime checkpoint folder, checked: missing, it is an error saying how to build it."""
    folder = REAL_FOLDER if folder is None else Path(folder)
    missing = [name for name in packaged.FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the real-regime model is not at {folder} ({', '.join(missing)} missing): it is not "
            f"here; build it with: {REAL_BUILD}, or pass --model DIR"
        )
    return folder


class Replay:
    """One encoding of a chunk of clips, replayed to every setting instead of running the vision tower again.

    :meth:`encode` runs the tower once with the family's hooks for the vision signals the methods read (SigLIP
    scores and keys; FastVID's head signals fall back to the scores with no ``siglip_head``, as in the bench) and
    the grid before the 2x2 pooling. While installed (a ``with`` block around the settings), the model's
    ``get_video_features`` returns the kept features and hands each signal to the framepress patch's queues as its
    hooks would have; the replayed logits equal a fresh encode's (tests/test_quality_real.py).
    """

    def __init__(self, model):
        from .models import adapter_for

        self.model, self.adapter = model, adapter_for(model)
        self.base = self.adapter.base
        self.cached: dict = {}

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> None:
        """Encode ``video`` [B, F, 3, S, S] and keep what every setting reads of it."""
        caught: dict[str, list[torch.Tensor]] = {}
        hooks = []
        for name in self.adapter.vision_signals:
            if name not in HEAD_SIGNALS:
                hooks += self.adapter.signal_hooks(name, caught.setdefault(name, []).append)
        if self.adapter.pooled:
            hooks += self.adapter.unpooled_hooks(caught.setdefault(UNPOOLED, []).append)
        config = self.model.config
        try:
            out = self.base.get_video_features(
                video, vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
            )
        finally:
            for hook in reversed(hooks):
                hook.remove()
        self.cached = {name: torch.cat(parts) for name, parts in caught.items()}
        self.cached[POOLED] = out.pooler_output

    def _features(self, *args, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        patch = self.model.__dict__.get("_framepress_patch")
        if patch is not None:  # what the patch's vision hooks would have queued while the tower ran
            for name, queue in patch.signals.items():
                queue.append(self.cached[name])
            if patch.unpooled_hooks:
                patch.unpooled.append(self.cached[UNPOOLED])
        return BaseModelOutputWithPooling(pooler_output=self.cached[POOLED])

    def __enter__(self) -> Replay:
        if "get_video_features" in self.base.__dict__:
            raise RuntimeError("install the replay before any framepress method is applied")
        self.base.get_video_features = self._features
        return self

    def __exit__(self, *exc) -> None:
        self.base.__dict__.pop("get_video_features", None)


POOLED, UNPOOLED = "pooled", "unpooled"


def _journal_meta(model: str, kinds, keys: list[str], seed: int, chunk: int) -> dict:
    """What a journal's chunks depend on; not the items per kind, so a rerun with more of them extends the run."""
    return {"regime": "real", "model": model, "kinds": list(kinds), "seed": seed, "settings": keys, "chunk": chunk}


def _read_journal(path: Path, meta: dict) -> dict[tuple[str, int, int], dict]:
    """The chunks a previous run of the same bench finished (kind, start, count) -> its results; a journal of another
    bench is an error naming what differs (a damaged last line, from a killed run, is dropped)."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    try:
        saved = json.loads(lines[0])
    except (IndexError, ValueError):
        raise ValueError(f"{path} is not a bench-quality journal; delete it to start over") from None
    differs = [k for k in meta if saved.get(k) != meta[k]]
    if differs:
        raise ValueError(f"{path} is the journal of another bench (its {', '.join(differs)} differ); pass the same "
                         "arguments to resume it, or delete it (or choose another --out) to start over")
    done = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        done[(entry["kind"], entry["start"], entry["count"])] = entry
    return done


class RealBench:
    """The real-regime model and its held-out chunks; :meth:`chunk` scores every setting on one chunk."""

    def __init__(self, model_path, per_kind: int, kinds=REAL_KINDS, seed: int = 0, chunk: int = REAL_CHUNK):
        from .pipeline import load

        self.pipeline = load(model_path, device="cpu")
        self.per_kind, self.kinds, self.seed, self.size = per_kind, tuple(kinds), seed, chunk
        self.replay = Replay(self.pipeline.model)
        self.layers = self.pipeline.model.config.text_config.num_hidden_layers

    def chunks(self) -> list[tuple[str, int, int]]:
        """(kind, start, count) of every chunk of the held-out items (:func:`framepress.synth.test_set`), the kinds
        taking turns, so that a run stopped early has each kind's first items."""
        n = self.size
        return [(k, s, min(n, self.per_kind - s)) for s in range(0, self.per_kind, n) for k in self.kinds]

    @torch.no_grad()
    def chunk(self, kind: str, start: int, count: int, chosen: list[Setting], tick=lambda: None) -> dict:
        """Every setting's hits on items ``start`` to ``start + count`` of ``kind``; ``tick()`` after each setting
        (a chunk of all settings takes minutes)."""
        from .training import pixels

        pipe = self.pipeline
        items = [synth.generate(kind, start + i, split="test", seed=self.seed) for i in range(count)]
        one = pipe.prompter.inputs(items[0].frames, items[0].question)
        ids = one["input_ids"].expand(count, -1)
        answers = torch.tensor(pipe.tokenizer.convert_tokens_to_ids([it.answer for it in items]))
        video = torch.stack([pixels(it.frames) for it in items])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": video}
        started = time.perf_counter()
        self.replay.encode(video)
        results = {"kind": kind, "start": start, "count": count, "encode_s": round(time.perf_counter() - started, 3),
                   "rows": {}}
        with self.replay:
            for setting in chosen:
                results["rows"][setting.key] = self._score(setting, inputs, answers)
                tick()
        return results

    def _score(self, setting: Setting, inputs: dict, answers: torch.Tensor) -> dict:
        pipe = self.pipeline
        try:
            pipe.use(setting.method, setting.retention, **setting.params)
            started = time.perf_counter()
            logits = pipe.model(**inputs).logits[:, -1]
            seconds = time.perf_counter() - started
            if pipe.handle is not None:
                record = pipe.handle.stats[-1]
                kept = [o / i for o, i in zip(record["stages"][-1]["visual_out"], record["tokens_in"])]
                flops = [float(f) for f in pipe.handle.flops(record)]
            else:
                full = pipe._compression_stats(inputs["input_ids"].shape[1])["llm_prefill_flops"]
                kept, flops = [1.0] * len(answers), [full] * len(answers)
        except ValueError as exc:  # a budget the method cannot meet (e.g. pooling keeps a token per frame)
            return {"error": str(exc)}
        finally:
            pipe.close()
        return {"hits": (logits.argmax(-1) == answers).int().tolist(), "kept": kept, "flops": flops,
                "seconds": round(seconds, 3)}


def aggregate(chosen: list[Setting], entries: list[dict], kinds) -> list[dict]:
    """One row per setting: accuracy and its standard error per kind and overall, kept share, LLM FLOPs."""
    rows = []
    for setting in chosen:
        cells = [e["rows"][setting.key] for e in entries]
        row = {"method": setting.name, "retention": setting.retention}
        error = next((c["error"] for c in cells if "error" in c), None)
        if error is not None:
            rows.append({**row, "error": error})
            continue
        row["accuracy"], row["stderr"], row["items"] = {}, {}, {}
        for kind in kinds:
            hits = [h for e, c in zip(entries, cells) if e["kind"] == kind for h in c["hits"]]
            p = statistics.fmean(hits)
            row["accuracy"][kind], row["items"][kind] = p, len(hits)
            row["stderr"][kind] = (p * (1 - p) / len(hits)) ** 0.5
            row.setdefault("hits", {})[kind] = "".join(str(h) for h in hits)  # item by item, for paired comparisons
        row["overall"] = statistics.fmean(row["accuracy"].values())
        row["overall_stderr"] = sum(se**2 for se in row["stderr"].values()) ** 0.5 / len(kinds)
        row["kept"] = statistics.fmean(k for c in cells for k in c["kept"])
        row["llm_prefill_flops"] = statistics.fmean(f for c in cells for f in c["flops"])
        row["seconds"] = round(sum(c["seconds"] for c in cells), 2)
        rows.append(row)
    return rows


def run_real(out_md: Path, per_kind: int = 300, methods=METHODS, retentions=REAL_RETENTIONS, model_path=None,
             kinds=REAL_KINDS, chunk: int = REAL_CHUNK, progress: bool = True,
             command: str = "framepress bench-quality --regime real", calibration=CALIBRATION,
             minutes: float | None = None) -> list[dict]:
    """Score every setting on the real-regime model, chunk by chunk (resumable: ``<out>.journal.jsonl``, and a rerun
    with a larger ``per_kind`` extends it), and write the table (``out_md``), the raw numbers (``.json``) and the
    plot (``.png``). ``calibration``: methods also run at every one of :data:`RETENTIONS`. ``minutes``: start no
    chunk after that long, and write the table from the chunks done (every kind needs one)."""
    from tqdm import tqdm

    folder = real_path(model_path)
    for name in [*methods, *calibration]:
        registry.get(name)
    _check_kinds(kinds, synth.REAL_KINDS)
    bench = RealBench(folder, per_kind, kinds, chunk=chunk)
    chosen = settings(methods, retentions, inner_layer=max(1, bench.layers // 2),
                      every=[m for m in calibration if m in methods])
    out_md = Path(out_md)
    journal = out_md.with_suffix(".journal.jsonl")
    shown = "real" if model_path is None else str(model_path)
    meta = _journal_meta(shown, kinds, [s.key for s in chosen], 0, chunk)
    done = _read_journal(journal, meta)
    # rewritten whole (atomically) before appending, so a line a killed run left half-written is gone
    write_text(journal, "".join(json.dumps(entry) + "\n" for entry in [meta, *done.values()]))
    todo = [c for c in bench.chunks() if c not in done]
    started = time.time()
    total = sum(c[2] for c in bench.chunks()) * len(chosen)
    with journal.open("a") as log, tqdm(total=total, initial=total - sum(c[2] for c in todo) * len(chosen),
                                        desc="bench-quality real", unit="clip-setting", disable=not progress) as bar:
        for kind, start, count in todo:
            if minutes is not None and time.time() - started > 60 * minutes:
                break
            entry = bench.chunk(kind, start, count, chosen, tick=lambda n=count: bar.update(n))
            log.write(json.dumps(entry) + "\n")
            log.flush()
            done[(kind, start, count)] = entry
    entries = [done[c] for c in bench.chunks() if c in done]
    missing = [k for k in kinds if not any(e["kind"] == k for e in entries)]
    if missing:
        raise RuntimeError(f"no items of {', '.join(missing)} scored after {minutes} minutes: rerun with the same "
                           f"arguments to continue ({journal}), or give more --minutes")
    rows = aggregate(chosen, entries, kinds)
    meta = {"regime": "real", "per_kind": per_kind, "items": sum(e["count"] for e in entries),
            "complete": len(entries) == len(bench.chunks()),
            "command": command, "date": date.today().isoformat(),
            "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads", "model": shown,
            "minutes_this_run": round((time.time() - started) / 60, 1),
            "encode_s": round(sum(e["encode_s"] for e in entries), 1),
            "prefill_s": round(sum(r.get("seconds", 0) for r in rows), 1)}
    write_text(out_md.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    render(out_md)
    return rows


def render(out_md: Path) -> None:
    """The table and the plot from the raw numbers beside ``out_md`` (``.json``)."""
    out_md = Path(out_md)
    data = json.loads(out_md.with_suffix(".json").read_text())
    rows, real = data["rows"], data["meta"].get("regime") == "real"
    needle, title = ("needle32", "1 of 32 frames") if real else ("needle", "1-2 frames")
    kinds = list(rows[0]["accuracy"])
    focus, heading = (needle, f"{needle} ({title})") if needle in kinds else (kinds[0], kinds[0])
    model = "real-regime synthetic model (a proxy)" if real else "packaged synthetic model (a proxy)"
    write_bytes(out_md.with_suffix(".png"), plot(rows, focus, heading, model))
    page = markdown_real if real else markdown
    write_text(out_md, page(rows, data["meta"], out_md.with_suffix(".png").name))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + " CPU"
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def markdown(rows: list[dict], meta: dict, picture: str) -> str:
    kinds = list(rows[0]["accuracy"])
    full = rows[0]["overall"]
    se = 100 * (0.25 / meta["per_kind"]) ** 0.5
    lines = [
        "# Accuracy kept by each method on the packaged synthetic model",
        "",
        f"**A proxy, not a benchmark:** {packaged.NOTE}. Held-out `framepress.synth` test sets, {meta['per_kind']} "
        f"balanced items per question kind (standard error at most {se:.1f} points per cell), 16 frames of 96x96 "
        "(576 video tokens: 6x6 a frame). Chance is 25% on every kind. The answer is the greedy first token. "
        "The motion kind is left out: the model did not learn it (chance during training, below).",
        "",
        f"Command: `{meta['command']}`; {meta['date']}; {meta['machine']}; {meta['minutes']} minutes.",
        "",
        f"![accuracy vs retention]({picture})",
        "",
    ]
    lines += table_lines(rows, kinds, full, errors=False)
    recipe_file = (packaged.FOLDER if meta["model"] == PACKAGED else Path(meta["model"])) / "training.json"
    if recipe_file.is_file():
        recipe = json.loads(recipe_file.read_text())
        lines += [
            "",
            "## How the model was trained",
            "",
            f"`python -m framepress.training --out {_shown(meta['model'])} --steps {recipe['steps']} --threads 2` (seed "
            f"{recipe['seed']}, batch {recipe['batch']}, AdamW lr {recipe['lr']} with {recipe['warmup']} warm-up steps and "
            f"a cosine decay to 10%): {recipe['seconds'] / 60:.0f} minutes on this machine's 2 CPU cores, shared with "
            "other work. Each batch keeps all video tokens or drops a random share (1-100%, log-uniform), drops whole "
            "frames or averages frame pairs, with original or re-assigned positions, at 8-16 frames "
            "(`framepress.training`). Held-out accuracy (40 items per kind, full tokens) during training:",
            "",
        ]
        history = recipe.get("history", [])
        trained = list(history[0]["accuracy"]) if history else kinds
        lines += ["| step | minutes | " + " | ".join(trained) + " |", "|---|---|" + "---|" * len(trained)]
        for h in history:
            lines.append(f"| {h['step']} | {h['seconds'] / 60:.0f} | "
                         + " | ".join(f"{100 * h['accuracy'][k]:.0f}" for k in trained) + " |")
    return "\n".join(lines) + "\n"


def table_lines(rows: list[dict], kinds: list[str], full: float, errors: bool, full_row: dict | None = None) -> list[str]:
    """The results table: a row per setting (accuracy per kind, overall, % of full); ``errors`` adds each cell's
    standard error (and, given the ``full_row`` with item-by-item hits, % of full's 95% interval); a setting the
    method cannot produce is a row saying why."""

    def cell(value: float, err: float | None) -> str:
        return f"{100 * value:.1f}" + (f" ± {100 * err:.1f}" if errors else "")

    lines = [
        "| method | retention | kept | LLM MFLOPs | " + " | ".join(kinds) + " | overall | % of full |",
        "|---|---|---|---|" + "---|" * (len(kinds) + 2),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['retention']} | n/a: {r['error']} |" + " |" * (len(kinds) + 3))
            continue
        cells = [r["method"], str(r["retention"] if r["retention"] is not None else "100%"), f"{100 * r['kept']:.1f}%",
                 f"{r['llm_prefill_flops'] / 1e6:.1f}"]
        cells += [cell(r["accuracy"][k], r.get("stderr", {}).get(k)) for k in kinds]
        if full_row is not None and "hits" in r:
            relative = _share(r, full_row) + ("%" if full else "")
        else:
            relative = f"{100 * r['overall'] / full:.1f}%" if full else "n/a"
        cells += [cell(r["overall"], r.get("overall_stderr")), relative]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


#: the unified paper's LLaVA-OneVision-7B results at 2% retention, % of full (Table 1 of the paper)
PAPER_AT_2 = {"unified": 90.1, "holitom": 87.7, "fastvid": 83.3, "visionzip": 75.3}
Z95 = 1.96


def paired(a: dict, b: dict) -> tuple[float, float]:
    """Overall accuracy of row ``a`` minus row ``b`` and the half-width of its 95% interval, from the item-by-item
    hits: both rows answered the same held-out items, so the difference's error is the paired one (far below the
    two rows' own errors added, when the methods agree on most items)."""
    difference, variance = 0.0, 0.0
    kinds = list(a["hits"])
    for kind in kinds:
        d = [int(x) - int(y) for x, y in zip(a["hits"][kind], b["hits"][kind])]
        mean = statistics.fmean(d)
        difference += mean
        variance += statistics.pvariance(d, mean) / len(d)
    return difference / len(kinds), Z95 * variance**0.5 / len(kinds)


def of_full(row: dict, full: dict) -> tuple[float, float]:
    """``row``'s overall accuracy as a share of full tokens' (%) and the half-width of its 95% interval (the
    paired error of the difference, scaled: the ratio's error when full's own error is small); NaN when full
    tokens answer nothing right."""
    if not full["overall"]:
        return math.nan, math.nan
    difference, half = paired(row, full)
    return 100 * row["overall"] / full["overall"], 100 * half / full["overall"]


def _share(row: dict, full: dict) -> str:
    share, half = of_full(row, full)
    return "n/a" if math.isnan(share) else f"{share:.1f} ± {half:.1f}"


def ranking_lines(rows: list[dict], retention: str, full: dict) -> list[str]:
    """The settings of one retention (``rows``), best first, each with its share of full and the paired difference
    to the next: which neighbours the bench separates (an interval that excludes 0)."""
    at = sorted((r for r in rows if "accuracy" in r), key=lambda r: -r["overall"])
    if not at:
        return []
    lines = [f"| rank | method at {retention} | % of full (95% CI) | minus the next (points, 95% CI) | separated |",
             "|---|---|---|---|---|"]
    for i, row in enumerate(at):
        if i + 1 < len(at):
            d, h = paired(row, at[i + 1])
            step, apart = f"{100 * d:+.1f} ± {100 * h:.1f}", "yes" if d - h > 0 else "no"
        else:
            step, apart = "", ""
        lines.append(f"| {i + 1} | {row['method']} | {_share(row, full)} | {step} | {apart} |")
    return lines


def paper_lines(rows: list[dict], full: dict) -> list[str]:
    """The unified paper's ranking at 2% beside ours, and whether each of its pairwise orders holds here."""
    ours = {r["method"]: r for r in rows if r["retention"] in ("2%", 0.02) and "accuracy" in r
            and r["method"] in PAPER_AT_2}
    if len(ours) < 2:
        return []
    lines = ["| method at 2% | paper: % of full (LLaVA-OV-7B) | here: % of full (95% CI) |", "|---|---|---|"]
    for name, value in PAPER_AT_2.items():
        if name in ours:
            lines.append(f"| {name} | {value} | {_share(ours[name], full)} |")
    lines.append("")
    names = [n for n in PAPER_AT_2 if n in ours]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d, h = paired(ours[a], ours[b])
            verdict = ("agrees, beyond the error" if d - h > 0 else "reversed, beyond the error" if d + h < 0
                       else "agrees, within the error" if d > 0 else "reversed, within the error")
            lines.append(f"- paper: {a} > {b}; here {100 * d:+.1f} ± {100 * h:.1f} points: {verdict}.")
    return lines


def markdown_real(rows: list[dict], meta: dict, picture: str) -> str:
    """The real-regime page: the calibration (full, random, pooling, frame dropping at every retention), every
    method at each retention with its paired separation from the next, the paper's ranking beside ours, the full
    table with standard errors, and the training record."""
    kinds = list(next(r for r in rows if "accuracy" in r)["accuracy"])
    full = rows[0]
    counts = sorted(set(full["items"].values()))
    items = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    worst = max(full["stderr"].values())
    lines = [
        "# Accuracy kept by each method on the real-regime synthetic model",
        "",
        "**A proxy, not a benchmark:** a LLaVA-OneVision architecture at toy size trained here on `framepress.synth` "
        f"real-regime clips (`python -m framepress.training --regime real`). Held-out test sets, {items} balanced "
        "items per question kind, 32 frames of 216x216 (27x27 patches of 8 px pooled to 14x14: 6,272 video tokens, "
        "LLaVA-OneVision-7B's regime at 32 frames, where 2% is 125 tokens and 1% is 63). Chance is 25% on every "
        "kind. The answer is the greedy first token. Every setting answers the same items, so differences between "
        "methods carry paired errors (a method and its neighbour mostly fail on the same items), much smaller than "
        f"each cell's own standard error (at most {100 * worst:.1f} points for full tokens here).",
        "",
        f"Command: `{meta['command']}`; {meta['date']}; {meta['machine']}; {meta['minutes_this_run']} minutes this "
        f"run; vision encoding {meta['encode_s']:.0f} s (once per clip), prefills {meta['prefill_s']:.0f} s"
        + ("" if meta.get("complete", True) else f"; stopped by its time budget at {meta['items']} items "
           "(rerun the command to continue)") + ".",
        "",
        f"![accuracy vs retention]({picture})",
        "",
    ]
    lines += [
        "**Reading it.** The model was trained under random token dropping, frame dropping and frame merging "
        "(`framepress.training`), so random dropping is in its training distribution and is a strong baseline "
        "here, stronger than on a pretrained Video-LLM; FastV keeps every token up to its layer, where this 4-layer "
        "LM has already read the video. Each ranking table says, pair by pair, whether a method is separated from "
        "the next beyond the paired 95% interval; where it says no, the items scored so far cannot order them "
        "(rerun the command to add items: the journal keeps every chunk).",
        "",
    ]
    for label, chosen in (("2%", (0.02, "2%", "2%/1%")), ("1%", (0.01, "1%", "1%/0.5%"))):
        at = [r for r in rows if r["retention"] in chosen]
        if not at:
            continue
        named = [{**r, "method": f"{r['method']} {r['retention']}"} if "/" in str(r["retention"]) else r for r in at]
        lines += [f"## Every method at {label}", ""] + ranking_lines(named, label, full) + [""]
    paper = paper_lines(rows, full)
    if paper:
        lines += ["## The unified paper's ranking at 2%, beside ours", ""] + paper + [""]
    lines += ["## Every setting", "", "Accuracy ± standard error (points) per kind; % of full with its 95% interval.", ""]
    lines += table_lines(rows, kinds, full["overall"], errors=True, full_row=full)
    recipe_file = (REAL_FOLDER if meta["model"] == "real" else Path(meta["model"])) / "training.json"
    recipe = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
    if recipe:
        start = (f" It starts from {recipe['init']}." if recipe.get("init") else " It starts from random weights.")
        frozen = (f" The vision tower, projector and newline stay as they start "
                  f"({recipe.get('trainable_parameters', 0):,} trainable LM parameters), and each drawn batch of "
                  f"clips serves {recipe['reuse']} updates with their own reductions."
                  if recipe.get("frozen_encoder") else "")
        keep_max = recipe.get("keep_max", 1.0)
        share_all = recipe.get("mix", [None])[0]
        lines += [
            "",
            "## How the model was trained",
            "",
            f"`python -m framepress.training --regime real --steps {recipe['steps']} --batch {recipe['batch']} --lr "
            f"{recipe['lr']} --threads 2` (seed {recipe['seed']}, AdamW, {recipe['warmup']} warm-up updates, cosine "
            f"decay to 10%): {recipe['seconds'] / 60:.0f} minutes on this machine's 2 CPU cores.{start}{frozen} Each "
            + (f"update keeps all video tokens ({100 * share_all:.0f}% of updates) or " if share_all is not None
               else "update keeps all video tokens or ")
            + f"drops a random share (keeping 1-{100 * keep_max:.0f}%, log-uniform), drops whole frames (some "
            "updates keeping each clip's evidence frames) or averages frame pairs, with original or re-assigned "
            "positions, at 24-32 frames (`framepress.training`).",
        ]
        for h in recipe.get("history", []):
            lines.append(f"- step {h['step']} ({h['seconds'] / 60:.0f} min), held-out accuracy at full tokens: "
                         + ", ".join(f"{k} {100 * v:.0f}%" for k, v in h["accuracy"].items()))
    return "\n".join(lines) + "\n"


def _shown(model: str) -> str:
    return "src/framepress/models/synthetic" if model == PACKAGED else model


def plot(rows: list[dict], focus: str = "needle", focus_title: str = "needle (1-2 frames)",
         title: str = "packaged synthetic model (a proxy)") -> bytes:
    """Overall accuracy and the ``focus`` kind's accuracy vs kept tokens, one line per method (two-stage forms
    dashed)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, panels = plt.subplots(1, 2, figsize=(14, 4.8), dpi=100, sharex=True)
    lines: dict[str, list[dict]] = {}
    for r in rows[1:]:
        if "error" in r:
            continue
        two_stage = "/" in str(r["retention"])
        lines.setdefault(r["method"] + (" A/B" if two_stage else ""), []).append(r)
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]
    bases = sorted({name.split()[0] for name in lines})
    for panel, key, heading in ((panels[0], None, "all question kinds"), (panels[1], focus, focus_title)):
        for name, points in sorted(lines.items()):
            points = sorted(points, key=lambda p: p["kept"])
            y = [100 * (p["overall"] if key is None else p["accuracy"][key]) for p in points]
            color = palette[bases.index(name.split()[0]) % len(palette)]
            panel.plot([100 * p["kept"] for p in points], y, marker="o", markersize=3, color=color,
                       linestyle="--" if name.endswith("A/B") else ":" if "original" in name else "-", label=name)
        full = 100 * (rows[0]["overall"] if key is None else rows[0]["accuracy"][key])
        panel.axhline(full, color="0.3", linestyle=":", label="full tokens")
        panel.axhline(25, color="0.6", linewidth=0.8, label="chance")
        panel.set_xscale("log")
        panel.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        panel.set_xlabel("video tokens kept (%)")
        panel.set_ylabel("accuracy (%)")
        panel.set_title(heading, fontsize=10)
        panel.grid(True, which="both", alpha=0.3)
    panels[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(f"{title}: accuracy vs retention", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()

