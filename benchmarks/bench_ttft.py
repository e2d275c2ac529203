"""Time to first token of a real-size Video-LLM with each compression method, on this machine.

    python benchmarks/bench_ttft.py                 # LLaVA-OneVision-0.5B architecture, CPU, 32 frames
    python benchmarks/bench_ttft.py --model 7b --device cuda

The model is the LLaVA-OneVision-0.5B (or -7B) architecture with its real config values and random weights:
latency does not depend on weight values, but the generated text is meaningless. The video features entering
the LLM are synthetic (``framepress.features.synthetic``: smooth random fields with scene cuts, 32 x 14 x 14, so
threshold methods see redundancy as in a real video) and are passed to ``generate`` as precomputed encoder
outputs: the vision tower, the same for every method, is left out of TTFT, as the STTM paper does.

Each setting runs in its own process (so the peak memory is its own), ``--repeat`` times after a warm-up; the
table gives medians and the ratio to the full-token run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_section import cpu_name, write_section  # noqa: E402
RETENTIONS = [0.5, 0.3, 0.1, 0.02]
METHODS = ["pool", "sttm", "fastv"]

# Real config values of llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf (SigLIP-so400m, Qwen2 LLM).
VISION = dict(
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
    num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False,
)
TEXT = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
}
VIDEO_TOKEN, IMAGE_TOKEN = 151647, 151646


def build(size: str, device: str, dtype: torch.dtype):
    import transformers as tf

    config = tf.LlavaOnevisionConfig(
        vision_config=VISION,
        text_config=dict(model_type="qwen2", vocab_size=152000, max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, **TEXT[size]),
        image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN, vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
    return model


class PeakRSS:
    """Peak resident memory of this process above its level at entry, sampled every millisecond (CPU runs)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.start) / 2**20

    def _watch(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so the RSS rises again with what the next run needs."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def child(args) -> dict:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    import framepress
    from framepress.features import synthetic

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = build(args.model, args.device, dtype)
    C = model.config.text_config.hidden_size
    grid = synthetic(args.frames, 14, 14, C, seed=0).reshape(1, -1, C)
    newline = model.model.image_newline.detach()[None, None].to("cpu")
    features = torch.cat([grid, newline.float()], 1).to(args.device, dtype)
    ids = torch.tensor([[151644, *range(100, 120), *[VIDEO_TOKEN] * features.shape[1], *range(200, 230), 151645]],
                       device=args.device)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=features)})

    handle = None
    if args.method != "full":
        handle = framepress.apply(model, args.method, retention=args.retention)

    def once():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    release_free_memory()
    with PeakRSS() as memory:  # the first (warm-up) run: later runs reuse freed memory the RSS no longer shows
        once()
    times = [once() for _ in range(args.repeat)]
    stages = handle.stats[-1]["stages"] if handle else []
    visual = stages[-1]["visual_out"][0] if stages else args.frames * 196
    result = {
        "method": args.method,
        "retention": args.retention,
        "ttft_s": statistics.median(times),
        "visual_tokens": visual,
        "prompt_tokens": int(ids.shape[1]),
        "working_mb": memory.above_start_mb,
        "model_rss_mb": memory.start / 2**20,
    }
    if args.device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result




def parent(args) -> str:
    settings = [("full", 1.0)] + [(m, r) for m in METHODS for r in RETENTIONS]
    rows = []
    for method, retention in settings:
        cmd = [sys.executable, __file__, "--child", "--method", method, "--retention", str(retention),
               "--model", args.model, "--device", args.device, "--dtype", args.dtype, "--frames", str(args.frames),
               "--repeat", str(args.repeat), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(result)
        print(json.dumps(result), flush=True)
    full = rows[0]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_name()}, {args.threads} torch threads"
    memory = "peak GPU MB" if args.device.startswith("cuda") else "working memory MB (first run's peak RSS above the loaded model)"
    lines = [
        f"Command: `python benchmarks/bench_ttft.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {device}; torch {torch.__version__}, Python {platform.python_version()}  ",
        f"Date: {datetime.date.today().isoformat()}; LLaVA-OneVision-{args.model.upper()} architecture (real config, random "
        f"weights), {args.dtype}, {args.frames} frames x 196 tokens, {full['prompt_tokens'] - args.frames * 196 - 1} text "
        f"tokens; precomputed video features (vision tower excluded); median of {args.repeat} after a warm-up.",
        "",
        f"| method | retention | visual tokens | TTFT s | x full | {memory} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = r.get("peak_gpu_mb", r["working_mb"])
        lines.append(
            f"| {r['method']} | {r['retention']} | {r['visual_tokens']} | {r['ttft_s']:.2f} | "
            f"{r['ttft_s'] / full['ttft_s']:.2f} | {mem:.0f} |"
        )
    if not args.device.startswith("cuda"):
        lines.append(f"\nThe loaded model itself (weights, fp32) holds {full['model_rss_mb']:.0f} MB of RSS.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(TEXT), default="0.5b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--retention", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    text = parent(args)
    print(text)
    if not args.no_write:
        key = f"{args.model}-{'gpu' if args.device.startswith('cuda') else 'cpu'}"
        write_section(text, f"bench_ttft:{key}", f"Time to first token in a model ({key})")


if __name__ == "__main__":
    main()
