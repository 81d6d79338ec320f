"""A watched drop folder: CSV files dropped into it are imported into one campaign.

A file is taken only once it has stopped changing (same size and mtime on two scans in a row),
so a file still being copied in is never half-imported. After the import it moves to
`processed/` with its error report beside it; a file that cannot be imported at all moves to
`failed/` with a `.error.txt` saying why. Nothing is deleted.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from dialer.importer import ImportFileError, ImportResult, import_contacts

PROCESSED = "processed"
FAILED = "failed"


@dataclass
class DropFolder:
    """Scan state for one folder. `scan()` returns the files that are ready to import."""

    folder: Path
    _last: dict[Path, tuple[int, float]] = field(default_factory=dict)

    def scan(self) -> list[Path]:
        """CSV files whose size and mtime did not change since the previous scan."""
        ready: list[Path] = []
        current: dict[Path, tuple[int, float]] = {}
        for p in sorted(self.folder.iterdir()):
            name = p.name.lower()
            if not name.endswith(".csv") or name.endswith(".errors.csv") or not p.is_file():
                continue
            st = p.stat()
            current[p] = (st.st_size, st.st_mtime)
            if self._last.get(p) == current[p]:
                ready.append(p)
        self._last = current
        return ready


def _destination(path: Path, sub: str) -> Path:
    """A free name for `path` under `sub`: never an earlier file, nor an earlier error report."""
    dest_dir = path.parent / sub
    dest_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    dest, n = dest_dir / path.name, 1
    while dest.exists() or dest.with_name(dest.name + ".errors.csv").exists():
        dest = dest_dir / f"{path.stem}.{stamp}{f'-{n}' if n > 1 else ''}{path.suffix}"
        n += 1
    return dest


def _move(path: Path, sub: str) -> Path:
    dest = _destination(path, sub)
    shutil.move(str(path), dest)
    return dest


@dataclass(frozen=True)
class DropOutcome:
    file: Path
    moved_to: Path
    result: ImportResult | None
    error: str | None


def process_file(
    engine: Engine, campaign_id: int, path: Path, now: datetime, mapping: str | None
) -> DropOutcome:
    """Import one ready file and file it away under processed/ or failed/."""
    dest = _destination(path, PROCESSED)  # the error report goes beside it, under its name
    try:
        result = import_contacts(
            engine,
            campaign_id,
            path,
            now,
            mapping=mapping,
            error_report=dest.with_name(dest.name + ".errors.csv"),
        )
    except ImportFileError as exc:
        moved = _move(path, FAILED)
        moved.with_name(moved.name + ".error.txt").write_text(str(exc) + "\n", encoding="utf-8")
        return DropOutcome(path, moved, None, str(exc))
    shutil.move(str(path), dest)
    return DropOutcome(path, dest, result, None)


def watch(
    engine: Engine,
    campaign_id: int,
    folder: Path,
    *,
    mapping: str | None = None,
    interval_s: float = 5.0,
    on_file: Callable[[DropOutcome], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll `folder` every `interval_s` until `should_stop()`; import each file once ready."""
    if not folder.is_dir():
        raise ImportFileError(f"{folder}: not a folder")
    drop = DropFolder(folder)
    while not should_stop():
        for path in drop.scan():
            outcome = process_file(engine, campaign_id, path, clock(), mapping)
            if on_file is not None:
                on_file(outcome)
        sleep(interval_s)
