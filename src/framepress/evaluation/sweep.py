"""``framepress sweep``: methods x retentions x benchmarks through lmms-eval, resumable, with a progress bar.

Each cell (one benchmark, one method at one retention; plus the full-token run per benchmark) is one lmms-eval
run in its own folder ``OUT/<task>/<method>@<retention>/``: ``results/`` (lmms-eval's output, with
``--log_samples``), ``journal/`` (every finished sample, :mod:`framepress.evaluation.journal`), ``lmms_eval.log``
and, once the run has finished and its results are written, ``cell.json``. A cell with ``cell.json`` is never run
again; an interrupted cell reruns and answers its finished samples from the journal, so at most the sample in
flight is lost. ``framepress report OUT`` then makes the tables and plots.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import registry
from ..files import write_text

FULL = "none"


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    retention: str | None

    @property
    def name(self) -> str:
        return "full" if self.method == FULL else f"{self.method}@{self.retention.replace('/', '_')}"

    def folder(self, out: Path) -> Path:
        return out / self.task / self.name


def cells(tasks: list[str], methods: list[str], retentions: list[str], full: bool = True) -> list[Cell]:
    """The grid, the full-token run of each task first."""
    for method in methods:
        if method not in registry.names():
            raise ValueError(f"--methods: unknown method {method!r}; methods: {', '.join(registry.names())}")
    for r in retentions:
        if "," in r or not r:
            raise ValueError(f"--retentions: bad retention {r!r}")
    grid = []
    for task in tasks:
        if full:
            grid.append(Cell(task, FULL, None))
        grid += [Cell(task, m, r) for m in methods for r in retentions]
    return grid


def command(cell: Cell, out: Path, model: str, frames: int, processes: int, cpu: bool, extra_args: str | None,
            limit: int | None, include_path: str | None) -> tuple[list[str], dict[str, str]]:
    """The lmms-eval command line (and environment) of one cell."""
    folder = cell.folder(out)
    args = [f"pretrained={model}", f"method={cell.method}", f"frames={frames}", f"journal={folder / 'journal'}"]
    if cell.method != FULL:
        args.insert(2, f"retention={cell.retention}")
    if cpu:
        args.append("device=cpu")
    if extra_args:
        args.append(extra_args)
    env = dict(os.environ)
    if processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if cpu:  # accelerate's CPU data parallel: torchrun processes over gloo
            env["ACCELERATE_USE_CPU"] = "true"
        base = [*launch, "-m", "lmms_eval"]
    else:
        base = [sys.executable, "-m", "lmms_eval"]
    cmd = [*base, "--model", "framepress", "--model_args", ",".join(args), "--tasks", cell.task,
           "--batch_size", "1", "--log_samples", "--output_path", str(folder / "results")]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if include_path:
        cmd += ["--include_path", str(include_path)]
    return cmd, env


#: what lmms-eval 0.7.3 logs when a run failed (it still exits with status 0)
FAILURE_MARKS = ("Error during evaluation",)


def failed(returncode: int, log: str, results: bool) -> str | None:
    """Why an lmms-eval run did not really run (None when it did): a non-zero exit, a failure it logged and exited
    0 after (a model that did not set up, an import error inside its evaluator), or no results written."""
    if returncode != 0:
        return f"lmms-eval exited with status {returncode}"
    mark = next((m for m in FAILURE_MARKS if m in log), None)
    if mark is not None:
        line = re.sub(r"\x1b\[[0-9;]*m", "", next(line for line in log.splitlines() if mark in line))  # no colours
        return f"lmms-eval logged: {line.strip()[-300:]} (and exited 0)"
    if not results:
        return "lmms-eval exited 0 without writing results"
    return None


def _journal_count(folder: Path) -> int:
    total = 0
    for file in (folder / "journal").glob("rank*.jsonl"):
        with open(file, "rb") as handle:
            total += handle.read().count(b"\n")
    return total


def run(out: str | Path, model: str, tasks: list[str], methods: list[str], retentions: list[str], *, frames: int = 32,
        processes: int = 1, cpu: bool = False, extra_args: str | None = None, limit: int | None = None,
        include_path: str | None = None, workdir: str | Path | None = None, full: bool = True,
        progress: bool = True) -> list[Cell]:
    """Run every unfinished cell; returns the grid. A failing cell stops the sweep with its log's tail."""
    from tqdm import tqdm

    out = Path(out).resolve()
    grid = cells(tasks, methods, retentions, full)
    done = [c for c in grid if (c.folder(out) / "cell.json").exists()]
    samples_per_task: dict[str, int] = {}
    for c in done:
        samples_per_task.setdefault(c.task, json.loads((c.folder(out) / "cell.json").read_text()).get("samples", 0))
    bar = tqdm(total=len(grid), initial=len(done), desc="sweep", unit="cell", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.2f}/{total} cells [{elapsed}<{remaining}]{postfix}")
    try:
        for cell in grid:
            folder = cell.folder(out)
            if cell in done:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            cmd, env = command(cell, out, model, frames, processes, cpu, extra_args, limit, include_path)
            bar.set_postfix_str(f"{cell.task} {cell.name}")
            base = bar.n
            start = time.time()
            before = set((folder / "results").rglob("*_results.json"))
            with open(folder / "lmms_eval.log", "ab") as log:
                offset = log.tell()
                log.write(("\n$ " + " ".join(cmd) + "\n").encode())
                log.flush()
                process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           cwd=str(workdir) if workdir else None)
                while process.poll() is None:
                    time.sleep(1.0)
                    expected = samples_per_task.get(cell.task)
                    if expected:
                        bar.n = base + min(0.99, _journal_count(folder) / expected)
                        bar.refresh()
            results = sorted(set((folder / "results").rglob("*_results.json")) - before)  # this run's, not an earlier one's
            with open(folder / "lmms_eval.log", "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            failure = failed(process.returncode, text, bool(results))
            if failure:
                raise RuntimeError(f"sweep cell {cell.task} {cell.name} failed: {failure}; log: "
                                   f"{folder / 'lmms_eval.log'}\n{text[-3000:]}")
            samples = _journal_count(folder)
            samples_per_task.setdefault(cell.task, samples)
            write_text(folder / "cell.json", json.dumps({
                "task": cell.task, "method": cell.method, "retention": cell.retention, "model": model,
                "frames": frames, "results": str(results[-1].relative_to(folder)), "samples": samples,
                "seconds": round(time.time() - start, 1), "command": cmd,
            }, indent=1) + "\n")
            bar.n = base + 1
            bar.refresh()
    finally:
        bar.close()
    return grid
