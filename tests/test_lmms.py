"""The lmms-eval plugin end to end: decode, compress, generate, score, aggregate, on the local synthetic task.

Needs framepress[eval] (the second job of .ci/run); skipped without lmms-eval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("accelerate")

from framepress.evaluation import report, sweep, synth_task  # noqa: E402
from framepress.evaluation.journal import JournalError  # noqa: E402
from framepress.models.tiny import save_tiny_checkpoint  # noqa: E402

TASKS = ",".join(synth_task.TASKS)
#: what a run that did not really run leaves in lmms-eval's output (it exits 0 after logging the failure)
FAILED = ("Traceback (most recent call last)", *sweep.FAILURE_MARKS)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The synthetic task written the way a user writes it (``framepress synth-task DIR``), and a tiny model; lmms-eval
    runs from another working directory (``elsewhere``), finding the task through --include_path alone."""
    root = tmp_path_factory.mktemp("lmms")
    assert synth_task.command(root / "task", per_kind=2) == 0
    (root / "elsewhere").mkdir()
    return {"root": root, "task": root / "task", "model": save_tiny_checkpoint(root / "model"),
            "docs": len((root / "task" / "docs.jsonl").read_text().splitlines())}


def environment(root: Path, processes: int = 1) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(root / "hf"),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def lmms_eval(work, out: Path, model_args: str, tasks: str = TASKS, processes: int = 1, limit: int | None = None):
    """One lmms-eval run, as it is; :func:`ran` checks that it really ran. Several processes: the documented CPU
    form, ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N -m lmms_eval ...``."""
    if processes > 1:
        base = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                str(processes)]
    else:
        base = [sys.executable]
    cmd = [*base, "-m", "lmms_eval", "--model", "framepress", "--model_args", f"pretrained={work['model']},{model_args}",
           "--tasks", tasks, "--include_path", str(work["task"]), "--output_path", str(out), "--log_samples",
           "--batch_size", "1"]
    if limit:
        cmd += ["--limit", str(limit)]
    return subprocess.run(cmd, cwd=work["root"] / "elsewhere", env=environment(work["root"], processes),
                          capture_output=True, text=True, timeout=900)


def ran(done: subprocess.CompletedProcess, out: Path) -> None:
    """Fail loudly unless lmms-eval really ran: it exits 0 after logging a failed model set-up or an error inside its
    evaluator (e.g. a filelock without ``filelock._api``), so the exit status alone proves nothing."""
    output = done.stdout + done.stderr
    problems = [f"exit status {done.returncode}"] if done.returncode != 0 else []
    problems += [f"its output holds {mark!r}" for mark in FAILED if mark in output]
    if not list(out.rglob("*_results.json")):
        problems.append(f"no *_results.json under {out}")
    assert not problems, (f"lmms-eval did not run: {'; '.join(problems)}\n--- stderr (tail) ---\n{done.stderr[-4000:]}"
                          f"\n--- stdout (tail) ---\n{done.stdout[-1500:]}")


