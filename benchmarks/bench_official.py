"""Time framepress beside the official code of each method, on the same realistic input, in one process.

    python benchmarks/bench_official.py --official divprune=DIR --official dycoke=DIR --official holitom=DIR \
        --official prunevid=DIR --official fastvid=DIR --official visionzip=HOLITOM_DIR [--doc]

Each DIR is a local checkout of the official repository at the commit named in shared/golden/<method>/README.md
(divprune: vbdi/divprune, dycoke: KD-TAO/DyCoke, holitom and visionzip: cokeshao/HoliTom, prunevid:
Visual-AI/PruneVid, fastvid: LunarShen/FastVID); a sparse checkout of just the file read is enough, e.g.
``git clone --no-checkout URL DIR && git -C DIR sparse-checkout set --no-cone FILE && git -C DIR checkout --detach
COMMIT`` (the files: ``SOURCES``, ``BLOCKS``, ``VISIONZIP`` below). The table records each checkout's commit. None
of their code is part of framepress: at run time this script reads the needed functions' source text from the
checkout (by name, with :mod:`ast`) and executes it unchanged in a namespace holding only what it imports that
the step uses (``torch``, ``torch.nn.functional as F``, ``math``, ``einsum``; ``rank0_print`` as a no-op), because
the official modules import whole model stacks (LLaVA, transformers' model classes) that a standalone step does
not need. Methods of the official model classes are bound to a bare object that carries only the ``config``
fields they read. HoliTom's video branch (the driver inside ``prepare_inputs_labels_for_multimodal``, from
``pooled_image_feat = self.get_2dPool(image_feat)`` to the append of its segments) is read from the checkout the
same way, with ``get_2dPool`` as the identity (the inputs are already the pooled grid). VisionZip's port is the
``visionzip`` function nested in its ``prepare_inputs_labels_for_multimodal`` (read from the checkout likewise),
called with the port's split (``dominant = int(S * 54/64)``). FastVID's pruning is an inline block of
``Qwen2Model.forward`` (OneVision fork, from ``device_type = hidden_states.device`` to the sort of
``keep_indexs``): it runs on a sequence holding only the video, with the attributes it reads on a bare object
(global feature = each frame's mean token, as framepress's default).

Input: ``framepress.features.synthetic`` features (32 x 14 x 14 x 3584 and 64 x 13 x 13 x 3584, float32), and for
the methods that take attention a seeded softmax field per frame. Both sides get the same tensors and the same
parameters; the first call of each (a warm-up) checks the token counts; then the median of ``--repeat`` calls, the
two sides alternating, one torch thread. ``--doc`` writes the table into its own section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import framepress
from framepress.features import synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import cpu_name, write_section  # noqa: E402

SHAPES = [(32, 14, 14, 3584), (64, 13, 13, 3584)]
RETENTION = 0.1
#: method -> (file in the official checkout, top-level functions, (class, its methods) or None)
SOURCES = {
    "divprune": ("LLaVA/llava/model/llava_arch.py", [], ("LlavaMetaForCausalLM", ["pairwise_cosine_similarity", "DivPrune"])),
    "dycoke": ("llava/model/llava_arch.py", ["dycole_ttm"], None),
    "holitom": (
        "holitom/llava_arch.py",
        [],
        (
            "LlavaMetaForCausalLM_holitom",
            ["cluster_dpc_knn", "select_static_windows", "merge_tokens_by_clustering", "merge_tokens_by_attention_density",
             "merge_tokens_by_density", "holitom", "get_static_dynamic_features"],
        ),
    ),
    "prunevid": (
        "models/pllava/modeling_pllava.py",
        ["index_points", "cluster_dpc_knn", "segment_lengths", "refine_clusters"],
        ("PllavaForConditionalGeneration", ["compute_cluster_vectors", "spatial_merge_tokens", "merge_frames_dynamic"]),
    ),
}
#: method -> (file, (start, end) of the official inline block, as the stripped lines begin) for code with no function
BLOCKS = {
    "fastvid": (
        "fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py",
        ("device_type = hidden_states.device", "keep_indexs = keep_indexs[sorted_indexs]"),
    ),
}
#: the nested visionzip() inside the port's prepare_inputs_labels_for_multimodal
VISIONZIP = ("visionzip/llava_arch.py", "LlavaMetaForCausalLM_visionzip", "visionzip")
HOLITOM_DRIVER = ("pooled_image_feat = self.get_2dPool(image_feat)", "image_features.append(torch.cat(segment_features, dim=0))")
PRUNEVID_CLUSTER_RATIO = 0.3  # PruneVid has no retention: cluster ratio 0.3 gives about 10% here (counts checked)
DYCOKE_K = 0.7  # DyCoke cannot reach 10% (a frame of every four stays whole): its default K, the same on both sides


def shim() -> dict:
    """What the extracted official functions use, and nothing else."""
    return {"torch": torch, "F": F, "nn": torch.nn, "math": math, "einsum": torch.einsum, "rank0_print": lambda *a, **k: None}


def load(checkout: str, method: str):
    """The official functions of ``method``, executed from their source text in ``checkout``; and that text's node map."""
    rel, functions, klass = SOURCES[method]
    path = Path(checkout) / rel
    src = path.read_text()
    tree = ast.parse(src)
    ns = shim()
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in functions:
            exec(compile(ast.get_source_segment(src, node), str(path), "exec"), ns)
            found[node.name] = True
        if klass and isinstance(node, ast.ClassDef) and node.name == klass[0]:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in klass[1] + ["prepare_inputs_labels_for_multimodal"]:
                    found[item.name] = textwrap.dedent(ast.get_source_segment(src, item, padded=True))
    missing = [f for f in functions + (klass[1] if klass else []) if f not in found]
    if missing:
        raise SystemExit(f"{method}: {path} has no {', '.join(missing)} (is it the commit named in golden/{method}/README.md?)")
    obj = None
    if klass:
        methods = {}
        for name in klass[1]:
            local = {}
            exec(compile(found[name], str(path), "exec"), ns, local)
            methods[name] = local[name]
        obj = type("Official_" + klass[0], (), methods)()
    return ns, obj, found


