"""Contact sheets: layout, the overlay rules pixel by pixel, the fused-frame mapping, atomic saving, errors."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import framepress
from framepress import features, show
from framepress.tokens import Tokens

T, H, W = 4, 14, 14


@pytest.fixture(scope="module")
def x():
    return features.synthetic(T, H, W, 16)


@pytest.fixture(scope="module")
def tokens(x):
    return {m: framepress.compress(x, m, retention=0.3) for m in ("sttm", "pool", "random")}


def gradient_frames(F, h=56, w=56):
    """uint8 [F, h, w, 3]: red grows left to right, green top to bottom, blue with the frame number."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack(
        [np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 40 + 50 * f)], -1) for f in range(F)]
    ).astype(np.uint8)


def plain(frames, lay, f):
    """Frame f resized as the sheet resizes it, before any overlay."""
    h, w = lay.frame_size
    return np.asarray(Image.fromarray(frames[f]).resize((w, h), show.RESAMPLE), dtype=np.float32)


def cell_pixels(sheet, frames, lay, f, y, x, inset=2):
    """(sheet pixels, plain frame pixels) of grid cell (y, x) of frame f, ``inset`` px in from its edges (every
    outline lies on a box edge, and every box edge is a cell edge, so the inside is never outlined)."""
    left, top, right, bottom = lay.token_rect(f, y, x)
    ox, oy = lay.frame_origin(f)
    got = np.asarray(sheet, dtype=np.float32)[top + inset : bottom - inset, left + inset : right - inset]
    ref = plain(frames, lay, f)[top - oy + inset : bottom - oy - inset, left - ox + inset : right - ox - inset]
    assert got.size > 0
    return got, ref


