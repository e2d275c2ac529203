"""The Video-LLM that ships inside the package: LLaVA-OneVision at toy size, trained on :mod:`framepress.synth`.

It answers one-word questions about clips of moving coloured shapes (colours, counts, order, direction) and
nothing else: a synthetic-domain model that lets ``framepress demo``/``ask`` answer for real with no download
and lets every method be ranked by accuracy offline (``framepress bench-quality``). It is a proxy for the
papers' benchmarks, not a substitute. It loads with ``from_pretrained`` like any checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from .files import safetensors_header

FOLDER = Path(__file__).parent / "models" / "synthetic"
#: the name that stands for this model where a checkpoint is asked for (``framepress.load``, ``pretrained=``)
NAME = "packaged"
NOTE = ("framepress's packaged synthetic-domain model (LLaVA-OneVision architecture at toy size, trained on "
        "framepress.synth clips of moving shapes): it answers questions about such clips, nothing else")
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
REBUILD = "python -m framepress.training --out src/framepress/models/synthetic --steps 1000 --threads 2 (docs/quality-tiny.md)"


def _check_safetensors(file: Path) -> None:
    """The header parses and the file holds every byte it promises (a truncated copy fails here, not mid-load)."""
    try:
        safetensors_header(file)
    except ValueError as exc:
        raise ValueError(f"{exc}; rebuild it with: {REBUILD}") from None


def damaged_weights(folder: str | Path) -> str | None:
    """The first ``*.safetensors`` file in a checkpoint folder that is damaged or truncated, said in words
    (None when all are whole): what a failed load reports instead of the loader's raw error."""
    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            safetensors_header(file)
        except ValueError as exc:
            return str(exc)
    return None


def path(folder: Path | None = None) -> Path:
    """The checkpoint folder, checked: a missing or damaged file is an error naming it and how to rebuild it."""
    folder = Path(folder) if folder is not None else FOLDER
    for name in FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"the packaged model's {folder / name} is missing; rebuild it with: {REBUILD}")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        try:
            json.loads((folder / name).read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{folder / name} is damaged ({exc}); rebuild it with: {REBUILD}") from None
    _check_safetensors(folder / "model.safetensors")
    return folder