def results_of(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    [file] = sorted(out.rglob("*_results.json"))
    stamp = file.name.split("_results.json")[0]
    samples = {}
    for f in file.parent.glob(f"{stamp}_samples_*.jsonl"):
        task = f.name[len(stamp) + len("_samples_"):-len(".jsonl")]
        samples[task] = sorted((json.loads(line) for line in f.read_text().splitlines()), key=lambda s: s["doc_id"])
    return json.loads(file.read_text()), samples


@pytest.fixture(scope="module")
def single(work):
    out = work["root"] / "single"
    ran(lmms_eval(work, out, f"method=sttm,retention=0.3,frames=16,journal={work['root'] / 'journal1'}"), out)
    return results_of(out)


def test_a_run_that_did_not_run_fails_loudly(tmp_path):
    """What lmms-eval 0.7.3 printed with filelock 4.3.1 (exit status 0, no results)."""
    done = subprocess.CompletedProcess([], 0, stdout="ERROR | lmms_eval.__main__:cli_evaluate:614 - Error during "
                                       "evaluation: No module named 'filelock._api'.\n",
                                       stderr="Traceback (most recent call last):\n  File \"evaluator.py\", line 134\n"
                                       "ModuleNotFoundError: No module named 'filelock._api'\n")
    with pytest.raises(AssertionError, match=r"(?s)did not run: its output holds 'Traceback.*'Error during evaluation'.*"
                                             r"no \*_results.json.*stderr \(tail\).*filelock._api"):
        ran(done, tmp_path)
    assert sweep.failed(0, done.stdout + done.stderr, True).startswith("lmms-eval logged: ERROR | lmms_eval")
    assert sweep.failed(0, "\x1b[31m\x1b[1mERROR \x1b[0m| Error during evaluation: x\n", True) == (
        "lmms-eval logged: ERROR | Error during evaluation: x (and exited 0)")
    assert sweep.failed(0, "", False) == "lmms-eval exited 0 without writing results"
    assert sweep.failed(1, "", True) == "lmms-eval exited with status 1"
    assert sweep.failed(0, "fine", True) is None


def test_every_request_type_runs_and_logs_the_compression(work, single):
    results, samples = single
    docs = work["docs"]
    assert set(results["results"]) >= set(TASKS.split(","))
    for task in TASKS.split(","):
        assert len(samples[task]) == docs
    for sample in samples["framepress_synth"]:
        [counts] = sample["token_counts"]
        assert counts["visual_tokens_in"] == 16 * 4 * 4  # 16 frames of the tiny model's 4x4 grid
        assert 0 < counts["visual_tokens_out"] <= round(0.3 * 256)
        assert counts["stages"][0]["stage"] == "sttm@pre-LLM"
        assert counts["llm_prefill_flops"] > 0 and counts["prefill_s"] > 0 and counts["peak_memory_mb"] > 0
        assert counts["input_tokens"] > counts["visual_tokens_in"]
    # multiple choice: one scored continuation per answer word, each with its log-likelihood, from one shared prefill
    for sample in samples["framepress_synth_mc"]:
        assert len(sample["token_counts"]) == 4
        assert all(c["logprob"] < 0 for c in sample["token_counts"])
        assert [c["prefix_reused"] for c in sample["token_counts"]] == [False, True, True, True]
        assert sample["acc"] in (0.0, 1.0)
    # two rounds over one cached compressed prefix: the same question gets the same answer
    assert results["results"]["framepress_synth_rounds"]["agreement,none"] == 1.0
    for sample in samples["framepress_synth_rounds"]:
        assert sample["token_counts"][0]["rounds"] == 2 and sample["token_counts"][0]["prefix_reused"] is True


def test_scores_are_what_the_samples_say(single):
    results, samples = single
    mean = sum(s["accuracy"] for s in samples["framepress_synth"]) / len(samples["framepress_synth"])
    assert results["results"]["framepress_synth"]["accuracy,none"] == pytest.approx(mean)
    for sample in samples["framepress_synth_mc"]:
        losses = [float(r[0]) for r in sample["filtered_resps"]]  # mean negative log-likelihood per token
        assert losses == pytest.approx([-c["logprob"] / c["output_tokens"] for c in sample["token_counts"]])
        assert sample["acc"] == float(min(range(4), key=losses.__getitem__) == int(sample["target"]))


def test_two_processes_split_the_samples_and_agree(work, single):
    out = work["root"] / "double"
    journal = work["root"] / "journal2"
    ran(lmms_eval(work, out, f"method=sttm,retention=0.3,frames=16,journal={journal}",
                  tasks="framepress_synth,framepress_synth_mc", processes=2), out)
    lines = [len((journal / f"rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert min(lines) > 0 and sum(lines) == 12 + 48  # 12 questions, 48 scored choices, split between two processes
    results, samples = results_of(out)
    _, alone = single
    assert [s["filtered_resps"] for s in samples["framepress_synth"]] == [
        s["filtered_resps"] for s in alone["framepress_synth"]]
    losses = [float(r[0]) for s in samples["framepress_synth_mc"] for r in s["filtered_resps"]]
    assert losses == pytest.approx([float(r[0]) for s in alone["framepress_synth_mc"] for r in s["filtered_resps"]],
                                   rel=1e-5)


def test_an_interrupted_run_resumes_from_its_journal(work, single):
    journal = work["root"] / "journal1"
    file = journal / "rank0.jsonl"
    lines = file.read_text().splitlines(keepends=True)
    file.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a crash in the middle of a write
    out = work["root"] / "resumed"
    ran(lmms_eval(work, out, f"method=sttm,retention=0.3,frames=16,journal={journal}"), out)
    assert len(file.read_text().splitlines()) == len(lines)  # only the cut sample was computed again
    _, samples = results_of(out)
    _, first = single
    for task in TASKS.split(","):
        assert [s["filtered_resps"] for s in samples[task]] == [s["filtered_resps"] for s in first[task]]

    file.write_text("".join(lines[:3]) + "{damaged\n" + "".join(lines[3:]))
    done = lmms_eval(work, work["root"] / "bad", f"method=sttm,retention=0.3,frames=16,journal={journal}")
    # lmms-eval logs a failed model set-up and exits 0; what counts is the message and that no results were written
    assert "rank0.jsonl line 4 is damaged" in done.stdout + done.stderr
    with pytest.raises(AssertionError, match="lmms-eval did not run"):
        ran(done, work["root"] / "bad")
    file.write_text("".join(lines))
    done = lmms_eval(work, work["root"] / "other", f"method=sttm,retention=0.5,frames=16,journal={journal}")
    assert "holds answers of other settings (retention: 0.3 there, 0.5 now)" in done.stdout + done.stderr
    assert not list((work["root"] / "other").rglob("*_results.json"))


def make(work, args: str):
    from framepress.evaluation.plugin import FramepressLMM

    return FramepressLMM.create_from_arg_string(f"pretrained={work['model']},{args}", {"batch_size": 1})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("method=sttm,retention=0.3,tau_q=0.5", r"unknown key\(s\) tau_q.*sttm's parameters: .*tau_s"),
        ("method=sttmm,retention=0.3", "unknown method 'sttmm'"),
        ("method=sttm", "retention=<r> is required"),
        ("retention=0.3", "method=<name> is required"),
        ("method=none,retention=0.3", "method=none runs the full model"),
        ("method=sttm,retention=2.5", "retention"),
    ],
)
def test_bad_model_args_are_named(work, args, message):
    with pytest.raises(ValueError, match=message):
        make(work, args)


def test_a_family_framepress_does_not_support_is_refused(work, tmp_path):
    import transformers

    config = transformers.Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "text-only")
    with pytest.raises(ValueError, match="framepress supports"):
        make({"model": tmp_path / "text-only"}, "method=sttm,retention=0.3")


def test_visuals_that_are_not_one_video_are_refused(work, tmp_path):
    from PIL import Image

    lmm = make(work, "method=sttm,retention=0.3,frames=16")
    video = str(work["task"] / "videos" / "needle_0000.mp4")
    assert lmm._video([video], "t", 0).frames.shape[0] == 16
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for visuals, message in [([Image.new("RGB", (8, 8))], "is a Image, not a video"),
                             ([str(tmp_path / "a.png")], "is an image"),
                             ([video, video], "gives 2 visuals"), ([], "gives 0 visuals")]:
        with pytest.raises(ValueError, match=f"task 'mytask' doc 3: .*{message}"):
            lmm._video(visuals, "mytask", 3)


def test_sweep_runs_each_cell_once_and_reports(work, monkeypatch):
    out = work["root"] / "sweep"
    grid = sweep.run(out, str(work["model"]), ["framepress_synth"], ["sttm", "pool"], ["0.5"],
                     frames=16, cpu=True, limit=4, include_path=str(work["task"]), progress=False)
    assert [c.name for c in grid] == ["full", "sttm@0.5", "pool@0.5"]
    for cell in grid:
        marker = json.loads((cell.folder(out) / "cell.json").read_text())
        assert marker["samples"] == 4 and marker["method"] == cell.method
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *a, **k: pytest.fail("a finished cell ran again"))
    sweep.run(out, str(work["model"]), ["framepress_synth"], ["sttm", "pool"], ["0.5"], frames=16, cpu=True,
              limit=4, include_path=str(work["task"]), progress=False)
    page = report.write_report([out], out / "report")
    text = (out / "report" / "report.md").read_text()
    assert "| full | 100% | — |" in text and "| sttm | 0.5 | 49.9% |" in text and "| pool | 0.5 |" in text
    assert page.read_text().count("data:image/png;base64,") == 2


