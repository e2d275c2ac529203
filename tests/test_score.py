"""Multiple-choice scoring: one decoding, compression and prefill of a question shared by all its choices."""

from __future__ import annotations

import pytest
import torch

import framepress
from framepress.models.base import cache_of
from framepress.demo import write_video
from framepress.models.tiny import save_tiny_checkpoint
from framepress.synth import demo_video
from framepress.video import load_video

QUESTION = "what color is the square"
CHOICES = ["red", "blue square", "green circle on the left", "yellow"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return load_video(write_video(tmp_path_factory.mktemp("video") / "clip.mp4", demo_video(16, 64)), num_frames=8)


class Counter:
    """Counts the vision encoder's runs (one per video encoding) and the LLM's prefills (no cache yet)."""

    def __init__(self, model):
        self.encodings = self.prefills = 0
        self.hooks = [
            model.model.vision_tower.register_forward_pre_hook(lambda *_: self._add("encodings")),
            model.model.language_model.register_forward_pre_hook(self._on_lm, with_kwargs=True),
        ]

    def _add(self, name):
        setattr(self, name, getattr(self, name) + 1)

    def _on_lm(self, module, args, kwargs):
        cache = cache_of(kwargs)
        if cache is None or cache.get_seq_length() == 0:
            self.prefills += 1

    def remove(self):
        for hook in self.hooks:
            hook.remove()


def alone(pipe, video, continuation):
    """The reference: generate the continuation alone after the whole prompt, one forced decode step a token."""
    ids = pipe.tokenizer(continuation, add_special_tokens=False).input_ids
    inputs = pipe._to_device(pipe.prompter.inputs(video.frames, QUESTION, None))

    def force(input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, ids[min(input_ids.shape[1] - inputs["input_ids"].shape[1], len(ids) - 1)]] = 0
        return forced

    with torch.no_grad():
        out = pipe.model.generate(**inputs, max_new_tokens=len(ids), do_sample=False, logits_processor=[force],
                                  output_logits=True, return_dict_in_generate=True)
    steps = torch.stack([step[0].float() for step in out.logits]).log_softmax(-1)
    return float(steps[torch.arange(len(ids)), ids].sum())


@pytest.mark.parametrize(("method", "retention", "params"), [
    (None, None, {}), ("sttm", 0.5, {}), ("pool", 0.25, {"positions": "reassign"}), ("fastv", 0.5, {}),
    ("fastv", 0.5, {"positions": "reassign"}), ("unified", "20%/10%", {"inner_layer": 2}),
])
def test_four_choices_share_one_prefill_and_equal_each_choice_alone(checkpoint, video, method, retention, params):
    pipe = framepress.load(checkpoint, method, retention, frames=8, device="cpu", **params)
    counter = Counter(pipe.model)
    answers = pipe.score_choices(video, QUESTION, CHOICES)
    shared = (counter.encodings, counter.prefills)
    expected = [alone(pipe, video, c) for c in CHOICES]
    per_choice = (counter.encodings - shared[0], counter.prefills - shared[1])
    counter.remove()
    assert shared == (1, 1) and per_choice == (4, 4)  # 4x fewer video encodings and prefills
    assert [a.stats["logprob"] for a in answers] == pytest.approx(expected, abs=1e-5)
    assert [a.text for a in answers] == CHOICES
    assert [a.stats["new_tokens"] for a in answers] == [1, 2, 5, 1]
    assert [a.stats["prefix_reused"] for a in answers] == [False, True, True, True]
    if method is not None:
        assert len({a.stats["visual_tokens_out"] for a in answers}) == 1
        assert pipe.handle.stats[-1]["tokens_in"] == [8 * 16]
    one = pipe.score(video, QUESTION, CHOICES[2])
    assert one.stats["logprob"] == pytest.approx(expected[2], abs=1e-5)
    assert one.stats["greedy"] == answers[2].stats["greedy"]


def test_bad_continuations_are_named(checkpoint, video):
    pipe = framepress.load(checkpoint, "sttm", 0.5, frames=8, device="cpu")
    for bad, message in [([], "continuations must be a non-empty list"), ("red", "continuations must be a non-empty list"),
                         (["red", ""], "continuation must be a non-empty string"),
                         (["red", 3], "continuation must be a non-empty string")]:
        with pytest.raises(ValueError, match=message):
            pipe.score_choices(video, QUESTION, bad)
