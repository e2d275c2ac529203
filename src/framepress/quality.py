"""``framepress bench-quality``: accuracy per question kind of every method at every retention, offline.

The packaged synthetic-domain model (:mod:`framepress.packaged`) answers the held-out :mod:`framepress.synth`
test sets with its video tokens compressed by each method; the answer is the greedy first token (what
``generate`` would say first). The numbers are a proxy for the papers' benchmarks, not a substitute: a toy model
on toy videos, but the needle and order columns show which methods keep the few tokens an answer depends on.

Methods run with their defaults as in a real model (positions re-assigned for grid methods, kept for in-LLM ones);
an in-LLM stage runs at layer 2 of the 4-layer model, and methods with an in-LLM part are measured both alone
("A%") and with it ("A%/B%", B = A/2, the papers' two-stage setting).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from . import packaged, registry, synth
from .files import write_bytes, write_text

RETENTIONS = (0.5, 0.3, 0.1, 0.05, 0.02, 0.01)
METHODS = ("random", "pool", "frames", "sttm", "fastv", "visionzip", "fastvid", "holitom", "gridpool", "dycoke",
           "divprune", "prunevid", "framefusion", "unified")
INNER_LAYER = 2  # of the packaged 4-layer model
PACKAGED = "packaged"  # how the results name the model inside the package (no machine path)
#: the question kinds the packaged model learned; "motion" stayed at chance (25%) in training, so ranking methods
#: on it would measure noise (the generator keeps it, for a longer or GPU training run)
KINDS = ("needle", "count", "color", "order", "static")


@dataclass
class Setting:
    method: str | None
    retention: str | float | None
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "full" if self.method is None else f"{self.method} {self.retention}"


def settings(methods=METHODS, retentions=RETENTIONS) -> list[Setting]:
    """Full tokens, then every method at every retention (and its two-stage form where it has one)."""
    out = [Setting(None, None)]
    for name in methods:
        spec = registry.get(name)
        for r in retentions:
            a = f"{100 * r:g}%"
            if spec.inner:
                out.append(Setting(name, a))
                out.append(Setting(name, f"{a}/{50 * r:g}%", {"inner_layer": INNER_LAYER}))
            elif spec.stage == "in-llm":
                out.append(Setting(name, r, {"layer": min(spec.default_layer, INNER_LAYER)}))
            else:
                out.append(Setting(name, r))
    if "random" in methods:  # the position control: the same random drop with the kept tokens' original positions
        out += [Setting("random", r, {"positions": "original"}) for r in retentions if r in (0.5, 0.1)]
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
        progress: bool = True, command: str = "framepress bench-quality") -> list[dict]:
    """Score every setting and write the table (``out_md``), the raw numbers (``.json``) and the plot (``.png``)."""
    from tqdm import tqdm

    for name in methods:
        registry.get(name)
    bench = Bench(model_path, per_kind, batch)
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


def render(out_md: Path) -> None:
    """The table and the plot from the raw numbers beside ``out_md`` (``.json``)."""
    out_md = Path(out_md)
    data = json.loads(out_md.with_suffix(".json").read_text())
    write_bytes(out_md.with_suffix(".png"), plot(data["rows"]))
    write_text(out_md, markdown(data["rows"], data["meta"], out_md.with_suffix(".png").name))


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
        "| method | retention | kept | LLM MFLOPs | " + " | ".join(kinds) + " | overall | % of full |",
        "|---|---|---|---|" + "---|" * (len(kinds) + 2),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['retention']} | n/a: {r['error']} |" + " |" * (len(kinds) + 3))
            continue
        cells = [r["method"], str(r["retention"] if r["retention"] is not None else "100%"), f"{100 * r['kept']:.1f}%",
                 f"{r['llm_prefill_flops'] / 1e6:.1f}"]
        cells += [f"{100 * r['accuracy'][k]:.1f}" for k in kinds]
        cells += [f"{100 * r['overall']:.1f}", f"{100 * r['overall'] / full:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
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


def _shown(model: str) -> str:
    return "src/framepress/models/synthetic" if model == PACKAGED else model


def plot(rows: list[dict]) -> bytes:
    """Overall accuracy and needle accuracy vs kept tokens, one line per method (two-stage forms dashed)."""
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
    for panel, key, title in ((panels[0], None, "all question kinds"), (panels[1], "needle", "needle (1-2 frames)")):
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
        panel.set_title(title, fontsize=10)
        panel.grid(True, which="both", alpha=0.3)
    panels[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle("packaged synthetic model (a proxy): accuracy vs retention", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()

