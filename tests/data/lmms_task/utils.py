"""Scoring of the framepress synthetic video tasks (written by framepress.evaluation.synth_task)."""

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