def expected_size(F, columns, cell, shape=(56, 56)):
    """The documented layout: tiles of the frames' aspect, their longer side ``cell``."""
    columns = min(columns or math.ceil(math.sqrt(F)), F)
    rows = math.ceil(F / columns)
    scale = cell / max(shape)
    h, w = round(shape[0] * scale), round(shape[1] * scale)
    inner = max(columns * w + (columns - 1) * show.GAP, show.LEGEND_SLOT)
    legend = math.ceil(4 / min(max(inner // show.LEGEND_SLOT, 1), 4))
    height = (
        show.MARGIN
        + show.HEADER
        + rows * (show.LABEL + h)
        + (rows - 1) * show.GAP
        + show.GAP
        + legend * show.LEGEND_LINE
        + show.MARGIN
    )
    return 2 * show.MARGIN + inner, height


@pytest.mark.parametrize(
    "F, columns, cell, size",
    [
        (4, None, 256, (536, 670)),  # 2x2 of 256 px: 8 + 2*256 + 8 + 8 wide; 520 px hold 2 legend items a line
        (4, 4, 112, (488, 286)),  # 1 row of 4; 472 px of content hold 1 legend item a line: 4 lines
        (8, 3, 100, (332, 522)),  # 8 frames fused onto T=4: 3 rows, the last one short
        (4, 9, 64, (296, 238)),  # columns beyond F are clamped to F
        (1, None, 32, (276, 206)),  # one small frame: the width is the legend slot's
    ],
)
def test_image_size_follows_the_documented_layout(tokens, F, columns, cell, size):
    tok = (
        tokens["random"] if F % T == 0 else framepress.compress(features.synthetic(F, H, W, 8), "random", retention=0.3)
    )
    frames = gradient_frames(F)
    sheet = show.contact_sheet(frames, tok, columns=columns, cell=cell)
    assert sheet.mode == "RGB"
    assert sheet.size == size == expected_size(F, columns, cell)
    assert show.layout(frames.shape, tok.grid, columns, cell).size == size


def check_overlay(sheet, frames, tok, lay, k=1):
    """Every cell of every frame follows the rules: dropped -> 40% of the frame, merged -> 35% toward its group's
    colour, kept single -> the frame itself (all within 1 of rounding)."""
    source = tok.source.reshape(tok.grid)
    counts = {"dropped": 0, "merged": 0, "single": 0}
    for f in range(frames.shape[0]):
        for y in range(H):
            for xx in range(W):
                got, ref = cell_pixels(sheet, frames, lay, f, y, xx)
                s = int(source[f // k, y, xx])
                if s < 0:
                    want, kind = ref * (1 - show.DIM), "dropped"
                elif int(tok.sizes[s]) > 1:
                    colour = np.array(show.group_colour(s), dtype=np.float32)
                    want, kind = ref * (1 - show.TINT_ALPHA) + colour * show.TINT_ALPHA, "merged"
                else:
                    want, kind = ref, "single"
                assert np.abs(got - want).max() <= 1, (f, y, xx, kind)
                counts[kind] += 1
    return counts


@pytest.mark.parametrize("method", ["sttm", "pool", "random"])
@pytest.mark.parametrize("shape, cell", [((56, 56), 112), ((42, 70), 140)])
def test_every_cell_follows_the_overlay_rules(tokens, method, shape, cell):
    tok = tokens[method]
    frames = gradient_frames(T, *shape)
    sheet = show.contact_sheet(frames, tok, cell=cell)
    lay = show.layout(frames.shape, tok.grid, None, cell)
    counts = check_overlay(sheet, frames, tok, lay)
    if method == "random":
        assert counts["dropped"] > 0 and counts["single"] > 0 and counts["merged"] == 0
    if method == "pool":
        assert counts["merged"] == T * H * W
    if method == "sttm":
        assert counts["merged"] > 0 and counts["single"] > 0


def test_dropped_cells_are_darker(tokens):
    tok = tokens["random"]
    frames = gradient_frames(T)
    sheet = show.contact_sheet(frames, tok, cell=112)
    lay = show.layout(frames.shape, tok.grid, None, 112)
    t, y, xx = (int(v) for v in (tok.source.reshape(tok.grid) < 0).nonzero()[0])
    got, ref = cell_pixels(sheet, frames, lay, t, y, xx, inset=0)
    assert (got <= ref).all() and got.mean() < 0.5 * ref.mean()


def test_merged_members_carry_their_group_tint_in_every_frame(tokens):
    tok = tokens["sttm"]
    frames = gradient_frames(T)
    sheet = show.contact_sheet(frames, tok, cell=112)
    lay = show.layout(frames.shape, tok.grid, None, 112)
    source = tok.source.reshape(tok.grid)
    # a group whose members span several frames (STTM's temporal merging)
    spans = [(g, sorted({int(t) for t in (source == g).nonzero()[:, 0]})) for g in range(len(tok))]
    g, frames_of_g = max(spans, key=lambda s: len(s[1]))
    assert len(frames_of_g) > 1 and int(tok.sizes[g]) > 1
    colour = np.array(show.group_colour(g), dtype=np.float32)
    for t, y, xx in (source == g).nonzero().tolist():
        got, ref = cell_pixels(sheet, frames, lay, t, y, xx)
        moved = np.linalg.norm(got - colour, axis=-1) < np.linalg.norm(ref - colour, axis=-1)
        assert moved.all(), (t, y, xx)
    # the colour is stable: a function of the output index only
    assert show.group_colour(g) == show.PALETTE[g % len(show.PALETTE)]


def border(sheet, rect):
    left, top, right, bottom = rect
    a = np.asarray(sheet)
    return np.concatenate(
        [a[top, left:right], a[bottom - 1, left:right], a[top:bottom, left], a[top:bottom, right - 1]]
    )


@pytest.mark.parametrize("method", ["sttm", "random"])
def test_kept_single_tokens_are_outlined(tokens, method):
    tok = tokens[method]
    frames = gradient_frames(T)
    sheet = show.contact_sheet(frames, tok, cell=112)
    lay = show.layout(frames.shape, tok.grid, None, 112)
    singles = (tok.sizes == 1).nonzero()[:, 0].tolist()
    assert singles
    for i in singles:
        t, y0, x0, y1, x1 = tok.boxes[i].tolist()
        assert (border(sheet, lay.token_rect(t, y0, x0, y1, x1)) == show.KEPT_OUTLINE).all(), i


def test_merged_representative_box_is_outlined_in_its_colour(tokens):
    tok = tokens["pool"]  # disjoint 2x2 windows
    frames = gradient_frames(T)
    sheet = show.contact_sheet(frames, tok, cell=112)
    lay = show.layout(frames.shape, tok.grid, None, 112)
    for i in range(len(tok)):
        t, y0, x0, y1, x1 = tok.boxes[i].tolist()
        assert (border(sheet, lay.token_rect(t, y0, x0, y1, x1)) == show.group_colour(i)).all(), i


def test_fused_frames_map_to_their_temporal_token(tokens):
    """Qwen-VL style: F = 2T frames, frame f drawn with token frame f // 2; both frames of a pair are shown."""
    tok = tokens["random"]
    frames = gradient_frames(2 * T)  # each frame its own blue level, so the pair differs
    sheet = show.contact_sheet(frames, tok, cell=112)
    lay = show.layout(frames.shape, tok.grid, None, 112)
    assert lay.frames == 2 * T and sheet.size == expected_size(2 * T, None, 112)
    check_overlay(sheet, frames, tok, lay, k=2)
    t, y, xx = (int(v) for v in (tok.source.reshape(tok.grid) < 0).nonzero()[-1])
    for f in (2 * t, 2 * t + 1):
        got, ref = cell_pixels(sheet, frames, lay, f, y, xx)
        assert got.mean() < 0.5 * ref.mean()
    single = int((tok.sizes == 1).nonzero()[0, 0])
    bt, y0, x0, y1, x1 = tok.boxes[single].tolist()
    for f in (2 * bt, 2 * bt + 1):
        assert (border(sheet, lay.token_rect(f, y0, x0, y1, x1)) == show.KEPT_OUTLINE).all()


def test_title_and_torch_frames(tokens):
    tok = tokens["sttm"]
    frames = gradient_frames(T)
    a = show.contact_sheet(frames, tok, cell=64, title="sttm, retention 0.30")
    b = show.contact_sheet(torch.from_numpy(frames), tok, cell=64, title="sttm, retention 0.30")
    c = show.contact_sheet(frames, tok, cell=64)  # default header: retention and counts
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size == c.size and not np.array_equal(np.asarray(a), np.asarray(c))


def test_save_is_atomic_and_readable(tmp_path, tokens):
    tok = tokens["sttm"]
    frames = gradient_frames(T)
    path = tmp_path / "new" / "dir" / "sheet.png"
    out = show.save_contact_sheet(path, frames, tok, cell=96, title="sttm")
    assert out == path and os.listdir(path.parent) == ["sheet.png"]
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == expected_size(T, None, 96)
        assert np.array_equal(
            np.asarray(img.convert("RGB")), np.asarray(show.contact_sheet(frames, tok, cell=96, title="sttm"))
        )
    jpg = show.save_contact_sheet(str(tmp_path / "sheet.JPG"), frames, tok, cell=64)
    with Image.open(jpg) as img:
        assert img.format == "JPEG" and img.size == expected_size(T, None, 64)


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, tokens, monkeypatch):
    tok = tokens["random"]
    frames = gradient_frames(T)
    path = tmp_path / "sheet.png"
    path.write_bytes(b"old")

    def broken(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        show.save_contact_sheet(path, frames, tok, cell=32)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["sheet.png"]


@pytest.mark.parametrize("name", ["sheet.xyz", "sheet", "sheet.npy"])
def test_save_refuses_unknown_suffixes(tmp_path, tokens, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        show.save_contact_sheet(tmp_path / "out" / name, gradient_frames(T), tokens["random"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "frames, kwargs, error, match",
    [
        (gradient_frames(T).astype(np.float32), {}, ValueError, "uint8"),
        (gradient_frames(T)[..., 0], {}, ValueError, r"\[F, H, W, 3\]"),
        (np.zeros((T, 8, 8, 4), np.uint8), {}, ValueError, r"\[F, H, W, 3\]"),
        (np.zeros((T, 0, 8, 3), np.uint8), {}, ValueError, r"\[F, H, W, 3\]"),
        (gradient_frames(T - 1), {}, ValueError, "3 frames for a token grid of T=4"),
        (gradient_frames(T + 2), {}, ValueError, "multiple of T"),
        (gradient_frames(2), {}, ValueError, "T=4"),
        (gradient_frames(T).tolist(), {}, TypeError, "numpy array"),
        (gradient_frames(T), {"columns": 0}, ValueError, "columns"),
        (gradient_frames(T), {"columns": 1.5}, ValueError, "columns"),
        (gradient_frames(T), {"cell": 4}, ValueError, "cell"),
        (gradient_frames(T), {"title": 3}, TypeError, "title"),
    ],
)
def test_bad_inputs_raise_clear_errors(tokens, frames, kwargs, error, match):
    with pytest.raises(error, match=match):
        show.contact_sheet(frames, tokens["random"], **kwargs)


def test_tokens_must_be_framepress_tokens(tokens, x):
    frames = gradient_frames(T)
    with pytest.raises(TypeError, match="framepress Tokens"):
        show.contact_sheet(frames, x)
    good = tokens["random"]
    broken = Tokens(good.features, good.boxes, good.sizes + 1, good.source, good.grid)
    with pytest.raises(ValueError, match="tokens are inconsistent: sizes disagree"):
        show.contact_sheet(frames, broken)


# Text: plurals, word gaps, the legend ---------------------------------------------------------------------


def drawn_texts(monkeypatch):
    """Every line the next sheets write, in order."""
    texts = []
    real = show._text
    monkeypatch.setattr(show, "_text", lambda draw, xy, text, *a: (texts.append(text), real(draw, xy, text, *a)))
    return texts


def test_frame_labels_count_tokens_with_plurals_and_the_legend_names_the_representative(monkeypatch):
    x = features.synthetic(T, H, W, 4)
    tok = Tokens.select(x, torch.tensor([5, H * W + 3, H * W + 9]))  # 1 token in frame 0, 2 in frame 1, none after
    texts = drawn_texts(monkeypatch)
    show.contact_sheet(gradient_frames(T), tok, cell=112)
    assert texts[:4] == ["frame 0 (1 token)", "frame 1 (2 tokens)", "frame 2 (0 tokens)", "frame 3 (0 tokens)"]
    assert texts[4] == "retention 0.00: 3 of 784 tokens"
    assert texts[5:7] == ["", "4x14x14 grid: 3 single, 0 merged groups, 781 of 784 cells dropped"]
    assert texts[7:] == list(show.LEGEND) and "coloured outline: a group's representative" in show.LEGEND
    assert [show.plural(n, "token") for n in (0, 1, 2)] == ["0 tokens", "1 token", "2 tokens"]
    sttm = framepress.compress(x, "sttm", retention=0.3)  # standalone: the header says what the method chose
    assert show.header_lines(sttm)[0] == "chosen: " + ", ".join(f"{k}={v:.4g}" for k, v in sttm.info.items())


def test_words_are_drawn_with_a_readable_gap():
    """The default font's space is 2 px at 11 px type: words are placed with a gap of at least 0.35 em."""
    font = show._font(11)
    image = Image.new("L", (200, 20), 0)
    show._text(ImageDraw.Draw(image), (2, 2), "(1 token)", font, 255, 200)
    ink = np.flatnonzero(np.asarray(image).max(0) > 0)
    gaps = np.diff(ink) - 1
    assert gaps.max() >= math.floor(show.WORD_GAP * 11)
    assert show._line_width("(1 token)", font) == pytest.approx(
        font.getlength("(1") + font.getlength("token)") + show.WORD_GAP * 11
    )


# Tiles follow the clip's aspect ------------------------------------------------------------------------------


def test_16_9_frames_get_16_9_tiles_without_bands(tokens):
    tok = tokens["random"]
    frames = gradient_frames(T, 36, 64)
    sheet = show.contact_sheet(frames, tok, cell=128)
    lay = show.layout(frames.shape, tok.grid, None, 128)
    assert lay.frame_size == (72, 128) and sheet.size == expected_size(T, None, 128, (36, 64))
    check_overlay(sheet, frames, tok, lay)  # every pixel of every tile is the frame (dimmed, tinted or not)
    a = np.asarray(sheet)
    for f in range(T):
        ox, oy = lay.frame_origin(f)
        assert (a[oy + 72 : oy + 72 + show.GAP, ox : ox + 128] == show.BACKGROUND).all()  # white right under the tile
        assert not (a[oy : oy + 72, ox : ox + 128] == show.BACKGROUND).all(-1).any()  # no band inside it
    tall = show.layout((T, 64, 36, 3), tok.grid, None, 128)
    assert tall.frame_size == (128, 72)


# Runs inside a model: every stage composed back onto the grid -----------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    from framepress import packaged

    pipe = framepress.load(packaged.path(), frames=16, device="cpu")
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from framepress import synth
    from framepress.demo import write_video
    from framepress.video import load_video

    item = synth.generate("needle", 1, split="test", frames=16)
    return load_video(write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", item.frames), num_frames=16)


def expected_two_stage(patch, record):
    """What a two-stage run kept, worked out from the pre-LLM rewrite's own index (not from the records' slots):
    the original sequence slot of each final representative, and the final token of every grid cell."""
    entry = patch.current.entry.index[0]  # the original position behind each slot of the LLM's sequence
    slots, (t_, h_, w_) = record["blocks"][0][0]
    first = patch.last_tokens[0]
    inner = record["stages"][1]
    rep_slot = [slots[t * h_ * w_ + y * w_ + x] for t, y, x in first.positions.tolist()]
    first_at = {s: i for i, s in enumerate(rep_slot)}  # original slot of a representative -> pre-LLM token
    final_of = {first_at[int(entry[m])]: g for m, g in zip(inner["members"][0], inner["group"][0])}
    cells = [final_of.get(int(s), -1) if s >= 0 else -1 for s in first.source.tolist()]
    return {int(entry[k]) for k in inner["kept"][0]}, cells


@pytest.mark.parametrize("method", ["unified", "holitom", "prunevid"])
def test_two_stage_pictures_draw_what_was_really_kept(pipe, clip, method, tmp_path):
    exact = {"allocation": "exact"} if method == "prunevid" else {}  # its in-LLM part's official count falls short
    pipe.use(method, "25%/12.5%", inner_layer=2, **exact)
    video, tok = pipe.kept(clip)
    patch, record = pipe.handle._patch, pipe.handle.stats[-1]
    slots, (t_, h_, w_) = record["blocks"][0][0]
    assert tok.grid == (16, 6, 6) and len(tok) == record["stages"][1]["visual_out"][0] == 72
    truly, cells = expected_two_stage(patch, record)
    t, y, x = tok.positions.T
    assert {slots[i] for i in (t * h_ * w_ + y * w_ + x).tolist()} == truly
    # every cell is drawn with the final token its pre-LLM token went into (output order aside)
    final = tok.source.tolist()
    pairs = {(a, b) for a, b in zip(cells, final)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})  # one-to-one
    assert ((torch.tensor(cells) < 0) == (tok.source < 0)).all()
    # the kept tokens spread over the clip as the method kept them (the old picture put all 72 in frames 0-2)
    frames_with_tokens = set(t.tolist())
    assert len(frames_with_tokens) >= 8 and max(frames_with_tokens) >= 12
    # in-LLM merges are groups: some final token stands for several pre-LLM tokens' cells, across frames
    merged = (tok.sizes > 1).nonzero()[:, 0].tolist()
    assert merged
    spans = [len(set((tok.source.reshape(tok.grid) == g).nonzero()[:, 0].tolist())) for g in merged]
    assert max(spans) > 1
    # and the picture draws exactly these tokens: each merged group's representative outlined in its colour
    path = pipe.show(clip, tmp_path / "two.png", cell=96)
    with Image.open(path) as picture:
        sheet = picture.convert("RGB")
    assert np.array_equal(np.asarray(sheet), np.asarray(show.contact_sheet(
        video.frames, tok, cell=96, title=f"{method}, retention 25%/12.5%")))
    lay = show.layout(video.frames.shape, tok.grid, None, 96)
    for g in merged:
        ft, y0, x0, y1, x1 = tok.boxes[g].tolist()
        assert (border(sheet, lay.token_rect(ft, y0, x0, y1, x1)) == show.group_colour(g)).all(), g
    pipe.close()


def test_an_in_llm_stage_alone_is_drawn_at_the_cells_it_kept(pipe, clip):
    pipe.use("fastv", 0.25, layer=2)
    _, tok = pipe.kept(clip)
    record = pipe.handle.stats[-1]
    slots, grid = record["blocks"][0][0]
    index = torch.searchsorted(torch.tensor(slots), torch.tensor(record["stages"][0]["kept"][0]))
    assert tok.grid == tuple(grid) and set(index.tolist()) == set((tok.source >= 0).nonzero()[:, 0].tolist())
    assert (tok.sizes == 1).all() and len(tok) == 144
    assert show.header_lines(tok)[0] == "visual tokens: 576 -> 144 at layer 2"
    pipe.close()


def test_gridpool_header_counts_both_grids(pipe, clip, monkeypatch):
    pipe.use("gridpool", 0.25)
    texts = drawn_texts(monkeypatch)
    pipe.show(clip, cell=64)
    record = pipe.handle.stats[-1]
    assert record["tokens_in"] == [576] and record["stages"][0]["visual_out"] == [144]  # what the table counts
    title, flow, drawn = texts[16:19]
    assert title == "gridpool, retention 0.25"
    assert flow == "visual tokens: 576 -> 144 before the LLM (the LLM's grid: 16x6x6)"
    assert drawn.startswith("16x12x12 grid before pooling: ") and drawn.endswith(" of 2304 cells dropped")
    pipe.close()


def test_composed_refuses_what_it_cannot_draw(pipe, clip):
    pipe.use("unified", "25%/12.5%", inner_layer=2)
    pipe.kept(clip)
    record = pipe.handle.stats[-1]
    with pytest.raises(ValueError, match="first: the run has a pre-LLM stage"):
        show.composed(record)
    with pytest.raises(ValueError, match="sample must be in"):
        show.composed(record, pipe.handle._patch.last_tokens[0], sample=1)
    with pytest.raises(TypeError, match="record must be one entry of Handle.stats"):
        show.composed([record])
    pipe.close()
