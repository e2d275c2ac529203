"""The command line and features I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import framepress
from framepress import cli, features


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_methods_table(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    for name in framepress.methods():
        assert name in out
    code, out, _ = run(capsys, "methods", "--json")
    assert {m["name"] for m in json.loads(out)} == set(framepress.methods())


def test_compress_synthetic_all_methods(capsys):
    code, out, _ = run(capsys, "compress", "--synthetic", "4x14x14x16", "-r", "0.3", "--repeat", "1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["shape"] == [4, 14, 14, 16]
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == set(framepress.methods("pre-llm"))
    budget = round(0.3 * 4 * 196)
    assert rows["random"]["tokens_out"] == budget
    assert 0.98 * budget <= rows["sttm"]["tokens_out"] <= budget
    assert rows["pool"]["tokens_out"] <= budget and rows["frames"]["tokens_out"] <= budget


def test_compress_file_roundtrip(tmp_path, capsys):
    x = features.synthetic(3, 14, 14, 8, seed=1)
    np.save(tmp_path / "feats.npy", x.reshape(3, 196, 8).numpy())  # [T, N, C]: a square grid is inferred
    out_path = tmp_path / "out" / "tokens.safetensors"
    code, out, err = run(
        capsys, "compress", str(tmp_path / "feats.npy"), "-m", "sttm", "-p", "tau_s=0.85", "-p", "tau_t=0.65",
        "-o", str(out_path), "--repeat", "1",
    )
    assert code == 0, err
    saved = load_file(str(out_path))
    expected = framepress.compress(x, "sttm", tau_s=0.85, tau_t=0.65)
    assert torch.equal(saved["features"], expected.features)
    assert torch.equal(saved["source"], expected.source) and saved["grid"].tolist() == [3, 14, 14]
    assert [p.name for p in out_path.parent.iterdir()] == ["tokens.safetensors"]  # no temp file left


def test_load_safetensors_and_grids(tmp_path):
    x = torch.randn(2, 3, 5, 4)
    save_file({"a": x, "b": x.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="choose one with key"):
        features.load(tmp_path / "two.safetensors")
    assert torch.equal(features.load(tmp_path / "two.safetensors", key="b"), x)
    save_file({"v": x.reshape(2, 15, 4)}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(ValueError, match="give grid"):
        features.load(tmp_path / "flat.safetensors")
    assert torch.equal(features.load(tmp_path / "flat.safetensors", grid=(3, 5)), x)


def test_synthetic_is_deterministic_and_redundant():
    a, b = features.synthetic(6, 8, 8, 32, seed=3), features.synthetic(6, 8, 8, 32, seed=3)
    assert torch.equal(a, b) and a.shape == (6, 8, 8, 32)
    cos = torch.nn.functional.cosine_similarity(a[0], a[1], dim=-1).mean()  # same scene, consecutive frames
    cut = torch.nn.functional.cosine_similarity(a[1], a[2], dim=-1).mean()  # across the cut at T//3
    assert cos > 0.5 > cut