def holitom_driver(found: dict, path: str):
    """HoliTom's video branch, lines ``HOLITOM_DRIVER[0]`` .. ``[1]`` of ``prepare_inputs_labels_for_multimodal``."""
    text = found["prepare_inputs_labels_for_multimodal"]
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(HOLITOM_DRIVER[0]))
    last = next(i for i, line in enumerate(lines) if line.strip().startswith(HOLITOM_DRIVER[1]))
    return compile(textwrap.dedent("\n".join(lines[first : last + 1])), path, "exec")


def nested_function(checkout: str, rel: str, name: str):
    """The official function ``name`` defined inside another function of ``rel``, from its source text."""
    path = Path(checkout) / rel
    src = path.read_text()
    nodes = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef) and n.name == name]
    if len(nodes) != 1:
        raise SystemExit(f"{path}: {len(nodes)} functions named {name} (is it the commit named in golden/?)")
    ns, local = shim(), {}
    exec(compile(textwrap.dedent(ast.get_source_segment(src, nodes[0], padded=True)), str(path), "exec"), ns, local)
    return local[name]


def inline_block(checkout: str, method: str):
    """The official inline block of ``method`` (``BLOCKS``), compiled from the checkout's source text."""
    rel, (first_line, last_line) = BLOCKS[method]
    path = Path(checkout) / rel
    lines = path.read_text().splitlines()
    firsts = [i for i, line in enumerate(lines) if line.strip().startswith(first_line)]
    lasts = [i for i, line in enumerate(lines) if line.strip().startswith(last_line)]
    if len(firsts) != 1 or len(lasts) != 1 or lasts[0] < firsts[0]:
        raise SystemExit(f"{path}: the {method} block was not found once (is it the commit named in golden/{method}/README.md?)")
    return compile(textwrap.dedent("\n".join(lines[firsts[0] : lasts[0] + 1])), str(path), "exec")


