"""Time every registered method on realistic Video-LLM feature shapes and write the table to docs/benchmarks.md.

    python benchmarks/bench_methods.py                      # CPU, one thread, both shapes, all methods
    python benchmarks/bench_methods.py --sttm-official ../STTM   # also time the official STTM merger

Features are synthetic (smooth random fields with scene cuts, ``framepress.features.synthetic``), so the token
counts of threshold methods are not those of a real model; the shapes and the work are. Times are medians of
``--repeat`` runs after one warm-up, measured side by side in one process; the ratio is to 2x2 bilinear pooling
(``pool``, LLaVA's own video pooling) on the same input.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import framepress
from framepress.features import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import cpu_name, write_section  # noqa: E402

SHAPES = [(32, 14, 14, 3584), (64, 13, 13, 3584)]

# (label, method, retention, params): the default setting and a budget of each method
RUNS = [
    ("pool (2x2 bilinear, baseline)", "pool", None, {}),
    ("pool retention 0.1", "pool", 0.1, {}),
    ("frames retention 0.5", "frames", 0.5, {}),
    ("random retention 0.3", "random", 0.3, {}),
    ("sttm tau 0.8/0.6 (paper 30%)", "sttm", None, {"tau_s": 0.8, "tau_t": 0.6}),
    ("sttm tau 0.9/0.8", "sttm", None, {"tau_s": 0.9, "tau_t": 0.8}),
    ("sttm retention 0.3 (threshold search)", "sttm", 0.3, {}),
    ("sttm retention 0.1 (threshold search)", "sttm", 0.1, {}),
    ("unified retention 0.1", "unified", 0.1, {}),
    ("unified retention 0.02", "unified", 0.02, {}),
    ("visionzip retention 0.1", "visionzip", 0.1, {}),
    ("visionzip retention 0.02", "visionzip", 0.02, {}),
    ("holitom retention 0.1", "holitom", 0.1, {}),
    ("holitom retention 0.02", "holitom", 0.02, {}),
    ("fastvid retention 0.1", "fastvid", 0.1, {}),
    ("fastvid retention 0.02", "fastvid", 0.02, {}),
    ("prunevid retention 0.1", "prunevid", 0.1, {}),
    ("dycoke default (K=0.7)", "dycoke", None, {}),
    ("dycoke retention 0.3", "dycoke", 0.3, {}),
    ("divprune retention 0.1", "divprune", 0.1, {}),
    ("divprune retention 0.02", "divprune", 0.02, {}),
    ("gridpool 4:1 (on the unpooled 27x27 grid)", "gridpool", None, {}),
    ("gridpool 8:1 (on the unpooled 27x27 grid)", "gridpool", None, {"setting": "8:1"}),
]
#: Pre-LLM processing time the unified paper reports at ~2% on LLaVA-OV-7B (Table 6; GPU not stated), in ms.
PAPER_GPU_MS = {"unified": 74.0, "fastvid": 8.6, "visionzip": 35.8, "holitom": 88.7}


def median_ms(fn, repeat: int, device: torch.device) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), out




def official_sttm(path: str):
    """The official ``quadtree_build_video`` from a checkout of HYUNJS/STTM (needs einops); run, never copied."""
    sys.path.insert(0, str(Path(path).resolve()))
    module = importlib.import_module("token_merging_utils.quadtree_builder")
    return module.quadtree_build_video


def run(args) -> str:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    official = official_sttm(args.sttm_official) if args.sttm_official else None
    lines = []
    for shape in SHAPES:
        T, H, W, C = shape
        x = synthetic(*shape, seed=0).to(device=device, dtype=getattr(torch, args.dtype))
        # stand-in vision scores for the methods that take them (timing barely depends on their values)
        scores = torch.rand(T, H, W, generator=torch.Generator().manual_seed(0)).to(device)
        # the projector's grid before LLaVA's 2x2 pooling, for methods that replace that pooling
        unpooled = synthetic(T, 27, 27, C, seed=0).to(device=device, dtype=x.dtype)
        base_ms, _ = median_ms(lambda: framepress.compress(x, "pool"), args.repeat, device)
        lines.append(f"\n**{T} x {H} x {W} x {C}** ({T * H * W} tokens), {args.dtype}, {device.type}\n")
        lines.append("| method | tokens out | ms (median) | x 2x2 pool | paper, GPU, ~2% (ms) |")
        lines.append("|---|---|---|---|---|")
        for label, method, retention, params in RUNS:
            if method not in framepress.methods():
                continue
            spec = framepress.registry.get(method)
            if "scores" in spec.params:
                params = dict(params, scores=scores)
            data = unpooled if spec.grid == "unpooled" else x
            ms, out = median_ms(lambda: framepress.compress(data, method, retention=retention, **params), args.repeat, device)
            paper = PAPER_GPU_MS.get(method, "") if retention == 0.02 else ""
            lines.append(f"| {label} | {len(out)} | {ms:.1f} | {ms / base_ms:.1f} | {paper} |")
            print(f"{shape} {label}: {len(out)} tokens, {ms:.1f} ms", flush=True)
        if official is not None:
            video = x.permute(0, 3, 1, 2).contiguous()
            for tau_s, tau_t in [(0.8, 0.6), (0.9, 0.8)]:
                ms, out = median_ms(lambda: official(video.clone(), tau_s, tau_t, root_level=1), args.repeat, device)
                ours, mine = median_ms(lambda: framepress.compress(x, "sttm", tau_s=tau_s, tau_t=tau_t), args.repeat, device)
                same = len(out[0]) == len(mine) and torch.equal(out[2].long(), mine.boxes)
                lines.append(
                    f"| official STTM code, tau {tau_s}/{tau_t} | {len(out[0])} | {ms:.1f} | {ms / base_ms:.1f} "
                    f"(framepress {ours:.1f} ms, {ms / ours:.1f}x faster; same tokens: {same}) | |"
                )
                print(f"{shape} official sttm {tau_s}/{tau_t}: {ms:.1f} ms vs {ours:.1f} ms, same tokens {same}", flush=True)
    machine = (
        f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} torch thread(s)"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device)
    )
    header = (
        f"Command: `python benchmarks/bench_methods.py {' '.join(sys.argv[1:])}`".rstrip()
        + f"  \nMachine: {machine}; torch {torch.__version__}, Python {platform.python_version()}  \n"
        f"Date: {datetime.date.today().isoformat()}; medians of {args.repeat} runs after a warm-up; "
        "synthetic features (smooth random fields with scene cuts)."
    )
    return header + "\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: one core)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sttm-official", metavar="DIR", help="a checkout of github.com/HYUNJS/STTM to time beside")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    text = run(args)
    print(text)
    if not args.no_write:
        kind = torch.device(args.device).type
        write_section(text, f"bench_methods_{kind}", f"Pre-LLM method overhead ({kind.upper()})")


if __name__ == "__main__":
    main()
