"""``framepress report RESULTS... -o DIR``: tables and plots from lmms-eval result folders of framepress runs.

Every ``*_results.json`` under the given folders is one run (one model, method and retention over some tasks);
the per-sample statistics of its ``*_samples_<task>.jsonl`` (written with ``--log_samples``) give the mean LLM
prefill FLOPs, time to first token, kept tokens and peak memory. Per benchmark (a task, or a group of tasks as
lmms-eval aggregates it) the report holds a table of accuracy, accuracy relative to the full-token run of the same
model, the retention asked and measured ("A%/B%" where an in-LLM stage cuts further), FLOPs and TTFT, per method;
and two plots — accuracy vs retention and accuracy vs FLOPs, one line per method — as PNG files and inside a
self-contained HTML page (``report.html``, pictures embedded), with the tables also in ``report.md``.

The metric of a task is the first of :data:`PREFERRED` it reports, else its first number; ``metrics`` overrides
that per task. A metric reported in [0, 1] is shown as a percentage.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import write_bytes, write_text

PREFERRED = ("accuracy", "acc", "exact_match", "overall", "score", "mc_accuracy", "f1", "avg")


class ReportError(ValueError):
    """A result folder that cannot be reported (missing, interrupted or damaged)."""


@dataclass
class Row:
    """One (model, method, retention) on one benchmark."""

    model: str
    method: str
    retention: str
    benchmark: str
    metric: str
    score: float
    source: Path
    percent: bool = False
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def is_full(self) -> bool:
        return self.method == "full"

    def retention_value(self) -> float:
        """The share of visual tokens reaching the LLM's last stage (measured when samples were logged)."""
        if "kept_final" in self.stats:
            return self.stats["kept_final"]
        if self.is_full:
            return 1.0
        parts = [p.strip().rstrip("%") for p in str(self.retention).split("/")]
        value = float(parts[-1])
        return value / 100 if "%" in str(self.retention) or value > 1 else value


def parse_model_args(text: str) -> dict[str, str]:
    """lmms-eval's ``key=value,key=value`` (values kept as text)."""
    args = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, _, value = part.partition("=")
        args[key.strip()] = value.strip()
    return args


def _pick_metric(task: str, values: dict[str, Any], chosen: dict[str, str]) -> tuple[str, float, bool] | None:
    numbers = {}
    for key, value in values.items():
        name = key.split(",")[0]
        if "stderr" in name or name == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        numbers.setdefault(name, float(value))
    if not numbers:
        return None
    if task in chosen:
        if chosen[task] not in numbers:
            raise ReportError(f"--metric {task}={chosen[task]}: the task reports {', '.join(numbers)}")
        name = chosen[task]
    else:
        name = next((m for m in PREFERRED if m in numbers), next(iter(numbers)))
    value = numbers[name]
    return name, value * 100 if 0 <= value <= 1 else value, 0 <= value <= 1


def _samples_stats(files: list[Path]) -> dict[str, float]:
    """Means of framepress's per-sample statistics over the logged samples of one benchmark."""
    columns: dict[str, list[float]] = defaultdict(list)
    for file in files:
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError:
                raise ReportError(f"{file} line {number} is damaged (an interrupted write?); rerun that cell") from None
            for counts in sample.get("token_counts") or []:
                if not counts or "llm_prefill_flops" not in counts:
                    continue  # not a framepress sample (or a response from lmms-eval's cache)
                if "visual_tokens_in" in counts:
                    visual_in = max(counts["visual_tokens_in"], 1)
                    stages = counts.get("stages") or []
                    first = stages[0]["visual_out"] if stages else counts["visual_tokens_out"]
                    columns["kept_first"].append(first / visual_in)
                    columns["kept_final"].append(counts["visual_tokens_out"] / visual_in)
                for key in ("llm_prefill_flops", "prefill_s", "total_s", "peak_memory_mb"):
                    if counts.get(key) is not None:
                        columns[key].append(float(counts[key]))
    stats = {k: statistics.fmean(v) for k, v in columns.items() if v}
    if "prefill_s" in columns:
        stats["prefill_s_median"] = statistics.median(columns["prefill_s"])
    return stats