def test_the_choices_of_a_question_share_one_decoding_and_prefill(work, monkeypatch, tmp_path):
    from lmms_eval.api.instance import Instance

    from framepress.evaluation import plugin
    from framepress.video import load_video as load

    docs = [json.loads(line) for line in (work["task"] / "docs.jsonl").read_text().splitlines()][:3]
    decoded = []

    def counting(path, **options):
        decoded.append(path)
        return load(path, **options)

    monkeypatch.setattr(plugin, "load_video", counting)
    lmm = make(work, f"method=sttm,retention=0.3,frames=16,journal={tmp_path / 'j'}")
    lmm.task_dict = {"mc": {"test": dict(enumerate(docs))}}
    visual = lambda doc: [str(work["task"] / doc["video"])]  # noqa: E731
    requests = [Instance("loglikelihood", (doc["question"], choice, visual, i, "mc", "test"), idx=c,
                         metadata={"task": "mc", "doc_id": i, "repeats": 1})
                for i, doc in enumerate(docs) for c, choice in enumerate(doc["choices"])]
    prefills = len(lmm.pipeline.handle.stats)
    losses = [r.text[0] for r in lmm.loglikelihood(requests)]
    assert len(decoded) == 3 and len(lmm.pipeline.handle.stats) - prefills == 3  # 12 choices: 3 decodings, 3 prefills
    alone = []
    for doc in docs:
        video = load(str(work["task"] / doc["video"]), num_frames=16)
        for choice in doc["choices"]:
            scored = lmm.pipeline.score(video, doc["question"], choice)
            alone.append(-scored.stats["logprob"] / scored.stats["new_tokens"])
    assert losses == pytest.approx(alone, abs=1e-5)
    # a rerun answers every choice from the journal: no decoding, no prefill
    decoded.clear()
    prefills = len(lmm.pipeline.handle.stats)
    assert [r.text[0] for r in lmm.loglikelihood(requests)] == losses
    assert decoded == [] and len(lmm.pipeline.handle.stats) == prefills


