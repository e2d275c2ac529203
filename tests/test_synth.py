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


# the real regime: 32 frames at 216 px (14x14 tokens a frame) ------------------------------------------------------

REAL = list(synth.REAL_KINDS)


def test_real_kinds_do_not_change_the_tiny_kinds():
    assert not set(REAL) & set(synth.KINDS)
    item = synth.generate("needle", 3)
    assert item.frames.shape == (16, 96, 96, 3)  # the tiny kinds' defaults stay
    assert synth.generate("needle32", 3).frames.shape == (synth.REAL_FRAMES, synth.REAL_SIZE, synth.REAL_SIZE, 3)


@pytest.mark.parametrize("kind", REAL)
def test_real_answers_are_balanced_and_single_tokens(kind):
    from framepress.models.tiny import tiny_tokenizer

    question, choices = synth.REAL_KINDS[kind]
    answers = [it.answer for it in synth.items(kind, 2 * len(choices), split="test")]
    assert sorted(answers) == sorted(list(choices) * 2)
    tokenizer = tiny_tokenizer()
    for word in choices:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1
    assert tokenizer.unk_token_id not in tokenizer(question, add_special_tokens=False).input_ids


def test_the_vocabulary_only_grew():
    """The packaged checkpoint's tokenizer was saved before the real-regime words: every id it has is unchanged."""
    import json

    from framepress import packaged
    from framepress.models.tiny import tiny_tokenizer

    saved = json.loads((packaged.FOLDER / "tokenizer.json").read_text())["model"]["vocab"]
    now = tiny_tokenizer().get_vocab()
    assert all(now[word] == i for word, i in saved.items()) and max(now.values()) < 256


@pytest.mark.parametrize("kind", REAL)
def test_real_items_are_deterministic_and_the_splits_differ(kind):
    a, b = synth.generate(kind, 5, split="test"), synth.generate(kind, 5, split="test")
    assert np.array_equal(a.frames, b.frames) and a.evidence == b.evidence
    assert not np.array_equal(a.frames, synth.generate(kind, 5, split="train").frames)
    assert [it.answer for it in synth.test_set(kind, 4)] == list(synth.REAL_KINDS[kind][1])


def test_train_and_test_items_never_coincide():
    test = {synth.generate(k, i, split="test").frames.tobytes() for k in REAL for i in range(6)}
    train = {synth.generate(k, i, split="train").frames.tobytes() for k in REAL for i in range(6)}
    assert not test & train


def centroid(frames: np.ndarray, color: str) -> np.ndarray:
    """[F, 2] mean (y, x) of the pixels of exactly ``color`` in each frame."""
    mask = (frames == np.array(synth.COLORS[color], dtype=np.uint8)).all(-1)
    y, x = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    return np.stack([(mask * y).sum((1, 2)), (mask * x).sum((1, 2))], 1) / mask.sum((1, 2))[:, None]


def runs_of(shown: np.ndarray) -> int:
    return int(np.sum(shown[1:] & ~shown[:-1]) + shown[0])


@pytest.mark.parametrize("index", range(8))
def test_needle32_shows_in_exactly_its_one_frame_and_is_one_cell(index):
    item = synth.generate("needle32", index, split="test")
    counts = pixels_of(item.frames, item.answer)
    assert len(item.evidence) == 1 and tuple(np.nonzero(counts)[0]) == item.evidence
    cell = synth.REAL_SIZE / 14
    assert 0.5 * cell**2 <= counts.max() <= 2 * cell**2  # about one token cell


@pytest.mark.parametrize("index", range(8))
def test_second_the_answer_flashes_between_the_two_others(index):
    item = synth.generate("second", index, split="test")
    firsts = {c: np.nonzero(pixels_of(item.frames, c))[0] for c in synth.ANSWER_COLORS}
    shown = {c: t for c, t in firsts.items() if t.size}
    assert len(shown) == 3 and all(t.size <= 2 for t in shown.values())
    order = sorted(shown, key=lambda c: shown[c][0])
    assert order[1] == item.answer
    assert sorted(np.concatenate(list(shown.values())).tolist()) == list(item.evidence)


@pytest.mark.parametrize("index", range(8))
def test_events_the_square_flashes_as_many_times_as_the_answer(index):
    item = synth.generate("events", index, split="test")
    [color] = [c for c in synth.ANSWER_COLORS if pixels_of(item.frames, c).any()]
    shown = pixels_of(item.frames, color) > 0
    assert runs_of(shown) == synth.NUMBERS.index(item.answer) + 1
    assert tuple(np.nonzero(shown)[0]) == item.evidence and not shown[0] and not shown[-1]


