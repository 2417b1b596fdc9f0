"""The worker process's heartbeat: a file next to the database, touched while it delivers.

``ingress-box worker`` has no HTTP port to ask, so its health is this file's age: the process
touches it about once a second while every worker thread is alive, and removes it when it
stops. The file is named after the host, so each container (or machine) on a shared volume
checks its own worker, not another's.
"""

from __future__ import annotations

import socket
from pathlib import Path

MAX_AGE_SECONDS = 30.0  # a beat older than this: the worker is stuck or gone


def path_for(db_path: Path) -> Path:
    return db_path.with_name(f"{db_path.name}.worker-{socket.gethostname()}.alive")


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
