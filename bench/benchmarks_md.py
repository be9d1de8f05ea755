"""Writing a bench's results into BENCHMARKS.md: one "## <title>" section, replaced in place or appended."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, title: str, section: str) -> None:
    """Replace the ``## {title}`` section of ``path`` with ``section`` (which starts with that heading), or
    append it when the file has no such section yet."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    )
    path.write_text(text.rstrip("\n") + "\n")


def cpu_model() -> str:
    """The CPU's model name, for the machine line of a result (``platform.processor()`` is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"
