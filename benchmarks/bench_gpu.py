"""Every pre-LLM method on a GPU: 32 x 14 x 14 x 3584 bfloat16 (LLaVA-OV-7B's video tokens) and one hour at 1 fps.

    python benchmarks/bench_gpu.py --doc          # on a CUDA machine: times with CUDA events, writes docs/benchmarks.md
    python benchmarks/bench_gpu.py --device cpu --frames 4 --hour-frames 32   # a smoke run anywhere

Each method runs once to warm up, then ``--repeat`` times between CUDA events (a synchronised wall clock on the
CPU); the table gives the median in ms, the peak memory the allocator saw above the input
(``torch.cuda.max_memory_allocated``), and the tokens kept. The unified paper reports 74 ms for its pre-LLM step
and 8.6 ms for FastVID at ~2% (Table 6), the reference printed beside. The hour is streamed through
:class:`framepress.Stream` (features generated window by window on the device, never the whole video).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

import framepress
from framepress.features import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import cpu_name, write_section  # noqa: E402

#: (method, retention): every pre-LLM method at the paper's ~2% and at 10%
RUNS = [(m, r) for r in (0.02, 0.1) for m in ("unified", "fastvid", "holitom", "visionzip", "prunevid", "divprune",
                                               "sttm", "gridpool", "dycoke", "framefusion", "pool", "random")]
PAPER_MS = {"unified": 74.0, "fastvid": 8.6}


def timed(fn, device: torch.device, repeat: int) -> tuple[float, object]:
    """Median milliseconds of ``fn()`` over ``repeat`` runs after one warm-up, and its last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def peak_mb(device: torch.device, fn) -> float:
    """Peak allocator memory of one ``fn()`` above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def call(method: str, x: torch.Tensor, retention: float, scores: torch.Tensor):
    """The method on ``x`` with the vision scores it needs (the grid before pooling for gridpool is stood in for by x)."""
    params = {"scores": scores} if "scores" in framepress.registry.get(method).params else {}
    return lambda: framepress.compress(x, method, retention, **params)


def grid_runs(args, device, dtype) -> list[str]:
    T, H, W, C = args.frames, 14, 14, args.channels
    x = synthetic(T, H, W, C, seed=0).to(device=device, dtype=dtype)
    scores = torch.rand(T, H, W, generator=torch.Generator().manual_seed(0)).softmax(-1).to(device)
    rows = ["| method | retention | ms (median) | paper ms | peak MB above input | tokens |", "|---|---|---|---|---|---|"]
    for method, retention in RUNS:
        try:
            run = call(method, x, retention, scores)
            ms, out = timed(run, device, args.repeat)
            mb = peak_mb(device, run)
            paper = PAPER_MS.get(method, "") if retention == 0.02 else ""
            rows.append(f"| {method} | {retention:.0%} | {ms:.1f} | {paper} | {mb:.0f} | {len(out)} |")
        except ValueError as exc:  # a budget the method's own rule refuses (e.g. DyCoke below 25%)
            rows.append(f"| {method} | {retention:.0%} | refused: {exc} | | | |")
        print(rows[-1], flush=True)
    return rows


def hour_runs(args, device, dtype) -> list[str]:
    rows = ["| method | seconds | peak MB | tokens |", "|---|---|---|---|"]
    window = 16
    for method in ("pool", "random", "sttm", "holitom", "fastvid", "prunevid", "visionzip", "gridpool",
                   "framefusion", "divprune", "unified"):
        stream = framepress.Stream(method, 0.1, window=window)
        needs = "scores" in framepress.registry.get(method).params
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for s in range(0, args.hour_frames, window):
            n = min(window, args.hour_frames - s)
            x = synthetic(n, 14, 14, args.hour_channels, seed=s).to(device=device, dtype=dtype)
            stream.push(x, **({"scores": torch.rand(n, 14, 14, device=device).softmax(-1)} if needs else {}))
        tokens = stream.tokens()
        if device.type == "cuda":
            torch.cuda.synchronize()
        mb = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        rows.append(f"| {method} | {time.perf_counter() - t0:.1f} | {mb:.0f} | {len(tokens)} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3584)
    parser.add_argument("--hour-frames", type=int, default=3600)
    parser.add_argument("--hour-channels", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--doc", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for a smoke run)")
    dtype = getattr(torch, args.dtype)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    grid = grid_runs(args, device, dtype)
    hour = hour_runs(args, device, dtype)
    if args.doc:
        text = (f"Command: `python benchmarks/bench_gpu.py --doc`; device: {card}; torch {torch.__version__}; "
                f"{datetime.date.today()}. {args.frames} x 14 x 14 x {args.channels} {args.dtype}, median of "
                f"{args.repeat} runs between CUDA events after a warm-up.\n\n" + "\n".join(grid) + "\n\n"
                f"One hour at 1 fps ({args.hour_frames} x 14 x 14 x {args.hour_channels}), streamed 16 frames a "
                "window at 10%:\n\n" + "\n".join(hour) + "\n")
        write_section(text, "gpu", "GPU")


if __name__ == "__main__":
    main()
