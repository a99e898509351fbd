"""Shared pieces of the benchmark reports: writing them without losing the notes people add by
hand, and the sample-efficiency statistic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Union

import numpy as np

NOTES_MARKER = "<!-- Notes below this line are kept when the report is regenerated. -->"


RECORDS_PREFIX = "<!-- made from run records:"


class ReportWouldDropRuns(RuntimeError):
    """Regenerating a report would silently leave out runs its current version was made from."""


def _listed_records(generated: str) -> Optional[List[str]]:
    """The record names a report's generated part lists (``None`` for a report that lists none:
    one written before reports listed their records, or without ``records``)."""
    for line in generated.splitlines():
        if line.startswith(RECORDS_PREFIX) and line.endswith("-->"):
            return line[len(RECORDS_PREFIX) : -len("-->")].split()
    return None


def write_report(path: Union[str, Path], text: str, records: Optional[Iterable[Union[str, Path]]] = None) -> str:
    """Write the generated markdown ``text`` to ``path``, keeping everything an existing ``path``
    holds below :data:`NOTES_MARKER`; the marker always ends the generated part.  Returns the file's
    new content.

    ``records``: the run records (JSON files) ``text`` was made from.  Their paths, relative to the
    report's folder, are listed in a comment above the marker, and a report is never regenerated
    from fewer of them: :class:`ReportWouldDropRuns` is raised, and ``path`` left as it was, when the
    existing report lists a record that is not among ``records``, or lists none at all (made before
    reports listed their records, its records may be gone) and has a generated part.  Run
    records are what the tables are made of; a fresh checkout without them must not overwrite the
    committed tables with empty ones."""
    path = Path(path)
    notes = "\n"
    names = None if records is None else sorted({os.path.relpath(Path(r), path.parent).replace(os.sep, "/") for r in records})
    if path.is_file():
        old = path.read_text()
        generated, marker, rest = old.partition(NOTES_MARKER)
        if marker:
            notes = rest
        if names is not None:
            listed = _listed_records(generated)
            missing = sorted(set(listed) - set(names)) if listed is not None else []
            if missing or (listed is None and generated.strip()):
                what = (f"{len(missing)} run record(s) it was made from are missing: {', '.join(missing[:5])}"
                        + (", ..." if len(missing) > 5 else "") if missing else
                        "it does not list the run records it was made from (it predates such lists), so they may be missing")
                raise ReportWouldDropRuns(
                    f"not regenerating {path}: {what}.  Restore the records (they are kept in git under "
                    f"{path.parent}/*_runs/) or rerun those runs, or move {path.name} aside to write a report without them")
    listing = "" if names is None else f"\n\n{RECORDS_PREFIX} {' '.join(names)} -->"
    content = f"{text.rstrip()}{listing}\n\n{NOTES_MARKER}{notes}"
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
