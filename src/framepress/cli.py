"""The ``framepress`` command line.

The module's top-level imports are light: ``main`` sets the signal handlers first (Ctrl-C: "interrupted", exit
130; SIGTERM: "terminated", exit 143, after every ``finally`` has run, so no temporary file stays), then each
command imports torch and the rest. Exit status: 0 done, 2 a usage error or bad input (named), 1 a run that
failed (a file that cannot be written, no network, out of memory, a missing dependency).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import __version__

CELL_RANGE = (16, 1024)  # --cell: show.py's smallest cell; above 1024 px a frame's sheet only costs memory
HUB_TIMEOUT_S = 3.0  # how long `ask` waits to learn whether the hub is reachable


class _Lazy:
    """A module imported on first use (after ``first``), so that importing the command line does not import
    torch."""

    def __init__(self, name: str, first: str | None = None):
        self._name, self._first = name, first

    def __getattr__(self, attr: str):
        if self._first:
            importlib.import_module(self._first, __package__)
        return getattr(importlib.import_module(self._name, __package__), attr)


registry = _Lazy(".registry", first=".methods")  # importing the methods registers them


class UsageError(ValueError):
    """A bad argument, said once, before any work: exit status 2."""


class Terminated(BaseException):
    """Raised by the SIGTERM handler: a BaseException, like KeyboardInterrupt, so that ``except Exception``
    does not swallow it and every ``finally`` (temporary files) runs on the way out."""


#: the signals that arrived during this main(): a library import that swallows the KeyboardInterrupt (a bare
#: ``except``) or turns it into another error cannot lose a Ctrl-C
_received: list[int] = []


def _on_sigint(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


def _on_sigterm(signum, frame):
    _received.append(signum)
    raise Terminated


def _param(text: str) -> tuple[str, Any]:
    """``name=value``; the value is a Python literal when it parses as one, else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"parameters are name=value, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return name, value


def _shape(text: str) -> tuple[int, int, int, int]:
    if not re.fullmatch(r"\s*\d+(\s*x\s*\d+){3}\s*", text.lower()):
        raise argparse.ArgumentTypeError(f"shape is TxHxWxC, e.g. 32x14x14x3584; got {text!r}")
    dims = tuple(int(v) for v in text.lower().split("x"))
    if min(dims) < 1:
        raise argparse.ArgumentTypeError(f"shape is TxHxWxC of positive sizes, e.g. 32x14x14x3584; got {text!r}")
    return dims


def _grid(text: str) -> tuple[int, int]:
    """--grid HxW: exactly two positive integers (not "3", not "6x6x1", not "-2x-18")."""
    if not re.fullmatch(r"\s*\d+\s*x\s*\d+\s*", text.lower()):
        raise argparse.ArgumentTypeError(f"grid is HxW, two positive integers such as 14x14; got {text!r}")
    h, w = (int(v) for v in text.lower().split("x"))
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"grid is HxW, two positive integers such as 14x14; got {text!r}")
    return h, w


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _cell(text: str) -> int:
    value = _positive(text)
    lo, hi = CELL_RANGE
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"must be {lo} to {hi} pixels, got {text!r}")
    return value


def _share(text: str) -> float:
    """A float, checked in the command (so that the error names --retention once, for every method)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None


def _check_device(text: str | None) -> None:
    """--device, checked before any work: an unknown name, or CUDA/MPS this machine lacks, is a usage error
    naming it (not torch's AssertionError deep in a cast)."""
    if text is None:
        return
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"--device {text!r} is not a device (use cpu, cuda, cuda:N, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device {text!r}: CUDA is not available here ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text!r}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {text!r}: MPS is not available here; use --device cpu")
    elif device.type == "meta":
        raise UsageError(f"--device {text!r}: a meta tensor holds no data; use cpu or a GPU")
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except Exception as exc:  # noqa: BLE001  (each backend fails in its own way; all mean "not here")
            raise UsageError(f"--device {text!r} cannot be used here ({str(exc).splitlines()[0]})") from None


