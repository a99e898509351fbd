"""Shared pieces of the benchmark reports: writing them without losing the notes people add by
hand, and the sample-efficiency statistic."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

import numpy as np

NOTES_MARKER = "<!-- Notes below this line are kept when the report is regenerated. -->"


def write_report(path: Union[str, Path], text: str) -> str:
    """Write the generated markdown ``text`` to ``path``, keeping everything an existing ``path``
    holds below :data:`NOTES_MARKER`; the marker always ends the generated part.  Returns the file's
    new content."""
    path = Path(path)
    notes = "\n"
    if path.is_file():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    content = f"{text.rstrip()}\n\n{NOTES_MARKER}{notes}"
    path.write_text(content)
    return content


def steps_to_target(curve: List, r_random: float, r_sac: float, target: float = 0.9, window: int = 3) -> Optional[int]:
    """First env step at which the mean of the last ``window`` TRUE returns of ``curve``
    (``[(step, return), ...]``) reaches the normalised score ``(R - r_random) / (r_sac - r_random)
    >= target``; ``None`` if never."""
    if not curve:
        return None
    t, y = np.array(curve).T
    for i in range(window - 1, len(y)):
        if (y[i - window + 1 : i + 1].mean() - r_random) / (r_sac - r_random) >= target:
            return int(t[i])
    return None
