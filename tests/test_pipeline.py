"""From a video file to an answer: framepress.load, ask, chat, show, demo, end to end on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import framepress
from framepress import cli
from framepress.demo import write_video
from framepress.models.tiny import save_tiny_checkpoint
from framepress.show import layout
from framepress.synth import demo_video


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", demo_video(16, 64))


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ask_json(checkpoint, video_file, capsys):
    code, out, err = run(capsys, "ask", video_file, "what color is the square", "--model", checkpoint,
                         "--method", "sttm", "--retention", "0.3", "--frames", 8, "--json", "--max-new-tokens", 3)
    assert code == 0, err
    report = json.loads(out)
    assert report["frames"] == 8 and report["visual_tokens_in"] == 8 * 16
    assert report["visual_tokens_out"] <= round(0.3 * 128) and report["method"] == "sttm"
    assert report["new_tokens"] <= 3 and report["ttft_s"] <= report["total_s"] and report["llm_prefill_flops"] > 0


def test_ask_text_and_stats(checkpoint, video_file, capsys):
    code, out, err = run(capsys, "ask", video_file, "how many shapes", "--model", checkpoint, "-m", "pool",
                         "-r", "0.25", "--frames", 8, "--max-new-tokens", 2)
    assert code == 0, err
    assert "visual tokens: 128 -> 32" in err and "time to first token" in err and "TFLOPs" in err


def test_chat_reuses_the_prefix_when_the_method_allows(checkpoint, video_file, capsys):
    code, out, err = run(capsys, "chat", video_file, "--model", checkpoint, "-m", "sttm", "-r", "0.5", "--frames", 8,
                         "-q", "what color is the square", "-q", "how many shapes", "--json", "--max-new-tokens", 2)
    assert code == 0, err
    report = json.loads(out)
    assert [a["prefix_reused"] for a in report["answers"]] == [True, True]
    code, out, err = run(capsys, "chat", video_file, "--model", checkpoint, "-m", "fastv", "-r", "0.5", "--frames", 8,
                         "-q", "how many shapes", "--json", "--max-new-tokens", 2)
    assert code == 0 and json.loads(out)["answers"][0]["prefix_reused"] is False


def test_chat_answers_equal_single_questions(checkpoint, video_file):
    pipe = framepress.load(checkpoint, "sttm", 0.4, frames=8)
    try:
        chat = pipe.chat(video_file)
        for q in ("what color is the square", "how many shapes are there"):
            assert chat.ask(q, max_new_tokens=4).text == pipe.ask(video_file, q, max_new_tokens=4).text
    finally:
        pipe.close()


def test_show_writes_the_picture(checkpoint, video_file, capsys, tmp_path):
    target = tmp_path / "out" / "kept.png"
    code, out, err = run(capsys, "show", video_file, "--model", checkpoint, "-m", "sttm", "-r", "0.3",
                         "--frames", 8, "-o", target, "--cell", 64)
    assert code == 0, err
    with Image.open(target) as picture:
        expected = layout((8, 64, 64, 3), (8, 4, 4), None, 64)
        assert picture.size == (expected.width, expected.height)
    assert sorted(p.name for p in target.parent.iterdir()) == ["kept.png"]


def test_demo_runs_every_method(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--out", tmp_path)
    assert code == 0, err
    assert "packaged synthetic-domain model" in err and "the right answer: 'green'" in err
    rows = [line for line in out.splitlines()[2:] if "n/a" not in line]
    assert rows[0].startswith("none ") and rows[0].endswith("'green' right")  # full tokens answer it
    for name in ("sttm", "pool", "fastv", "unified", "gridpool"):
        assert f"\n{name} " in out
        assert (tmp_path / f"show_{name}.png").is_file()
    assert (tmp_path / "demo.mp4").is_file()
    right = sum(line.endswith(" right") for line in rows)
    assert f"{right} of {len(rows)} runs answered 'green'" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["ask", "nowhere.mp4", "q", "--model", "CHECKPOINT"], "nowhere.mp4"),
        (["ask", "VIDEO", "   ", "--model", "CHECKPOINT"], "question is empty"),
        (["ask", "VIDEO", "q", "--model", "not-a-folder/not-a-model"], "not on this machine"),
        (["ask", "VIDEO", "q", "--model", "CHECKPOINT", "-m", "nope"], "known methods"),
        (["ask", "VIDEO", "q", "--model", "CHECKPOINT", "-m", "sttm", "-r", "7"], "retention"),
        (["chat", "VIDEO", "--model", "CHECKPOINT", "-q", " "], "no question"),
    ],
)
def test_bad_input_is_a_clear_message(checkpoint, video_file, capsys, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = [str(checkpoint) if a == "CHECKPOINT" else str(video_file) if a == "VIDEO" else a for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_truncated_video_is_a_clear_message(checkpoint, video_file, capsys, tmp_path):
    broken = tmp_path / "broken.mp4"
    data = video_file.read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    code, out, err = run(capsys, "ask", broken, "what", "--model", checkpoint)
    assert code == 2 and "broken.mp4" in err and "Traceback" not in err
