"""Train the packaged tiny Video-LLM on :mod:`framepress.synth` questions (the recipe of docs/quality-tiny.md).

``python -m framepress.training --out DIR`` trains the LLaVA-OneVision architecture at toy size (:func:`config`)
from random weights, with a fixed seed, and writes a checkpoint folder that loads with ``from_pretrained``.

So that compression methods can be measured on it, the model is trained under what they do to its input:
each batch keeps all video tokens or drops a random share of them (keeping 1% to 100%, log-uniform), drops
whole frames, or averages adjacent frames' tokens (temporal merging), and gives the kept tokens either their
original position ids or contiguous re-assigned ones (STTM's default). Frame counts vary (8 to 16).

``--regime real`` trains the same recipe in LLaVA-OneVision's real token regime (:data:`REGIMES`): 32 frames of
216 px, a 27x27 patch grid (patch 8) that the family's own bilinear pooling turns into ceil(27/2) = 14x14 tokens a
frame, 6,272 video tokens, over :data:`framepress.synth.REAL_KINDS` (24 to 32 frames a batch). It starts from the
packaged tiny model (:func:`warm_start`: the same architecture, its SigLIP position table resized from 12x12 to
27x27; a real-regime token covers 15.4 px, the tiny model's 16 px, so objects look alike to it) and trains only the
LM: the vision tower, projector and newline stay as the tiny run left them (as LLaVA freezes its tower), so a
batch's features are computed once, without a backward pass, and serve ``reuse`` updates, each with its own
reduction. Most batches are short (kept shares log-uniform from 1% to ``keep_max`` 0.3; 5% of batches keep all
6,273 tokens) and 40% keep each clip's evidence frames (mode "evidence"), so the answer's gradient is not noise.
Why the warm start: from random weights (a random frozen encoder and an LM of hidden 64) every CPU run here stayed
at chance on every kind, the longest 4,400 updates (70 minutes); from the tiny model the answer accuracy rises
within 100 updates (``still`` is right from the start: the tiny model learned colours). Rebuilding it is the tiny
recipe (36 minutes) and then :data:`framepress.quality.REAL_BUILD`: 84 minutes on this project's 2 CPU cores
(2026-12-02, 20 s a step of 16 clips), ending at full-token held-out accuracy (12 clips a kind) needle32 83%, second
67%, events 33%, detail 25%, cut 100%, direction 25%, still 100%.
``--save-every N`` (default 25 for this regime) writes the model, optimizer, schedule and every RNG state to
``<out>.resume/``, so that ``--resume`` continues the run exactly where it stopped (the same weights as an
uninterrupted run), and ``--until S`` stops after step S of the schedule: a run spread over several sessions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import packaged, synth
from .models.tiny import BOS, EOS, IMAGE, PAD, VIDEO, tiny_tokenizer
from .prompt import CLIP_MEAN, CLIP_STD

#: frame side in pixels and the vision patch: 12x12 patches, 6x6 tokens a frame after LLaVA's 2x2 pooling
SIZE, PATCH = 96, 8
FRAMES = 16
IM_END = 249


@dataclass(frozen=True)
class Regime:
    """Where a model is trained: its frames, the question kinds, and its architecture at toy size."""

    name: str
    size: int  # frame side in pixels (the vision tower's image size)
    patch: int
    frames: int  # frames of the held-out clips (and most training batches)
    frame_choices: tuple[int, ...]  # a batch's frame count is one of these, uniformly
    kinds: tuple[str, ...]
    vision: dict
    text: dict
    save_every: int  # default steps between resumable checkpoints (0: none)
    #: probabilities of the batch modes all / tokens / tokens / frames / merge / evidence (:data:`MODES`; a
    #: shorter tuple leaves the last modes out)
    mix: tuple[float, ...] = (0.25, 0.25, 0.25, 0.1, 0.15)
    #: the vision tower, projector and newline keep their random initialisation (a fixed random-feature encoder):
    #: only the LM trains, and a batch's video features are computed once, without a backward pass
    frozen_encoder: bool = False
    reuse: int = 1  # optimizer updates on each drawn batch of clips, each with its own reduction (frozen encoder only)
    #: the largest share a token-dropping or merging batch keeps (shares are log-uniform from 1% to it): long
    #: sequences cost attention quadratically, so the real regime trains on short ones and sees all tokens in
    #: its "all" batches only
    keep_max: float = 1.0
    #: the regime whose packaged model the run starts from (:func:`warm_start`), or None: random weights
    init: str | None = None

    @property
    def side(self) -> int:
        """Tokens per side of a frame after the family's 2x2 pooling (ceil of half the patch grid)."""
        return math.ceil(self.size // self.patch / 2)


#: the packaged tiny model's SigLIP tower and qwen2 LM (the real regime starts from it: the same sizes)
TINY_VISION = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4)
TINY_TEXT = dict(num_hidden_layers=4, hidden_size=128, intermediate_size=384, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096)

