"""lmms-eval tasks over :mod:`framepress.synth` clips: the whole evaluation path, offline.

``write_task(folder, per_kind)`` writes H.264 clips of held-out items, their questions (``docs.jsonl``), the
scoring functions (``utils.py``) and three task YAMLs that exercise what video benchmarks call:

- ``framepress_synth``: open answers (``generate_until``), scored by the first word, per question kind too;
- ``framepress_synth_mc``: multiple choice over the item's answer words (``loglikelihood``);
- ``framepress_synth_rounds``: two rounds of the same question about one clip (``generate_until_multi_round``),
  scored by accuracy and by whether the rounds agree.

``framepress synth-task DIR`` writes it (:func:`command`); then ``python -m lmms_eval ... --include_path DIR`` from
any working directory finds the three tasks (the YAMLs name ``docs.jsonl`` by its absolute path, as lmms-eval
resolves a relative data file against the working directory, and ``utils.py`` finds the clips next to itself).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import synth
from ..files import write_text

UTILS = '''"""Scoring of the framepress synthetic video tasks (written by framepress.evaluation.synth_task)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc):
    return [str(HERE / doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return list(doc["choices"])


def doc_to_target_index(doc):
    return list(doc["choices"]).index(doc["answer"])


def first_word(text):
    words = str(text).strip().lower().replace(".", " ").split()
    return words[0] if words else ""


def process_results(doc, results):
    hit = float(first_word(results[0]) == doc["answer"])
    return {"accuracy": hit, "accuracy_" + doc["kind"]: hit}


def rounds_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    if round_idx is None:
        return doc["question"]
    if round_idx < 2:
        return [doc_to_visual(doc), doc["question"], False, previous_output, None]
    return [None, None, True, previous_output, None]


def process_rounds(doc, results):
    rounds = results[0]
    rounds = rounds if isinstance(rounds, (list, tuple)) else [rounds]
    words = [first_word(r) for r in rounds]
    return {"accuracy": float(words[-1] == doc["answer"]), "agreement": float(len(set(words)) == 1)}
'''

TASKS = ("framepress_synth", "framepress_synth_mc", "framepress_synth_rounds")


def _yaml(kinds: list[str], docs: Path) -> dict[str, str]:
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(docs))}\n"
              "test_split: test\ndoc_to_visual: !function utils.doc_to_visual\n")
    per_kind = "".join(
        f"  - metric: accuracy_{k}\n    aggregation: mean\n    higher_is_better: true\n" for k in kinds
    )
    return {
        "framepress_synth.yaml": (
            "task: framepress_synth\n" + common
            + "output_type: generate_until\ndoc_to_text: !function utils.doc_to_text\ndoc_to_target: answer\n"
            "generation_kwargs:\n  max_new_tokens: 4\n  until: [\"<|im_end|>\"]\n"
            "process_results: !function utils.process_results\nmetric_list:\n"
            "  - metric: accuracy\n    aggregation: mean\n    higher_is_better: true\n" + per_kind
        ),
        "framepress_synth_mc.yaml": (
            "task: framepress_synth_mc\n" + common
            + "output_type: multiple_choice\ndoc_to_text: !function utils.doc_to_text\n"
            "doc_to_choice: !function utils.doc_to_choice\ndoc_to_target: !function utils.doc_to_target_index\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        ),
        "framepress_synth_rounds.yaml": (
            "task: framepress_synth_rounds\n" + common
            + "output_type: generate_until_multi_round\ndoc_to_text: !function utils.rounds_text\n"
            "doc_to_target: answer\ngeneration_kwargs:\n  max_new_tokens: 4\n"
            "process_results: !function utils.process_rounds\nmetric_list:\n"
            "  - metric: accuracy\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: agreement\n    aggregation: mean\n    higher_is_better: true\n"
        ),
    }


def write_task(folder, per_kind: int = 2, kinds=tuple(synth.KINDS), frames: int = 16, size: int = 96, fps: float = 8.0) -> Path:
    """Write the task folder (clips, docs, utils.py, YAMLs) for the first ``per_kind`` held-out items of each kind;
    returns its absolute path."""
    from .. import checks
    from ..demo import write_video

    per_kind = checks.integer("per_kind", per_kind, 1)
    folder = Path(folder).resolve()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"task folder {folder} is a file")
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in synth.KINDS]
    if unknown:
        raise ValueError(f"kinds: unknown kind(s) {', '.join(unknown)}; kinds: {', '.join(synth.KINDS)}")
    docs = []
    for kind in kinds:
        for item_index, item in enumerate(synth.test_set(kind, per_kind, frames=frames, size=size)):
            name = f"videos/{kind}_{item_index:04d}.mp4"
            write_video(folder / name, item.frames, fps=fps)
            docs.append({"id": len(docs), "video": name, "question": item.question, "answer": item.answer,
                         "choices": list(item.choices), "kind": kind})
    write_text(folder / "docs.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    write_text(folder / "utils.py", UTILS)
    for name, text in _yaml(kinds, folder / "docs.jsonl").items():
        write_text(folder / name, text)
    return folder


def command(folder, per_kind: int = 2) -> int:
    """``framepress synth-task DIR``: write the task folder and print how to run lmms-eval on it."""
    folder = write_task(folder, per_kind)
    print(f"wrote {per_kind * len(synth.KINDS)} questions ({', '.join(TASKS)}) to {folder}; run:\n"
          f"python -m lmms_eval --model framepress --model_args pretrained=packaged,method=sttm,retention=0.5,frames=16 "
          f"--tasks {','.join(TASKS)} --include_path {folder} --batch_size 1 --log_samples --output_path OUT")
    return 0