def _scores(spec: str, grid: tuple[int, int, int], device):
    """--scores: "norm", or a .npy / .safetensors file of [T, H, W] vision contribution scores."""
    import torch

    from . import features

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
    """One block per method, at most 100 columns: name, stage, budget kind and query-awareness on one line,
    then the paper and the parameters with their real defaults (the registry's ``defaults``), wrapped."""
    import textwrap

    rows = []
    for name in registry.names():
        m = registry.get(name)
        params = ", ".join(f"{k}={v}" for k, v in m.defaults.items()) or "-"
        rows.append([name, m.stage, "yes" if m.query_aware else "no", m.budget, params, m.paper])
    if args.json:
        print(json.dumps([dict(zip(["name", "stage", "query_aware", "budget", "params", "paper"], r)) for r in rows], indent=1))
        return 0
    width = max(len(r[0]) for r in rows)
    blocks = []
    for name, stage, query, budget, params, paper in rows:
        head = f"{name.ljust(width)}  {stage:<7}  budget: {budget:<6}  query-aware: {query}"
        body = [*textwrap.wrap(paper, 100, initial_indent="    ", subsequent_indent="    ")]
        body += textwrap.wrap(params, 100, initial_indent="    parameters: ", subsequent_indent=" " * 16, break_on_hyphens=False)
        blocks.append("\n".join([head, *body]))
    print("\n\n".join(blocks))
    return 0


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _summary(info: dict) -> str:
    """What a method chose, in one short cell: numbers as they are, a long list as its length and range (a
    HoliTom run over 32 frames has 32 windows: "windows=[32 items]", not the 32 tuples)."""
    parts = []
    for k, v in info.items():
        if isinstance(v, (list, tuple)):
            flat = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v)
            if flat and len(v) <= 4:
                text = ", ".join(map(_number, v))
                text = f"({text})" if isinstance(v, tuple) else f"[{text}]"
            elif flat:
                text = f"[{len(v)} values, {_number(min(v))}..{_number(max(v))}]"
            else:
                text = f"[{len(v)} items]"
        elif isinstance(v, str) and len(v) > 30:
            text = v[:27] + "..."
        else:
            text = _number(v)
        parts.append(f"{k}={text}")
    return ", ".join(parts)


class _Rows:
    """The compress table, a row printed as each method finishes (widths fixed up front from what can occur)."""

    def __init__(self, header: list[str], names: list[str], tokens_in: int):
        self.widths = [max(len(header[0]), *map(len, names)), max(len(header[1]), len(str(tokens_in))),
                       max(len(header[2]), len(str(tokens_in))), *(len(h) for h in header[3:])]
        self.header = header

    def line(self, cells: list) -> str:
        fixed = "  ".join(str(v).ljust(w) for v, w in zip(cells, self.widths))
        return (fixed + "  " + "  ".join(map(str, cells[len(self.widths):]))).rstrip()

    def head(self) -> str:
        return self.line(self.header + ["chosen"]) + "\n" + self.line(["-" * w for w in self.widths] + ["------"])


