"""Regenerating a benchmark report keeps the notes written under its marker and every run it was
made from; run records are written atomically and a damaged one is named, not skipped."""

import pytest

from agents.reports import NOTES_MARKER, RECORDS_PREFIX, ReportKept, ReportWouldDropRuns, read_record, write_record, write_report
from birl.serialization import CorruptFileError


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
    with pytest.raises(ReportWouldDropRuns, match="are missing: demo_runs/a.json"):
        write_report(path, "| 2 runs |", records=[b, runs / "c.json"])
    assert path.read_text() == kept  # untouched
    a.write_text("{}")  # on disk, only left out of this selection: said so
    with pytest.raises(ReportWouldDropRuns, match="not among this command's runs: demo_runs/a.json") as raised:
        write_report(path, "| 2 runs |", records=[b, runs / "c.json"])
    assert "missing" not in str(raised.value)
    with pytest.warns(ReportKept, match="demo_runs/a.json.*kept as it was"):
        assert write_report(path, "| 2 runs |", records=[b], if_fewer="keep") is None
    assert path.read_text() == kept
    with pytest.raises(ValueError, match="if_fewer"):
        write_report(path, "| 3 runs |", records=[a, b, runs / "c.json"], if_fewer="warn")
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


def test_a_run_record_round_trips_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = tmp_path / "zoo_runs" / "atari" / "run.json"  # folders are made
    write_record(path, {"final_return": -20.3, "curve_returns": [-21.0, -20.3]})
    assert read_record(path) == {"final_return": -20.3, "curve_returns": [-21.0, -20.3]}
    with pytest.raises(TypeError):  # not JSON-serialisable: the write fails half-way through the dump
        write_record(path, {"final_return": -19.0, "model": object()})
    assert read_record(path)["final_return"] == -20.3
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]  # no temporary file left behind


@pytest.mark.parametrize("content", ['{"final_return": -20', "[1, 2]", "\xff\xfe"])
def test_a_damaged_run_record_is_named_in_the_error(tmp_path, content):
    path = tmp_path / "run.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(CorruptFileError, match="run.json"):
        read_record(path)


def test_code_version_names_this_checkout_and_whether_it_is_clean():
    import subprocess
    from pathlib import Path

    from agents.reports import code_version

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    version = code_version()
    if head.returncode != 0:  # not a git checkout (an sdist): nothing to name
        assert version == {"commit": None, "dirty": None}
        return
    assert version["commit"] == head.stdout.strip() and len(version["commit"]) == 40
    assert isinstance(version["dirty"], bool)
