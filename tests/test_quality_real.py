"""bench-quality --regime real: the refusal without a model, the replayed encoding, and the resumable journal, on a
randomly initialised model of the real regime's shape (32 frames of 14x14 tokens)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from framepress import quality, synth, training
from framepress.cli import main


@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("real") / "model"
    torch.manual_seed(0)
    model = transformers.LlavaOnevisionForConditionalGeneration(training.config("real"))
    history = [{"step": 1, "seconds": 7200, "accuracy": {k: 0.25 for k in synth.REAL_KINDS}}]
    recipe = {"regime": "real", "steps": 1, "batch": 8, "lr": 1e-3, "warmup": 1, "seed": 0, "seconds": 7200,
              "history": history}
    training.save(model, training.tiny_tokenizer(), folder, recipe)
    return folder


def test_a_missing_real_model_is_refused_naming_how_to_build_it(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="python -m framepress.training --regime real --out"):
        quality.real_path(tmp_path / "absent")
    assert main(["bench-quality", "--regime", "real", "--model", str(tmp_path / "absent"), "--quiet",
                 "--out", str(tmp_path / "q.md")]) == 2
    err = capsys.readouterr().err
    assert "real-regime model is not at" in err and "--regime real" in err and not (tmp_path / "q.md").exists()
    assert quality.REAL_FOLDER.name == "synthetic-real"


def test_replayed_encoding_gives_the_logits_of_a_fresh_one(real_model):
    """VisionZip reads the vision scores and keys, GridPool the unpooled grid, FastVID the score stand-in, FastV the
    LLM: each sees the same inputs from the replay as from running the tower."""
    from framepress.pipeline import load

    pipe = load(real_model, device="cpu")
    item = synth.generate("needle32", 0, split="test")
    video = training.pixels(item.frames)[None]
    ids = pipe.prompter.inputs(item.frames, item.question)["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": video}
    replay = quality.Replay(pipe.model)
    replay.encode(video)
    for method in (None, "visionzip", "gridpool", "fastvid", "fastv"):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FastVID's stand-in for SigLIP's head
            pipe.use(method, 0.1 if method else None)
            fresh = pipe.model(**inputs).logits[:, -1]
            pipe.close()
            with replay:
                pipe.use(method, 0.1 if method else None)
                replayed = pipe.model(**inputs).logits[:, -1]
                pipe.close()
        assert "get_video_features" not in replay.base.__dict__
        assert torch.allclose(fresh, replayed, atol=1e-5), method


def test_the_real_bench_writes_a_table_with_standard_errors_and_resumes(real_model, tmp_path, monkeypatch):
    out = tmp_path / "quality-real.md"
    kinds = ("needle32",)
    common = dict(per_kind=3, methods=("random", "visionzip"), retentions=(0.1,), model_path=real_model, kinds=kinds,
                  chunk=2, progress=False, calibration=())
    rows = quality.run_real(out, **common)
    labels = [(r["method"], r["retention"]) for r in rows]
    assert labels == [("full", None), ("random", 0.1), ("visionzip", 0.1), ("random (original positions)", 0.1)]
    for row in rows:
        assert set(row["accuracy"]) == set(kinds) and all(row["items"][k] == 3 for k in kinds)
        p = row["accuracy"]["needle32"]
        assert row["stderr"]["needle32"] == pytest.approx((p * (1 - p) / 3) ** 0.5)
    assert rows[1]["kept"] == pytest.approx(0.1, abs=0.02) and rows[0]["kept"] == 1.0
    journal = out.with_suffix(".journal.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 2  # the meta line, then two chunks (2 + 1 items)
    table = out.read_text()
    assert " ± " in table and out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "## How the model was trained" in table and "120 minutes" in table
    assert "- step 1 (120 min), held-out accuracy at full tokens: needle32 25%" in table
    assert "## Every setting" in table and "% of full with its 95% interval" in table

    # a killed run: the last chunk is gone and a partial line is left; the rerun scores only that chunk
    lines = journal[:-1] + ['{"kind": "needle32", "sta']
    out.with_suffix(".journal.jsonl").write_text("\n".join(lines))  # no newline after the half-written line
    scored = []
    original = quality.RealBench.chunk

    def counting(self, kind, start, count, chosen, tick):
        scored.append((kind, start))
        return original(self, kind, start, count, chosen, tick)

    monkeypatch.setattr(quality.RealBench, "chunk", counting)
    again = quality.run_real(out, **common)
    assert scored == [("needle32", 2)]
    assert len(out.with_suffix(".journal.jsonl").read_text().splitlines()) == 3  # the half line dropped
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    # more items per kind extend the run: only the chunk that grew is scored
    scored.clear()
    extended = quality.run_real(out, **{**common, "per_kind": 4})
    assert scored == [("needle32", 2)] and extended[0]["items"] == {"needle32": 4}
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["complete"] is True
    with pytest.raises(ValueError, match="journal of another bench .*settings"):
        quality.run_real(out, **{**common, "methods": ("random",)})

    # a time budget: no new chunk starts after it, and the table covers the chunks done
    scored.clear()
    partial = quality.run_real(out, **{**common, "per_kind": 6, "minutes": 1e-9})
    assert scored == [] and partial[0]["items"] == {"needle32": 4}
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["complete"] is False
    with pytest.raises(RuntimeError, match="no items of needle32 scored"):
        quality.run_real(tmp_path / "other.md", **{**common, "minutes": 1e-9})


def test_the_kinds_take_turns_and_the_calibration_runs_at_every_retention(real_model):
    bench = quality.RealBench.__new__(quality.RealBench)
    bench.per_kind, bench.kinds, bench.size = 5, ("cut", "still"), 2
    assert bench.chunks() == [("cut", 0, 2), ("still", 0, 2), ("cut", 2, 2), ("still", 2, 2), ("cut", 4, 1),
                              ("still", 4, 1)]
    chosen = quality.settings(("random", "visionzip"), quality.REAL_RETENTIONS, every=("random",))
    assert [s.key for s in chosen] == [
        "full", *[f"random {r}" for r in quality.RETENTIONS], "visionzip 0.02", "visionzip 0.01",
        'random 0.5 {"positions": "original"}', 'random 0.1 {"positions": "original"}']


def test_the_real_bench_from_the_command_line(real_model, tmp_path):
    out = tmp_path / "q.md"
    assert main(["bench-quality", "--regime", "real", "--model", str(real_model), "--per-kind", "1", "--methods",
                 "random", "--retentions", "0.05", "--kinds", "events,cut", "--calibration", "none", "--quiet", "--out",
                 str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["regime"] == "real" and list(data["rows"][0]["accuracy"]) == ["events", "cut"]
    assert [r["method"] for r in data["rows"]] == ["full", "random"]  # 0.05 is not a position-control retention
    assert main(["bench-quality", "--regime", "real", "--model", str(real_model), "--kinds", "needle", "--quiet",
                 "--out", str(out)]) == 2  # a tiny kind, named


def _row(method, retention, hits: dict[str, str]) -> dict:
    accuracy = {k: sum(map(int, h)) / len(h) for k, h in hits.items()}
    return {"method": method, "retention": retention, "hits": hits, "accuracy": accuracy,
            "overall": sum(accuracy.values()) / len(accuracy)}


def test_paired_differences_use_the_items_both_rows_answered():
    a = _row("a", 0.02, {"cut": "1111011110", "still": "1111111111"})
    same = _row("b", 0.02, {"cut": "1111011110", "still": "1111111111"})
    assert quality.paired(a, same) == (0.0, 0.0)  # the same answers: no difference and no error
    b = _row("b", 0.02, {"cut": "1110011110", "still": "1111111110"})
    difference, half = quality.paired(a, b)
    assert difference == pytest.approx((0.1 + 0.1) / 2)
    # per kind the differences are one 1 in ten: variance 0.09 / 10 each, over two kinds
    assert half == pytest.approx(1.96 * (2 * 0.09 / 10) ** 0.5 / 2)
    share, share_half = quality.of_full(b, a)
    assert share == pytest.approx(100 * b["overall"] / a["overall"]) and share_half == pytest.approx(100 * half / a["overall"])


def test_the_paper_ranking_is_checked_pair_by_pair():
    full = _row("full", None, {"cut": "1" * 40})
    rows = [full, _row("unified", "2%", {"cut": "1" * 36 + "0" * 4}), _row("holitom", "2%", {"cut": "1" * 20 + "0" * 20}),
            _row("visionzip", 0.02, {"cut": "1" * 36 + "0" * 3 + "1"})]
    text = "\n".join(quality.paper_lines(rows, full))
    assert "| unified | 90.1 | 90.0 ±" in text and "fastvid" not in text
    assert "paper: unified > holitom; here +40.0 ± " in text and "agrees, beyond the error" in text
    assert "paper: holitom > visionzip; here -42.5 ± " in text and "reversed, beyond the error" in text
    assert "paper: unified > visionzip; here -2.5 ± " in text and "reversed, within the error" in text
    ranking = "\n".join(quality.ranking_lines(rows[1:], "2%", full))
    assert ranking.index("visionzip") < ranking.index("unified") < ranking.index("holitom")


def test_the_shipped_real_model_answers_what_it_learned(tmp_path):
    """The real-regime model in the package loads with from_pretrained and, at full tokens on held-out clips,
    answers the control (``still``) and the scene cut far above chance (25%); the bench runs from it by default."""
    import transformers

    folder = quality.real_path()
    model = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(folder).eval()
    prompts = training.Prompts(transformers.AutoTokenizer.from_pretrained(folder))
    accuracy = training.evaluate(model, prompts, 8, kinds=("still", "cut"), regime="real", batch=4)
    assert accuracy["still"] >= 0.75 and accuracy["cut"] >= 0.75, accuracy
    recipe = json.loads((folder / "training.json").read_text())
    assert recipe["regime"] == "real" and recipe["frozen_encoder"] and "packaged tiny model" in recipe["init"]
    out = tmp_path / "q.md"
    assert main(["bench-quality", "--regime", "real", "--per-kind", "2", "--methods", "random", "--retentions", "0.02",
                 "--kinds", "still", "--calibration", "none", "--batch", "2", "--quiet", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["meta"]["model"] == "real" and data["rows"][0]["items"] == {"still": 2}
    assert "It starts from the packaged tiny model" in out.read_text()
