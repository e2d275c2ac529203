"""vLLM serving with and without framepress: prompt tokens per request and throughput, side by side in one run.

One vLLM engine per setting (uncompressed, then each framepress setting) serves the same batch of requests, each a
video of ``--grid`` T x h x w merged tokens given as video embeddings (so the vision tower is out of the timing and
every engine sees the same features) plus a short question, and generates ``--tokens`` tokens greedily; prefix
caching is off, so a repeated batch is served from scratch. Each setting is timed ``--repeats`` times after a warm-up batch; the table gives the median wall time of the batch,
requests and prompt tokens per second, and the speed-up over uncompressed, into docs/benchmarks.md (``--doc``).

The model is a tiny random Qwen2.5-VL saved from config (text width 128, 2 layers: tests/vllm_support.py), or a
real checkpoint by ``--model``. On the tiny model the LLM's cost is small against vLLM's per-step overhead, so the
ratios understate what a 7B model gains; the token counts are exact either way.

    python benchmarks/bench_vllm.py --doc                       # the vLLM environment (README), CPU backend
    python benchmarks/bench_vllm.py --model Qwen/Qwen2.5-VL-7B-Instruct --dtype bfloat16   # a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

KEY = "bench-vllm"
HEADING = "Serving with vLLM (Qwen2.5-VL)"
PROMPT = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>what is in the video<|im_end|>\n"
    "<|im_start|>assistant\n"
)
SETTINGS = (
    None,
    {"method": "pool", "params": {"stride": 2}},
    {"method": "divprune", "retention": 0.1},
    {"method": "random", "retention": 0.1},
    {"method": "random", "retention": 0.02},
)


def label(setting) -> str:
    if setting is None:
        return "uncompressed"
    parts = [setting["method"], str(setting.get("retention", ""))]
    parts += [f"{k}={v}" for k, v in setting.get("params", {}).items()]
    return " ".join(p for p in parts if p)


def serve(model: str, setting, requests: list[dict], tokens: int, repeats: int, dtype: str, memory: float) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=dtype, enforce_eager=True, max_num_seqs=len(requests),
              gpu_memory_utilization=memory, enable_mm_embeds=True, enable_prefix_caching=False, limit_mm_per_prompt={"video": 1, "image": 0},
              hf_overrides={} if setting is None else {"framepress": setting})
    sampling = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    llm.generate(requests, sampling, use_tqdm=False)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = llm.generate(requests, sampling, use_tqdm=False)
        times.append(time.perf_counter() - start)
    prompt = [len(o.prompt_token_ids) for o in outs]
    del llm
    seconds = statistics.median(times)
    return {"setting": label(setting), "prompt_tokens": prompt[0], "seconds": seconds,
            "requests_per_s": len(requests) / seconds, "prompt_tokens_per_s": sum(prompt) / seconds}


def table(rows: list[dict], args, device: str) -> str:
    base = rows[0]["seconds"]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {device}, vLLM {args.vllm_version}: "
        f"`python benchmarks/bench_vllm.py {' '.join(sys.argv[1:])}` ({args.requests} requests a batch, each a "
        f"{args.grid} video ({args.video_tokens:,} merged tokens, given as embeddings) and a question; "
        f"{args.tokens} generated tokens each; median of {args.repeats} batches after a warm-up; "
        f"model: {args.model_name}).",
        "",
        "| setting | prompt tokens / request | batch (s) | requests / s | prompt tokens / s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['prompt_tokens']:,} | {r['seconds']:.2f} | {r['requests_per_s']:.2f} | "
                     f"{r['prompt_tokens_per_s']:,.0f} | {base / r['seconds']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a Qwen2.5-VL checkpoint (default: a tiny random one, saved from config)")
    parser.add_argument("--grid", default="16x14x14", help="T x h x w of each video's merged grid")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--memory", type=float, default=0.2, help="vLLM's gpu_memory_utilization (on CPU: of RAM)")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    import vllm

    from docs_section import cpu_name, write_section

    T, h, w = (int(v) for v in args.grid.lower().split("x"))
    args.video_tokens = T * h * w
    args.vllm_version = vllm.__version__
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from vllm_support import servable_checkpoint

            model = str(servable_checkpoint(Path(tmp) / "qwen25", "qwen2_5_vl"))
            args.model_name = "tiny random Qwen2.5-VL (text 128 x 2 layers)"
        else:
            model, args.model_name = args.model, args.model
        from transformers import AutoConfig

        hidden = AutoConfig.from_pretrained(model).text_config.hidden_size
        generator = torch.Generator().manual_seed(0)
        requests = [
            {"prompt": PROMPT, "multi_modal_data": {"video": {
                "video_embeds": torch.randn(T * h * w, hidden, generator=generator),
                "video_grid_thw": torch.tensor([[T, 2 * h, 2 * w]]), "second_per_grid_ts": torch.tensor([1.0])}}}
            for _ in range(args.requests)
        ]
        rows = []
        for setting in SETTINGS:
            rows.append(serve(model, setting, requests, args.tokens, args.repeats, args.dtype, args.memory))
            print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()} (vLLM's CPU backend)"
    text = table(rows, args, device)
    print(text)
    if args.doc:
        write_section(text, KEY, HEADING)


if __name__ == "__main__":
    main()