REGIMES = {
    "tiny": Regime(
        "tiny", SIZE, PATCH, FRAMES, (8, 12, 16, 16, 16), tuple(synth.KINDS), vision=TINY_VISION, text=TINY_TEXT,
        save_every=0,
    ),
    "real": Regime(
        "real", synth.REAL_SIZE, 8, synth.REAL_FRAMES, (24, 28, 32, 32, 32), tuple(synth.REAL_KINDS),
        vision=TINY_VISION, text={**TINY_TEXT, "max_position_embeddings": 8192}, save_every=25, mix=(0.05, 0.2, 0.2, 0.05, 0.1, 0.4), frozen_encoder=True, reuse=4, keep_max=0.3,
        init="tiny",
    ),
}


def regime_of(name: str) -> Regime:
    if name not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, got {name!r}")
    return REGIMES[name]


def config(regime: str = "tiny"):
    """The architecture of ``regime``: LLaVA-OneVision with a SigLIP tower and a qwen2 LM at toy size; "tiny" is
    the packaged model's (SigLIP 96 px / patch 8, hidden 96 x 2 layers; qwen2 hidden 128 x 4)."""
    import transformers as tf

    r = regime_of(regime)
    return tf.LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", image_size=r.size, patch_size=r.patch,
                           vision_use_head=False, **r.vision),
        text_config=dict(model_type="qwen2", vocab_size=256, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                         **r.text),
        image_token_index=IMAGE,
        video_token_index=VIDEO,
        image_grid_pinpoints=[[r.size, r.size]],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )


def warm_start(model, folder: Path) -> None:
    """Load the packaged tiny model at ``folder`` into ``model`` (the same architecture at another frame size), in
    place: its SigLIP position embeddings, a 12x12 grid at 96 px, are resized bicubically to ``model``'s patch grid
    (27x27 at 216 px), the way ViTs are carried to a new resolution; every other weight is the tiny model's."""
    import transformers as tf

    weights = tf.LlavaOnevisionForConditionalGeneration.from_pretrained(folder).state_dict()
    key = "model.vision_tower.embeddings.position_embedding.weight"
    table = weights[key]
    side = math.isqrt(table.shape[0])
    new = math.isqrt(model.model.vision_tower.embeddings.position_embedding.num_embeddings)
    grid = table.T.reshape(1, -1, side, side).float()
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    weights[key] = grid.reshape(-1, new * new).T.to(table.dtype).contiguous()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    left = [k for k in missing if not k.endswith("position_ids")]
    if left or unexpected:
        raise ValueError(f"init: {folder} is not the tiny architecture (missing {left}, unexpected {unexpected})")


