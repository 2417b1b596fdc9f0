"""How long huey's enqueue waits behind another writer of the file: huey's stock SQLite storage
(SQLite's busy handler) against the box's ``SqliteQueue`` (short pauses), in one run.

Another process stands for the box's writer: it holds the file's write lock for ``--hold`` ms,
lets go for ``--gap`` ms, and again (a commit whose fsync takes that long: ~1 ms on an SSD, 10
and more on an SD card), and tries again every 0.5 ms when it finds the lock taken, as the box's
writer does. Each storage then enqueues ``--count`` tasks, ``--pause`` ms apart on average (at
random), and the script prints an enqueue's latency (p50, p99, max) and the CPU it cost.

    python tests/bench/bench_queue_lock.py [--hold 1,5,10] [--gap 2] [--count 400] [--pause 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from huey.storage import SqliteStorage

from ingress_box.store.queue import SqliteQueue

STORAGES: list[tuple[str, type[SqliteStorage]]] = [
    ("huey's SqliteStorage", SqliteStorage),
    ("SqliteQueue", SqliteQueue),
]


def hold_the_lock(path: str, hold: float, gap: float, stop: Any) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("CREATE TABLE IF NOT EXISTS held (n INTEGER)")
    conn.execute("PRAGMA busy_timeout = 0")  # it tries again as the box's writer does
    while not stop.is_set():
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            time.sleep(0.0005)
            continue
        conn.execute("INSERT INTO held VALUES (1)")
        time.sleep(hold)
        conn.execute("COMMIT")
        time.sleep(gap)
    conn.close()


def measure(storage: SqliteStorage, count: int, pause: float) -> tuple[list[float], float]:
    latencies = []
    cpu0 = time.process_time()
    for n in range(count):
        started = time.perf_counter()
        storage.enqueue(b"task %d" % n)
        latencies.append(time.perf_counter() - started)
        time.sleep(random.uniform(0, 2 * pause))  # apart, at random, as webhooks come
    return latencies, time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", default="1,5,10", help="ms the other writer holds the lock")
    parser.add_argument("--gap", type=float, default=2.0, help="ms between its transactions")
    parser.add_argument("--count", type=int, default=400, help="enqueues per storage and hold")
    parser.add_argument("--pause", type=float, default=3.0, help="ms between two enqueues")
    args = parser.parse_args()
    print(f"{'hold':>6} {'storage':<26} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'CPU us':>7}")
    with tempfile.TemporaryDirectory() as work:
        for hold in (float(h) for h in args.hold.split(",")):
            path = str(Path(work) / f"hold-{hold:g}.db")
            stop = multiprocessing.Event()
            SqliteQueue("bench", filename=path).close()  # huey's tables, in WAL
            holder = multiprocessing.Process(
                target=hold_the_lock, args=(path, hold / 1000, args.gap / 1000, stop)
            )
            holder.start()
            try:
                # Alternating halves, so a slower moment of the machine hits both alike.
                results: dict[str, tuple[list[float], float]] = {}
                for _ in range(2):
                    for name, cls in STORAGES:
                        storage = cls("bench", filename=path, fsync=False, timeout=30)
                        lat, cpu = measure(storage, args.count // 2, args.pause / 1000)
                        storage.close()
                        old = results.get(name, ([], 0.0))
                        results[name] = (old[0] + lat, old[1] + cpu)
            finally:
                stop.set()
                holder.join(10)
            for name, (lat, cpu) in results.items():
                print(
                    f"{hold:>5g}  {name:<26} {benchlib.pct(lat, 50) * 1000:7.2f} "
                    f"{benchlib.pct(lat, 99) * 1000:7.2f} {max(lat) * 1000:7.2f} "
                    f"{cpu / len(lat) * 1e6:7.0f}"
                )


if __name__ == "__main__":
    main()
