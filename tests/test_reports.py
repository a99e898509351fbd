"""Regenerating a benchmark report keeps the notes written under its marker and every run it was made from."""

import pytest

from agents.reports import NOTES_MARKER, RECORDS_PREFIX, ReportWouldDropRuns, write_report


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


def test_a_report_is_never_regenerated_from_fewer_run_records(tmp_path):
    """The records a report was made from are listed in it; losing one stops the rewrite."""
    runs = tmp_path / "demo_runs"
    runs.mkdir()
    a, b = runs / "a.json", runs / "b.json"
    path = tmp_path / "report.md"
    first = write_report(path, "| 2 runs |", records=[a, b])
    assert f"{RECORDS_PREFIX} demo_runs/a.json demo_runs/b.json -->" in first
    path.write_text(first + "\nNotes.\n")
    assert "| 3 runs |" in write_report(path, "| 3 runs |", records=[b, runs / "c.json", a])  # more is fine
    kept = path.read_text()
    with pytest.raises(ReportWouldDropRuns, match="demo_runs/a.json"):
        write_report(path, "| 2 runs |", records=[b, runs / "c.json"])
    assert path.read_text() == kept  # untouched
    assert write_report(path, "| whatever |").endswith("Notes.\n")  # records not given: no check


def test_a_report_that_lists_no_records_is_not_replaced_by_an_empty_one(tmp_path):
    """A report from before records were listed (its records possibly lost) is never rewritten."""
    path = tmp_path / "report.md"
    path.write_text(f"| sobirl | 1094.8 |\n\n{NOTES_MARKER}\n\nNotes.\n")
    for records in ([], [tmp_path / "x_runs" / "r.json"]):
        with pytest.raises(ReportWouldDropRuns, match="does not list the run records"):
            write_report(path, "| sobirl | 900 |", records=records)
    assert "1094.8" in path.read_text()
    path.rename(tmp_path / "old.md")  # moved aside, as the error says
    assert f"{RECORDS_PREFIX} x_runs/r.json -->" in write_report(path, "| sobirl | 900 |", records=[tmp_path / "x_runs" / "r.json"])
    fresh = tmp_path / "fresh.md"
    assert write_report(fresh, "No finished run yet.", records=[]) == write_report(fresh, "No finished run yet.", records=[])
