"""Regenerating a benchmark report keeps the notes written under its marker."""

from agents.reports import NOTES_MARKER, write_report


def test_regenerating_a_report_keeps_hand_notes_and_replaces_the_table(tmp_path):
    path = tmp_path / "report.md"
    first = write_report(path, "# Report\n\n| a |\n|---|\n| 1 |\n")
    assert first.endswith(NOTES_MARKER + "\n") and first.count(NOTES_MARKER) == 1
    path.write_text(path.read_text() + "\nNotes: seed 2 diverged.\n")
    second = write_report(path, "# Report\n\n| a |\n|---|\n| 2 |")
    assert "| 2 |" in second and "| 1 |" not in second
    assert second.endswith(NOTES_MARKER + "\n\nNotes: seed 2 diverged.\n") and second == path.read_text()


def test_a_report_without_the_marker_is_replaced_and_gains_it(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old table, no marker\n")
    assert write_report(path, "new table") == f"new table\n\n{NOTES_MARKER}\n"