def collect(folders: list[str | Path], metrics: dict[str, str] | None = None) -> list[Row]:
    """Every (model, method, retention, benchmark) found under ``folders`` (the newest run wins a duplicate)."""
    metrics = metrics or {}
    rows: dict[tuple, Row] = {}
    stamps: dict[tuple, str] = {}
    for folder in map(Path, folders):
        if not folder.exists():
            raise ReportError(f"results folder {folder} does not exist")
        files = [folder] if folder.is_file() else sorted(folder.rglob("*_results.json"))
        if not files:
            journals = sorted(folder.rglob("rank*.jsonl"))
            hint = (f"; it holds a journal of {sum(len(j.read_text().splitlines()) for j in journals)} finished "
                    "samples: the run was interrupted, rerun the same command to finish it") if journals else ""
            raise ReportError(f"no lmms-eval results (*_results.json) under {folder}{hint}")
        for file in files:
            try:
                data = json.loads(file.read_text())
                results = data["results"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
                raise ReportError(f"{file} is not a complete lmms-eval results file ({exc})") from None
            args = parse_model_args((data.get("config") or {}).get("model_args", ""))
            model = args.get("pretrained", (data.get("config") or {}).get("model", "?"))
            method = args.get("method", "?")
            method = "full" if method.lower() in ("none", "full") else method
            retention = args.get("retention", "100%" if method == "full" else "?")
            groups = data.get("group_subtasks") or {}
            members = {t for subtasks in groups.values() for t in subtasks}
            stamp = file.name.split("_results.json")[0]
            for task, values in results.items():
                if task in members:
                    continue
                picked = _pick_metric(task, values, metrics)
                if picked is None:
                    continue
                leaves = _leaves(task, groups)
                samples = [s for t in leaves for s in file.parent.glob(f"{stamp}_samples_{t}.jsonl")]
                key = (model, method, retention, task)
                if key in rows and stamps[key] > stamp:
                    continue
                rows[key] = Row(model, method, retention, task, picked[0], picked[1], file, picked[2],
                                _samples_stats(samples))
                stamps[key] = stamp
    if not rows:
        raise ReportError(f"no task scores found in {', '.join(map(str, folders))}")
    return list(rows.values())


def _leaves(task: str, groups: dict[str, list[str]]) -> list[str]:
    if not groups.get(task):
        return [task]
    return [leaf for sub in groups[task] for leaf in _leaves(sub, groups)]


def _flops_text(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _flops_unit(values: list[float]) -> tuple[str, float]:
    top = max(values, default=1e12)
    return next(((u, s) for u, s in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6)) if top >= s), ("FLOPs", 1.0))


