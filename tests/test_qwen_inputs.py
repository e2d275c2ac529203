"""Qwen2.5-VL and Qwen3-VL video inputs without torchvision (framepress.models.qwen_inputs).

Where torchvision is installed (the eval environment, ``.venv-eval``) the tests marked ``hf`` check them against
the transformers processors: the same frames (several frame counts, 16:9, odd and tiny sizes) through
``Prompter`` with the family's processor and with it made unloadable give identical ``pixel_values_videos``
(exactly: max abs diff 0), ``video_grid_thw``, ``input_ids``, attention mask, ``mm_token_type_ids`` and
``second_per_grid_ts``. The other tests run anywhere; in the main environment (no torchvision) they answer with
``framepress ask`` / ``chat`` on tiny Qwen checkpoints through framepress's own inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from framepress import cli
from framepress.demo import write_video
from framepress.models.qwen_inputs import Clip, QwenVideoInputs, VideoSettings, video_pixels
from framepress.models.tiny import qwen_processor_config, save_tiny_checkpoint, tiny_config, tiny_model, tiny_tokenizer
from framepress.prompt import Prompter
from framepress.synth import demo_video
from framepress.video import Video

QWEN = ("qwen2_5_vl", "qwen3_vl")


def has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", demo_video(16, 64))


@pytest.fixture(scope="module", params=QWEN)
def checkpoint(request, tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, layers=2)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the command line answers (main environment: framepress's own inputs; eval environment: the processor) ---


def test_ask_answers_with_a_tiny_qwen_folder(checkpoint, video_file):
    """The real command, in its own process: exit 0, an answer, and (without torchvision) the fallback said."""
    command = [sys.executable, "-c", "import sys; from framepress.cli import main; sys.exit(main())", "ask",
               str(video_file), "what color is the square", "--model", str(checkpoint), "-m", "random", "-r", "0.5",
               "--frames", "8", "--json", "--max-new-tokens", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["visual_tokens_in"] == 16 and report["visual_tokens_out"] == 8  # 4 temporal patches of 2x2
    assert 1 <= report["new_tokens"] <= 3 and isinstance(report["answer"], str)
    if not has_torchvision():
        assert "processor does not load here" in done.stderr and "processor_config.json" in done.stderr


def test_chat_reuses_the_prefix_with_a_tiny_qwen_folder(checkpoint, video_file, capsys):
    code, out, err = run(capsys, "chat", video_file, "--model", checkpoint, "-m", "random", "-r", "0.5",
                         "--frames", 6, "-q", "what color", "-q", "how many shapes", "--json", "--max-new-tokens", 2)
    assert code == 0, err
    assert [a["prefix_reused"] for a in json.loads(out)["answers"]] == [True, True]


# --- the pieces, against values worked out by hand ---


def test_settings_follow_the_processors_rules():
    real = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "resample": None}  # Qwen2.5-VL's saved file
    s = VideoSettings.from_saved("qwen2_5_vl", real)
    assert (s.min_pixels, s.max_pixels, s.resample, s.image_mean[0]) == (3136, 12845056, 3, 0.48145466)
    assert s.resized(32, 720, 1280) == (728, 1288)  # rounded to 28, inside the range
    assert s.resized(32, 10, 40) == (28, 112)  # below min_pixels: scaled up, ceil
    q3 = VideoSettings.from_saved("qwen3_vl", {"size": {"shortest_edge": 4096, "longest_edge": 32 * 32 * 16}})
    assert q3.image_mean == (0.5, 0.5, 0.5) and q3.factor == 32
    assert q3.resized(4, 64, 64) == (64, 64)  # 4 x 64 x 64 = 16 x 32 x 32: exactly the budget
    assert q3.resized(8, 64, 64) == (32, 32)  # over it: floor(64 / sqrt(2) / 32) * 32
    assert q3.resized(2, 8, 16) == (32, 64)  # smaller than the factor: scaled up first


@pytest.mark.parametrize(
    "family,saved,frames,message",
    [
        ("qwen2_5_vl", {"resample": 1}, (2, 28, 28), "resample=1"),
        ("qwen2_5_vl", {"size": {"longest_edge": 100}}, (2, 28, 28), "shortest_edge and longest_edge"),
        ("qwen3_vl", {}, (1, 64, 64), "at least 2 frames"),
        ("qwen2_5_vl", {}, (2, 2, 500), "aspect ratio"),
        ("nope", {}, (2, 28, 28), "family must be"),
    ],
)
def test_bad_settings_and_frames_are_clear_errors(family, saved, frames, message):
    with pytest.raises(ValueError, match=message):
        video_pixels(np.zeros((*frames, 3), np.uint8), VideoSettings.from_saved(family, saved))


def test_frames_must_be_uint8_rgb():
    s = VideoSettings.from_saved("qwen2_5_vl", {})
    for bad in (np.zeros((2, 28, 28, 3), np.float32), np.zeros((2, 28, 28), np.uint8), [np.zeros((28, 28, 3))]):
        with pytest.raises(ValueError, match="frames must be a uint8"):
            video_pixels(bad, s)


def test_patch_layout_and_qwen3_timestamps():
    model, tokenizer = tiny_model("qwen3_vl", layers=1), tiny_tokenizer("qwen3_vl")
    qwen = QwenVideoInputs(model, tokenizer, qwen_processor_config("qwen3_vl")["video_processor"])
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    pixels, grid = video_pixels(frames, qwen.settings)
    assert grid == (2, 4, 4) and pixels.shape == (32, 3 * 2 * 16 * 16)
    # row 0: merge window (0, 0), its top-left patch; values (channel, frame, y, x); the 4th frame repeats the 3rd
    first = (torch.from_numpy(frames[:2, :16, :16]).permute(3, 0, 1, 2).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(pixels[0], first.flatten(), rtol=0, atol=1e-6)
    assert torch.equal(pixels[-1].view(3, 2, 16, 16)[:, 0], pixels[-1].view(3, 2, 16, 16)[:, 1])
    text = qwen.placeholder(grid, Clip((0, 10, 30), 40, 10.0))
    assert text.startswith("<0.5 seconds><|vision_start|>" + "<|video_pad|>" * 4 + "<|vision_end|><3.0 seconds>")
    assert qwen.placeholder(grid, Clip((0, 1, 2), 3, None)).startswith("<0.0 seconds>")  # unknown fps: 24


def test_a_tokenizer_without_the_video_token_is_a_clear_error():
    model = tiny_model("qwen2_5_vl", layers=1)
    with pytest.raises(ValueError, match="model's video token"):
        QwenVideoInputs(model, tiny_tokenizer("llava_onevision"), {})
    with pytest.raises(ValueError, match="patch_size=16"):
        QwenVideoInputs(model, tiny_tokenizer("qwen2_5_vl"), {"patch_size": 16})


def test_a_stale_fps_argument_is_a_clear_error(checkpoint):
    import transformers

    model = transformers.AutoModelForImageTextToText.from_pretrained(checkpoint)
    prompter = Prompter(model, transformers.AutoTokenizer.from_pretrained(checkpoint), str(checkpoint))
    with pytest.raises(TypeError, match="video must be the Video"):
        prompter.inputs(np.zeros((4, 64, 64, 3), np.uint8), "what", 2.0)


# --- equality with the transformers processors (eval environment) ---

#: processor settings to check, per family: the tiny checkpoints' own, a real checkpoint's layout (Qwen2.5-VL:
#: only preprocessor_config.json with min/max pixels), and the pixel cap with bilinear resizing and other stats
SETTINGS = {
    "qwen2_5_vl": [
        ("processor_config.json", qwen_processor_config("qwen2_5_vl")),
        ("preprocessor_config.json", {"min_pixels": 3136, "max_pixels": 28 * 28 * 80, "patch_size": 14,
                                      "temporal_patch_size": 2, "merge_size": 2,
                                      "image_processor_type": "Qwen2VLImageProcessor",
                                      "processor_class": "Qwen2_5_VLProcessor"}),
        ("processor_config.json", {"processor_class": "Qwen2_5_VLProcessor",
                                   "image_processor": {"image_processor_type": "Qwen2VLImageProcessor"},
                                   "video_processor": {"video_processor_type": "Qwen2VLVideoProcessor",
                                                       "size": {"shortest_edge": 784, "longest_edge": 28 * 28 * 60},
                                                       "cap_pixels_per_frame": True, "max_video_tokens": 40,
                                                       "resample": 2, "image_mean": [0.4, 0.5, 0.6],
                                                       "image_std": [0.2, 0.3, 0.25]}}),
    ],
    "qwen3_vl": [
        ("processor_config.json", qwen_processor_config("qwen3_vl")),
        ("processor_config.json", {"processor_class": "Qwen3VLProcessor",
                                   "image_processor": {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 16},
                                   "video_processor": {"video_processor_type": "Qwen3VLVideoProcessor",
                                                       "size": {"shortest_edge": 4096, "longest_edge": 32 * 32 * 40},
                                                       "cap_pixels_per_frame": True, "max_video_tokens": 6,
                                                       "fps": 2, "do_sample_frames": True}}),
        ("processor_config.json", {"processor_class": "Qwen3VLProcessor",
                                   "image_processor": {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 16},
                                   "video_processor": {"video_processor_type": "Qwen3VLVideoProcessor",
                                                       "size": {"shortest_edge": 2048, "longest_edge": 32 * 32 * 48},
                                                       "resample": 2, "do_normalize": False}}),
    ],
}
#: (frames, height, width): 16:9, odd, non-multiples of 28 / 32, smaller than a patch, larger than the budget
CLIPS = [(2, 45, 80), (3, 90, 160), (5, 37, 61), (8, 100, 30), (4, 17, 23), (6, 270, 480), (1, 56, 56)]


def _unloadable(*args, **kwargs):
    raise ImportError("pretend torchvision is missing")


def _prompters(family, folder, monkeypatch):
    """The same checkpoint folder through Prompter twice: with its transformers processor, and with the processor
    made unloadable (framepress's own inputs)."""
    import transformers

    model = tiny_model(family, layers=1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    hf = Prompter(model, tokenizer, str(folder))
    assert hf.processor is not None and hf.qwen is None
    with monkeypatch.context() as m:
        m.setattr(transformers.AutoProcessor, "from_pretrained", _unloadable)
        own = Prompter(model, tokenizer, str(folder))
    assert own.processor is None and own.qwen is not None
    return hf, own


@pytest.mark.parametrize("family", QWEN)
def test_inputs_equal_the_transformers_processor(family, tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    rng = np.random.default_rng(0)
    checked = 0
    for k, (name, config) in enumerate(SETTINGS[family]):
        folder = tmp_path / str(k)
        tiny_tokenizer(family).save_pretrained(folder)
        tiny_config(family, layers=1).save_pretrained(folder)
        (folder / name).write_text(json.dumps(config))
        hf, own = _prompters(family, folder, monkeypatch)
        for frames, height, width in CLIPS:
            if family == "qwen3_vl" and frames < 2:
                continue  # Qwen3-VL's processor refuses a single frame too (a clear-error test above)
            pixels = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
            # a sampled clip of a 25 fps source, and (every other clip) frames of unknown origin
            video = Video(pixels, sorted(rng.choice(200, frames, replace=False).tolist()), 25.0, 8.0, 200, "x")
            video = video if frames % 2 else None
            want, got = hf.inputs(pixels, "what color", video), own.inputs(pixels, "what color", video)
            case = f"{family} settings {k} clip {frames}x{height}x{width}"
            assert sorted(want) == sorted(got), case
            assert want["pixel_values_videos"].dtype == got["pixel_values_videos"].dtype == torch.float32, case
            diff = (want["pixel_values_videos"] - got["pixel_values_videos"]).abs().max().item()
            assert diff == 0, f"{case}: max abs diff {diff}"
            for key in ("video_grid_thw", "input_ids", "attention_mask", "mm_token_type_ids"):
                assert torch.equal(want[key], got[key]), f"{case}: {key}"
            if family == "qwen2_5_vl":
                assert torch.equal(want["second_per_grid_ts"], got["second_per_grid_ts"]), case
            # the chat prefix (the text before the question) too
            assert torch.equal(hf.split(pixels, video)[0]["input_ids"], own.split(pixels, video)[0]["input_ids"])
            checked += 1
    assert checked == len(SETTINGS[family]) * (len(CLIPS) - (family == "qwen3_vl"))


@pytest.mark.parametrize("family", QWEN)
def test_sizes_equal_the_transformers_smart_resize(family):
    pytest.importorskip("torchvision")
    if family == "qwen2_5_vl":
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize
    else:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize
    s = VideoSettings.from_saved(family, {"size": {"shortest_edge": 32 * 32 * 3, "longest_edge": 32 * 32 * 90}})
    for frames in (2, 3, 7, 16):
        for height in range(5, 400, 13):
            for width in range(7, 700, 29):
                if family == "qwen2_5_vl":
                    want = smart_resize(height, width, s.factor, s.min_pixels, s.max_pixels)
                else:
                    want = smart_resize(frames, height, width, s.temporal_patch_size, s.factor, s.min_pixels, s.max_pixels)
                assert s.resized(frames, height, width) == want, (frames, height, width)


def test_answers_equal_the_transformers_processor_path(checkpoint, video_file, monkeypatch):
    pytest.importorskip("torchvision")
    import transformers

    import framepress

    hf = framepress.load(checkpoint, "random", 0.5, frames=6)
    with monkeypatch.context() as m:
        m.setattr(transformers.AutoProcessor, "from_pretrained", _unloadable)
        own = framepress.load(checkpoint, "random", 0.5, frames=6)
    assert hf.prompter.processor is not None and own.prompter.processor is None
    a, b = hf.ask(video_file, "what color", max_new_tokens=4), own.ask(video_file, "what color", max_new_tokens=4)
    assert a.text == b.text and a.stats["prompt_tokens"] == b.stats["prompt_tokens"]
