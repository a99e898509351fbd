"""Shared pieces of the benchmarks: run records written so that a killed run never leaves a
truncated one, reports written without losing the notes people add by hand, and the
sample-efficiency statistic."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import numpy as np

from birl.serialization import CorruptFileError, atomic_open, atomic_write_json

NOTES_MARKER = "<!-- Notes below this line are kept when the report is regenerated. -->"


RECORDS_PREFIX = "<!-- made from run records:"


def write_record(path: Union[str, Path], record: Dict[str, Any]) -> None:
    """Write one run's ``record`` (JSON) to ``path`` atomically, making its folder: a run or driver
    killed mid-write leaves the previous file (or none), never a truncated one that a resumed suite
    or a report would trip over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def code_version() -> Dict[str, Any]:
    """The library's git commit and whether tracked files differ from it, for run records:
    ``{"commit": "<40 hex>" | None, "dirty": bool | None}`` (``None`` outside a git checkout).
    A fix that changes results can then tell which records predate it."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def read_record(path: Union[str, Path]) -> Dict[str, Any]:
    """The run record at ``path``; :class:`birl.serialization.CorruptFileError` naming the file
    when it is not a JSON object (delete or restore it from git to rerun that run)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"run record {path} is not valid JSON ({err}); restore it from git or delete it "
                               "to rerun that run") from err
    if not isinstance(record, dict):
        raise CorruptFileError(f"run record {path} holds a {type(record).__name__}, not a JSON object; restore it "
                               "from git or delete it to rerun that run")
    return record


class ReportWouldDropRuns(RuntimeError):
    """Regenerating a report would silently leave out runs its current version was made from."""


class ReportKept(UserWarning):
    """A report was left as it was because regenerating it would have left out runs."""


def _dropped_text(path: Path, dropped: List[str]) -> str:
    """Why the records ``dropped`` (relative to ``path``'s folder) would leave the report ``path``:
    on disk but outside this command's selection, or gone."""
    def names(items: List[str]) -> str:
        return ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")

    gone = [name for name in dropped if not (path.parent / name).is_file()]
    outside = [name for name in dropped if name not in gone]
    parts = []
    if outside:
        parts.append(f"{len(outside)} run record(s) it was made from are not among this command's runs: {names(outside)}.  "
                     "Regenerate it with the selection it was made with (its Command line, plus --report-only where "
                     "the benchmark has it)")
    if gone:
        parts.append(f"{len(gone)} run record(s) it was made from are missing: {names(gone)}.  Restore them (they are "
                     f"kept in git under {path.parent}/*_runs/) or rerun those runs, or move {path.name} aside to "
                     "write a report without them")
    return ".  ".join(parts)


def _listed_records(generated: str) -> Optional[List[str]]:
    """The record names a report's generated part lists (``None`` for a report that lists none:
    one written before reports listed their records, or without ``records``)."""
    for line in generated.splitlines():
        if line.startswith(RECORDS_PREFIX) and line.endswith("-->"):
            return line[len(RECORDS_PREFIX) : -len("-->")].split()
    return None


def write_report(path: Union[str, Path], text: str, records: Optional[Iterable[Union[str, Path]]] = None,
                 if_fewer: str = "raise") -> Optional[str]:
    """Write the generated markdown ``text`` to ``path``, keeping everything an existing ``path``
    holds below :data:`NOTES_MARKER`; the marker always ends the generated part.  Returns the file's
    new content.

    ``records``: the run records (JSON files) ``text`` was made from.  Their paths, relative to the
    report's folder, are listed in a comment above the marker, and a report is never regenerated
    from fewer of them: :class:`ReportWouldDropRuns` is raised, and ``path`` left as it was, when the
    existing report lists a record that is not among ``records``, or lists none at all (made before
    reports listed their records, its records may be gone) and has a generated part.  Run
    records are what the tables are made of; a fresh checkout without them must not overwrite the
    committed tables with empty ones.

    ``if_fewer``: ``"raise"`` (the default), or ``"keep"`` to leave ``path`` as it is with a
    :class:`ReportKept` warning and return ``None`` instead (the caller then leaves its figures as
    they are too): for a driver that has just finished a subset of a suite's runs (``--algos drlhf
    --only-seeds 0``), whose records are saved whatever happens to the report."""
    if if_fewer not in ("raise", "keep"):
        raise ValueError(f"if_fewer must be 'raise' or 'keep', got {if_fewer!r}")
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
            dropped = sorted(set(listed) - set(names)) if listed is not None else []
            if dropped or (listed is None and generated.strip()):
                message = f"not regenerating {path}: " + (_dropped_text(path, dropped) if dropped else
                    "it does not list the run records it was made from (it predates such lists), so they may be missing.  "
                    f"Move {path.name} aside to write a report without them")
                if if_fewer == "keep":
                    warnings.warn(message + f"; {path.name} is kept as it was", ReportKept, stacklevel=2)
                    return None
                raise ReportWouldDropRuns(message)
    listing = "" if names is None else f"\n\n{RECORDS_PREFIX} {' '.join(names)} -->"
    content = f"{text.rstrip()}{listing}\n\n{NOTES_MARKER}{notes}"
    with atomic_open(path, "w") as f:  # the notes below the marker exist nowhere else
        f.write(content)
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
