"""The packaged synthetic-domain model, its training recipe and the offline accuracy benchmark."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from framepress import packaged, quality, synth, training
from framepress.cli import main


@pytest.fixture(scope="module")
def bench():
    return quality.Bench(per_kind=24, batch=24)


def test_the_packaged_model_loads_offline_and_answers_far_above_chance(bench):
    full = bench.score(quality.Setting(None, None))
    # chance is 25% on every kind; the shipped weights answer most held-out questions (docs/quality-tiny.md)
    assert full["overall"] >= 0.6
    assert min(full["accuracy"].values()) >= 0.45 and set(full["accuracy"]) == set(quality.KINDS)
    assert full["accuracy"]["needle"] >= 0.75 and full["accuracy"]["static"] >= 0.9


def test_a_method_that_keeps_the_evidence_keeps_the_answer(bench):
    full = bench.score(quality.Setting(None, None))
    half = bench.score(quality.Setting("sttm", 0.5))
    assert half["kept"] <= 0.5 and half["overall"] >= full["overall"] - 0.15
    assert half["llm_prefill_flops"] < 0.6 * full["llm_prefill_flops"]


def test_ask_answers_with_the_packaged_model_by_default(tmp_path, capsys):
    from framepress.demo import write_video

    item = synth.generate("static", 2, split="test")
    video = write_video(tmp_path / "clip.mp4", item.frames)
    assert main(["ask", str(video), item.question, "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr()
    assert out.out.split()[0] == item.answer
    assert "packaged synthetic-domain model" in out.err


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage-config"])
def test_a_damaged_package_names_the_file_and_the_fix(tmp_path, damage):
    folder = shutil.copytree(packaged.FOLDER, tmp_path / "model")
    if damage == "missing":
        (folder / "tokenizer.json").unlink()
        error, message = FileNotFoundError, "tokenizer.json is missing; rebuild it with: python -m framepress.training"
    elif damage == "truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) - 1000])
        error, message = ValueError, "model.safetensors is damaged .*header promises.*rebuild it with"
    else:
        (folder / "config.json").write_text("{not json")
        error, message = ValueError, "config.json is damaged"
    with pytest.raises(error, match=message):
        packaged.path(folder)


def test_bench_quality_end_to_end_on_a_slice(tmp_path):
    out = tmp_path / "quality.md"
    assert main(["bench-quality", "--out", str(out), "--per-kind", "4", "--methods", "sttm,unified,fastv",
                 "--retentions", "0.1", "--batch", "12", "--quiet"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    labels = [(r["method"], str(r["retention"])) for r in data["rows"]]
    assert labels == [("full", "None"), ("sttm", "0.1"), ("unified", "10%"), ("unified", "10%/5%"), ("fastv", "0.1")]
    for row in data["rows"]:
        assert set(row["accuracy"]) == set(quality.KINDS) and all(0 <= a <= 1 for a in row["accuracy"].values())
    two_stage = data["rows"][3]
    assert two_stage["kept"] == pytest.approx(0.05, abs=0.005)
    table = out.read_text()
    results, training_part = table.split("## How the model was trained")
    assert "A proxy, not a benchmark" in results and results.count("\n| ") == 1 + len(labels)
    assert "| 1000 |" in training_part  # the packaged model's held-out accuracy during training
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["bench-quality", "--retentions", "1.5"])


def test_training_runs_from_config_and_saves_a_loadable_checkpoint(tmp_path):
    import transformers

    out = training.train(tmp_path / "model", steps=2, batch=4, warmup=1, eval_every=0, log=lambda *a: None)
    assert packaged.path(out) == out
    model = transformers.AutoModelForImageTextToText.from_pretrained(out)
    assert model.config.vision_config.image_size == training.SIZE
    recipe = json.loads((out / "training.json").read_text())
    assert recipe["steps"] == 2 and recipe["seed"] == 0


def test_training_reductions_keep_order_and_positions():
    features = torch.arange(2 * (4 * 9 + 1) * 1, dtype=torch.float).view(2, 37, 1)
    generator = torch.Generator().manual_seed(0)
    kept, where = training.reduce_tokens(features, frames=4, mode="tokens", keep=0.25, generator=generator)
    assert kept.shape == (2, 9 + 1, 1) and (where[:, :-1].diff(dim=1) > 0).all() and (where[:, -1] == 36).all()
    assert torch.equal(kept, features.gather(1, where[..., None]))  # kept tokens are the originals, in video order
    merged, where = training.reduce_tokens(features, frames=4, mode="merge", keep=1.0, generator=generator)
    assert merged.shape == (2, 2 * 9 + 1, 1) and merged[0, 0, 0] == (0 + 9) / 2 and where[0, 9] == 18
