"""``framepress demo``: the whole path — video file, decoding, compression, a model, an answer, pictures — on a
synthetic clip and the packaged synthetic-domain model, with nothing to download.

The clip is a held-out :mod:`framepress.synth` question whose answer is known: a small square of one colour shows
in only one or two of its 16 frames. The packaged model (:mod:`framepress.packaged`) was trained on such clips, so
its answers are real answers — about moving shapes only, a proxy for what compression keeps. Token counts, times
and FLOPs are real measurements of this machine and this toy architecture; a single prefill's time swings a lot
on a busy machine, so each row's time to first token is the median of :data:`TIMED_RUNS` prefills after a
warm-up run (the one that answers).

Each row is printed as soon as its run finishes; Ctrl-C keeps the rows done, prints the summary of those and exits
with 130.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from . import packaged, registry, synth
from .files import atomic
from .pipeline import load

RETENTIONS = (0.5, 0.25, 0.1)
INNER_LAYER = 2  # of the packaged 4-layer model
TIMED_RUNS = 3  # prefills timed per row; the median is shown
HEADER = (f"{'method':<13}{'retention':>11}{'tokens in':>11}{'out':>6}{f'TTFT ms (median of {TIMED_RUNS})':>23}"
          f"{'LLM MFLOPs':>12}  answer")


def write_video(path: Path, frames, fps: float = 8.0) -> Path:
    """Encode uint8 RGB frames [F, H, W, 3] as H.264 MP4 with PyAV, atomically."""
    import av

    path = Path(path)
    with atomic(path) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def settings() -> list[tuple[str, object, dict, float]]:
    """(method, retention, params, share entering the LLM) of the demo: every method by name at a few retentions; a method with an
    in-LLM part runs it at layer 2 of the packaged model ("A%/B%"), an in-LLM method at its layer or 2."""
    runs = []
    for name in registry.names():
        spec = registry.get(name)
        if name.startswith("test_") or name in registry.parts():
            continue  # an in-LLM or decode part runs with its pre-LLM method
        for r in RETENTIONS:
            if spec.inner:
                runs.append((name, f"{r:.0%}/{r / 2:.1%}", {"inner_layer": INNER_LAYER}, r))
            elif spec.stage == "in-llm":
                runs.append((name, r, {"layer": min(spec.default_layer, INNER_LAYER)}, r))
            else:
                runs.append((name, r, {}, r))
    return runs


def run_demo(out: Path, frames: int = 16, json_output: bool = False, index: int = 1) -> int:
    """Run the demo into folder ``out``; returns the exit code (0, or 130 when interrupted)."""
    from tqdm import tqdm

    out = Path(out)
    item = synth.generate("needle", index, split="test", frames=frames)
    video_path = write_video(out / "demo.mp4", item.frames)
    model_dir = packaged.path()
    say = (lambda *a: None) if json_output else (lambda *a: print(*a, file=sys.stderr, flush=True))
    shown = ", ".join(str(i) for i in item.evidence)
    say(f"video: {video_path} ({frames} frames of moving shapes; a small {item.answer} square shows only in frame(s) "
        f"{shown})")
    say(f"model: {packaged.NOTE}")
    say(f"question: {item.question!r}; the right answer: {item.answer!r}")
    pipe = load(model_dir, frames=frames, device="cpu")
    from .video import load_video

    video = load_video(video_path, num_frames=frames)
    runs = [("none", 1.0, {}, None)] + settings()
    say(f"time to first token: the median of {TIMED_RUNS} prefills after a warm-up run, per row")
    pictures = f"{RETENTIONS[1]:.0%} retention ({RETENTIONS[1]:.0%}/{RETENTIONS[1] / 2:.1%} for the two-stage methods)"
    if not json_output:
        print(HEADER, flush=True)
        print("-" * len(HEADER), flush=True)
    rows, interrupted = [], False
    bar = tqdm(total=len(runs), desc="demo", unit="run", file=sys.stderr, disable=json_output, leave=False)
    try:
        for name, retention, params, share in runs:
            bar.set_postfix_str(f"{name} {retention}")
            try:
                pipe.use(None if name == "none" else name, retention, **params)
                row = {**_ask(pipe, video, item.question), "method": name, "retention": retention}
                row["correct"] = row["answer"].split()[:1] == [item.answer]
                if share == RETENTIONS[1]:
                    row["picture"] = str(pipe.show(video, out / f"show_{name}.png", cell=128))
            except ValueError as exc:
                row = {"method": name, "retention": retention, "error": str(exc)}
            finally:
                pipe.close()
            rows.append(row)
            if not json_output:
                bar.write(_row_line(row), file=sys.stdout)
                sys.stdout.flush()
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        pipe.close()
    if json_output:
        print(json.dumps({"question": item.question, "expected": item.answer, "ttft_runs": TIMED_RUNS,
                          "pictures": pictures, "interrupted": interrupted, "rows": rows}, default=str, indent=1))
    else:
        if interrupted:
            say(f"interrupted after {len(rows)} of {len(runs)} runs; the rows above are all complete")
        answered = [r for r in rows if "answer" in r]
        right = sum(r["correct"] for r in answered)
        if answered:
            say(f"{right} of {len(answered)} runs answered {item.answer!r}. One clip says little: `framepress "
                "bench-quality` ranks the methods on 300 held-out clips per question kind (docs/quality-tiny.md).")
        if any(r.get("picture") for r in rows):
            say(f"pictures of what each method kept at {pictures}: {out}/show_<method>.png")
    return 130 if interrupted else 0


def _row_line(r: dict) -> str:
    """One row of the table (see :data:`HEADER`)."""
    if "error" in r:
        return f"{r['method']:<13}{r['retention']!s:>11}  n/a: {r['error']}"
    return (f"{r['method']:<13}{r['retention']!s:>11}{r.get('visual_tokens_in', '-')!s:>11}"
            f"{r.get('visual_tokens_out', '-')!s:>6}{1000 * r['ttft_s']:>23.1f}"
            f"{r.get('llm_prefill_flops', 0) / 1e6:>12.1f}  {r['answer']!r} {'right' if r['correct'] else 'wrong'}")


def _ask(pipe, video, question: str) -> dict:
    """The answer and its stats, with ``ttft_s`` the median of :data:`TIMED_RUNS` prefills (one new token each)
    after the answering run, which warms this setting up; ``ttft_runs_s`` lists them."""
    answer = pipe.ask(video, question, max_new_tokens=4)
    times = sorted(pipe.ask(video, question, max_new_tokens=1).stats["ttft_s"] for _ in range(TIMED_RUNS))
    return {"answer": answer.text, **answer.stats, "ttft_s": statistics.median(times), "ttft_runs_s": times}
