"""The ``framepress`` command line."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__, features, flops, registry
from .api import compress


def _param(text: str) -> tuple[str, Any]:
    """``name=value``; the value is a Python literal when it parses as one, else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"parameters are name=value, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"shape is TxHxWxC, e.g. 32x14x14x3584; got {text!r}")
    return dims


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _scores(spec: str, grid: tuple[int, int, int], device) -> torch.Tensor | str:
    """--scores: "norm", or a .npy / .safetensors file of [T, H, W] vision contribution scores."""
    if spec == "norm":
        return spec
    x = features.load_array(spec)
    if tuple(x.shape) != tuple(grid):
        raise ValueError(f"--scores {spec}: shape {list(x.shape)}, the features need [T, H, W] = {list(grid)}")
    return x.to(device=device, dtype=torch.float32)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _format_default(value: Any) -> str:
    return "required" if value is inspect.Parameter.empty else repr(value)


def cmd_methods(args: argparse.Namespace) -> int:
    rows = []
    for name in registry.names():
        m = registry.get(name)
        params = ", ".join(f"{k}={_format_default(v)}" for k, v in m.params.items()) or "-"
        rows.append([name, m.stage, "yes" if m.query_aware else "no", m.budget, params, m.paper])
    if args.json:
        print(json.dumps([dict(zip(["name", "stage", "query_aware", "budget", "params", "paper"], r)) for r in rows], indent=1))
    else:
        print(_table(rows, ["method", "stage", "query-aware", "budget", "parameters", "paper"]))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    if args.features is None and args.synthetic is None:
        raise ValueError("give a features file (.npy/.safetensors) or --synthetic TxHxWxC")
    if args.features is not None:
        x = features.load(args.features, key=args.key, grid=args.grid)
        origin = args.features
    else:
        x = features.synthetic(*args.synthetic, seed=args.seed)
        origin = f"synthetic {'x'.join(map(str, args.synthetic))} (smooth random fields, seed {args.seed})"
    try:
        device = torch.device(args.device)
        x = x.to(device=device, dtype=getattr(torch, args.dtype) if args.dtype else x.dtype)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"--device {args.device!r} cannot be used: {exc}") from None
    names = args.method or registry.names("pre-llm")
    if args.output and len(names) != 1:
        raise ValueError("--output needs exactly one --method")
    params = dict(args.param or [])
    unused = sorted(set(params) - {k for n in names for k in registry.get(n).params})
    if unused:
        raise ValueError(f"no chosen method takes the parameter(s) {', '.join(unused)}")
    T, H, W, C = x.shape
    scores = _scores(args.scores, (T, H, W), x.device)
    llm = flops.PRESETS[args.llm] if args.llm else None
    results = []
    for name in names:
        accepted = registry.get(name).params
        own = {k: v for k, v in params.items() if k in accepted or len(names) == 1}
        if "scores" in accepted and "scores" not in own:
            own["scores"] = scores
        times, out, error = [], None, None
        for _ in range(args.repeat):
            start = time.perf_counter()
            try:
                out = compress(x, name, retention=args.retention, **own)
            except (ValueError, TypeError) as exc:
                if len(names) == 1:
                    raise
                error = str(exc)
                break
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        result = {"method": name, "tokens_in": T * H * W}
        if error is not None:
            result["error"] = error
        else:
            result.update(
                tokens_out=len(out),
                retention=round(out.retention, 4),
                ms=round(1000 * statistics.median(times), 2),
                info={k: v for k, v in out.info.items()},
            )
            if llm is not None:
                result["llm_tflops"] = round(flops.run_flops(llm, len(out), text=100) / 1e12, 3)
            if args.output:
                features.save_tokens(args.output, out)
        results.append(result)
    if args.json:
        print(json.dumps({"input": origin, "shape": [T, H, W, C], "dtype": str(x.dtype), "results": results}, indent=1, default=str))
        return 0
    print(f"input: {origin}, [T, H, W, C] = [{T}, {H}, {W}, {C}], {x.dtype}, {x.device}")
    if args.retention is not None:
        print(f"retention {args.retention}: a budget of {max(1, round(args.retention * T * H * W))} tokens")
    if any("scores" in registry.get(n).params for n in names):
        print(f"vision scores for the methods that take them: {args.scores if args.scores != 'norm' else 'the feature norm (no vision encoder here)'}")
    header = ["method", "tokens in", "tokens out", "retention", f"ms (median of {args.repeat})"]
    if llm is not None:
        header.append(f"LLM TFLOPs ({args.llm}, +100 text)")
        print(f"FLOPs: prefill of the {args.llm} LLM with the tokens out and 100 text tokens (the FastV formula)")
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["method"], r["tokens_in"], "-", "-", "-"] + (["-"] if llm else []) + [r["error"]])
        else:
            info = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["info"].items())
            row = [r["method"], r["tokens_in"], r["tokens_out"], f"{r['retention']:.4f}", f"{r['ms']:.1f}"]
            rows.append(row + ([f"{r['llm_tflops']:.3f}"] if llm else []) + [info])
    print(_table(rows, header + ["chosen"]))
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _default_model(args: argparse.Namespace) -> None:
    """No --model: the packaged synthetic-domain model (said on stderr), at the 16 frames it was trained on."""
    if args.model is None:
        from . import packaged

        args.model = str(packaged.path())
        print(f"no --model: using {packaged.NOTE}", file=sys.stderr)
        if args.frames is None:
            args.frames = 16
    if args.frames is None:
        args.frames = 32


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="hub id or local folder of a supported Video-LLM (default: the packaged "
                   "synthetic-domain model, which only knows clips of moving shapes)")
    p.add_argument("-m", "--method", help="compression method (framepress methods); none: the model as is")
    p.add_argument("-r", "--retention", help='share of visual tokens to keep: 0.3, "30%%", or "A%%/B%%"')
    p.add_argument("-p", "--param", type=_param, action="append", metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("--frames", type=_positive, help="frames sampled uniformly from the video (default 32; 16 with the "
                   "packaged model)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--max-new-tokens", type=_positive, default=64)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _retention(text: str | None):
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text  # "30%" or "A%/B%": checked by apply


def _pipeline(args):
    from .pipeline import load

    _default_model(args)
    pipe = load(args.model, args.method, _retention(args.retention), frames=args.frames, device=args.device,
                dtype=args.dtype, **dict(args.param or []))
    pipe.progress = not args.json
    return pipe


def _stats_lines(stats: dict) -> list[str]:
    lines = []
    if stats.get("method"):
        stages = ", ".join(f"{s['stage']}: {s['visual_out']}" for s in stats["stages"])
        lines.append(f"visual tokens: {stats['visual_tokens_in']} -> {stats['visual_tokens_out']} "
                     f"(retention {stats['retention']:.4f}; {stages})")
        lines.append(f"LLM prefill: {stats['llm_prefill_flops'] / 1e12:.4g} TFLOPs (analytical)")
    lines.append(f"time to first token {stats['ttft_s']:.3f} s, total {stats['total_s']:.3f} s, "
                 f"{stats['new_tokens']} new tokens, peak memory {stats['peak_memory_mb']:.0f} MB")
    return lines


def cmd_ask(args: argparse.Namespace) -> int:
    from .video import load_video

    question = args.question.strip()
    if not question:
        raise ValueError("the question is empty")
    pipe = _pipeline(args)
    video = load_video(args.video, num_frames=args.frames, progress=not args.json)
    answer = pipe.ask(video, question, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"answer": answer.text, "video": args.video, "frames": len(video.indices), **answer.stats}, default=str))
    else:
        print(answer.text)
        print("\n".join("  " + line for line in _stats_lines(answer.stats)), file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .video import load_video

    questions = [q.strip() for q in (args.question or sys.stdin.read().splitlines())]
    questions = [q for q in questions if q]
    if not questions:
        raise ValueError("no question: give -q QUESTION (repeatable) or one question per line on stdin")
    pipe = _pipeline(args)
    video = load_video(args.video, num_frames=args.frames, progress=not args.json)
    chat = pipe.chat(video)
    results = []
    if not args.json:
        how = "reused for every question" if chat.reuses_prefix else "recomputed per question (the method reads it)"
        print(f"prefix (prompt + compressed video) prefilled in {chat.prefill_s:.3f} s; {how}", file=sys.stderr)
    for q in questions:
        answer = chat.ask(q, max_new_tokens=args.max_new_tokens)
        results.append({"question": q, "answer": answer.text, **answer.stats})
        if not args.json:
            print(f"Q: {q}\nA: {answer.text}")
            print("\n".join("  " + line for line in _stats_lines(answer.stats)), file=sys.stderr)
    if args.json:
        print(json.dumps({"video": args.video, "prefill_s": chat.prefill_s, "answers": results}, default=str))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .video import load_video

    if args.method is None:
        raise ValueError("show needs --method")
    pipe = _pipeline(args)
    video = load_video(args.video, num_frames=args.frames, progress=not args.json)
    path = pipe.show(video, args.output, columns=args.columns, cell=args.cell)
    print(str(path))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), frames=args.frames, json_output=args.json)


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluation.report import parse_metric_options, write_report

    page = write_report(args.results, args.out, parse_metric_options(args.metric))
    print(f"wrote {page} and {Path(args.out) / 'report.md'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .evaluation import report, sweep

    sweep.run(args.out, args.model, args.tasks, args.methods, args.retentions, frames=args.frames,
              processes=args.num_processes, cpu=args.cpu, extra_args=args.model_args, limit=args.limit,
              include_path=args.include_path, workdir=args.workdir, full=not args.no_full)
    page = report.write_report([args.out], Path(args.out) / "report")
    print(f"sweep done: {args.out}; report: {page}")
    return 0


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from . import quality

    command = "framepress bench-quality " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench-quality"] else \
        "framepress bench-quality"
    rows = quality.run(Path(args.out), per_kind=args.per_kind, methods=args.methods or quality.METHODS,
                       retentions=args.retentions or quality.RETENTIONS, model_path=args.model, batch=args.batch,
                       progress=not args.quiet, command=command.strip())
    full = rows[0]["overall"]
    print(f"full tokens: {100 * full:.1f}% overall; wrote {args.out} and its .png/.json")
    return 0


def _retentions(text: str) -> list[float]:
    try:
        values = [float(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"retentions must be numbers in (0, 1], got {text!r}") from None
    if not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"retentions must be numbers in (0, 1], got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framepress",
        description="Training-free visual-token compression for video large language models.",
    )
    parser.add_argument("--version", action="version", version=f"framepress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list the registered methods and their parameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_methods)

    p = sub.add_parser("ask", help="answer a question about a video", description="Answer a question about a "
                       "video with a supported Video-LLM, its visual tokens compressed by a method.")
    p.add_argument("video", help="video file, image, or folder of frames")
    p.add_argument("question")
    _model_args(p)
    p.set_defaults(run=cmd_ask)

    p = sub.add_parser("chat", help="several questions about one video, reusing the compressed prefix")
    p.add_argument("video")
    p.add_argument("-q", "--question", action="append", help="a question (repeatable; default: lines of stdin)")
    _model_args(p)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("show", help="draw what a method keeps on the video's frames (a contact sheet)")
    p.add_argument("video")
    p.add_argument("-o", "--output", required=True, help="picture to write (.png, .jpg, ...)")
    p.add_argument("--columns", type=_positive)
    p.add_argument("--cell", type=_positive, default=256, help="pixels per frame (default 256)")
    _model_args(p)
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic video and a tiny model, no download",
                       description="Generate a synthetic clip with a question whose answer is known, answer it with every method at a few "
                       "retentions on the packaged synthetic-domain model (a toy model of moving shapes), "
                       "print tokens, times and FLOPs, and write the pictures of what each method kept.")
    p.add_argument("--out", default="framepress-demo", help="folder for the video and the pictures")
    p.add_argument("--frames", type=_positive, default=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("bench-quality", help="accuracy per question kind of every method, offline (packaged model)",
                       description="Accuracy per question kind of every method at 50-1%% retention on the held-out "
                       "synthetic test sets, with the packaged synthetic-domain model: a proxy for the papers' "
                       "benchmarks, not a substitute. Writes a table (markdown), the numbers (.json) and a plot (.png).")
    p.add_argument("--out", default="docs/quality.md", help="markdown file to write (default docs/quality.md)")
    p.add_argument("--per-kind", type=_positive, default=300, help="held-out items per question kind (default 300)")
    p.add_argument("--methods", type=_csv, help="comma-separated methods (default: all grid and in-LLM methods)")
    p.add_argument("--retentions", type=_retentions, help="comma-separated retentions (default 0.5,0.3,0.1,0.05,0.02,0.01)")
    p.add_argument("--model", help="another checkpoint folder trained by python -m framepress.training")
    p.add_argument("--batch", type=_positive, default=50)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_bench_quality)

    p = sub.add_parser("report", help="tables and plots from lmms-eval result folders",
                       description="Per benchmark: accuracy, accuracy relative to the full-token run, retention "
                       "(A%%/B%% where in-LLM stages cut further), LLM prefill FLOPs and TTFT per method, and plots of "
                       "accuracy vs retention and vs FLOPs (PNG, and a self-contained HTML page).")
    p.add_argument("results", nargs="+", help="lmms-eval output folders (searched for *_results.json)")
    p.add_argument("-o", "--out", required=True, help="folder for report.html, report.md and the PNG plots")
    p.add_argument("--metric", action="append", metavar="TASK=METRIC", help="the metric to report for a task")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("sweep", help="methods x retentions x benchmarks through lmms-eval, resumable",
                       description="Run every (benchmark, method, retention) cell and the full-token run of each "
                       "benchmark through lmms-eval with the framepress plugin; finished cells are never rerun and "
                       "an interrupted cell resumes from its journal. Needs framepress[eval].")
    p.add_argument("--model", required=True, help="hub id or checkpoint folder")
    p.add_argument("--methods", type=_csv, required=True, help="comma-separated method names")
    p.add_argument("--retentions", type=_csv, required=True, help='comma-separated retentions, e.g. 0.5,0.1,"10%%/5%%"')
    p.add_argument("--tasks", type=_csv, required=True, help="comma-separated lmms-eval tasks")
    p.add_argument("--out", required=True, help="sweep folder (cells, then report/)")
    p.add_argument("--frames", type=_positive, default=32)
    p.add_argument("--num-processes", type=_positive, default=1, help="data-parallel processes (accelerate launch)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --num-processes: gloo processes)")
    p.add_argument("--model-args", help="extra model_args for every cell, e.g. dtype=bfloat16")
    p.add_argument("--limit", type=_positive, help="samples per task (a quick look)")
    p.add_argument("--include-path", help="folder of extra lmms-eval task YAMLs")
    p.add_argument("--workdir", help="working directory of the lmms-eval runs (local tasks' data files are relative to it)")
    p.add_argument("--no-full", action="store_true", help="skip the full-token runs")
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser(
        "compress",
        help="compress a features file with one or more methods and print tokens in/out and time",
        description="Compress [T, H, W, C] visual features (e.g. a Video-LLM's projector output) and report "
        "tokens in and out and the time of each method.",
    )
    p.add_argument("features", nargs="?", help=".npy or .safetensors file of [T, H, W, C] (or [T, N, C]) features")
    p.add_argument("--synthetic", type=_shape, metavar="TxHxWxC", help="use synthetic smooth features of this shape")
    p.add_argument("--key", help="tensor name inside a .safetensors file")
    p.add_argument("--grid", type=lambda s: tuple(int(v) for v in s.split("x")), metavar="HxW", help="grid of [T, N, C] input")
    p.add_argument("-m", "--method", action="append", help="method name (repeatable; default: all)")
    p.add_argument("-r", "--retention", type=float, help="share of tokens to keep, in (0, 1]")
    p.add_argument("-p", "--param", type=_param, action="append", metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("-o", "--output", help="write the tokens of the (single) method to this .safetensors file")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], help="cast the features first")
    p.add_argument("--repeat", type=_positive, default=3, help="runs per method; the median time is shown (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    p.add_argument("--scores", default="norm", metavar="FILE",
                   help="[T, H, W] vision contribution scores (.npy/.safetensors) for the methods that take them "
                        "(unified, visionzip, holitom, fastvid); default: the feature norm, said in the output")
    p.add_argument("--llm", choices=sorted(flops.PRESETS), help="also show the LLM prefill FLOPs of each result")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_compress)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"framepress {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"framepress {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
