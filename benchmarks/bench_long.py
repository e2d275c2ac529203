"""One hour at 1 fps, streamed: every pre-LLM method through ``framepress.Stream`` on 3,600 x 14 x 14 x C features.

The features are generated window by window (a slowly drifting field plus noise, with a scene cut every ten
minutes) and pushed as they are made, so the whole [3600, 14, 14, C] tensor never exists (at C = 256 it
would be 723 MB of float32; at a real model's C = 3584, 10 GB). Each method runs in its own process, whose
peak RSS (``ru_maxrss``) and wall time are recorded; a method that fails or passes the time limit is reported
as such. The table goes into docs/benchmarks.md under its own heading (``--doc``), written atomically.

    python benchmarks/bench_long.py --doc            # all methods, 3600 frames, C=256, window 16, retention 0.25
    python benchmarks/bench_long.py --frames 120     # a quick look, no doc
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
KEY = "bench-long"
HEADING = "One hour at 1 fps, streamed (every pre-LLM method)"
SCORED = ("fastvid", "holitom", "unified", "visionzip")


def features(start: int, n: int, H: int, W: int, C: int, seed: int):
    """Frames [start, start + n) of the synthetic hour (the same for the same start and n): a scene (600
    frames) is a random field that drifts slowly; each frame adds its own noise."""
    import torch

    t = torch.arange(start, start + n)
    out = torch.empty(n, H, W, C)
    for scene in torch.unique(t // 600).tolist():
        field, drift = torch.randn(2, H, W, C, generator=torch.Generator().manual_seed(seed * 1000 + scene))
        here = (t // 600) == scene
        phase = ((t[here] % 600) / 600).view(-1, 1, 1, 1)
        out[here] = field + drift * phase
    noise = torch.Generator().manual_seed(seed * 10**6 + start)
    return out.add_(torch.randn(n, H, W, C, generator=noise), alpha=0.3)


def run_one(args: argparse.Namespace) -> dict:
    """One method, in this process: stream the hour, return its numbers (time: compression alone, the
    generation of the features not counted)."""
    import torch

    import framepress

    torch.set_num_threads(args.threads)
    method = args.one
    params = {"scores": "norm"} if method in SCORED else {}
    stream = framepress.Stream(method, args.retention, window=args.window, **params)
    H, W, C = args.grid
    seconds = 0.0
    for s in range(0, args.frames, args.window):
        chunk = features(s, min(args.window, args.frames - s), H, W, C, args.seed)
        start = time.perf_counter()
        stream.push(chunk)
        seconds += time.perf_counter() - start
        del chunk
        print(json.dumps({"frames": stream.frames, "seconds": round(seconds, 1), "peak_rss_mb": _peak_mb()}), flush=True)
    start = time.perf_counter()
    out = stream.tokens()
    seconds += time.perf_counter() - start
    out.check()
    return {"method": method, "seconds": round(seconds, 1), "peak_rss_mb": _peak_mb(), "tokens_in": out.num_input,
            "tokens_out": len(out), "windows": len(out.info["windows"])}


def _peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: kilobytes


def baseline(args: argparse.Namespace) -> dict:
    """Peak RSS of the same process doing everything but compressing: imports and one window of features."""
    import torch

    import framepress

    torch.set_num_threads(args.threads)
    framepress.methods()
    H, W, C = args.grid
    features(0, args.window, H, W, C, args.seed)
    return {"peak_rss_mb": _peak_mb()}


def child(args: argparse.Namespace, method: str | None) -> dict:
    cmd = [sys.executable, __file__, "--frames", str(args.frames), "--window", str(args.window), "--retention",
           str(args.retention), "--grid", "x".join(map(str, args.grid)), "--seed", str(args.seed), "--threads",
           str(args.threads), "--one", method or "-"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit)
    except subprocess.TimeoutExpired as exc:  # how far it got, from its progress lines
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        seen = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        got = f"{seen[-1]['frames']:,} of {args.frames:,} frames in {seen[-1]['seconds']} s, peak RSS then " \
            f"{seen[-1]['peak_rss_mb']:,} MB" if seen else "no window finished"
        return {"method": method, "error": f"did not finish within the {args.limit} s limit ({got})"}
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1]
        return {"method": method, "error": last[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict], base: dict, args: argparse.Namespace, command: str) -> str:
    H, W, C = args.grid
    lines = [
        f"`{command}` ({datetime.date.today().isoformat()}; {platform.processor() or platform.machine()}, "
        f"{args.threads} torch threads, Python {platform.python_version()}; the machine's **2 CPU cores were shared "
        "with other work** at the time, so the times are upper bounds).",
        "",
        f"{args.frames} frames x {H} x {W} x {C} float32 ({args.frames * H * W:,} tokens; "
        f"{args.frames * H * W * C * 4 / 2**20:,.0f} MB if held whole, which it never is: generated and pushed "
        f"{args.window} frames at a time), `framepress.Stream(method, {args.retention}, window={args.window})`, "
        "the `even` split (every window its share); `scores=\"norm\"` for the methods that take scores; divprune "
        "and unified in two levels (level 1 per window, level 2 across groups of at most `max_tokens` = "
        f"{_default_max()} survivors). Peak RSS is the whole process's (Python, torch, the features of one window, "
        f"the tokens kept); the same process without compressing peaks at {base['peak_rss_mb']} MB.",
        "",
        "| method | tokens out | windows | time (s) | peak RSS (MB) | within 4 GB and the time limit |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['method']}` | - | - | - | - | {r['error']} |")
        else:
            ok = "yes" if r["peak_rss_mb"] <= 4096 else "**no**"
            lines.append(f"| `{r['method']}` | {r['tokens_out']:,} | {r['windows']} | {r['seconds']} | "
                         f"{r['peak_rss_mb']:,} | {ok} |")
    return "\n".join(lines) + "\n"


def _default_max() -> int:
    from framepress.stream import DEFAULT_MAX_TOKENS

    return DEFAULT_MAX_TOKENS


def write_doc(text: str) -> None:
    """Replace this benchmark's marked block of docs/benchmarks.md (or add it under its heading), reading the
    page just before writing so that other sections' edits stay; the write is atomic."""
    from framepress.files import write_text

    start, end = f"<!-- {KEY}:start -->", f"<!-- {KEY}:end -->"
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + f"\n\n## {HEADING}\n\n" + block + "\n"
    write_text(DOC, doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=3600)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--retention", type=float, default=0.25)
    p.add_argument("--grid", default="14x14x256", help="HxWxC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=45, help="seconds per method before it counts as not finished")
    p.add_argument("--methods", help="comma-separated (default: every pre-LLM method)")
    p.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.grid = tuple(int(v) for v in args.grid.split("x"))
    if args.one:
        print(json.dumps(baseline(args) if args.one == "-" else run_one(args)))
        return
    import framepress

    names = args.methods.split(",") if args.methods else framepress.methods("pre-llm")
    base = child(args, None)
    print(f"baseline peak RSS {base.get('peak_rss_mb')} MB", flush=True)
    rows = []
    for name in names:
        rows.append(child(args, name))
        print(json.dumps(rows[-1]), flush=True)
    command = "python " + " ".join([os.path.relpath(__file__, DOC.parents[1])] + sys.argv[1:])
    text = table(rows, base, args, command)
    print(text)
    if args.doc:
        write_doc(text)


if __name__ == "__main__":
    main()
