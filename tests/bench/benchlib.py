"""Shared helpers of the benchmarks: start/stop servers (serve.py) as process groups, create the
bench instance through the store, build signed ~1 KB bodies, percentiles."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the project
SECRET = "bench-secret-0123456789abcdef"
PATH = "/ingress/generic/bench/events"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``python serve.py KIND ...`` in its own process group; stop() always cleans up."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.kind, self.port = kind, port or free_port()
        self.out = workdir / f"{kind}-{self.port}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "serve.py"), kind, "--port", str(self.port), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> Server:
        deadline = time.monotonic() + (1.0 if self.kind == "worker" else timeout)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited:\n{self.out.read_text()[-2000:]}")
            try:
                if self.kind == "worker":  # no port: alive after a second is ready enough
                    time.sleep(0.1)
                    continue
                if self.kind == "target":
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                else:
                    urllib.request.urlopen(self.url + "/healthz", timeout=0.5).read()
                return self
            except OSError:
                time.sleep(0.05)
        if self.kind == "worker":
            return self
        self.stop()
        raise RuntimeError(f"{self.kind} did not start in {timeout}s")

    def settings_line(self) -> str:
        for line in self.out.read_text().splitlines():
            if line.startswith("settings:"):
                return line
        return "settings: ?"

    def cpu_seconds(self) -> float:
        fields = _stat(self.proc.pid)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the group (graceful shutdown), then SIGKILL it if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def prepare_db(path: Path, target_url: str | None = None) -> None:
    """A fresh database with instance generic/bench (secret SECRET), written through the store."""
    from ingress_box.signing import generate_outbound_secret
    from ingress_box.store import Database, instances

    db = Database(path, synchronous="FULL").open()
    try:
        now = time.time()
        db.write(
            instances.insert(
                instances.Instance(
                    plugin_id="generic",
                    instance_id="bench",
                    secret=SECRET,
                    target_url=target_url,
                    outbound_secret=generate_outbound_secret(),
                    created_at=now,
                    updated_at=now,
                )
            )
        )
    finally:
        db.close()


def body(i: int, size: int = 1024) -> bytes:
    """A JSON body of exactly ``size`` bytes that differs per ``i``."""
    head = {
        "event": "message.created",
        "seq": i,
        "account": {"id": 42, "name": "bench"},
        "text": "",
    }
    filler = size - len(json.dumps(head, separators=(",", ":")))
    head["text"] = (hashlib.sha256(str(i).encode()).hexdigest() * (filler // 64 + 1))[:filler]
    return json.dumps(head, separators=(",", ":")).encode()


def sign(raw: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()


def ro_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def count(path: Path, sql: str) -> int:
    conn = ro_connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces):
    [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime, in clock ticks."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (from each process's ppid in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        found.append(current := todo.pop())
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its live descendants, plus what its reaped children used."""
    ticks = 0
    for i, member in enumerate(tree(pid)):
        with contextlib.suppress(OSError):
            fields = _stat(member)
            ticks += int(fields[11]) + int(fields[12])
            if i == 0:  # cutime + cstime: children that exited and were waited for
                ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_kernel(pid: int) -> tuple[float, int]:
    """(system CPU seconds, context switches) of ``pid`` and its live descendants, over all
    their threads: the part of the CPU spent in the kernel, and how often a thread slept on a
    lock, a queue or a socket (voluntary) or was preempted, from ``/proc/<pid>/task``. The
    system time covers the same processes as :func:`tree_cpu_seconds` (reaped children too)."""
    ticks = switches = 0
    for i, member in enumerate(tree(pid)):
        with contextlib.suppress(OSError):
            fields = _stat(member)
            ticks += int(fields[12]) + (int(fields[14]) if i == 0 else 0)
            for task in os.listdir(f"/proc/{member}/task"):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{member}/task/{task}/status").read_text()
                    for line in status.splitlines():
                        if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                            switches += int(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), switches


def thread_times(pid: int) -> dict[tuple[int, int], tuple[float, float]]:
    """(user, system) CPU seconds so far of each thread of ``pid`` and of its live
    descendants, keyed by (process, thread id); a process's main thread has tid == pid."""
    out: dict[tuple[int, int], tuple[float, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for member in tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{member}/task"):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{member}/task/{task}/stat").read_text()
                    fields = stat.rsplit(")", 1)[1].split()
                    out[(member, int(task))] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def thread_split(
    before: dict[tuple[int, int], tuple[float, float]],
    after: dict[tuple[int, int], tuple[float, float]],
    top: int = 3,
) -> list[tuple[str, float, float]]:
    """The busiest threads between two :func:`thread_times`: (label, user, system) seconds,
    the main thread of each process first, then the others by CPU, the rest summed."""
    used = {
        key: (u - before.get(key, (0.0, 0.0))[0], s - before.get(key, (0.0, 0.0))[1])
        for key, (u, s) in after.items()
    }
    mains = sorted(key for key in used if key[0] == key[1])
    others = sorted((key for key in used if key[0] != key[1]), key=lambda k: -sum(used[k]))
    rows = [(f"main thread of {pid}", *used[(pid, tid)]) for pid, tid in mains]
    rows += [(f"thread {tid} of {pid}", *used[(pid, tid)]) for pid, tid in others[:top]]
    rest = others[top:]
    if rest:
        rows.append(
            (
                f"{len(rest)} other threads",
                sum(used[k][0] for k in rest),
                sum(used[k][1] for k in rest),
            )
        )
    return rows


def tree_rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and its live descendants, in MiB (shared pages counted per process)."""
    kib = 0
    for member in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
    return kib / 1024


def cpu_ticks() -> tuple[int, int]:
    """(all, idle) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]


def busy_since(before: tuple[int, int]) -> float:
    """The fraction of all cores busy since ``before = cpu_ticks()``."""
    now = cpu_ticks()
    return 1 - (now[1] - before[1]) / max(1, now[0] - before[0])


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def export(ref: str, into: Path) -> Path:
    """The ``ingress_box`` package (and ``schema.sql``) of git ``ref``, unpacked under ``into``:
    run it with ``PYTHONPATH=into`` to measure the code before a change in the same run."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "ingress_box", "schema.sql"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into
