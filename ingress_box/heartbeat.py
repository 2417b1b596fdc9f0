"""The worker process's heartbeat: a file next to the database, touched while it delivers.

``ingress-box worker`` has no HTTP port to ask, so its health is this file's age: the process
touches it about once a second while every worker thread is alive, and removes it when it
stops. The file is named after the host, so each container (or machine) on a shared volume
checks its own worker, not another's.
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
from pathlib import Path

MAX_AGE_SECONDS = 30.0  # a beat older than this: the worker is stuck or gone


def path_for(db_path: Path | str) -> Path:
    """Next to the SQLite file; for a PostgreSQL URL, in the temporary folder, named after it."""
    host = socket.gethostname()
    if isinstance(db_path, Path):
        return db_path.with_name(f"{db_path.name}.worker-{host}.alive")
    digest = hashlib.sha256(db_path.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ingress-box-{digest}.worker-{host}.alive"


def beat(path: Path) -> None:
    path.touch()


def stop(path: Path) -> None:
    path.unlink(missing_ok=True)


def age(path: Path, now: float) -> float | None:
    """Seconds since the last beat, or None when no worker beats here."""
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None
