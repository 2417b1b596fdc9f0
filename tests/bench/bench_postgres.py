"""The box on PostgreSQL with 1, 2 and 4 ``serve`` processes, against the SQLite box in the
same run (issue "Beyond one machine").

Why: on one machine the point is the shape of the curve and the cost per webhook, not the
absolute figure. Each phase starts fresh ``ingress-box serve`` processes as a user would
(the installed CLI, ``--db`` a SQLite file or a PostgreSQL URL with a schema of its own, every
other ``INGRESS_BOX_*`` variable removed), creates ``generic/bench`` through the first one's
admin API (the others see it through the shared database), and runs one wrk per process
(``-t1``, the 64 connections split between them: the load balancer) for ``--duration`` s:

- ingress: ``serve --no-run-worker``: accepted/s (202s), ack p99 (the worst process);
- accept + deliver: ``serve`` with its in-process worker forwarding to a local target:
  accepted/s, delivered/s while wrk ran, sustained = min of the two, and every committed row
  must reach the target (lost = committed, never received after a bounded wait).

CPU per webhook counts the box processes and, on PostgreSQL, the server's processes too (every
``postgres`` process in /proc): the database's work is part of a webhook's price there.
Figures are printed as a table with each row's ratio to the SQLite box's of the same kind.

    python tests/bench/bench_postgres.py --pg postgresql://user:pw@127.0.0.1:5432/db
        [--duration 10] [--processes 1,2,4]

The role needs to create a schema in that database; each phase gets one, dropped after it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import benchlib
import psycopg
from bench_appliance import Box, TargetLog
from bench_ingress import Run, write_bodies
from bench_ingress import wrk as run_wrk
from benchlib import Server


def postgres_cpu_seconds() -> float:
    """utime+stime of every live ``postgres`` process (the server and its backends)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat.split("(", 1)[1].split(")", 1)[0].startswith("postgres"):
                fields = stat.rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def pg_schema(url: str, name: str) -> Iterator[str]:
    """A URL whose connections work in a new schema ``name`` (dropped afterwards)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query), ("options", f"-csearch_path={name}")]
    try:
        yield parts._replace(query=urllib.parse.urlencode(query)).geturl()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def committed(db: str, prefix: str) -> set[str]:
    """The provider ids stored under ``prefix`` (wrk's ids)."""
    sql = "SELECT provider_delivery_id FROM deliveries WHERE provider_delivery_id LIKE "
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            return {r[0] for r in conn.execute(sql + "%s", (prefix + "%",))}
    lite = benchlib.ro_connect(Path(db))
    try:
        return {r[0] for r in lite.execute(sql + "?", (prefix + "%",))}
    finally:
        lite.close()


def outbox_depth(db: str) -> int:
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            row = conn.execute("SELECT count(*) FROM outbox").fetchone()
            return int(row[0]) if row else 0
    try:
        return benchlib.count(Path(db), "SELECT count(*) FROM outbox")
    except sqlite3.OperationalError:
        return -1


@dataclass
class Phase:
    store: str  # "sqlite" or "postgresql"
    processes: int
    deliver: bool
    accepted: float = 0.0  # 202s per second
    delivered: float = 0.0  # received by the target per second while wrk ran
    p99_ms: float = 0.0  # the worst process's ack p99
    cpu_us: float = 0.0  # box (+ PostgreSQL) CPU per accepted webhook, until drained
    lost: int = 0
    repeated: int = 0

    @property
    def sustained(self) -> float:
        return min(self.accepted, self.delivered) if self.deliver else self.accepted

    @property
    def name(self) -> str:
        kind = "accept+deliver" if self.deliver else "ingress"
        return f"{self.store} x{self.processes} {kind}"


def run_phase(
    args: argparse.Namespace,
    work: Path,
    db: str,
    store: str,
    processes: int,
    deliver: bool,
    target: Server,
    log: TargetLog,
) -> Phase:
    name = f"{store[:2]}{processes}{'d' if deliver else 'i'}"
    flags = () if deliver else ("--no-run-worker",)
    boxes = [Box(work, db, *flags) for _ in range(processes)]
    phase = Phase(store, processes, deliver)
    try:
        for box in boxes:  # one at a time: the first makes the schema
            box.wait_ready()
        boxes[0].add_instance("bench", target.url + "/hook")
        wrk_args = argparse.Namespace(
            wrk=args.wrk, threads=1, connections=max(1, args.connections // processes)
        )
        for i, box in enumerate(boxes):  # warm-up: connections, caches, the first drains
            run_wrk(wrk_args, work, box, f"{name}-w{i}", 2, f"{name}w{i}-")
        log.poll()
        runs: list[Run] = [Run() for _ in boxes]
        on_postgres = store == "postgresql"
        cpu0 = sum(b.cpu_seconds() for b in boxes)
        cpu0 += postgres_cpu_seconds() if on_postgres else 0.0
        t0 = time.monotonic()

        def load(i: int) -> None:
            runs[i] = run_wrk(wrk_args, work, boxes[i], f"{name}-{i}", args.duration, f"{name}-")

        threads = [threading.Thread(target=load, args=(i,)) for i in range(processes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t1 = time.monotonic()
        accepted = sum(r.codes.get(202, 0) for r in runs)
        seconds = max(r.duration_us for r in runs) / 1e6
        phase.accepted = accepted / seconds
        phase.p99_ms = max(r.p99_us for r in runs) / 1000
        if deliver:  # wait (bounded) for the backlog to drain before the CPU is read
            rows = committed(db, f"{name}-")
            missing = log.wait_for(rows, time.monotonic() + args.drain_timeout)
            phase.lost = len(missing)
            phase.repeated = log.repeated(f"{name}-")
            phase.delivered = log.received_between(f"{name}-", t0, t1) / (t1 - t0)
            deadline = time.monotonic() + args.drain_timeout
            while outbox_depth(db) > 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        cpu = sum(b.cpu_seconds() for b in boxes) - cpu0
        cpu += postgres_cpu_seconds() if on_postgres else 0.0
        phase.cpu_us = cpu * 1e6 / max(1, accepted)
    finally:
        for box in boxes:
            box.stop()
    return phase


def table(phases: list[Phase]) -> None:
    base = {p.deliver: p for p in phases if p.store == "sqlite"}
    print(
        f"\n| {'run':<32} | {'accepted/s':>10} | {'delivered/s':>11} | {'sustained':>9} | "
        f"{'vs SQLite':>9} | {'ack p99 ms':>10} | {'CPU µs/webhook':>14} | lost | repeated |"
    )
    print("|" + "|".join("-" * w for w in (34, 12, 13, 11, 11, 12, 16, 6, 10)) + "|")
    for p in phases:
        ratio = p.sustained / base[p.deliver].sustained if p.deliver in base else float("nan")
        delivered = f"{p.delivered:11.0f}" if p.deliver else f"{'-':>11}"
        print(
            f"| {p.name:<32} | {p.accepted:10.0f} | {delivered} | {p.sustained:9.0f} | "
            f"{ratio:9.2f} | {p.p99_ms:10.1f} | {p.cpu_us:14.0f} | {p.lost:4d} | "
            f"{p.repeated:8d} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("INGRESS_BOX_TEST_POSTGRESQL"))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per phase")
    parser.add_argument("--processes", default="1,2,4", help="serve processes on PostgreSQL")
    parser.add_argument("--connections", type=int, default=64, help="split between processes")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    args = parser.parse_args()
    if not args.pg:
        parser.error("--pg postgresql://... (or INGRESS_BOX_TEST_POSTGRESQL) is required")
    counts = [int(n) for n in args.processes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    write_bodies(work / "bodies.lua", 1000, 1024)
    print(
        f"# PostgreSQL benchmark {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} "
        f"cores, wrk -c{args.connections} split over the serve processes, {args.duration:g} s "
        f"per phase, ~1 KB signed bodies, work dir {work}"
    )
    target = Server("target", work, "--log", str(work / "target.log")).wait_ready()
    log = TargetLog(work / "target.log")
    phases: list[Phase] = []
    try:
        for deliver in (False, True):
            db = str(work / f"box-{int(deliver)}.db")
            phases.append(run_phase(args, work, db, "sqlite", 1, deliver, target, log))
            print(phases[-1])
            for n in counts:
                with pg_schema(args.pg, f"bench_{n}_{int(deliver)}") as url:
                    phases.append(run_phase(args, work, url, "postgresql", n, deliver, target, log))
                print(phases[-1])
    finally:
        target.stop()
    table(phases)
    return 1 if any(p.lost for p in phases) else 0


if __name__ == "__main__":
    raise SystemExit(main())