def officials(dirs: dict) -> dict:
    """method -> a function of (x [T, H, W, C], scores [T, H, W]) running the official step; returns its tokens."""
    calls = {}
    if "divprune" in dirs:
        _, obj, _ = load(dirs["divprune"], "divprune")

        def divprune(x, scores, obj=obj):
            T, H, W, C = x.shape
            s, _ = obj.DivPrune(x.reshape(-1, C), T * H * W, None, threshold_ratio=RETENTION)
            return s

        calls["divprune"] = divprune
    if "dycoke" in dirs:
        ns, _, _ = load(dirs["dycoke"], "dycoke")

        def dycoke(x, scores, ns=ns):
            T, H, W, C = x.shape
            with warnings.catch_warnings():  # the official torch.tensor(tensor) copy warns
                warnings.simplefilter("ignore")
                return ns["dycole_ttm"](x.reshape(T * H * W, C), H * W, DYCOKE_K)

        calls["dycoke"] = dycoke
    if "holitom" in dirs:
        ns, obj, found = load(dirs["holitom"], "holitom")
        code = holitom_driver(found, str(Path(dirs["holitom"]) / SOURCES["holitom"][0]))
        obj.get_2dPool = lambda t: t  # the input is already LLaVA's pooled grid
        os.environ.pop("NO_BETA", None)  # the official default (Beta merging), as in golden/holitom

        def holitom(x, scores, ns=ns, obj=obj, code=code):
            T, H, W, C = x.shape
            env = dict(ns, self=obj, image_feat=x.reshape(T, H * W, C), attn_weights=scores.reshape(T, H * W),
                       retain_ratio=RETENTION, tau=0.8, Beta=0.6, D=0.0, K=7, max_window_size=1024,
                       images_dtype=x.dtype, mm_newline_position="one_token", image_features=[])
            torch.manual_seed(0)
            exec(code, env)
            return env["image_features"][0]

        calls["holitom"] = holitom
    if "prunevid" in dirs:
        ns, obj, _ = load(dirs["prunevid"], "prunevid")

        def prunevid(x, scores, obj=obj):
            T, H, W, C = x.shape
            obj.config = types.SimpleNamespace(num_frames=T, pooling_shape=(T, H, W), temporal_segment_ratio=0.25,
                                               cluster_ratio=PRUNEVID_CLUSTER_RATIO)
            # the methods' module-level helpers (cluster_dpc_knn, ...) live in ns, which is their globals
            torch.manual_seed(0)
            return obj.merge_frames_dynamic(x.reshape(1, T * H * W, C), threshold=0.8, k=7)[0][0]

        calls["prunevid"] = prunevid
    if "visionzip" in dirs:
        vz = nested_function(dirs["visionzip"], VISIONZIP[0], VISIONZIP[2])

        def visionzip(x, scores, vz=vz):
            T, H, W, C = x.shape
            S = visionzip_tokens(H * W)
            dominant = int(S * VISIONZIP_DOMINANT)  # the port's split, lines 63-66
            grid = x.reshape(T, H * W, C)
            out = vz(grid, scores.reshape(T, H * W), grid, dominant, S - dominant, x.dtype, "one_token")
            return out.flatten(0, 1)

        calls["visionzip"] = visionzip
    if "fastvid" in dirs:
        code = inline_block(dirs["fastvid"], "fastvid")

        def fastvid(x, scores, code=code):
            T, H, W, C = x.shape
            model = types.SimpleNamespace(
                video_token_len=T * H * W, frame_num=T, video_start_idx=0, frame_attn_weights=scores.reshape(T, H * W),
                frame_global_features=x.reshape(T, H * W, C).mean(1),  # framepress's global feature (golden glob_mean)
                fastvid_DySeg_c=8, fastvid_DySeg_tau=0.9, fastvid_retention_ratio=RETENTION, fastvid_STPrune_d=0.4,
                fastvid_DTM_p=4, fastvid_DTM_beta=0.6,
            )
            env = dict(shim(), self=model, hidden_states=x.reshape(1, T * H * W, C), seq_length=T * H * W)
            torch.manual_seed(0)
            exec(code, env)
            return env["hidden_states"][0]

        calls["fastvid"] = fastvid
    return calls


def visionzip_tokens(n: int) -> int:
    """The port's SPATIAL_TOKENS per frame for 10%: round(0.1 * n) (20 of 196, 17 of 169)."""
    return round(RETENTION * n)


