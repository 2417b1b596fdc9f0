"""The writer's floor: CPU of the SQLite work one webhook needs, outside the box.

Why: at 320 webhooks/s ``ingress-box serve`` spends ~550-650 us of CPU per webhook in its
writer thread (``bench_appliance.py``'s thread split). This measures how much of that is the
work itself. One process, one thread, a fresh database of the box's schema (``synchronous=FULL``,
WAL, the writer connection's PRAGMAs), ~1 KB bodies; per webhook, as the writer runs it at a
steady rate (a trace of ``serve`` at 320/s: one transaction per webhook, the previous attempt's
outcome sharing the next accept's transaction):

1. ``commit``: one small UPSERT and the commit (the floor of a durable transaction: the fsync);
2. ``txn``: the webhook's transaction on a connection of this thread: the previous delivery's
   outcome (``record_outcome``, in its savepoint), the configuration version, the accept
   (``accept_many`` in its savepoint) and the hand-off's lease (``lease_new`` in its own);
3. ``indexed``: 2, and every ``--index-every`` webhooks (the box's indexer takes what waits, one
   transaction every few seconds: ~160 bodies at 320/s) the full-text indexer's op in its own
   transaction, its CPU shared out over the webhooks it indexed;
4. ``writer``: 2 as one op through ``Database.write`` (the writer thread, its queue and future
   included), so 4 - 2 is the cost of handing work to a thread and back.

Each mode runs back to back (gap 0) and paced (``--gap-ms``, 3.1 ms = 320/s, sleeping between
webhooks as the box idles between them). CPU is this process's (all threads, user + system)
around each webhook only. Rounds alternate the modes; the median round counts. Compare the
figures with each other, in one run: the machine is shared.

    python tests/bench/bench_writer_floor.py [--webhooks 600] [--rounds 3] [--gap-ms 0,3.1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import resource
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import benchlib

from ingress_box.store import Database
from ingress_box.store.acceptor import _savepoint as savepoint  # the accept's own
from ingress_box.store.db import connect, writer_settings
from ingress_box.store.deliveries import NewDelivery, accept_many
from ingress_box.store.instances import version_in
from ingress_box.store.outbox import Outcome, lease_new, record_outcome
from ingress_box.store.search import index_pending

BODIES = [benchlib.body(i) for i in range(200)]
HEADERS = json.dumps({"content-type": "application/json", "x-signature": "[redacted]"})
OWNER = "bench:1"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--webhooks", type=int, default=600, help="per mode, gap and round")
    p.add_argument("--warmup", type=int, default=200, help="webhooks before counting")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gap-ms", default="0,3.1", help="pauses between webhooks, ms")
    p.add_argument("--index-every", type=int, default=160, help="webhooks per indexer op")
    return p.parse_args()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def new_delivery(i: int) -> NewDelivery:
    return NewDelivery(
        id=f"dlv_{uuid.uuid4().hex}",
        plugin_id="generic",
        instance_id="bench",
        route="",
        provider_delivery_id=f"bench-{i}-{uuid.uuid4().hex}",
        conversation=None,
        method="POST",
        subpath="",
        content_type="application/json",
        headers=HEADERS,
        body=BODIES[i % len(BODIES)],
        received_at=time.time(),
    )


class Webhooks:
    """The writer's work for webhook after webhook: each transaction records the previous
    one's outcome (delivered) and accepts the next, as ``serve`` does at a steady rate."""

    def __init__(self) -> None:
        self.previous: int | None = None
        self.i = 0

    def commit_only(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('bench', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(self.i),),
        )
        conn.execute("COMMIT")
        self.i += 1

    def transaction(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        self.ops(conn)
        conn.execute("COMMIT")

    def indexed(self, conn: sqlite3.Connection, every: int) -> None:
        self.transaction(conn)
        if self.i % every == 0:
            conn.execute("BEGIN IMMEDIATE")
            index_pending()(conn)
            conn.execute("COMMIT")

    def ops(self, conn: sqlite3.Connection) -> None:
        """What the writer runs inside the transaction (its savepoints included)."""
        if self.previous is not None:
            now = time.time()
            outcome = Outcome(self.previous, OWNER, "delivered", now, 1.0, 200, response="ok")
            with savepoint(conn, "op"):
                record_outcome(outcome, now)(conn)
        with savepoint(conn, "op"):
            version_in(conn)
            with savepoint(conn, "batch"):
                seq = accept_many(conn, [new_delivery(self.i)])[0]
            assert seq is not None
            with savepoint(conn, "handoff"):
                lease_new(conn, [seq], OWNER, time.time(), 60.0)
        self.previous, self.i = seq, self.i + 1


def fresh(work: Path, name: str) -> Path:
    path = work / f"{name}.db"
    benchlib.prepare_db(path, "http://127.0.0.1:9/hook")  # the schema and generic/bench
    return path


def writer_connection(path: Path) -> sqlite3.Connection:
    """A connection set up as the box's writer's (Database.open)."""
    conn = connect(path, "FULL", 5.0)
    writer_settings(conn)
    return conn


def run(mode: str, path: Path, args: argparse.Namespace, gap: float) -> float:
    """us of CPU per webhook for ``mode``, each webhook ``gap`` s after the last."""
    work = Webhooks()
    with contextlib.ExitStack() as stack:
        step: Callable[[], object]
        if mode == "writer":
            db = Database(path).open()
            stack.callback(db.close)
            step = functools.partial(db.write, work.ops)
        else:
            conn = writer_connection(path)
            stack.callback(conn.close)
            step = {
                "commit": functools.partial(work.commit_only, conn),
                "txn": functools.partial(work.transaction, conn),
                "indexed": functools.partial(work.indexed, conn, args.index_every),
            }[mode]
        for _ in range(args.warmup):
            step()
        spent = 0.0
        for _ in range(int(args.webhooks)):
            if gap:
                time.sleep(gap)
            before = cpu()
            step()
            spent += cpu() - before
    if mode != "commit":  # the work was done: every webhook stored, all but the last delivered
        total = args.warmup + args.webhooks
        delivered = benchlib.count(
            path, "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
        )
        stored = benchlib.count(path, "SELECT count(*) FROM deliveries")
        assert (stored, delivered) == (total, total - 1), (mode, stored, delivered)
    return spent * 1e6 / int(args.webhooks)


def main() -> None:
    args = parse_args()
    gaps = [float(g) / 1000 for g in args.gap_ms.split(",")]
    modes = ("commit", "txn", "indexed", "writer")
    figures: dict[tuple[str, float], list[float]] = {(m, g): [] for m in modes for g in gaps}
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for gap in gaps:
                for mode in modes:
                    path = fresh(work, f"{mode}-{r}-{gap}")
                    us = run(mode, path, args, gap)
                    figures[(mode, gap)].append(us)
                    print(f"round {r + 1} gap {gap * 1000:g} ms {mode:7s} {us:5.0f} us/webhook")
    print(f"\nCPU per webhook, median of {args.rounds} rounds (us), {args.webhooks} webhooks each")
    print(f"{'gap':>8s} " + " ".join(f"{m:>8s}" for m in modes) + "   writer - txn")
    for gap in gaps:
        med = {m: statistics.median(figures[(m, gap)]) for m in modes}
        print(
            f"{gap * 1000:6g}ms "
            + " ".join(f"{med[m]:8.0f}" for m in modes)
            + f"   {med['writer'] - med['txn']:+8.0f}"
        )


if __name__ == "__main__":
    main()
