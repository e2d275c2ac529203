"""A resumable record of finished samples: one JSON line each, appended and fsync'd as soon as a sample is done.

lmms-eval writes its results only when every request has returned, and its ``--use_cache`` stores responses only
after the whole request list (and drops the per-sample statistics). An evaluation of a 7B model over a benchmark
takes hours, so the plugin writes each finished sample here instead: an interrupted run loses at most the sample
in flight, and the rerun answers the finished ones from the journal.

Layout of a journal folder: ``config.json`` (what produced the answers: model, method, retention, frames, ...; a
rerun with other settings is refused rather than mixing answers) and ``rank{r}.jsonl`` per process of a
data-parallel run (every rank reads every file, so a rerun may use another number of processes). A last line cut
short by a crash is dropped; a damaged line anywhere else is an error naming the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..files import write_text


class JournalError(ValueError):
    """A journal folder that cannot be continued (other settings, or a damaged file)."""


class Journal:
    def __init__(self, folder: str | os.PathLike, config: dict[str, Any], rank: int = 0):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise JournalError(f"journal: {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._check_config(config)
        self.done: dict[str, dict[str, Any]] = {}
        for file in sorted(self.folder.glob("rank*.jsonl")):
            self._read(file, own=file.name == f"rank{rank}.jsonl")
        self.path = self.folder / f"rank{rank}.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")

    def _check_config(self, config: dict[str, Any]) -> None:
        file = self.folder / "config.json"
        config = json.loads(json.dumps(config))
        if file.exists():
            try:
                saved = json.loads(file.read_text())
            except json.JSONDecodeError as exc:
                raise JournalError(f"journal: {file} is damaged ({exc}); delete the folder to start over") from None
            if saved != config:
                diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
                shown = ", ".join(f"{k}: {saved.get(k)!r} there, {config.get(k)!r} now" for k in diff)
                raise JournalError(
                    f"journal {self.folder} holds answers of other settings ({shown}); give another journal folder "
                    "or delete this one"
                )
        else:
            write_text(file, json.dumps(config, indent=1, sort_keys=True) + "\n")

    def _read(self, file: Path, own: bool) -> None:
        data = file.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        for number, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.done[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                raise JournalError(
                    f"journal: {file} line {number} is damaged; delete that line (or the file) to recompute its "
                    "samples"
                ) from None
        if tail and own:  # a line cut short by a crash: drop it so the next append starts a fresh line
            with open(file, "r+b") as handle:
                handle.truncate(len(data) - len(tail))

    def get(self, key: str) -> dict[str, Any] | None:
        return self.done.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        record = {"key": key, **record}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[key] = record

    def close(self) -> None:
        self._file.close()