VISIONZIP_DOMINANT = 54 / 64


def ours(method: str, x, scores):
    if method == "divprune":
        return framepress.compress(x, "divprune", retention=RETENTION)
    if method == "dycoke":
        return framepress.compress(x, "dycoke", prune=DYCOKE_K)
    if method == "holitom":
        return framepress.compress(x, "holitom", retention=RETENTION, scores=scores, tau=0.8, beta=0.6, k=7)
    if method == "prunevid":
        return framepress.compress(x, "prunevid", tau=0.8, temporal_segment_ratio=0.25, cluster_ratio=PRUNEVID_CLUSTER_RATIO, k=7)
    if method == "visionzip":
        S = visionzip_tokens(x.shape[1] * x.shape[2])
        return framepress.compress(x, "visionzip", retention=S / (x.shape[1] * x.shape[2]), scores=scores,
                                   dominant_share=VISIONZIP_DOMINANT, contextual="sum")
    if method == "fastvid":
        return framepress.compress(x, "fastvid", retention=RETENTION, scores=scores, min_segments=8, tau=0.9,
                                   context_share=0.4, anchor_stride=4, beta=0.6, k=4)
    raise KeyError(method)


SETTING = {
    "divprune": "retention 0.1",
    "dycoke": f"K = {DYCOKE_K} (10% not reachable)",
    "holitom": "retention 0.1, tau 0.8, Beta 0.6, K 7",
    "prunevid": f"tau 0.8, segments 0.25, cluster ratio {PRUNEVID_CLUSTER_RATIO}",
    "visionzip": "retention 0.1 (S = round(0.1 n) per frame), dominant 54/64, metric = features",
    "fastvid": "retention 0.1, c 8, tau 0.9, d 0.4, p 4, beta 0.6; global feature = frame mean",
}
#: the commits the golden vectors were made from (shared/golden/<method>/README.md)
COMMITS = {
    "divprune": ("vbdi/divprune", "799e2d950aa01ba7860907f5a6d86061f885dca6"),
    "dycoke": ("KD-TAO/DyCoke", "dd7463498203479d0ff6f2d29c4e72928c0af244"),
    "holitom": ("cokeshao/HoliTom", "e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0"),
    "visionzip": ("cokeshao/HoliTom", "e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0"),
    "prunevid": ("Visual-AI/PruneVid", "b12600c6176c606ee4b6b7d9e26f4aa46d0dfd42"),
    "fastvid": ("LunarShen/FastVID", "a40a109cb8df20e8c2c17c6850f8269717369990"),
}
ORDER = ["divprune", "dycoke", "holitom", "prunevid", "fastvid", "visionzip"]


