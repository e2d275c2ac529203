"""Evaluation at scale: the lmms-eval model plugin, resumable sweeps and result reports.

``pip install "framepress[eval]"`` registers the plugin through lmms-eval's entry-point group for external
models, so ``python -m lmms_eval --model framepress --model_args pretrained=...,method=sttm,retention=0.3``
works with no fork (see docs/evaluation.md). Importing this package is light: lmms-eval is imported only when
the plugin class is loaded.
"""

from __future__ import annotations

MODEL_ID = "framepress"


def manifest():
    """The entry point lmms-eval calls: where the plugin class lives."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path="framepress.evaluation.plugin.FramepressLMM")
