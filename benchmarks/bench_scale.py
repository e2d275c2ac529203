"""How time and peak memory of every pre-LLM method grow with the number of frames; write the table to
docs/benchmarks.md.

    python benchmarks/bench_scale.py                 # 8..256 frames of 14 x 14 x 3584 at 10%, one thread
    python benchmarks/bench_scale.py --frames 32 64 --methods unified --no-write

Each (method, frames) runs in its own subprocess, so one run's peak memory is not another's: the child builds
the input, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``; tracemalloc does not see torch's CPU
allocations), runs the method once and reports VmHWM minus the RSS at the reset, then times ``--repeat`` more
runs (fewer at the large sizes). A run past ``--timeout`` seconds is reported as such, never dropped. The
growth exponent is the least-squares log-log slope over the sizes of at least 32 frames (below that, fixed
costs dominate). Then unified/holitom at 2% and 10% on 32 x 14 x 14 x 3584, side by side in one process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import framepress
from framepress import registry
from framepress.features import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import cpu_name, write_section  # noqa: E402

GRID, CHANNELS = (14, 14), 3584


def pre_llm_methods() -> list[str]:
    return [m for m in framepress.methods() if registry.get(m).stage == "pre-llm"]


def inputs(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = synthetic(frames, *GRID, CHANNELS, seed=0)
    scores = torch.rand(frames, *GRID, generator=torch.Generator().manual_seed(0))
    return x, scores


def call(method: str, x: torch.Tensor, scores: torch.Tensor, retention: float):
    params = {"scores": scores} if "scores" in registry.get(method).params else {}
    return lambda: framepress.compress(x, method, retention=retention, **params)


def kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(method: str, frames: int, retention: float, repeat: int) -> None:
    """One (method, size): peak memory of the first run above the input's (after a warm-up on 4 frames, so that
    one-time allocations of torch and the method's first call do not count), then the median of ``repeat`` runs."""
    x, scores = inputs(frames)
    fn = call(method, x, scores, retention)
    try:
        call(method, x[:4], scores[:4], retention)()
    except ValueError:  # a budget the method's own rule refuses on 4 frames (e.g. DyCoke's floor)
        pass
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = kib("VmRSS")
    start = time.perf_counter()
    out = fn()
    times = [time.perf_counter() - start]
    peak = kib("VmHWM") - base
    if repeat:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    print(json.dumps({"s": statistics.median(times), "mb": peak / 1024, "tokens": len(out)}))


def measure(method: str, frames: int, args) -> dict:
    repeat = args.repeat if frames <= 32 else 1 if frames <= 64 else 0
    cmd = [sys.executable, __file__, "--child", method, str(frames), str(args.retention), str(repeat),
           "--threads", str(args.threads), "--grid", f"{GRID[0]}x{GRID[1]}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"timeout": True}
    except subprocess.CalledProcessError as e:
        last = e.stderr.strip().splitlines()[-1] if e.stderr.strip() else f"exit {e.returncode}"
        print(f"{method} {frames} frames: {last}", flush=True)
        return {"error": last.split(":")[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(points: list[tuple[int, float]]) -> str:
    """Least-squares slope of log(value) against log(frames) over the sizes >= 32 frames."""
    pts = [(math.log(f), math.log(v)) for f, v in points if f >= 32 and v > 0]
    if len(pts) < 2:
        return "-"
    mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
    return f"{sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts):.2f}"


def sweep(args) -> list[str]:
    head = " | ".join(f"{f} fr" for f in args.frames)
    lines = [
        f"Seconds (median) / peak MB above the input, per method and frames of {GRID[0]} x {GRID[1]} x {CHANNELS}, "
        f"retention {args.retention}; exponent = log-log slope over >= 32 frames.\n",
        f"| method | {head} | time exp. | memory exp. |",
        "|---|" + "---|" * (len(args.frames) + 2),
    ]
    for method in args.methods:
        cells, times, mems = [], [], []
        for frames in args.frames:
            r = measure(method, frames, args)
            if "timeout" in r:
                cells.append(f"> {args.timeout:.0f} s (stopped)")
            elif "error" in r:
                cells.append(f"refused ({r['error']})")
            else:
                cells.append(f"{r['s']:.3g} s / {r['mb']:.0f} MB")
                times.append((frames, r["s"]))
                mems.append((frames, max(r["mb"], 1.0)))
            print(f"{method} {frames} frames: {cells[-1]}", flush=True)
        lines.append(f"| {method} | {' | '.join(cells)} | {slope(times)} | {slope(mems)} |")
    return lines


def ratio(args) -> list[str]:
    """unified and holitom at 2% and 10% on 32 frames, alternated in one process; medians of --ratio-repeat."""
    x, scores = inputs(32)
    lines = ["\n| retention | unified (s) | holitom (s) | unified / holitom |", "|---|---|---|---|"]
    for retention in (0.02, 0.1):
        fns = {m: call(m, x, scores, retention) for m in ("unified", "holitom")}
        times = {m: [] for m in fns}
        for m, fn in fns.items():
            fn()  # warm-up
        for _ in range(args.ratio_repeat):
            for m, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[m].append(time.perf_counter() - start)
        u, h = statistics.median(times["unified"]), statistics.median(times["holitom"])
        lines.append(f"| {retention:.0%} | {u:.3f} | {h:.3f} | {u / h:.2f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every pre-LLM method")
    parser.add_argument("--retention", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs up to 32 frames (64: 1; larger: the first)")
    parser.add_argument("--ratio-repeat", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per (method, size) subprocess")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: one core)")
    parser.add_argument("--no-ratio", action="store_true", help="skip the unified/holitom ratio")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--grid", default="14x14", help="H x W of each frame's tokens (default 14x14; 13x13: LLaVA-Video)")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "FRAMES", "RETENTION", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global GRID
    GRID = tuple(int(v) for v in args.grid.lower().split("x"))
    if args.child:
        method, frames, retention, repeat = args.child
        child(method, int(frames), float(retention), int(repeat))
        return
    args.methods = args.methods or pre_llm_methods()
    start = time.perf_counter()
    lines = sweep(args) + ([] if args.no_ratio else ratio(args))
    text = (
        f"Command: `python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`".rstrip()
        + f"  \nMachine: {cpu_name()}, {os.cpu_count()} cores shared with other work at the time, {args.threads} "
        f"torch thread(s); torch {torch.__version__}, Python {platform.python_version()}  \n"
        f"Date: {datetime.date.today().isoformat()}; synthetic features; whole run "
        f"{(time.perf_counter() - start) / 60:.1f} min.\n\n" + "\n".join(lines) + "\n"
    )
    print(text)
    if not args.no_write:
        key = "bench_scale_cpu" if GRID == (14, 14) else f"bench_scale_cpu_{GRID[0]}x{GRID[1]}"
        write_section(text, key, "Growth with the number of frames (CPU)" if GRID == (14, 14)
                      else f"Peak memory on {GRID[0]} x {GRID[1]} grids (CPU)")


if __name__ == "__main__":
    main()