def softmax_scores(T: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """A seeded smooth field per frame, softmax over the frame's tokens (a stand-in for attention received)."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.randn(T, 1, 4, 4, generator=g), size=(H, W), mode="bicubic", align_corners=False)
    field = field.squeeze(1) * 3 + 0.3 * torch.randn(T, H, W, generator=g)
    return field.reshape(T, -1).softmax(-1).reshape(T, H, W)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def checkout_commit(path: str, under: str = ".") -> str:
    """The commit a checkout is at (``git rev-parse HEAD``), with ``+changes`` if its tracked files under
    ``under`` differ from it."""
    try:
        head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no", "--", under],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout: commit unknown)"
    return "at " + head.stdout.strip()[:12] + (" +changes" if dirty else "")




def run(args) -> str:
    torch.set_num_threads(1)
    dirs = dict(item.split("=", 1) for item in args.official)
    unknown = set(dirs) - set(ORDER)
    if unknown:
        raise SystemExit(f"no official runner for {', '.join(sorted(unknown))} (known: {', '.join(ORDER)})")
    calls = officials(dirs)
    shapes = [s for s in SHAPES if f"{s[0]}x{s[1]}x{s[2]}x{s[3]}" in args.shapes.split(",")]
    rows = []
    here = checkout_commit(str(Path(__file__).resolve().parents[1]), "src")  # framepress's own commit, at import time
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    for shape in shapes:
        T, H, W, C = shape
        x = synthetic(*shape, seed=0)
        scores = softmax_scores(T, H, W)
        for method in [m for m in ORDER if m in calls]:
            fn_official = lambda: calls[method](x, scores)  # noqa: E731
            fn_ours = lambda: ours(method, x, scores)  # noqa: E731
            t_off, out_off = timed(fn_official)  # warm-up, and the counts
            t_ours, out_ours = timed(fn_ours)
            n_off, n_ours = len(out_off), len(out_ours)
            extra = ""
            if method == "divprune":
                unique = int(torch.unique(out_off).numel())
                if unique != n_off:
                    extra = f" ({unique} distinct)"
            off_times, our_times = [t_off], [t_ours]
            if not args.quick:
                off_times, our_times = [], []
                for _ in range(args.repeat):
                    off_times.append(timed(fn_official)[0])
                    our_times.append(timed(fn_ours)[0])
            a, b = statistics.median(off_times), statistics.median(our_times)
            label = f"{T} x {H} x {W} x {C}"
            rows.append((method, label, SETTING[method], a, b, n_off, extra, n_ours))
            print(f"{method} {label}: official {a:.3f} s ({n_off}{extra} tokens), framepress {b:.3f} s ({n_ours}), "
                  f"ratio {a / b:.2f} [{time.perf_counter() - began:.0f} s]", flush=True)
    lines = [
        "| method | input (T x H x W x C) | setting | official s | framepress s | official / framepress | tokens official / framepress | counts equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, label, setting, a, b, n_off, extra, n_ours in rows:
        lines.append(f"| {method} | {label} | {setting} | {a:.3f} | {b:.3f} | {a / b:.2f} | {n_off}{extra} / {n_ours} "
                     f"| {'yes' if n_off == n_ours else 'no'} |")
    header = (
        f"Command: `python benchmarks/bench_official.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {cpu_name()}, {os.cpu_count()} cores{', shared with other work at the time' if args.shared else ''}, "
        f"1 torch thread; torch {torch.__version__}, Python {platform.python_version()}  \n"
        f"Date: {datetime.date.today().isoformat()}; "
        + ("one call each (--quick)" if args.quick else f"median of {args.repeat} calls each after a warm-up, the two sides alternating")
        + f"; whole run {(time.perf_counter() - began) / 60:.1f} min, 1-minute load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.  \n"
        "Inputs: `framepress.features.synthetic(T, H, W, C, seed=0)` and a seeded per-frame softmax field as the "
        "attention scores, the same tensors and parameters on both sides. Official code: each function's source text "
        "read from the checkout given and run unchanged (see the script's docstring); none of it is in this repository."
    )
    checkouts = []
    for method in [m for m in ORDER if m in dirs]:
        repo, want = COMMITS[method]
        got = checkout_commit(dirs[method])
        note = "" if got == "at " + want[:12] else f" (golden: {want[:12]})"
        checkouts.append(f"{method}: {repo} {got}{note}")
    slower = [f"{m} {label}" for m, label, _, a, b, *_ in rows if a < b]
    unequal = [f"{m} {label}" for m, label, *_, n_off, _, n_ours in rows if n_off != n_ours]
    summary = (
        f"framepress {here} (src/; at the start of the run). Checkouts: {'; '.join(checkouts)}.\n\n"
        f"framepress is faster than the official code in {len(rows) - len(slower)} of {len(rows)} rows"
        + (f"; slower in: {', '.join(slower)}" if slower else "")
        + ". Token counts "
        + (f"differ in: {', '.join(unequal)}." if unequal else "are equal in every row.")
    )
    return header + "\n\n" + "\n".join(lines) + "\n\n" + summary + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", action="append", default=[], metavar="METHOD=DIR",
                        help="a local checkout of METHOD's official repository (repeat per method)")
    parser.add_argument("--shapes", default="32x14x14x3584,64x13x13x3584")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one call each, no repeats (a smoke run)")
    parser.add_argument("--shared", action="store_true", help="say in the doc that the machine was shared")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    if not args.official:
        parser.error("give at least one --official METHOD=DIR")
    text = run(args)
    print(text)
    if args.doc:
        write_section(text, "bench_official_cpu", "framepress vs the official code (CPU)")


if __name__ == "__main__":
    main()