def test_a_sweep_cell_whose_run_did_not_run_fails(work):
    out = work["root"] / "sweep-bad"
    with pytest.raises(RuntimeError, match=r"(?s)sweep cell framepress_synth full failed: lmms-eval logged: .*"
                                           r"Error during evaluation.*\(and exited 0\)"):
        sweep.run(out, str(work["model"]), ["framepress_synth"], [], [], frames=16, cpu=True, limit=2,
                  extra_args="tau_q=1", include_path=str(work["task"]), progress=False)
    assert not (out / "framepress_synth" / "full" / "cell.json").exists()


def test_the_plugin_is_found_through_the_entry_point():
    from lmms_eval.models import get_model_manifest

    assert get_model_manifest("framepress").simple_class_path == "framepress.evaluation.plugin.FramepressLMM"


def test_journal_refuses_a_damaged_config(tmp_path):
    from framepress.evaluation.journal import Journal

    Journal(tmp_path / "j", {"a": 1}).close()
    (tmp_path / "j" / "config.json").write_text("{")
    with pytest.raises(JournalError, match="damaged"):
        Journal(tmp_path / "j", {"a": 1})


def test_the_packaged_model_scores_well_above_chance_through_lmms_eval(work):
    out = work["root"] / "packaged"
    ran(lmms_eval({**work, "model": "packaged"}, out, "method=sttm,retention=0.5,frames=16", tasks="framepress_synth"), out)
    results, samples = results_of(out)
    assert "pretrained=packaged," in results["config"]["model_args"]
    # 12 questions, 2 per kind, chance 25%; the motion kind is not learned (docs/quality-tiny.md)
    assert results["results"]["framepress_synth"]["accuracy,none"] >= 0.6
