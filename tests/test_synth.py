"""framepress.synth: deterministic, balanced, and the evidence where the question says it is."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framepress import synth
from framepress.models.tiny import WORDS


def test_the_same_arguments_give_the_same_item():
    a, b = synth.generate("needle", 7, split="test"), synth.generate("needle", 7, split="test")
    assert np.array_equal(a.frames, b.frames) and a.answer == b.answer and a.evidence == b.evidence
    assert not np.array_equal(a.frames, synth.generate("needle", 7, split="train").frames)
    assert not np.array_equal(a.frames, synth.generate("needle", 8, split="test").frames)
    assert not np.array_equal(a.frames, synth.generate("needle", 7, split="test", seed=1).frames)


@pytest.mark.parametrize("kind", list(synth.KINDS))
def test_answers_are_balanced(kind):
    question, choices = synth.KINDS[kind]
    answers = [it.answer for it in synth.items(kind, 3 * len(choices), split="test")]
    assert sorted(answers) == sorted(list(choices) * 3)
    assert [it.answer for it in synth.test_set(kind, 8)] == [it.answer for it in synth.items(kind, 8, split="test")]


def pixels_of(frames: np.ndarray, color: str) -> np.ndarray:
    """Pixels of exactly ``color`` in each frame [F]."""
    return (frames == np.array(synth.COLORS[color], dtype=np.uint8)).all(-1).sum((1, 2))


@pytest.mark.parametrize("index", range(8))
def test_the_needle_shows_only_in_its_frames(index):
    item = synth.generate("needle", index, split="test")
    shown = np.nonzero(pixels_of(item.frames, item.answer))[0]
    assert 1 <= len(item.evidence) <= 2 and tuple(shown) == item.evidence


@pytest.mark.parametrize("index", range(8))
def test_order_the_answer_colour_appears_first(index):
    item = synth.generate("order", index, split="test")
    others = [c for c in synth.ANSWER_COLORS if c != item.answer and pixels_of(item.frames, c).any()]
    [second] = others
    first_at = np.nonzero(pixels_of(item.frames, item.answer))[0][0]
    second_at = np.nonzero(pixels_of(item.frames, second))[0][0]
    assert first_at < second_at and (first_at, second_at) == (item.evidence[0], item.evidence[-1])


@pytest.mark.parametrize("index", range(8))
def test_motion_moves_the_way_the_answer_says(index):
    item = synth.generate("motion", index, split="test")
    moving = next(c for c in synth.ANSWER_COLORS if pixels_of(item.frames, c).all())
    mask = (item.frames == np.array(synth.COLORS[moving], dtype=np.uint8)).all(-1)
    (y0, x0), (y1, x1) = (np.argwhere(mask[0]).mean(0), np.argwhere(mask[-1]).mean(0))
    dy, dx = y1 - y0, x1 - x0
    assert {"up": -dy, "down": dy, "left": -dx, "right": dx}[item.answer] > 10


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(list(synth.KINDS)), index=st.integers(0, 10**6), frames=st.integers(8, 24),
       size=st.integers(48, 128), split=st.sampled_from(synth.SPLITS), textured=st.sampled_from([True, False, None]))
def test_any_item_is_well_formed(kind, index, frames, size, split, textured):
    item = synth.generate(kind, index, split=split, frames=frames, size=size, textured=textured)
    assert item.frames.shape == (frames, size, size, 3) and item.frames.dtype == np.uint8
    assert item.answer in item.choices == synth.KINDS[item.kind][1] and item.question == synth.KINDS[kind][0]
    assert item.evidence and all(0 <= t < frames for t in item.evidence)
    assert set(item.question.split()) <= set(WORDS)  # every question word is in the model's vocabulary


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "needles"}, "kind must be one of"),
        ({"index": -1}, "index must be an integer >= 0"),
        ({"index": 1.5}, "index must be an integer"),
        ({"frames": 7}, r"frames must be an integer in \[8, 256\]"),
        ({"size": 40}, r"size must be an integer in \[48, 1024\]"),
        ({"split": "val"}, "split must be one of"),
        ({"textured": "yes"}, "textured must be True, False or None"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    arguments = {"kind": "count", "index": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        synth.generate(arguments.pop("kind"), arguments.pop("index"), **arguments)
    with pytest.raises(ValueError, match="count must be an integer >= 1"):
        synth.items("count", 0)
