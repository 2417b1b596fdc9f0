"""An online backup of the database file while it is in use (``ingress-box backup``).

The copy is one consistent moment of the file (see :func:`ingress_box.store.dbfile.copy`). It is
written beside the target and renamed into place, so ``target`` is never a half-written file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .store import Database, dbfile


@dataclass(frozen=True)
class BackupReport:
    path: Path
    pages: int
    bytes: int
    deliveries: int
    seconds: float


def backup(
    db: Database, target: Path, progress: Callable[[int, int], None] | None = None
) -> BackupReport:
    """Copy the database to ``target``; ``progress(done, total)`` in pages."""
    started = time.perf_counter()
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        copied = dbfile.copy(db, partial, progress)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    _fsync_dir(target.parent)
    return BackupReport(
        target,
        copied.pages,
        target.stat().st_size,
        copied.deliveries,
        time.perf_counter() - started,
    )


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
