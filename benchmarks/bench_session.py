"""Several questions about one video: the time a cached compressed prefix saves per question.

    python benchmarks/bench_session.py

The LLaVA-OneVision-0.5B architecture with random weights (as in bench_ttft.py), 32 frames of synthetic video
features, one method at a time. For each question: the time to first token when the whole prompt is prefilled
(what a plain ``generate`` does every time) and when ``framepress.Session`` answers from the cached
``[system][compressed video]`` prefix; the answers are checked to be equal.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ttft import VIDEO_TOKEN, build  # noqa: E402
from docs_section import cpu_name, write_section  # noqa: E402

import framepress  # noqa: E402
from framepress.features import synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model = build("0.5b", "cpu", torch.float32)
    C = model.config.text_config.hidden_size
    grid = synthetic(args.frames, 14, 14, C, seed=0).reshape(1, -1, C)
    features = torch.cat([grid, model.model.image_newline.detach()[None, None].float()], 1)
    prefix = torch.tensor([[151644, *range(100, 120), *[VIDEO_TOKEN] * features.shape[1]]])
    encoded = {"video": BaseModelOutputWithPooling(pooler_output=features)}
    questions = [list(range(200 + 40 * q, 230 + 40 * q)) for q in range(args.questions)]
    rows = []
    for method, retention in [("sttm", 0.3), ("pool", 0.3), ("fastv", 0.3)]:
        with framepress.apply(model, method, retention=retention):
            whole, cached = [], []
            start = time.perf_counter()
            session = framepress.Session(model, {"input_ids": prefix, "attention_mask": torch.ones_like(prefix),
                                                 "mm_encoder_outputs": encoded})
            setup = time.perf_counter() - start
            for q in questions:
                ids = torch.cat([prefix, torch.tensor([q])], 1)
                start = time.perf_counter()
                with torch.no_grad():
                    single = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                            mm_encoder_outputs=encoded, max_new_tokens=1, do_sample=False)
                whole.append(time.perf_counter() - start)
                start = time.perf_counter()
                answer = session.ask(q, max_new_tokens=1, do_sample=False)
                cached.append(time.perf_counter() - start)
                assert torch.equal(answer, single[:, ids.shape[1] :]), "a cached answer differs"
        rows.append((method, retention, session.reuse, setup, statistics.median(whole), statistics.median(cached)))
        print(rows[-1], flush=True)
    lines = [
        f"Command: `python benchmarks/bench_session.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {cpu_name()}, {args.threads} torch threads; torch {torch.__version__}, Python {platform.python_version()}  ",
        f"Date: {datetime.date.today().isoformat()}; LLaVA-OneVision-0.5B architecture, random weights, float32, "
        f"{args.frames} frames of synthetic features, {len(questions)} questions of 30 tokens; medians. Cached answers "
        "equal whole-prompt answers (checked in the run).",
        "",
        "| method | retention | prefix reused | session setup s | TTFT, whole prompt s | TTFT, cached prefix s | saved per question |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, retention, reuse, setup, whole, cached in rows:
        lines.append(f"| {method} | {retention} | {'yes' if reuse else 'no (query-aware)'} | {setup:.2f} | {whole:.2f} | "
                     f"{cached:.2f} | {100 * (1 - cached / whole):.0f}% |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text, "bench_ttft:session-0.5b-cpu", "Time to first token in a model (session-0.5b-cpu)")


if __name__ == "__main__":
    main()