def pixels(frames: np.ndarray) -> torch.Tensor:
    """[F, S, S, 3] uint8 at the model's size -> [F, 3, S, S] normalized as the pipeline does (CLIP mean/std)."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - mean) / std


class Prompts:
    """Token ids around the video for each question, rendered with the checkpoint's chat template."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, tuple[list[int], list[int]]] = {}

    def around(self, question: str) -> tuple[list[int], list[int]]:
        if question not in self.cache:
            messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            at = ids.index(VIDEO)
            self.cache[question] = ids[:at], ids[at + 1 :]
        return self.cache[question]

    def answer(self, word: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(word)


def reduce_tokens(
    features: torch.Tensor, frames: int, mode: str, keep: float, generator: torch.Generator,
    evidence: list[tuple[int, ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a compression method might leave of the video tokens [B, F*P + 1, D] (the last: LLaVA's newline).

    Returns the kept features [B, K + 1, D] and each kept token's index in the full video block [B, K + 1]
    (a merged token takes its first member's index), in video order. Mode "evidence" keeps whole frames like
    "frames", but each row's evidence frames (``evidence``, :attr:`framepress.synth.Item.evidence`) first: a short
    sequence that still holds the answer, so the answer's gradient is not noise (a frame count of at least every
    row's evidence, unless the evidence is every frame).
    """
    B, N, D = features.shape
    grid, newline = features[:, :-1], features[:, -1:]
    per_frame = grid.shape[1] // frames
    index = torch.arange(grid.shape[1]).expand(B, -1)
    if mode == "merge":  # average pairs of adjacent frames (a trailing odd frame stays alone)
        pairs = frames // 2
        head = grid[:, : pairs * 2 * per_frame].view(B, pairs, 2, per_frame, D).mean(2).reshape(B, -1, D)
        grid = torch.cat([head, grid[:, pairs * 2 * per_frame :]], 1)
        index = torch.cat(
            [index[:, : pairs * 2 * per_frame].view(B, pairs, 2, per_frame)[:, :, 0].reshape(B, -1),
             index[:, pairs * 2 * per_frame :]], 1,
        )
    count = grid.shape[1]
    kept = max(1, round(keep * count))
    if mode in ("frames", "evidence"):
        frames_left = count // per_frame
        taken = max(1, round(keep * frames_left))
        priority = torch.rand(B, frames_left, generator=generator)
        if mode == "evidence":
            if evidence is None or len(evidence) != B:
                raise ValueError(f"evidence: mode 'evidence' needs one tuple of frames per row ({B}), got {evidence!r}")
            marked = torch.zeros(B, frames_left)
            for b, shown in enumerate(evidence):
                marked[b, list(shown)] = 1.0
            counts = marked.sum(1)
            taken = max([taken, *counts[counts < frames_left].int().tolist()])
            priority = priority - marked  # evidence frames sort first, in random order among themselves
        chosen = priority.argsort(1)[:, :taken]
        rows = (chosen[:, :, None] * per_frame + torch.arange(per_frame)).reshape(B, -1)
    else:
        rows = torch.rand(B, count, generator=generator).argsort(1)[:, :kept]
    rows = rows.sort(1).values
    grid = grid.gather(1, rows.to(grid.device)[:, :, None].expand(-1, -1, D))
    index = index.gather(1, rows)
    return torch.cat([grid, newline], 1), torch.cat([index, torch.full((B, 1), N - 1)], 1)


def encode(model, items: list[synth.Item]) -> torch.Tensor:
    """The video features [B, F*P + 1, D] of a batch of clips (the family's pooling and newline included)."""
    video = torch.stack([pixels(it.frames) for it in items]).to(model.device)
    return model.model.get_video_features(
        video, vision_feature_layer=-1, vision_feature_select_strategy="full"
    ).pooler_output


def sequences(model, prompts: Prompts, items: list[synth.Item], mode: str, keep: float, original: bool,
              generator: torch.Generator, features: torch.Tensor | None = None):
    """inputs_embeds, attention_mask, position_ids and labels of a batch (right-padded; loss on the answer and
    the end of turn), on the model's device (the random choices are drawn on the CPU, so a run is the same there).
    ``features``: the batch's :func:`encode` output when already computed (default: encoded here)."""
    device = model.device
    features = encode(model, items) if features is None else features
    full = features.shape[1]
    visual, where = reduce_tokens(features, len(items[0].frames), mode, keep, generator,
                                  [item.evidence for item in items])
    embed = model.get_input_embeddings()
    rows, positions, labels = [], [], []
    for b, item in enumerate(items):
        before, after = prompts.around(item.question)
        target = [prompts.answer(item.answer), IM_END]
        text_after = torch.tensor(after + target)
        parts = [embed(torch.tensor(before, device=device)), visual[b], embed(text_after.to(device))]
        rows.append(torch.cat(parts))
        if original:
            pos = torch.cat([torch.arange(len(before)), len(before) + where[b],
                             len(before) + full + torch.arange(len(text_after))])
        else:
            pos = torch.arange(rows[-1].shape[0])
        positions.append(pos)
        label = torch.full((rows[-1].shape[0],), -100)
        label[-len(target) :] = torch.tensor(target)  # the loss shifts: each is predicted from the token before it
        labels.append(label)
    width = max(r.shape[0] for r in rows)
    D = rows[0].shape[1]
    embeds = torch.zeros(len(rows), width, D, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    lab = torch.full((len(rows), width), -100)
    for b, (r, p, l) in enumerate(zip(rows, positions, labels)):
        embeds[b, : r.shape[0]], mask[b, : r.shape[0]], pos[b, : r.shape[0]], lab[b, : r.shape[0]] = r, 1, p, l
    return embeds, mask.to(device), pos.to(device), lab.to(device)


def loss_and_hits(model, embeds, mask, pos, labels):
    out = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos)
    logits = model.lm_head(out.last_hidden_state[:, :-1])
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    answer_at = (target != -100).float().argmax(1)  # the first labelled position: the answer word
    rows = torch.arange(target.shape[0], device=target.device)
    hits = logits[rows, answer_at].argmax(-1) == target[rows, answer_at]
    return loss, hits


def lm_mask(mask: torch.Tensor, regime: str) -> torch.Tensor | None:
    """The attention mask the LM gets: sequences are right-padded, so under causal attention no real token ever
    sees a pad and the mask changes nothing a loss reads; it only forces SDPA's slow path, which at 6k tokens
    costs 3-4x (the real regime drops it). The tiny regime keeps it, so the packaged recipe stays bit for bit."""
    return mask if regime == "tiny" else None


def draw_batch(rng: np.random.Generator, batch: int, frames: int, kinds, size: int = SIZE) -> list[synth.Item]:
    picks = rng.integers(0, len(kinds), batch)
    indices = rng.integers(0, 2**31, batch)
    return [synth.generate(kinds[k], int(i), split="train", frames=frames, size=size) for k, i in zip(picks, indices)]


#: the batch modes of :func:`schedule` ("tokens" twice: original or re-assigned positions are drawn apart)
MODES = ("all", "tokens", "tokens", "frames", "merge", "evidence")


def schedule(rng: np.random.Generator, frame_choices=REGIMES["tiny"].frame_choices,
             mix=REGIMES["tiny"].mix, keep_max: float = 1.0) -> tuple[str, float, bool, int]:
    """(mode, keep, original positions, frames) of one batch; ``mix``: the modes' probabilities, ``keep_max``: the
    largest kept share but in "all" batches (:class:`Regime`)."""
    frames = int(rng.choice(list(frame_choices)))
    mode = str(rng.choice(MODES, p=[*mix, *[0.0] * (len(MODES) - len(mix))]))
    keep = 1.0 if mode == "all" else float(math.exp(rng.uniform(math.log(0.01), math.log(keep_max))))
    if mode == "merge":
        keep = keep_max if rng.random() < 0.5 else keep
    return mode, keep, bool(rng.random() < 0.5), frames


@torch.no_grad()
def evaluate(model, prompts: Prompts, per_kind: int, mode: str = "all", keep: float = 1.0, original: bool = True,
             batch: int = 50, kinds=None, regime: str = "tiny") -> dict[str, float]:
    """Held-out accuracy per kind (first answer token, greedy) with the training-time reductions; ``kinds``
    default to the regime's."""
    r = regime_of(regime)
    model.eval()
    generator = torch.Generator().manual_seed(0)
    result = {}
    for kind in kinds or r.kinds:
        hits = []
        test = synth.test_set(kind, per_kind, frames=r.frames, size=r.size)
        for i in range(0, len(test), batch):
            embeds, mask, pos, labels = sequences(model, prompts, test[i : i + batch], mode, keep, original, generator)
            hits.append(loss_and_hits(model, embeds, lm_mask(mask, regime), pos, labels)[1])
        result[kind] = torch.cat(hits).float().mean().item()
    model.train()
    return result


def resume_folder(out: Path) -> Path:
    """Where a run writing ``out`` keeps its resumable state: beside it, so ``out`` stays a plain checkpoint."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def save_state(folder: Path, state: dict) -> None:
    """Write the run's state atomically (a run killed while saving keeps the previous state)."""
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "state.pt.partial"
    torch.save(state, partial)
    os.replace(partial, folder / "state.pt")


def train(out: Path, steps: int, batch: int = 32, lr: float = 1e-3, warmup: int = 100, seed: int = 0,
          threads: int | None = None, eval_every: int = 500, log=print, regime: str = "tiny",
          save_every: int | None = None, resume: bool = False, until: int | None = None, device: str = "cpu") -> Path:
    """Train from random weights for ``steps`` batches and save the checkpoint folder ``out``.

    ``save_every`` (default: the regime's) steps, the model, optimizer, schedule, RNG states and history go to
    :func:`resume_folder`; ``resume`` continues from there (the same recipe, else an error naming what differs), so
    an interrupted run ends with the same weights as an uninterrupted one. ``until``: stop after that step (saving
    the state, not ``out``); returns the folder written. ``device``: where the model runs ("cuda" untried so far:
    every measured run was on CPUs).
    """
    import transformers as tf

    r = regime_of(regime)
    save_every = r.save_every if save_every is None else save_every
    if until is not None and not 1 <= until <= steps:
        raise ValueError(f"until must be a step in [1, steps={steps}], got {until!r}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    cfg = config(regime)
    cfg._attn_implementation = "sdpa"
    model = tf.LlavaOnevisionForConditionalGeneration(cfg)
    if r.init:
        warm_start(model, packaged.path())
    model = model.to(device).train()
    if r.frozen_encoder:
        for part in (model.model.vision_tower, model.model.multi_modal_projector):
            part.requires_grad_(False)
        model.model.image_newline.requires_grad_(False)
    tokenizer = tiny_tokenizer()
    prompts = Prompts(tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    updates = steps * r.reuse
    decay = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / updates)))),
    )
    recipe = {"regime": regime, "steps": steps, "batch": batch, "lr": lr, "warmup": warmup, "seed": seed}
    if r.frozen_encoder:
        recipe |= {"reuse": r.reuse, "frozen_encoder": True, "keep_max": r.keep_max, "mix": list(r.mix)}
    if r.init:
        recipe["init"] = r.init
    kinds = r.kinds
    history, running, done, spent = [], None, 0, 0.0
    recent: dict[str, deque] = {}  # each kind's last 100 training answers, right or wrong (for the log)
    folder = resume_folder(out)
    if resume:
        if not (folder / "state.pt").is_file():
            raise FileNotFoundError(f"resume: no saved state at {folder / 'state.pt'} (train with --save-every first)")
        state = torch.load(folder / "state.pt", weights_only=False, map_location="cpu")
        saved = state["recipe"]
        differs = [f"{k}={saved.get(k)!r} there, {v!r} here" for k, v in recipe.items() if saved.get(k) != v]
        if differs:
            raise ValueError(f"resume: {folder} holds another run ({'; '.join(differs)})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        decay.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["numpy"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        history, running, done, spent = state["history"], state["running"], state["step"], state["seconds"]
        log(f"resumed {folder} at step {done}/{steps}")
    last = steps if until is None else until
    start = time.time() - spent
    for step in range(done + 1, last + 1):
        draws = [schedule(rng, r.frame_choices, r.mix, r.keep_max) for _ in range(r.reuse)]
        items = draw_batch(rng, batch, draws[0][3], kinds, r.size)
        if r.frozen_encoder:
            with torch.no_grad():
                features = encode(model, items)
        for mode, keep, original, _ in draws:
            embeds, mask, pos, labels = sequences(model, prompts, items, mode, keep, original, generator,
                                                  features if r.frozen_encoder else None)
            loss, hits = loss_and_hits(model, embeds, lm_mask(mask, regime), pos, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            decay.step()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            for item, hit in zip(items, hits.tolist()):
                recent.setdefault(item.kind, deque(maxlen=100)).append(hit)
        if step % 10 == 0 or step == last:
            by_kind = " ".join(f"{kind} {sum(h) / len(h):.2f}" for kind, h in recent.items())
            log(f"step {step}/{steps} loss {running:.3f} acc {hits.float().mean():.2f} ({by_kind}) "
                f"{(step - done) * batch / (time.time() - start - spent):.2f} clips/s "
                f"{time.time() - start:.0f}s")
        if eval_every and (step % eval_every == 0 or step == steps):
            accuracy = evaluate(model, prompts, 40, regime=regime)
            history.append({"step": step, "seconds": round(time.time() - start), "accuracy": accuracy})
            log(f"eval {step}: " + " ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
        if save_every and (step % save_every == 0 or step == last):
            save_state(folder, {"recipe": recipe, "step": step, "seconds": time.time() - start, "running": running,
                                "history": history, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "schedule": decay.state_dict(), "numpy": rng.bit_generator.state,
                                "generator": generator.get_state(), "torch": torch.get_rng_state()})
    if last < steps:
        log(f"stopped after step {last}/{steps}; continue with --resume")
        return folder
    extra = {} if regime == "tiny" else {"regime": regime}  # the packaged model's recipe file stays as it was
    if r.frozen_encoder:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        extra |= {"frozen_encoder": True, "reuse": r.reuse, "keep_max": r.keep_max, "mix": list(r.mix),
                  "trainable_parameters": trainable}
    if r.init:
        extra["init"] = f"the packaged {r.init} model (framepress/models/synthetic), position embeddings resized"
    save(model, tokenizer, out, {**extra, "steps": steps, "batch": batch, "lr": lr, "warmup": warmup, "seed": seed,
                                 "seconds": round(time.time() - start), "history": history})
    return out


def save(model, tokenizer, out: Path, recipe: dict) -> None:
    out = Path(out)
    model.eval()
    model.generation_config.eos_token_id = [IM_END, EOS]
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(recipe, indent=1) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m framepress.training", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--regime", choices=list(REGIMES), default="tiny",
                        help="tiny: the packaged model (16 frames of 6x6 tokens); real: 32 frames of 14x14 tokens")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--save-every", type=int, default=None,
                        help="steps between resumable states in OUT.resume/ (default: 0 for tiny, 25 for real)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in OUT.resume/")
    parser.add_argument("--until", type=int, default=None, help="stop after this step (continue later with --resume)")
    parser.add_argument("--device", default="cpu", help="where the model trains: cpu (default), cuda, ...")
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.batch, args.lr, seed=args.seed, threads=args.threads, eval_every=args.eval_every,
          regime=args.regime, save_every=args.save_every, resume=args.resume, until=args.until, device=args.device)


if __name__ == "__main__":
    main()
