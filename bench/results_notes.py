"""Hand-written notes in a generated results page: everything after NOTES_MARKER survives a rerun.

A bench script writes its tables above the marker and appends ``kept_notes(path)``, so the
analysis written under a table is not lost when the table is measured again.
"""

from __future__ import annotations

from pathlib import Path

NOTES_MARKER = "<!-- Notes below are written by hand; the bench script keeps them. -->"


def kept_notes(path: Path) -> str:
    """The hand-written part of an existing page (after NOTES_MARKER), or nothing."""
    if not path.exists():
        return ""
    text = path.read_text()
    return text.split(NOTES_MARKER, 1)[1].lstrip("\n") if NOTES_MARKER in text else ""
