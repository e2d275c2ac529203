"""The command line and features I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------------------------
# issue 12: errors said once and plainly, exit status 2 (usage) or 1 (a failed run), nothing left behind
# ---------------------------------------------------------------------------------------------------------------


def test_every_command_and_argument_has_help(capsys):
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        assert sub.description or sub.format_help(), name
        for action in sub._actions:
            assert action.help, f"framepress {name} {action.option_strings or action.dest} has no help"
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
    capsys.readouterr()


def test_show_has_no_generation_option(capsys):
    with pytest.raises(SystemExit) as exit_info:  # show runs one prefill and generates nothing
        cli.main(["show", "v.mp4", "-m", "pool", "-o", "x.png", "--max-new-tokens", "3"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("grid", ["3", "-2x-18", "6x6x1", "0x4", "axb"])
def test_grid_is_strict(capsys, grid):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compress", "--synthetic", "2x6x6x4", f"--grid={grid}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --grid: grid is HxW" in err


@pytest.mark.parametrize("args", [["--cell", "100000"], ["--cell", "8"]])
def test_show_cell_is_bounded(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["show", "v.mp4", "-m", "pool", "-o", "x.png", *args])
    assert exit_info.value.code == 2 and "--cell: must be 16 to 1024" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [("bogus", "is not a device"), ("meta", "holds no data")]
                         + ([] if torch.cuda.is_available() else [("cuda", "CUDA is not available here")]))
def test_device_checked_up_front(capsys, device, message):
    code, out, err = run(capsys, "compress", "--synthetic", "2x6x6x4", "-m", "pool", "--device", device)
    assert code == 2 and f"--device {device!r}" in err and message in err and "Traceback" not in err


def test_bad_retention_with_every_method_is_one_error(capsys):
    code, out, err = run(capsys, "compress", "--synthetic", "2x6x6x4", "-r", "1.5", "--repeat", "1")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["framepress compress: error: --retention: retention must be in (0, 1], got 1.5"]


def test_all_methods_failing_is_a_failed_run(capsys):
    code, out, err = run(capsys, "compress", "--synthetic", "2x2x2x4", "-m", "pool", "-m", "frames", "-r", "0.01",
                         "--repeat", "1")
    assert code == 1 and "no method met the request" in err


def test_synthetic_larger_than_memory_is_refused(capsys):
    code, out, err = run(capsys, "compress", "--synthetic", "100000x100x100x100")
    assert code == 2 and "needs" in err and "GiB of memory" in err and "Traceback" not in err


def test_npy_header_checked_before_reading(tmp_path, capsys, monkeypatch):
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 2), np.float32))
    header["shape"] = (10**12,)
    with open(tmp_path / "huge.npy", "wb") as handle:  # promises 4 TB, holds 64 bytes
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\0" * 64)
    code, out, err = run(capsys, "compress", str(tmp_path / "huge.npy"))
    assert code == 2 and "huge.npy is truncated: its header promises [1000000000000] float32" in err
    np.save(tmp_path / "fits.npy", np.zeros((2, 36, 4), np.float32))
    monkeypatch.setattr(features, "available_memory", lambda: 100)  # whole, but more than this machine has
    code, out, err = run(capsys, "compress", str(tmp_path / "fits.npy"))
    assert code == 2 and "fits.npy ([2, 36, 4] float32) needs 1.12 KiB of memory; 100 bytes is available" in err


@pytest.mark.parametrize("cut", [0, 5, -10])
def test_damaged_safetensors_features_are_named(tmp_path, capsys, cut):
    save_file({"x": torch.zeros(2, 3, 3, 4)}, str(tmp_path / "f.safetensors"))
    data = (tmp_path / "f.safetensors").read_bytes()
    (tmp_path / "f.safetensors").write_bytes(data[:cut] if cut >= 0 else data[:cut])
    code, out, err = run(capsys, "compress", str(tmp_path / "f.safetensors"))
    assert code == 2 and "f.safetensors is damaged" in err and "Traceback" not in err


def test_inputs_that_are_not_files(tmp_path, capsys):
    code, out, err = run(capsys, "compress", "")
    assert code == 2 and "the path is empty" in err
    (tmp_path / "loop.npy").symlink_to(tmp_path / "loop.npy")
    code, out, err = run(capsys, "compress", str(tmp_path / "loop.npy"))
    assert code == 2 and "loop.npy is a symlink loop" in err
    os.mkfifo(tmp_path / "pipe.npy")
    code, out, err = run(capsys, "compress", str(tmp_path / "pipe.npy"))  # stat, never open: no hang
    assert code == 2 and "pipe.npy is a FIFO (named pipe), not a regular file" in err


def test_output_errors_name_the_users_path(tmp_path, capsys):
    (tmp_path / "taken.safetensors").mkdir()
    long_name = "n" * 300 + ".safetensors"
    for target, reason in [(tmp_path / "taken.safetensors", "is a folder"), (tmp_path / long_name, "name too long")]:
        code, out, err = run(capsys, "compress", "--synthetic", "2x6x6x4", "-m", "pool", "--repeat", "1",
                             "-o", str(target))
        assert code == 1 and f"{target}: " in err and reason in err and out == "", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors"]  # no hidden temp file


def test_a_write_failing_midway_names_the_users_path(tmp_path):
    from framepress import files

    target = tmp_path / ("m" * 240 + ".txt")  # fits, though a temp name built by adding to it would not
    files.write_text(target, "ok")
    assert target.read_text() == "ok"
    with pytest.raises(OSError) as error, files.atomic(tmp_path / "out.txt") as tmp:
        os.mkdir(tmp)  # a writer failing on the temporary file (FileExistsError naming it)
    assert os.fspath(tmp_path / "out.txt") == error.value.filename
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_an_interrupt_right_after_the_temp_file_exists_leaves_nothing(tmp_path, monkeypatch):
    from framepress import files

    real_open = os.open

    def open_then_interrupt(*args, **kwargs):
        os.close(real_open(*args, **kwargs))
        raise KeyboardInterrupt  # the worst moment: the file exists, its opener has not returned

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        files.write_text(tmp_path / "out.txt", "never")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_the_chosen_column_is_a_summary():
    info = {"windows": [(i, i + 1) for i in range(32)], "kept_per_frame": [196, 13] * 16, "tau_s": 0.87332,
            "grid": (7, 7), "frames": [0, 7]}
    assert cli._summary(info) == ("windows=[32 items], kept_per_frame=[32 values, 13..196], tau_s=0.8733, "
                                  "grid=(7, 7), frames=[0, 7]")


def test_sweep_needs_lmms_eval(capsys, monkeypatch):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "lmms_eval" else real(name, *a))
    code, out, err = run(capsys, "sweep", "--model", "m", "--methods", "pool", "--retentions", "0.5", "--tasks", "t",
                         "--out", "never-written")
    assert code == 1 and 'lmms_eval not installed' in err and 'pip install "framepress[eval]"' in err
    assert not os.path.exists("never-written")


def test_ask_offline_says_so_at_once(tmp_path, capsys, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    start = time.perf_counter()
    code, out, err = run(capsys, "ask", "clip.mp4", "q", "--model", "someone/some-model")
    assert code == 2 and "not on this machine" in err and "HF_HUB_OFFLINE" in err
    assert "hf download someone/some-model --local-dir DIR" in err and time.perf_counter() - start < 5
    monkeypatch.setattr(cli, "_offline", lambda: False)
    monkeypatch.setattr(cli, "_hub_reachable", lambda endpoint: False)
    code, out, err = run(capsys, "ask", "clip.mp4", "q", "--model", "someone/some-model")
    assert code == 1 and "cannot be reached" in err and "hf download" in err


def test_a_damaged_model_file_is_named_at_load(tmp_path, capsys):
    import shutil

    from PIL import Image

    from framepress import packaged

    folder = shutil.copytree(packaged.FOLDER, tmp_path / "model")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (32, 32)).save(tmp_path / "frame.png")
    code, out, err = run(capsys, "ask", str(tmp_path / "frame.png"), "q", "--model", str(folder))
    assert code == 2 and "model.safetensors is damaged (truncated" in err and "Traceback" not in err


def test_huge_frames_point_to_max_side(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (10000, 10)).save(tmp_path / "wide.png")
    code, out, err = run(capsys, "ask", str(tmp_path / "wide.png"), "what color", "--max-new-tokens", "1")
    assert code == 2 and "--max-side 1024 on the command line" in err
    code, out, err = run(capsys, "ask", str(tmp_path / "wide.png"), "what color", "--max-new-tokens", "1",
                         "--max-side", "64")
    assert code == 0, err


@pytest.mark.parametrize("suffix", [".grib", ".xbm", ".nope"])
def test_show_refuses_a_picture_format_it_cannot_write_before_loading(tmp_path, capsys, suffix):
    code, out, err = run(capsys, "show", "clip.mp4", "-m", "pool", "-o", str(tmp_path / f"x{suffix}"))
    assert code == 2 and f"--output {tmp_path / f'x{suffix}'}" in err and "use .png" in err
    assert "no --model" not in err  # refused before any model was chosen


def test_compress_rows_stream_in_a_fixed_table(capsys):
    code, out, err = run(capsys, "compress", "--synthetic", "4x14x14x16", "-r", "0.3", "--repeat", "1", "-m", "pool",
                         "-m", "holitom")
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("method "))
    pool, holitom = (next(line for line in lines if line.startswith(f"{m} ")) for m in ("pool", "holitom"))
    assert code == 0 and pool.index("grid=") == holitom.index("windows=[") == header.index("chosen")
    assert "(0, " not in holitom  # the windows are counted, not listed


def test_synth_task_writes_a_task_folder_lmms_eval_finds_from_anywhere(capsys, tmp_path):
    code, out, _ = run(capsys, "synth-task", str(tmp_path / "task"), "--per-kind", "1")
    assert code == 0 and "--include_path" in out and str(tmp_path / "task") in out
    folder = tmp_path / "task"
    assert {p.name for p in folder.iterdir()} >= {"docs.jsonl", "utils.py", "videos", "framepress_synth.yaml"}
    docs = [json.loads(line) for line in (folder / "docs.jsonl").read_text().splitlines()]
    assert len(docs) == 6 and all((folder / "videos" / Path(d["video"]).name).is_file() for d in docs)
    assert str(folder / "docs.jsonl") in (folder / "framepress_synth.yaml").read_text()  # an absolute path
