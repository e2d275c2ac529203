"""What every benchmark shares: its table written into docs/benchmarks.md between its own markers, atomically,
and the machine's name for the record."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(text: str, key: str, heading: str) -> None:
    """Replace the block marked ``key`` (or add it under ``heading``) and leave the rest of the page alone."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{text}{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=DOC.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(doc)
    os.replace(tmp, DOC)


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