def _emit(line: str) -> None:
    """One line to stdout, now (not when the command ends), without tearing a progress bar on stderr."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def cmd_compress(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from . import features, files, flops
    from .api import compress

    if args.features is None and args.synthetic is None:
        raise UsageError("give a features file (.npy/.safetensors) or --synthetic TxHxWxC")
    if args.features is not None and args.synthetic is not None:
        raise UsageError("give a features file or --synthetic, not both")
    if args.retention is not None and not 0 < args.retention <= 1:
        raise UsageError(f"--retention: retention must be in (0, 1], got {args.retention}")
    names = args.method or registry.names("pre-llm")
    for name in names:
        registry.get(name)  # an unknown method: one error naming the known ones
    if args.output:
        if len(names) != 1:
            raise UsageError("--output needs exactly one --method")
        if Path(args.output).suffix.lower() != ".safetensors":
            raise UsageError(f"--output: output must be a .safetensors file, got {Path(args.output).name}")
        files.check_output(args.output)
    params = dict(args.param or [])
    unused = sorted(set(params) - {k for n in names for k in registry.get(n).params})
    if unused:
        raise UsageError(f"no chosen method takes the parameter(s) {', '.join(unused)}")
    _check_device(args.device)
    if args.features is not None:
        x = features.load(args.features, key=args.key, grid=args.grid)
        origin = args.features
    else:
        x = features.synthetic(*args.synthetic, seed=args.seed)
        origin = f"synthetic {'x'.join(map(str, args.synthetic))} (smooth random fields, seed {args.seed})"
    x = x.to(device=torch.device(args.device), dtype=getattr(torch, args.dtype) if args.dtype else x.dtype)
    T, H, W, C = x.shape
    scores = _scores(args.scores, (T, H, W), x.device)
    llm = flops.PRESETS[args.llm] if args.llm else None

    rows = None
    if not args.json:
        print(f"input: {origin}, [T, H, W, C] = [{T}, {H}, {W}, {C}], {x.dtype}, {x.device}")
        if args.retention is not None:
            print(f"retention {args.retention}: a budget of {max(1, round(args.retention * T * H * W))} tokens")
        if any("scores" in registry.get(n).params for n in names):
            print(f"vision scores for the methods that take them: "
                  f"{args.scores if args.scores != 'norm' else 'the feature norm (no vision encoder here)'}")
        header = ["method", "tokens in", "tokens out", "retention", f"ms (median of {args.repeat})"]
        if llm is not None:
            header.append(f"LLM TFLOPs ({args.llm}, +100 text)")
            print(f"FLOPs: prefill of the {args.llm} LLM with the tokens out and 100 text tokens (the FastV formula)")
        rows = _Rows(header, names, T * H * W)
        _emit(rows.head())

    results, kept = [], None
    bar = tqdm(total=len(names) * args.repeat, unit="run", leave=False, disable=None)  # only on a terminal
    try:
        for name in names:
            bar.set_description(name)
            accepted = registry.get(name).params
            own = {k: v for k, v in params.items() if k in accepted or len(names) == 1}
            if "scores" in accepted and "scores" not in own:
                own["scores"] = scores
            times, out, error = [], None, None
            for _ in range(args.repeat):
                start = time.perf_counter()
                try:
                    out = compress(x, name, retention=args.retention, window=args.window, **own)
                except (ValueError, TypeError) as exc:
                    if len(names) == 1:
                        raise
                    error = str(exc)
                    break
                if x.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                bar.update(1)
            result = {"method": name, "tokens_in": T * H * W}
            if error is not None:
                result["error"] = error
                bar.update(args.repeat - len(times))
            else:
                kept = out
                result.update(tokens_out=len(out), retention=round(out.retention, 4),
                              ms=round(1000 * statistics.median(times), 2), info=dict(out.info))
                if llm is not None:
                    result["llm_tflops"] = round(flops.run_flops(llm, len(out), text=100) / 1e12, 3)
            results.append(result)
            if rows is not None:
                _emit(rows.line(_cells(result, llm is not None)))
    except (KeyboardInterrupt, Terminated):
        bar.close()
        if args.json:
            _compress_json(origin, x, results, interrupted=True)
        print(f"framepress compress: {len(results)} of {len(names)} methods finished before the interrupt",
              file=sys.stderr)
        raise
    bar.close()
    if args.output and kept is not None:
        features.save_tokens(args.output, kept)
    if args.json:
        _compress_json(origin, x, results)
    elif args.output:
        print(f"wrote {args.output}")
    if all("error" in r for r in results):
        print("framepress compress: error: no method met the request" + (" (each row says why)" if rows else ""),
              file=sys.stderr)
        return 1
    return 0


def _cells(r: dict, with_flops: bool) -> list:
    if "error" in r:
        return [r["method"], r["tokens_in"], "-", "-", "-"] + (["-"] if with_flops else []) + [r["error"]]
    row = [r["method"], r["tokens_in"], r["tokens_out"], f"{r['retention']:.4f}", f"{r['ms']:.1f}"]
    return row + ([f"{r['llm_tflops']:.3f}"] if with_flops else []) + [_summary(r["info"])]


def _compress_json(origin: str, x, results: list[dict], interrupted: bool = False) -> None:
    report = {"input": origin, "shape": list(x.shape), "dtype": str(x.dtype), "results": results}
    if interrupted:
        report["interrupted"] = True
    print(json.dumps(report, indent=1, default=str), flush=True)


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


def _hub_reachable(endpoint: str) -> bool:
    """Whether the hub answers within HUB_TIMEOUT_S (one request, no retries; proxies as huggingface_hub uses)."""
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=HUB_TIMEOUT_S)
        return True
    except Exception:  # noqa: BLE001  (any failure to connect means: not reachable from here)
        return False


def _offline() -> bool:
    """huggingface_hub's offline mode (read when it was imported), or HF_HUB_OFFLINE set since."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _resolve_model(model: str) -> str:
    """A local folder as it is; a hub id checked quickly, before the loader spends ~30 s on retries: offline
    (HF_HUB_OFFLINE) or with the hub unreachable, a model in the local cache loads from its snapshot folder and
    one that is not is an error saying how to get it."""
    if os.path.isdir(model):
        return model
    if os.path.lexists(model):
        raise UsageError(f"--model {model}: not a folder (a checkpoint is a folder with config.json and weights)")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise FileNotFoundError(f"--model {model}: no such folder, and not a hub id (owner/name)") from None
    how = (f"download it where the hub is reachable (hf download {model} --local-dir DIR), copy DIR here and pass "
           "the folder: --model DIR")
    cached = try_to_load_from_cache(model, "config.json")
    offline = _offline()
    if isinstance(cached, str):
        if offline or _hub_reachable(constants.ENDPOINT):
            return model
        return str(Path(cached).parent)  # the cached snapshot, loaded without asking the hub
    if offline:
        raise FileNotFoundError(f"model {model!r} is not on this machine (no such folder, not in the hub cache) and "
                                f"HF_HUB_OFFLINE is set: {how}")
    if not _hub_reachable(constants.ENDPOINT):
        raise ConnectionError(f"model {model!r} is not on this machine (no such folder, not in the hub cache) and the "
                              f"Hugging Face Hub ({constants.ENDPOINT}) cannot be reached (offline?): {how}")
    return model


