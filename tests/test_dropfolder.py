"""The watched drop folder: files are taken once settled, imported, and filed away, never lost."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from dialer.campaigns import create_campaign
from dialer.db.models import Contact
from dialer.dropfolder import DropFolder, DropOutcome, process_file, watch
from dialer.importer import ImportFileError

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
MAP = "external_id=CustomerNo,phone1=Mobile"
GOOD = "CustomerNo,Mobile\nC1,(212) 555-0142\nC2,+1 415 555 0100\n"
MIXED = "CustomerNo,Mobile\nC1,(212) 555-0142\nC2,555-01\nC3,+44 20 7946 0018\n"


@pytest.fixture
def cid(sqlite_engine: Engine) -> int:
    return create_campaign(sqlite_engine, "drop", NOW)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "drop"
    d.mkdir()
    return d


def contact_count(engine: Engine, cid: int) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(Contact.campaign_id == cid)) or 0


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --- scan -----------------------------------------------------------------------------------


def test_file_is_ready_only_on_the_second_scan_with_unchanged_size_and_mtime(
    folder: Path,
) -> None:
    f = folder / "list.csv"
    f.write_text(GOOD)
    drop = DropFolder(folder)
    assert drop.scan() == []
    assert drop.scan() == [f]


def test_file_that_grows_between_scans_is_not_ready(folder: Path) -> None:
    f = folder / "list.csv"
    f.write_text(GOOD)
    drop = DropFolder(folder)
    drop.scan()
    with f.open("a") as fh:
        fh.write("C3,(303) 555-0171\n")
    assert drop.scan() == [], "the file was still being written"
    assert drop.scan() == [f], "once it stops changing it is ready"


def test_file_whose_mtime_changes_at_the_same_size_is_not_ready(folder: Path) -> None:
    f = folder / "list.csv"
    f.write_text(GOOD)
    drop = DropFolder(folder)
    drop.scan()
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert drop.scan() == []


def test_scan_ignores_error_reports_other_extensions_and_folders(folder: Path) -> None:
    (folder / "list.csv.errors.csv").write_text("file,line\n")
    (folder / "notes.txt").write_text("hello\n")
    (folder / "list.csv.part").write_text(GOOD)
    (folder / "sub.csv").mkdir()
    (folder / "b.csv").write_text(GOOD)
    (folder / "a.csv").write_text(GOOD)
    drop = DropFolder(folder)
    drop.scan()
    assert [p.name for p in drop.scan()] == ["a.csv", "b.csv"]


def test_file_removed_between_scans_is_forgotten(folder: Path) -> None:
    f = folder / "list.csv"
    f.write_text(GOOD)
    drop = DropFolder(folder)
    drop.scan()
    f.unlink()
    assert drop.scan() == []
    f.write_text(GOOD)
    assert drop.scan() == [], "a file that reappears must settle again"


# --- process_file ---------------------------------------------------------------------------


def test_good_file_is_imported_and_moved_to_processed(
    sqlite_engine: Engine, cid: int, folder: Path
) -> None:
    f = folder / "list.csv"
    f.write_text(GOOD)
    out = process_file(sqlite_engine, cid, f, NOW, MAP)
    assert out.error is None and out.result is not None
    assert (out.result.rows, out.result.inserted, out.result.rejected_rows) == (2, 2, 0)
    assert out.moved_to == folder / "processed" / "list.csv"
    assert names(folder) == ["processed"]
    assert names(folder / "processed") == ["list.csv"], "no error report without errors"
    assert contact_count(sqlite_engine, cid) == 2


def test_file_with_bad_rows_is_moved_with_its_error_report_beside_it(
    sqlite_engine: Engine, cid: int, folder: Path
) -> None:
    f = folder / "list.csv"
    f.write_text(MIXED)
    out = process_file(sqlite_engine, cid, f, NOW, MAP)
    assert out.result is not None
    assert (out.result.inserted, out.result.rejected_rows) == (2, 1)
    report = folder / "processed" / "list.csv.errors.csv"
    assert out.result.error_report == str(report)
    assert names(folder / "processed") == ["list.csv", "list.csv.errors.csv"]
    with report.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["line"], r["column"], r["value"]) for r in rows] == [("3", "Mobile", "555-01")]
    assert contact_count(sqlite_engine, cid) == 2


def test_file_with_a_missing_mapped_column_goes_to_failed_with_the_reason(
    sqlite_engine: Engine, cid: int, folder: Path
) -> None:
    f = folder / "list.csv"
    f.write_text("CustomerNo,Cell\nC1,(212) 555-0142\n")
    out = process_file(sqlite_engine, cid, f, NOW, MAP)
    assert out.result is None
    assert out.moved_to == folder / "failed" / "list.csv"
    assert out.error is not None and "phone1=Mobile" in out.error
    why = (folder / "failed" / "list.csv.error.txt").read_text()
    assert "mapped column(s) not in the header: phone1=Mobile" in why
    assert "the header has: CustomerNo, Cell" in why
    assert (folder / "failed" / "list.csv").read_text() == "CustomerNo,Cell\nC1,(212) 555-0142\n"
    assert contact_count(sqlite_engine, cid) == 0


def test_name_clash_in_processed_keeps_the_earlier_file_and_its_report(
    sqlite_engine: Engine, cid: int, folder: Path
) -> None:
    f = folder / "list.csv"
    f.write_text(MIXED)
    first = process_file(sqlite_engine, cid, f, NOW, MAP)
    first_report = (folder / "processed" / "list.csv.errors.csv").read_text()
    second_text = "CustomerNo,Mobile\nC9,12\n"
    f.write_text(second_text)
    second = process_file(sqlite_engine, cid, f, NOW, MAP)
    assert second.moved_to != first.moved_to
    assert first.moved_to.read_text() == MIXED
    assert second.moved_to.read_text() == second_text
    assert (folder / "processed" / "list.csv.errors.csv").read_text() == first_report
    assert second.result is not None and second.result.error_report is not None
    second_report = Path(second.result.error_report)
    assert second_report == second.moved_to.with_name(second.moved_to.name + ".errors.csv")
    assert "C9" not in first_report and ",12," in second_report.read_text()


def test_repeated_name_clashes_within_one_second_never_overwrite(
    sqlite_engine: Engine, cid: int, folder: Path
) -> None:
    moved = []
    for i in range(3):
        f = folder / "list.csv"
        f.write_text(f"CustomerNo,Mobile\nC{i},(212) 555-014{i}\n")
        moved.append(process_file(sqlite_engine, cid, f, NOW, MAP).moved_to)
    assert len(set(moved)) == 3
    assert [p.read_text().splitlines()[1] for p in moved] == [
        "C0,(212) 555-0140", "C1,(212) 555-0141", "C2,(212) 555-0142"]
    assert len(names(folder / "processed")) == 3


# --- watch ----------------------------------------------------------------------------------


def test_watch_imports_a_dropped_file_after_two_scans_without_sleeping(
    sqlite_engine: Engine, cid: int, folder: Path
) -> None:
    (folder / "list.csv").write_text(GOOD)
    loops = {"n": 0}
    slept: list[float] = []
    seen: list[DropOutcome] = []

    def should_stop() -> bool:
        loops["n"] += 1
        if loops["n"] == 2:
            assert seen == [], "the file must not be taken on the first scan"
        return loops["n"] > 2

    watch(sqlite_engine, cid, folder, mapping=MAP, interval_s=7.5, on_file=seen.append,
          should_stop=should_stop, sleep=slept.append, clock=lambda: NOW)
    assert [(o.file.name, o.moved_to, o.error) for o in seen] == [
        ("list.csv", folder / "processed" / "list.csv", None)]
    assert slept == [7.5, 7.5]
    assert contact_count(sqlite_engine, cid) == 2
    with sqlite_engine.connect() as conn:
        assert conn.scalar(select(func.min(Contact.created_at))) == NOW, "uses the clock given"


def test_watch_reports_a_failed_file_and_carries_on(
    sqlite_engine: Engine, cid: int, folder: Path
) -> None:
    (folder / "a.csv").write_text("")
    (folder / "b.csv").write_text(GOOD)
    loops = iter([False, False, True])
    seen: list[DropOutcome] = []
    watch(sqlite_engine, cid, folder, mapping=MAP, on_file=seen.append,
          should_stop=lambda: next(loops), sleep=lambda s: None, clock=lambda: NOW)
    assert [(o.file.name, o.moved_to.parent.name) for o in seen] == [
        ("a.csv", "failed"), ("b.csv", "processed")]
    assert seen[0].error is not None and "empty" in seen[0].error
    assert contact_count(sqlite_engine, cid) == 2


def test_watch_of_a_missing_folder_is_a_file_error(
    sqlite_engine: Engine, cid: int, tmp_path: Path
) -> None:
    with pytest.raises(ImportFileError, match="not a folder"):
        watch(sqlite_engine, cid, tmp_path / "nope", should_stop=lambda: True)


def test_upper_case_csv_extension_is_picked_up(tmp_path: Path) -> None:
    (tmp_path / "LIST.CSV").write_text("phone1\n(212) 555-0142\n")
    (tmp_path / "LIST.CSV.ERRORS.CSV").write_text("x\n")
    drop = DropFolder(tmp_path)
    assert drop.scan() == []
    assert [p.name for p in drop.scan()] == ["LIST.CSV"]