def _percent(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%".replace(".0%", "%")


def kept_text(row: Row) -> str:
    """Measured retention, "A%/B%" when a later stage cut further."""
    if "kept_final" not in row.stats:
        return "—"
    first, final = row.stats["kept_first"], row.stats["kept_final"]
    return _percent(final) if abs(first - final) < 1e-9 else f"{_percent(first)}/{_percent(final)}"


def table(rows: list[Row]) -> list[dict[str, str]]:
    """The rows of one (model, benchmark), full first, then by method and decreasing retention."""
    full = next((r for r in rows if r.is_full), None)
    ordered = sorted(rows, key=lambda r: (not r.is_full, r.method, -r.retention_value()))
    out = []
    for r in ordered:
        flops = r.stats.get("llm_prefill_flops")
        out.append({
            "method": r.method,
            "retention": "100%" if r.is_full else str(r.retention),
            "kept": kept_text(r),
            r.metric: f"{r.score:.1f}",
            "vs full": f"{100 * r.score / full.score:.1f}%" if full and full.score else "—",
            "LLM prefill FLOPs": "—" if flops is None else _flops_text(flops),
            "TTFT (s)": "—" if "prefill_s" not in r.stats else f"{r.stats['prefill_s']:.3g}",
            "peak MB": "—" if "peak_memory_mb" not in r.stats else f"{r.stats['peak_memory_mb']:.0f}",
        })
    return out


def markdown(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    cells = "".join("<th>" + html.escape(h) + "</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[h])}</td>" for h in head) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def figure(rows: list[Row], x: str, title: str):
    """The matplotlib figure of the benchmark's score against retention (``x="retention"``) or LLM prefill FLOPs
    (``x="flops"``), one line per method; the full-token score as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    by_method: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_method[r.method].append(r)
    full = by_method.pop("full", [None])[0]
    unit, scale = _flops_unit([r.stats["llm_prefill_flops"] for r in rows if "llm_prefill_flops" in r.stats])

    def xvalue(r: Row) -> float | None:
        if x == "retention":
            return 100 * r.retention_value()
        flops = r.stats.get("llm_prefill_flops")
        return None if flops is None else flops / scale

    xs = []
    for method, points in sorted(by_method.items()):
        points = sorted((p for p in points if xvalue(p) is not None), key=xvalue)
        if points:
            xs += [xvalue(p) for p in points]
            axes.plot([xvalue(p) for p in points], [p.score for p in points], marker="o", label=method)
    if full is not None:
        axes.axhline(full.score, color="0.3", linestyle="--", linewidth=1, label="full tokens")
        if x == "flops" and xvalue(full) is not None:
            xs.append(xvalue(full))
            axes.plot([xvalue(full)], [full.score], marker="*", markersize=11, color="0.3", linestyle="none")
    if xs:
        _x_axis(axes, xs)
    axes.set_xlabel("visual tokens kept (%)" if x == "retention" else f"LLM prefill {unit} per sample")
    axes.set_ylabel(rows[0].metric + (" (%)" if rows[0].percent else ""))
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _x_axis(axes, xs: list[float]) -> None:
    """A log axis when the points span a decade or more (retentions from 50% down to 1%), else a linear one
    around them: a log axis over a narrow range has no major tick and labels its minor ones as 4.99x10^1."""
    import matplotlib.ticker as ticker

    low, high = min(xs), max(xs)
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    if low > 0 and high / low >= 10:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        span = high - low
        pad = 0.08 * span if span > 0 else 0.05 * abs(high) or 1.0
        axes.set_xlim(low - pad, high + pad)
        axes.xaxis.set_major_locator(ticker.MaxNLocator(6))
    axes.xaxis.set_major_formatter(plain)


def plot(rows: list[Row], x: str, title: str) -> bytes:
    """The PNG of :func:`figure`."""
    import matplotlib.pyplot as plt

    drawn = figure(rows, x, title)
    buffer = io.BytesIO()
    drawn.savefig(buffer, format="png")
    plt.close(drawn)
    return buffer.getvalue()


def write_report(folders: list[str | Path], out: str | Path, metrics: dict[str, str] | None = None) -> Path:
    """Write report.md, report.html and the PNG plots of ``folders`` into ``out``; returns the HTML path."""
    out = Path(out)
    rows = collect(folders, metrics)
    benchmarks: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        benchmarks[(r.model, r.benchmark)].append(r)
    md = ["# framepress evaluation report\n"]
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>framepress evaluation report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
            "img{max-width:49%}</style></head><body><h1>framepress evaluation report</h1>"]
    for (model, benchmark), group in sorted(benchmarks.items()):
        title = f"{benchmark} — {model}"
        rows_out = table(group)
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{Path(model).name}_{benchmark}")
        md.append(f"## {title}\n\n{markdown(rows_out)}")
        page.append(f"<h2>{html.escape(title)}</h2>{_html_table(rows_out)}")
        if not any(not r.is_full for r in group):
            continue
        for kind in ("retention", "flops"):
            if kind == "flops" and not any("llm_prefill_flops" in r.stats for r in group):
                continue
            png = plot(group, kind, f"{benchmark}: {group[0].metric} vs {kind}")
            name = f"{slug}_vs_{kind}.png"
            write_bytes(out / name, png)
            md.append(f"![{benchmark} vs {kind}]({name})\n")
            page.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    page.append("</body></html>")
    write_text(out / "report.md", "\n".join(md))
    return write_text(out / "report.html", "\n".join(page))


def parse_metric_options(options: list[str]) -> dict[str, str]:
    chosen = {}
    for option in options or []:
        task, sep, metric = option.partition("=")
        if not sep or not task or not metric:
            raise ReportError(f"--metric takes TASK=METRIC, got {option!r}")
        chosen[task] = metric
    return chosen

