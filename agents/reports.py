"""Writing benchmark reports without losing the notes people add to them by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Union

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