@pytest.mark.parametrize("index", range(8))
def test_detail_the_mark_sits_on_the_answer_side_of_the_big_object(index):
    item = synth.generate("detail", index, split="test")
    [color] = [c for c in synth.ANSWER_COLORS if pixels_of(item.frames, c).any()]
    dy, dx = (centroid(item.frames, "white") - centroid(item.frames, color)).mean(0)
    along = {"up": -dy, "down": dy, "left": -dx, "right": dx}[item.answer]
    assert along > 1 and along > 3 * min(abs(dy), abs(dx))
    cell = synth.REAL_SIZE / 14
    assert pixels_of(item.frames, "white").max() <= 1.5 * cell**2  # a detail: about one token cell


@pytest.mark.parametrize("index", range(8))
def test_cut_the_answer_colour_shows_only_after_the_cut(index):
    item = synth.generate("cut", index, split="test")
    after = pixels_of(item.frames, item.answer) > 0
    assert tuple(np.nonzero(after)[0]) == item.evidence and item.evidence[-1] == synth.REAL_FRAMES - 1
    cut = item.evidence[0]
    assert cut >= round(0.7 * synth.REAL_FRAMES)  # late: a few frames after it
    [before] = [c for c in synth.ANSWER_COLORS if c != item.answer and pixels_of(item.frames, c).any()]
    assert tuple(np.nonzero(pixels_of(item.frames, before))[0]) == tuple(range(cut))
    corner = item.frames[:, 0, 0].astype(int)  # the background changes at the cut
    assert (corner[cut - 1] != corner[cut]).any() and (corner[0] == corner[cut - 1]).all()


@pytest.mark.parametrize("index", range(8))
def test_direction_is_slow_and_the_way_the_answer_says(index):
    item = synth.generate("direction", index, split="test")
    [color] = [c for c in synth.ANSWER_COLORS if pixels_of(item.frames, c).any()]
    path = centroid(item.frames, color)
    dy, dx = path[-1] - path[0]
    cell = synth.REAL_SIZE / 14
    assert {"up": -dy, "down": dy, "left": -dx, "right": dx}[item.answer] > 3 * cell
    assert np.abs(np.diff(path, axis=0)).max() < 0.3 * cell  # one frame to the next tells almost nothing


@pytest.mark.parametrize("index", range(8))
def test_still_the_answer_object_does_not_move(index):
    item = synth.generate("still", index, split="test")
    path = centroid(item.frames, item.answer)
    assert np.abs(path - path[0]).max() < 1e-9


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(REAL), index=st.integers(0, 10**6), frames=st.integers(24, 40),
       size=st.integers(84, 140), split=st.sampled_from(synth.SPLITS), textured=st.sampled_from([True, False, None]))
def test_any_real_item_is_well_formed(kind, index, frames, size, split, textured):
    item = synth.generate(kind, index, split=split, frames=frames, size=size, textured=textured)
    assert item.frames.shape == (frames, size, size, 3) and item.frames.dtype == np.uint8
    assert item.answer in item.choices == synth.REAL_KINDS[kind][1] and item.question == synth.REAL_KINDS[kind][0]
    assert item.evidence and list(item.evidence) == sorted(set(item.evidence)) and 0 <= item.evidence[0]
    assert item.evidence[-1] < frames and set(item.question.split()) <= set(WORDS)


def test_real_kinds_refuse_too_few_frames_or_pixels():
    with pytest.raises(ValueError, match=r"frames must be an integer in \[24, 256\] for kind 'events'"):
        synth.generate("events", 0, frames=16)
    with pytest.raises(ValueError, match=r"size must be an integer in \[84, 1024\] pixels for kind 'detail'"):
        synth.generate("detail", 0, size=64)


@pytest.mark.parametrize("kind", ["needle32", "second", "events"])
def test_uniform_frame_dropping_at_10_percent_misses_the_evidence(kind):
    """The frames method at 10% keeps 3 of 32 frames, evenly spaced: the one-frame evidence is rarely among them."""
    import torch

    import framepress

    grid = torch.zeros(synth.REAL_FRAMES, 14, 14, 4)
    kept = set(framepress.compress(grid, "frames", retention=0.1).boxes[:, 0].tolist())
    assert len(kept) == 3
    held = [set(item.evidence) <= kept for item in synth.test_set(kind, 40)]
    assert sum(held) / len(held) < 0.15