def _model_args(p: argparse.ArgumentParser, generates: bool = True) -> None:
    p.add_argument("--model", help="hub id or local folder of a supported Video-LLM (default: the packaged "
                   "synthetic-domain model, which only knows clips of moving shapes)")
    p.add_argument("-m", "--method", help="compression method (framepress methods); none: the model as is")
    p.add_argument("-r", "--retention", help='share of visual tokens to keep: 0.3, "30%%", or "A%%/B%%"')
    p.add_argument("-p", "--param", type=_param, action="append", metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("--frames", type=_positive, help="frames sampled uniformly from the video (default 32; 16 with the "
                   "packaged model)")
    p.add_argument("--max-side", type=_positive, metavar="PIXELS", help="shrink each sampled frame to at most this "
                   "many pixels on its longest side as it is decoded (needed above 8192 px; the model's processor "
                   "resizes anyway)")
    p.add_argument("--window", type=_positive, metavar="FRAMES", help="the pre-LLM stage compresses the video window "
                   "by window of this many frames, the budget shared across windows (for long videos)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    if generates:
        p.add_argument("--max-new-tokens", type=_positive, default=64, help="most tokens in an answer (default 64)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _retention(text: str | None):
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text  # "30%" or "A%/B%": checked by apply


def _prepare(args: argparse.Namespace):
    """Everything cheap checked before the model loads: the device, the model's whereabouts, then the video
    (decoded first: a bad path fails in a second, not after the model has loaded)."""
    from .video import load_video

    _check_device(args.device)
    _default_model(args)
    args.model = _resolve_model(args.model)
    return load_video(args.video, num_frames=args.frames, max_side=args.max_side, progress=not args.json)


def _pipeline(args):
    from .pipeline import load

    pipe = load(args.model, args.method, _retention(args.retention), frames=args.frames, device=args.device,
                dtype=args.dtype, window=args.window, **dict(args.param or []))
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
    question = args.question.strip()
    if not question:
        raise UsageError("the question is empty")
    video = _prepare(args)
    pipe = _pipeline(args)
    answer = pipe.ask(video, question, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"answer": answer.text, "video": args.video, "frames": len(video.indices), **answer.stats}, default=str))
    else:
        print(answer.text)
        print("\n".join("  " + line for line in _stats_lines(answer.stats)), file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    if args.question is None and sys.stdin.isatty():
        print("reading questions from stdin, one a line (Ctrl-D to end)", file=sys.stderr)
    questions = [q.strip() for q in (args.question or sys.stdin.read().splitlines())]
    questions = [q for q in questions if q]
    if not questions:
        raise UsageError("no question: give -q QUESTION (repeatable) or one question per line on stdin")
    video = _prepare(args)
    pipe = _pipeline(args)
    chat = pipe.chat(video)
    results = []
    if not args.json:
        how = "reused for every question" if chat.reuses_prefix else "recomputed per question (the method reads it)"
        print(f"prefix (prompt + compressed video) prefilled in {chat.prefill_s:.3f} s; {how}", file=sys.stderr)
    report = {"video": args.video, "prefill_s": chat.prefill_s, "answers": results}
    try:
        for q in questions:
            answer = chat.ask(q, max_new_tokens=args.max_new_tokens)
            results.append({"question": q, "answer": answer.text, **answer.stats})
            if not args.json:
                print(f"Q: {q}\nA: {answer.text}", flush=True)
                print("\n".join("  " + line for line in _stats_lines(answer.stats)), file=sys.stderr)
    except (KeyboardInterrupt, Terminated):  # the answers given so far are kept
        if args.json:
            print(json.dumps({**report, "interrupted": True}, default=str), flush=True)
        raise
    if args.json:
        print(json.dumps(report, default=str))
    return 0


def _check_picture(path: str) -> None:
    """-o of show, before the model loads: a path that can be written and a suffix Pillow writes an RGB picture
    in (.grib and .xbm are registered, yet cannot: GRIB has no writer, XBM is 1-bit only)."""
    import io

    from PIL import Image

    from . import files

    files.check_output(path)
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    why = "not a picture format" if fmt is None else None
    if fmt is not None:
        try:
            Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
        except Exception as exc:  # noqa: BLE001  (each Pillow writer refuses in its own way)
            why = f"Pillow cannot write an RGB picture as {fmt}: {exc}"
    if why:
        raise UsageError(f"--output {path}: {suffix or 'no suffix'} is {why if fmt is None else 'refused'}"
                         f"{'' if fmt is None else f' ({why})'}; use .png, .jpg or .webp")


def cmd_show(args: argparse.Namespace) -> int:
    if args.method is None:
        raise UsageError("show needs --method")
    _check_picture(args.output)
    video = _prepare(args)
    pipe = _pipeline(args)
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


def _csv_or_none(text: str) -> list[str]:
    return [] if text.strip() == "none" else _csv(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluation.report import parse_metric_options, write_report

    page = write_report(args.results, args.out, parse_metric_options(args.metric))
    print(f"wrote {page} and {Path(args.out) / 'report.md'}")
    return 0


class Missing(RuntimeError):
    """A dependency the command needs is not installed: exit status 1."""


def cmd_synth_task(args: argparse.Namespace) -> int:
    from .evaluation.synth_task import command

    return command(args.folder, args.per_kind)


def cmd_sweep(args: argparse.Namespace) -> int:
    needed = ["lmms_eval"] + (["accelerate"] if args.num_processes > 1 else [])
    absent = [name for name in needed if importlib.util.find_spec(name) is None]
    if absent:
        raise Missing(f"{' and '.join(absent)} not installed in this environment ({sys.executable}): a sweep runs "
                      "lmms-eval; install the eval extra: pip install \"framepress[eval]\" (README: the lmms-eval "
                      "plugin has its own environment)")
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
    methods = args.methods or quality.METHODS
    if args.regime == "real":  # a missing model is an error naming how to build it (quality.real_path)
        args.out = args.out or "docs/quality.md"
        calibration = quality.CALIBRATION if args.calibration is None else args.calibration
        rows = quality.run_real(Path(args.out), per_kind=args.per_kind, methods=methods,
                                retentions=args.retentions or quality.REAL_RETENTIONS, model_path=args.model,
                                kinds=args.kinds or quality.REAL_KINDS, chunk=args.batch or quality.REAL_CHUNK,
                                progress=not args.quiet, command=command.strip(), calibration=calibration,
                                minutes=args.minutes)
    else:
        retentions = args.retentions or quality.RETENTIONS
        args.out = args.out or "docs/quality-tiny.md"
        rows = quality.run(Path(args.out), per_kind=args.per_kind, methods=methods, retentions=retentions,
                           model_path=args.model, batch=args.batch or 50, progress=not args.quiet, command=command.strip(),
                           kinds=args.kinds or quality.KINDS)
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
    from . import flops

    parser = argparse.ArgumentParser(
        prog="framepress",
        description="Training-free visual-token compression for video large language models.",
    )
    parser.add_argument("--version", action="version", version=f"framepress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("methods", help="list the registered methods and their parameters",
                       description="List the registered compression methods: stage, whether they read the "
                       "question, how they meet a budget, their parameters and defaults, and their paper.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_methods)

    p = sub.add_parser("ask", help="answer a question about a video", description="Answer a question about a "
                       "video with a supported Video-LLM, its visual tokens compressed by a method.")
    p.add_argument("video", help="video file, image, or folder of frames")
    p.add_argument("question", help="the question, in quotes")
    _model_args(p)
    p.set_defaults(run=cmd_ask)

    p = sub.add_parser("chat", help="several questions about one video, reusing the compressed prefix",
                       description="Answer several questions about one video; the compressed prefix (prompt and "
                       "video) is prefilled once and reused when the method ignores the question.")
    p.add_argument("video", help="video file, image, or folder of frames")
    p.add_argument("-q", "--question", action="append", help="a question (repeatable; default: lines of stdin)")
    _model_args(p)
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("show", help="draw what a method keeps on the video's frames (a contact sheet)",
                       description="Run the model's prefill once with the method applied and draw the tokens it "
                       "kept on the sampled frames (no answer is generated).")
    p.add_argument("video", help="video file, image, or folder of frames")
    p.add_argument("-o", "--output", required=True, help="picture to write (.png, .jpg, .webp, ...)")
    p.add_argument("--columns", type=_positive, help="frames per row of the sheet (default: about the square root "
                   "of the frame count)")
    p.add_argument("--cell", type=_cell, default=256, help=f"pixels per frame, {CELL_RANGE[0]} to {CELL_RANGE[1]} "
                   "(default 256)")
    _model_args(p, generates=False)
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic video and a tiny model, no download",
                       description="Generate a synthetic clip with a question whose answer is known, answer it with every method at a few "
                       "retentions on the packaged synthetic-domain model (a toy model of moving shapes), "
                       "print tokens, times and FLOPs, and write the pictures of what each method kept.")
    p.add_argument("--out", default="framepress-demo", help="folder for the video and the pictures")
    p.add_argument("--frames", type=_positive, default=16, help="frames of the clip (default 16, what the "
                   "packaged model was trained on)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("bench-quality", help="accuracy per question kind of every method, offline (packaged model)",
                       description="Accuracy per question kind of every method at 50-1%% retention on the held-out "
                       "synthetic test sets, with the packaged synthetic-domain model: a proxy for the papers' "
                       "benchmarks, not a substitute. Writes a table (markdown), the numbers (.json) and a plot (.png).")
    p.add_argument("--regime", choices=("tiny", "real"), default="tiny", help="tiny: the packaged model, 16 frames "
                   "of 6x6 tokens; real: the real-regime model (32 frames of 14x14 tokens, python -m framepress.training "
                   "--regime real), resumable from OUT.journal.jsonl")
    p.add_argument("--out", help="markdown file to write (default docs/quality-tiny.md; docs/quality.md for --regime real)")
    p.add_argument("--per-kind", type=_positive, default=300, help="held-out items per question kind (default 300)")
    p.add_argument("--methods", type=_csv, help="comma-separated methods (default: all grid and in-LLM methods)")
    p.add_argument("--retentions", type=_retentions, help="comma-separated retentions (default 0.5,0.3,0.1,0.05,0.02,0.01; "
                   "for --regime real 0.02,0.01, with the --calibration methods at all six)")
    p.add_argument("--kinds", type=_csv, help="comma-separated question kinds (default: the regime's, "
                   "framepress.quality.KINDS or REAL_KINDS)")
    p.add_argument("--model", help="another checkpoint folder trained by python -m framepress.training (for --regime "
                   "real, default src/framepress/models/synthetic-real)")
    p.add_argument("--batch", type=_positive, help="clips per forward pass (default 50; for --regime real 10, each "
                   "chunk encoded once and journaled)")
    p.add_argument("--calibration", type=_csv_or_none, help="--regime real: methods also run at every retention, "
                   "the instrument's calibration (default random,pool,frames; none for no others)")
    p.add_argument("--minutes", type=_positive_float, help="--regime real: start no chunk after this long and write "
                   "the table from the chunks done (rerun the same command to continue)")
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
    p.add_argument("--frames", type=_positive, default=32, help="frames sampled per video (default 32)")
    p.add_argument("--num-processes", type=_positive, default=1, help="data-parallel processes (accelerate launch)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --num-processes: gloo processes)")
    p.add_argument("--model-args", help="extra model_args for every cell, e.g. dtype=bfloat16")
    p.add_argument("--limit", type=_positive, help="samples per task (a quick look)")
    p.add_argument("--include-path", help="folder of extra lmms-eval task YAMLs")
    p.add_argument("--workdir", help="working directory of the lmms-eval runs (local tasks' data files are relative to it)")
    p.add_argument("--no-full", action="store_true", help="skip the full-token runs")
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser("synth-task", help="write the synthetic lmms-eval tasks (clips, docs, YAMLs) into a folder",
                       description="Write the lmms-eval tasks framepress_synth, framepress_synth_mc and "
                       "framepress_synth_rounds (H.264 clips of held-out framepress.synth questions) into FOLDER; "
                       "lmms-eval finds them with --include_path FOLDER from any working directory.")
    p.add_argument("folder", help="the task folder to write")
    p.add_argument("--per-kind", type=_positive, default=2, help="held-out questions of each kind (default 2: 12 questions)")
    p.set_defaults(run=cmd_synth_task)

    p = sub.add_parser(
        "compress",
        help="compress a features file with one or more methods and print tokens in/out and time",
        description="Compress [T, H, W, C] visual features (e.g. a Video-LLM's projector output) and report "
        "tokens in and out and the time of each method.",
    )
    p.add_argument("features", nargs="?", help=".npy or .safetensors file of [T, H, W, C] (or [T, N, C]) features")
    p.add_argument("--synthetic", type=_shape, metavar="TxHxWxC", help="use synthetic smooth features of this shape")
    p.add_argument("--key", help="tensor name inside a .safetensors file")
    p.add_argument("--grid", type=_grid, metavar="HxW", help="grid of [T, N, C] input (default: square)")
    p.add_argument("-m", "--method", action="append", help="method name (repeatable; default: all)")
    p.add_argument("-r", "--retention", type=_share, help="share of tokens to keep, in (0, 1] (default: each method's own)")
    p.add_argument("-p", "--param", type=_param, action="append", metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("-o", "--output", help="write the tokens of the (single) method to this .safetensors file")
    p.add_argument("--window", type=_positive, metavar="FRAMES", help="compress window by window of this many frames, "
                   "the budget shared across windows in proportion to their novelty (framepress.compress window=)")
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


def _message(exc: BaseException) -> str:
    """An error in one line: an OSError as "path: reason" (the user's path), anything else as its text."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {exc.strerror}"
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + str(exc) if str(exc) else ''}"
    return str(exc) or type(exc).__name__


def _set_signals() -> dict:
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt (unless the caller ignores them); returns the old
    handlers. Only the main thread can set handlers (a test may call main from another)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    _received.clear()
    for signum, handler in ((signal.SIGINT, _on_sigint), (signal.SIGTERM, _on_sigterm)):
        current = signal.getsignal(signum)
        if current is not signal.SIG_IGN:
            old[signum] = signal.signal(signum, handler)
    return old


def main(argv: list[str] | None = None) -> int:
    import warnings

    old = _set_signals()
    command = "framepress"

    def warn(message, category, filename, lineno, file=None, line=None):  # one line, not the source line
        print(f"{command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = warn
            try:
                args = build_parser().parse_args(argv)
                command = f"framepress {args.command}"
                status = args.run(args)
            except KeyboardInterrupt:
                _received.append(signal.SIGINT)
            except Terminated:
                _received.append(signal.SIGTERM)
            except (ValueError, TypeError, FileNotFoundError) as exc:  # a bad argument or input, named
                status, message = 2, f"{command}: error: {_message(exc)}"
            except (OSError, RuntimeError, MemoryError) as exc:  # the run failed: a write, the network, memory
                status, message = 1, f"{command}: error: {_message(exc)}"
            else:
                message = None
            if _received:  # whatever became of the signal's exception on its way here
                word, status = ("terminated", 143) if signal.SIGTERM in _received else ("interrupted", 130)
                message = f"{command}: {word}"
            if message:
                print(message, file=sys.stderr)
            return status
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
