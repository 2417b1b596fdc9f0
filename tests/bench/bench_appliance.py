"""The appliance as shipped: ``ingress-box serve`` at its defaults, end to end, against a bare
HMAC endpoint measured in the same run (issue "Light as shipped").

Why: the other benchmarks measure parts (ingress with the worker off, the worker alone). A user
runs one command with its defaults: the in-process worker, one log line per request and per
attempt on stderr, ``synchronous=FULL``. So this script starts exactly that, as a subprocess of
the installed CLI (``ingress-box serve --db ... --port ...``, admin token from
``INGRESS_BOX_ADMIN_TOKEN``, every other ``INGRESS_BOX_*`` variable removed), its stdout and
stderr to files, creates ``generic/bench`` through the admin API with a ``target_url`` on a local
target (``serve.py target``, answers 200 at once and logs receive times), and measures:

1. bare: ``serve.py bare`` under ``wrk -t2 -c64`` (the ceiling; ~1 KB signed bodies, unique ids);
2. idle: the box's CPU over ``--idle`` s once start-up has settled, and its RSS;
3. open loop at each of ``--rates`` (sender.py's raw client, fixed schedule): offered and
   achieved rate, box CPU (cores while sending), CPU per webhook (the box's CPU from the first
   send until the backlog drained, idle included, over the webhooks acked), ack and end-to-end
   (target receive - send, both ``time.monotonic()``) p50/p99, backlog slope (outbox depth each
   second through a read-only sqlite3 connection), delivered/s while sending, drain time, lost
   (acked, never received after a bounded wait) and repeated (received more than once);
4. closed loop: ``wrk -t2 -c64`` against the box while it forwards; sustained = min(accepted/s,
   delivered/s while wrk ran), against bare; every committed row must reach the target once;
5. memory: RSS with a backlog of ``--backlog`` rows, built the way a user gets one: a second
   instance whose target is down (a closed port), loaded over HTTP while the worker retries;
6. ``--profile``: a second 320/s phase under ``py-spy record`` (see profiling.py);
7. logs off: what the log lines cost, as ``--logs-pairs`` pairs of fresh boxes (a new database
   each) under the same closed loop, one at its defaults and one with the logs off
   (``--logs-off-flags``, else detected), the order alternating from pair to pair; the cost is
   one minus the median of the pairs' accepted/s ratios (one pair of 10 s runs on this kind of
   machine is within its noise);
8. ``--split``: the open-loop phases and the closed loop again on the contract's split
   deployment, ``serve --no-run-worker`` and one ``ingress-box worker`` on the same file (CPU
   and RSS of both processes; the thread table shows serve's threads only);
9. ``--baseline REF``: the same open-loop phases on the code of git ``REF`` (a second ``serve``,
   ``python -m ingress_box`` from the exported tree), each right after this code's phase, so a
   change is measured before/after in one run.

CPU and RSS are summed over the box process and its descendants (``/proc``). Exit status 1 only
when an acked webhook was lost; a missed target prints FAIL.

    python tests/bench/bench_appliance.py [--quick] [--profile] [--rates 200,320,1000]
        [--baseline REF] [--split]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import benchlib
import profiling
import sender
import uvloop
from bench_ingress import Run, write_bodies
from bench_ingress import wrk as run_wrk
from benchlib import SECRET, Server, pct

TOKEN = "bench-admin-token-0123456789abcdef"
OUT = Path(__file__).resolve().parent / "out"


class Box(Server):
    """``ingress-box serve`` as a user starts it, in its own process group."""

    def __init__(
        self, workdir: Path, db: Path | str, *flags: str, tree: Path | None = None
    ) -> None:
        """``tree``: run the ``ingress_box`` package unpacked there (``--baseline``) instead of
        the installed CLI."""
        self.kind, self.port = "serve", benchlib.free_port()
        cli = Path(sys.executable).with_name("ingress-box")
        program = (
            [str(cli)] if cli.exists() and tree is None else [sys.executable, "-m", "ingress_box"]
        )
        self.program, self.env = program, {"PYTHONPATH": str(tree)} if tree is not None else {}
        self.cmd = [*program, "serve", "--db", str(db), "--port", str(self.port), *flags]
        self.stdout = workdir / f"serve-{self.port}.stdout"
        self.out = workdir / f"serve-{self.port}.stderr"  # where start-up errors go
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        with open(self.stdout, "wb") as out, open(self.out, "wb") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=err,
                start_new_session=True,
                env={**env, "INGRESS_BOX_ADMIN_TOKEN": TOKEN},
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        return benchlib.tree_cpu_seconds(self.proc.pid)

    def rss_mib(self) -> float:
        return benchlib.tree_rss_mib(self.proc.pid)

    def admin(
        self, method: str, path: str, body: dict[str, object] | None = None
    ) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def add_instance(self, instance: str, target_url: str) -> None:
        created = self.admin(
            "POST",
            "/admin/instances",
            {"plugin": "generic", "instance": instance, "secret": SECRET, "target_url": target_url},
        )
        assert created["target_url"] == target_url, created


class SplitBox(Box):
    """The split deployment of the contract: ``serve --no-run-worker`` and one ``ingress-box
    worker`` on the same file, two processes (CPU and RSS are both's)."""

    def __init__(self, workdir: Path, db: Path, *flags: str) -> None:
        super().__init__(workdir, db, "--no-run-worker", *flags)
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
        self.worker_out = workdir / f"worker-{self.port}.stderr"
        self.worker_cmd = [*self.program, "worker", "--db", str(db)]
        with open(self.worker_out, "wb") as err:
            self.worker = subprocess.Popen(
                self.worker_cmd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                env={**env, **self.env},
            )

    def cpu_seconds(self) -> float:
        return super().cpu_seconds() + benchlib.tree_cpu_seconds(self.worker.pid)

    def rss_mib(self) -> float:
        return super().rss_mib() + benchlib.tree_rss_mib(self.worker.pid)

    def stop(self, timeout: float = 20.0) -> None:
        if self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(5)
        super().stop(timeout)


class TargetLog:
    """The target's receive log, read incrementally: id -> receive times."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.times: dict[str, list[float]] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines; the rest is read next time
        self.offset += end
        for line in chunk[:end].decode().splitlines():
            delivery, _, t = line.partition("\t")
            self.times.setdefault(delivery, []).append(float(t))

    def wait_for(self, ids: set[str], deadline: float) -> set[str]:
        """Poll until every id in ``ids`` was received or ``deadline``; the ids still missing."""
        while True:
            self.poll()
            missing = ids - self.times.keys()
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)

    def repeated(self, prefix: str) -> int:
        return sum(1 for d, t in self.times.items() if d.startswith(prefix) and len(t) > 1)

    def received_between(self, prefix: str, t0: float, t1: float) -> int:
        return sum(1 for d, t in self.times.items() if d.startswith(prefix) and t0 <= t[0] <= t1)


class Depth(threading.Thread):
    """Samples ``SELECT count(*) FROM outbox`` every second (read-only connection)."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db, self.halt = db, threading.Event()
        self.samples: list[tuple[float, int]] = []  # (time.monotonic(), depth)

    def run(self) -> None:
        conn = benchlib.ro_connect(self.db)
        try:
            while True:
                try:
                    depth = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
                    self.samples.append((time.monotonic(), int(depth)))
                except sqlite3.OperationalError:
                    pass
                if self.halt.wait(1.0):
                    return
        finally:
            conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)

    def slope(self, t0: float, t1: float) -> float:
        """Least-squares slope (rows/s) of the depth sampled between t0 and t1."""
        points = [(t, d) for t, d in self.samples if t0 <= t <= t1]
        if len(points) < 3:
            return float("nan")
        mx = sum(t for t, _ in points) / len(points)
        my = sum(d for _, d in points) / len(points)
        den = sum((t - mx) ** 2 for t, _ in points)
        return sum((t - mx) * (d - my) for t, d in points) / den if den else 0.0


@dataclass
class Row:
    """One line of the table."""

    load: str
    offered: float = float("nan")
    achieved: float = float("nan")
    cores: float = float("nan")  # box CPU while the load ran
    cpu_us: float = float("nan")  # box CPU per acked webhook, first send until drained
    ack: list[float] = field(default_factory=list)  # ms; or [p50, p99] from wrk
    e2e: list[float] = field(default_factory=list)  # ms
    slope: float = float("nan")
    delivered: float = float("nan")  # per second while the load ran
    drain: float = float("nan")  # s after the load stopped; nan: not drained
    lost: int = 0
    repeated: int = 0
    acked: int = 0
    busy: float = float("nan")  # the machine, all cores
    wrk: Run | None = None
    bare_us: float = float("nan")  # the bare endpoint's CPU per request at the same offered rate
    sys_share: float = float("nan")  # of cpu_us, the part in the kernel (system time)
    switches: float = float("nan")  # the box's threads' context switches per acked webhook
    threads: list[tuple[str, float, float]] = field(default_factory=list)  # label, user, sys s

    def ack_p(self, p: float) -> float:
        if self.wrk is not None:
            return (self.wrk.p50_us if p == 50 else self.wrk.p99_us) / 1000
        return pct(self.ack, p)


def settle_drain(
    box: Box, log: TargetLog, depth: Depth, ids: set[str], t1: float, timeout: float
) -> tuple[set[str], float]:
    """Wait (bounded) until every id arrived and the outbox is empty; (missing, drain seconds)."""
    deadline = time.monotonic() + timeout
    missing = log.wait_for(ids, deadline)
    while time.monotonic() < deadline and not (depth.samples and depth.samples[-1][1] == 0):
        time.sleep(0.2)
    last = max((log.times[d][0] for d in ids - missing), default=t1)
    drained = not missing and bool(depth.samples) and depth.samples[-1][1] == 0
    return missing, (max(0.0, last - t1) if drained else float("nan"))


def open_phase(
    args: argparse.Namespace,
    box: Box,
    log: TargetLog,
    db: Path,
    rate: float,
    seconds: float,
    prefix: str,
    recorder: profiling.Recorder | None = None,
) -> Row:
    """An open-loop phase at ``rate`` webhooks/s for ``seconds`` (sender.py's raw client)."""
    log.poll()
    depth = Depth(db)
    depth.start()
    cpu0, ticks, t0 = box.cpu_seconds(), benchlib.cpu_ticks(), time.monotonic()
    kernel0 = benchlib.tree_kernel(box.proc.pid)
    threads0 = benchlib.thread_times(box.proc.pid)
    try:
        s = sender.send(box.url, rate, seconds, prefix, args.connections)
        t1 = time.monotonic()
        cpu_send, busy = box.cpu_seconds() - cpu0, benchlib.busy_since(ticks)
        if recorder is not None:
            recorder.wait(30)
        acked = {d for d, code in s["status"].items() if code == 202}
        missing, drain = settle_drain(box, log, depth, acked, t1, args.drain_timeout)
        cpu_all = box.cpu_seconds() - cpu0
        kernel = benchlib.tree_kernel(box.proc.pid)
        threads = benchlib.thread_split(threads0, benchlib.thread_times(box.proc.pid))
    finally:
        depth.stop()
    sender.show_send(f"  {prefix} sender", s, rate)
    return Row(
        load=f"{rate:g}/s open loop",
        offered=rate,
        achieved=s["rate"],
        cores=cpu_send / (t1 - t0),
        cpu_us=cpu_all * 1e6 / max(1, len(acked)),
        ack=s["ack_ms"],
        e2e=[(log.times[d][0] - s["sent"][d]) * 1000 for d in acked - missing],
        slope=depth.slope(t0, t1),
        delivered=log.received_between(prefix, t0, t1) / (t1 - t0),
        drain=drain,
        lost=len(missing),
        repeated=log.repeated(prefix),
        acked=len(acked),
        busy=busy,
        sys_share=(kernel[0] - kernel0[0]) / cpu_all if cpu_all else float("nan"),
        switches=(kernel[1] - kernel0[1]) / max(1, len(acked)),
        threads=threads,
    )


def closed_phase(
    args: argparse.Namespace, work: Path, box: Box, log: TargetLog, db: Path, name: str
) -> Row:
    """``wrk -t2 -c64`` against the box while it forwards; every committed row must arrive."""
    wrk_args = argparse.Namespace(
        wrk=args.wrk, threads=args.threads, connections=args.wrk_connections
    )
    prefix = f"{name}-"  # wrk's ids: <prefix><thread>-<n>
    log.poll()
    depth = Depth(db)
    depth.start()
    cpu0, t0 = box.cpu_seconds(), time.monotonic()
    threads0 = benchlib.thread_times(box.proc.pid)
    try:
        run = run_wrk(wrk_args, work, box, name, args.closed_duration, prefix)
        t1 = time.monotonic()
        n202 = run.codes.get(202, 0)
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and not (depth.samples and depth.samples[-1][1] == 0):
            time.sleep(0.2)
        conn = benchlib.ro_connect(db)
        try:
            rows = {
                r[0]
                for r in conn.execute(
                    "SELECT provider_delivery_id FROM deliveries WHERE provider_delivery_id LIKE ?",
                    (prefix + "%",),
                )
            }
        finally:
            conn.close()
        missing, drain = settle_drain(box, log, depth, rows, t1, args.drain_timeout)
        cpu_all = box.cpu_seconds() - cpu0
        threads = benchlib.thread_split(threads0, benchlib.thread_times(box.proc.pid), top=6)
    finally:
        depth.stop()
    # Every 202 is a committed row; rows beyond the 202s are requests wrk never read the
    # answer of (in flight at its stop), committed all the same, so they must arrive too.
    uncommitted = max(0, n202 - len(rows))
    print(
        f"  {name}: wrk statuses {run.codes}, committed rows {len(rows)}, in flight at wrk's "
        f"stop {run.inflight}; rows not received {len(missing)}, 202s without a row {uncommitted}"
    )
    seconds = run.duration_us / 1e6
    return Row(
        load="wrk -t2 -c64 closed",
        achieved=n202 / seconds,
        cores=run.cpu / seconds,
        cpu_us=cpu_all * 1e6 / max(1, n202),
        slope=depth.slope(t0, t1),
        delivered=log.received_between(prefix, t0, t1) / (t1 - t0),
        drain=drain,
        lost=len(missing) + uncommitted,
        repeated=log.repeated(prefix),
        acked=n202,
        busy=run.busy,
        wrk=run,
        threads=threads,
    )


async def _load(
    port: int, path: str, n: int, prefix: str, conns: int, seconds: float
) -> Counter[object]:
    """Closed loop over ``conns`` raw connections until ``n`` requests or ``seconds``."""
    post, close = await sender._post_raw(conns, port, path)
    codes: Counter[object] = Counter()
    counter, deadline = itertools.count(), time.monotonic() + seconds

    async def one_connection() -> None:
        while (i := next(counter)) < n and time.monotonic() < deadline:
            raw, sig = sender.BODIES[i % len(sender.BODIES)]
            headers = {"content-type": "application/json", "x-signature": sig}
            codes[await post(raw, {**headers, "x-delivery": f"{prefix}{i}"})] += 1

    await asyncio.gather(*(one_connection() for _ in range(conns)))
    await close()
    return codes


def memory_phase(args: argparse.Namespace, box: Box, db: Path) -> dict[str, float]:
    """RSS with ``--backlog`` rows waiting: instance generic/down forwards to a closed port."""
    down = f"http://127.0.0.1:{benchlib.free_port()}/hook"  # nothing listens there
    box.add_instance("down", down)
    before, peak, stop = box.rss_mib(), [0.0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], box.rss_mib())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            codes = runner.run(
                _load(
                    box.port,
                    "/ingress/generic/down/events",
                    args.backlog,
                    "down-",
                    args.wrk_connections,
                    args.backlog_timeout,
                )
            )
        loaded = time.monotonic() - t0
        time.sleep(2.0)  # let the writer and the worker's first retries settle
    finally:
        stop.set()
        watcher.join(5)
    after = box.rss_mib()
    rows = benchlib.count(db, "SELECT count(*) FROM outbox")
    # Full-jitter backoff can spend all attempts of the earliest rows within the load's minutes.
    dead = benchlib.count(db, "SELECT count(*) FROM dead_letters WHERE instance_id = 'down'")
    accepted = codes.get(202, 0)
    print(
        f"  backlog: {accepted} webhooks accepted for generic/down (target down: {down}) in "
        f"{loaded:.0f} s ({accepted / loaded:.0f}/s, statuses {dict(codes)}); outbox rows now "
        f"{rows}, dead-lettered after their last attempt {dead}"
    )
    return {
        "before": before,
        "peak": max(peak[0], after),
        "after": after,
        "rows": rows,
        "accepted": accepted,
        "dead": dead,
    }


B = TypeVar("B", bound=Box)


def started(box: B, target: Server, servers: list[Server]) -> B:
    """``box`` once it answers, stopped with the rest at the end, with ``generic/bench``
    forwarding to ``target``."""
    servers.append(box)
    box.wait_ready()
    box.add_instance("bench", target.url + "/hook")
    return box


def logs_off_flags(args: argparse.Namespace, box_cmd: list[str]) -> list[str] | None:
    """The ``serve`` flags that turn the request/attempt logs off, if this version has any."""
    if args.logs_off_flags is not None:
        return shlex.split(args.logs_off_flags) or None
    helptext = subprocess.run(
        [*box_cmd[: box_cmd.index("serve") + 1], "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for flag, value in (("--log-level", "warning"), ("--no-request-log", "")):
        if flag in helptext:
            return [flag, value] if value else [flag]
    return None


def logs_pairs(
    args: argparse.Namespace,
    work: Path,
    target: Server,
    log: TargetLog,
    flags: list[str],
    servers: list[Server],
) -> list[tuple[Row, Row]]:
    """(logs on, logs off) closed-loop rows of fresh boxes; odd pairs run the logs-off box first."""
    saved, args.closed_duration = args.closed_duration, args.logs_off_duration
    pairs = []
    try:
        for n in range(args.logs_pairs):
            rows: dict[bool, Row] = {}
            for logs_on in (True, False) if n % 2 == 0 else (False, True):
                name = f"{'on' if logs_on else 'off'}{n}"
                db = work / f"{name}.db"
                box = started(Box(work, db, *([] if logs_on else flags)), target, servers)
                row = closed_phase(args, work, box, log, db, name)
                box.stop()
                row.load = f"wrk, pair {n + 1}, logs {'on' if logs_on else 'off'}"
                rows[logs_on] = row
            pairs.append((rows[True], rows[False]))
    finally:
        args.closed_duration = saved
    return pairs


def split_phases(
    args: argparse.Namespace, work: Path, target: Server, log: TargetLog, servers: list[Server]
) -> dict[str, Row]:
    """The open-loop phases and the closed loop again, on a fresh :class:`SplitBox`."""
    db = work / "split.db"
    box = started(SplitBox(work, db), target, servers)
    print("split:", shlex.join(box.cmd), "+", shlex.join(box.worker_cmd))
    rows = {}
    for rate in args.rates:
        row = open_phase(args, box, log, db, rate, args.duration, f"s{rate:g}-")
        row.load = f"split: {row.load}"
        rows[f"split-{rate:g}"] = row
    row = closed_phase(args, work, box, log, db, "wrks")
    row.load = "split: wrk closed"
    rows["split-closed"] = row
    box.stop()
    return rows


def fmt(v: float, spec: str = ".0f") -> str:
    return "-" if v != v else format(v, spec)


def bare_open_cpu(args: argparse.Namespace, bare: Server, rate: float) -> float:
    """The bare endpoint's CPU per request under the same open-loop load as a box phase: what
    one HTTP request costs any Python endpoint here at that rate (a box's floor)."""
    cpu0 = bare.cpu_seconds()
    sent = sender.send(bare.url, rate, args.duration, f"bo{rate:g}-", args.connections)
    acked: int = sum(n for code, n in sent["acks"].items() if code == 202)
    return float((bare.cpu_seconds() - cpu0) * 1e6 / max(acked, 1))


def table(rows: list[Row], idle: Row) -> None:
    print(
        f"\n{'load':<20} {'achieved':>8} {'box CPU':>8} {'CPU/webhook':>11} {'x bare':>6}"
        f" {'ack p50/p99':>14}"
        f" {'e2e p50/p99':>14} {'backlog':>9} {'deliv/s':>8} {'drain':>7} {'lost/rep':>9}"
        f" {'machine':>7} {'sys':>4} {'switches':>8}"
    )
    print(f"{'idle':<20} {'':>8} {idle.cores:7.3f}c {'':>11}")
    for r in rows:
        ack = f"{r.ack_p(50):.1f}/{r.ack_p(99):.1f} ms"
        e2e = f"{pct(r.e2e, 50):.1f}/{pct(r.e2e, 99):.1f} ms" if r.e2e else "-"
        print(
            f"{r.load:<20} {fmt(r.achieved):>6}/s {r.cores:7.2f}c {fmt(r.cpu_us):>8} us "
            f"{fmt(r.cpu_us / r.bare_us, '.1f'):>6} {ack:>14} {e2e:>14} "
            f"{fmt(r.slope, '+.0f'):>7}/s {fmt(r.delivered):>8} "
            f"{fmt(r.drain, '.1f'):>5} s {r.lost:>4}/{r.repeated:<4} {r.busy:6.0%}"
            f" {fmt(r.sys_share * 100):>3}% {fmt(r.switches, '.1f'):>8}"
        )
    print(
        "  box CPU: cores while the load ran (process and descendants); CPU/webhook: the box's\n"
        "  CPU from the first request until the backlog drained (idle included) / webhooks acked;\n"
        "  x bare: that over the bare endpoint's CPU per request at the same open-loop rate;\n"
        "  backlog: slope of the outbox depth while sending (read-only sqlite3, each second);\n"
        "  deliv/s: target receives while sending; drain: last receive - last send; lost: acked\n"
        "  (closed loop: committed) but never received; rep: received more than once;\n"
        "  machine: all cores busy (the load generators and other work share them);\n"
        "  sys: the kernel's part of CPU/webhook; switches: the box's threads' context switches\n"
        "  (slept on a lock, queue or socket, or preempted) per webhook, from /proc/<pid>/task"
    )


def thread_table(rows: list[Row]) -> None:
    """Each phase's CPU per webhook, thread by thread (user + system)."""
    print("\nCPU per webhook by thread (user + system us, first request until drained):")
    for r in rows:
        if not r.threads or not r.acked:
            continue
        per = 1e6 / r.acked
        cells = [f"{label}: {u * per:.0f} + {s * per:.0f}" for label, u, s in r.threads]
        print(f"  {r.load:<18} " + "; ".join(cells))
    print(
        "  the main thread runs the event loop (HTTP in and out, the ingress pipeline, the\n"
        "  forward); at these rates the busiest other thread is the SQLite writer; in the closed\n"
        "  loop the drain threads (four, as busy as each other) deliver the backlog (py-spy's\n"
        "  --profile names the threads)"
    )


def verdicts(
    args: argparse.Namespace,
    rows: dict[str, Row],
    idle: Row,
    bare_rps: float,
    memory: dict[str, float],
    idle_rss: float,
    log_pairs: list[tuple[Row, Row]],
) -> None:
    def line(ok: bool | None, text: str) -> None:
        print(f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {text}")

    print()
    line(idle.cores <= 0.01, f"idle <= 1% of a core ({idle.cores:.1%})")
    r320 = rows.get("320")
    if r320 is None:
        line(None, "320/s targets: no 320/s phase in --rates")
    else:
        line(r320.cores <= 0.15, f"320/s box CPU <= 0.15 cores ({r320.cores:.2f})")
        line(
            r320.cpu_us <= 450,
            f"320/s CPU per webhook <= 450 us ({r320.cpu_us:.0f} us; the bare endpoint's "
            f"{r320.bare_us:.0f} us/request at 320/s)",
        )
        p99 = pct(r320.e2e, 99)
        line(p99 <= 20, f"320/s e2e p99 <= 20 ms ({p99:.1f} ms)")
    closed = rows["closed"]
    sustained = min(closed.achieved, closed.delivered)
    line(sustained >= 3000, f"closed loop sustained accept+deliver >= 3000/s ({sustained:.0f}/s)")
    line(closed.ack_p(99) < 50, f"closed loop ack p99 < 50 ms ({closed.ack_p(99):.1f} ms)")
    line(
        sustained / bare_rps >= 0.3,
        f"closed loop sustained >= 0.3 of bare ({sustained / bare_rps:.3f})",
    )
    flat = closed.slope <= 0.02 * closed.achieved
    line(flat, f"closed loop backlog flat: slope <= 2% of accepted/s ({closed.slope:+.0f}/s)")
    if not log_pairs:
        line(None, "request+attempt log lines <= 10% of throughput: not measured")
    else:
        cost = 1 - statistics.median(on.achieved / off.achieved for on, off in log_pairs)
        line(cost <= 0.10, f"log lines cost <= 10% of accepted/s ({cost:.0%}, median of pairs)")
    line(None, "ingress alone >= 0.5 of bare: measured by bench_ingress.py, not here")
    line(idle_rss < 80, f"idle RSS < 80 MB ({idle_rss:.0f} MiB)")
    n, kept, dead = int(memory["accepted"]), int(memory["rows"]), int(memory["dead"])
    label = f" ({n} accepted{'' if n >= 100_000 else ', not 100k'}: {kept} rows, {dead} dead)"
    line(
        memory["peak"] < 150,
        f"RSS < 150 MB with the backlog{label} (peak {memory['peak']:.0f} MiB)",
    )


def plot(rows: list[Row], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    open_rows = [
        r for r in rows if r.wrk is None and "py-spy" not in r.load and "split" not in r.load
    ]
    closed = [
        r for r in rows if r.wrk is not None and "pair" not in r.load and "split" not in r.load
    ]
    split = [r for r in rows if "split" in r.load]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    panels: list[tuple[Any, Callable[[Row], float], str]] = [
        (a, lambda r: r.cpu_us, "box CPU per webhook (us)"),
        (b, lambda r: r.ack_p(99), "ack p99 (ms)"),
    ]
    for ax, value, title in panels:
        ax.plot([r.offered for r in open_rows], [value(r) for r in open_rows], "o-", label="open")
        ax.plot([r.achieved for r in closed], [value(r) for r in closed], "s", label="wrk closed")
        if split:
            x = [r.offered if r.wrk is None else r.achieved for r in split]
            ax.plot(x, [value(r) for r in split], "^", label="split: serve + worker")
        ax.set(title=title, xlabel="webhooks/s (offered; closed loop: accepted)")
        ax.legend()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"plot: {path}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run, < 2 min)")
    parser.add_argument("--rates", default="200,320,1000", help="open-loop webhooks/s")
    parser.add_argument("--duration", type=float, default=20.0, help="s per open-loop phase")
    parser.add_argument("--closed-duration", type=float, default=20.0, help="s of wrk on the box")
    parser.add_argument("--bare-duration", type=float, default=20.0, help="s of wrk on bare")
    parser.add_argument("--warmup", type=float, default=3.0, help="s of wrk warm-up on bare")
    parser.add_argument("--idle", type=float, default=10.0, help="s of idle CPU measurement")
    parser.add_argument("--settle", type=float, default=3.0, help="s after start-up before that")
    parser.add_argument("--backlog", type=int, default=100_000, help="rows for the memory phase")
    parser.add_argument("--backlog-timeout", type=float, default=600.0, help="s to load it")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=128, help="open-loop sender conns")
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    parser.add_argument("--profile", action="store_true", help="py-spy on a second 320/s phase")
    parser.add_argument("--profile-at", type=float, default=320.0, help="rate of that phase")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s")
    parser.add_argument("--profile-gil", action="store_true", help="py-spy --gil")
    parser.add_argument(
        "--logs-off-flags",
        help="serve flags that turn the request/attempt logs off (default: looked for in "
        "`serve --help`; an empty string skips the logs-off phase)",
    )
    parser.add_argument("--logs-off-duration", type=float, default=10.0, help="s per box")
    parser.add_argument(
        "--logs-pairs", type=int, default=3, help="fresh boxes, logs on and off, closed loop"
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="also the split deployment: serve --no-run-worker + one worker process",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--baseline",
        help="git ref: run each open-loop phase on that code too, right after (a before/after)",
    )
    parser.add_argument("--plot", type=Path, default=OUT / "appliance.png")
    args = parser.parse_args()
    if args.quick:
        args.duration = args.closed_duration = args.bare_duration = 5.0
        args.warmup, args.idle, args.settle, args.logs_off_duration = 1.0, 4.0, 1.0, 5.0
        args.backlog, args.drain_timeout = min(args.backlog, 5000), 30.0
    args.rates = [float(r) for r in args.rates.split(",")]
    return args


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-appliance-"))
    print(
        f"# appliance benchmark {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} "
        f"cores, load average {os.getloadavg()[0]:.1f}, work dir {work}"
    )
    write_bodies(work / "bodies.lua", 1000, 1024)
    wrk_args = argparse.Namespace(
        wrk=args.wrk, threads=args.threads, connections=args.wrk_connections
    )
    servers: list[Server] = []
    rows: dict[str, Row] = {}
    log_pairs: list[tuple[Row, Row]] = []
    profiled: tuple[profiling.Recorder, Row] | None = None
    try:
        bare = Server("bare", work, "--secret", SECRET).wait_ready()
        servers.append(bare)
        run_wrk(wrk_args, work, bare, "bare-warmup", args.warmup, "bw")
        r_bare = run_wrk(wrk_args, work, bare, "bare", args.bare_duration, "b")
        print(f"bare: {r_bare.rps:.0f} rps, p99 {r_bare.p99_us / 1000:.1f} ms, {r_bare.codes}")
        bare_us = {rate: bare_open_cpu(args, bare, rate) for rate in args.rates}
        print(
            "bare, open loop:",
            ", ".join(f"{us:.0f} us/request at {r:g}/s" for r, us in bare_us.items()),
        )
        bare.stop()

        target = Server("target", work, "--log", str(work / "target.log")).wait_ready()
        servers.append(target)
        log = TargetLog(work / "target.log")
        db = work / "box.db"
        box = started(Box(work, db), target, servers)
        print("box:", shlex.join(box.cmd), "(INGRESS_BOX_ADMIN_TOKEN set)")
        time.sleep(args.settle)  # start-up settles (first drains, caches) before idle counts
        cpu0 = box.cpu_seconds()
        time.sleep(args.idle)
        idle = Row(load="idle", cores=(box.cpu_seconds() - cpu0) / args.idle)
        idle_rss = box.rss_mib()
        print(f"idle: {idle.cores:.2%} of a core over {args.idle:g} s, RSS {idle_rss:.0f} MiB")

        before: tuple[Box, Path] | None = None
        if args.baseline:
            tree = benchlib.export(args.baseline, work / "baseline")
            before_box = started(Box(work, work / "before.db", tree=tree), target, servers)
            before = (before_box, work / "before.db")
            print(f"before: {args.baseline} as {shlex.join(before[0].cmd)}")
        for rate in args.rates:
            key = f"{rate:g}"
            rows[key] = open_phase(args, box, log, db, rate, args.duration, f"o{key}-")
            rows[key].bare_us = bare_us[rate]
            if before is not None:  # right after, so both meet the same machine
                row = open_phase(args, before[0], log, before[1], rate, args.duration, f"b{key}-")
                row.load, row.bare_us = f"{key}/s {args.baseline}", bare_us[rate]
                rows[f"before-{key}"] = row
            if args.profile and rate == args.profile_at:
                pyspy = profiling.find_pyspy()
                if pyspy is None:
                    print("  --profile: py-spy not found (pip install py-spy); not profiled")
                    continue
                OUT.mkdir(exist_ok=True)
                recorder = profiling.Recorder(
                    pyspy,
                    box.proc.pid,
                    max(1.0, args.duration - 1),
                    OUT / f"appliance-{key}.pyspy.txt",
                    rate=args.profile_rate,
                    gil=args.profile_gil,
                )
                try:
                    row = open_phase(args, box, log, db, rate, args.duration, f"p{key}-", recorder)
                finally:
                    recorder.stop()
                row.load = f"{key}/s (py-spy on)"
                rows[f"profiled-{key}"] = row
                profiled = (recorder, row)
        rows["closed"] = closed_phase(args, work, box, log, db, "wrk")
        if before is not None:
            row = closed_phase(args, work, before[0], log, before[1], "wrkb")
            row.load = f"wrk closed {args.baseline}"
            rows["before-closed"] = row
            before[0].stop()
        memory = memory_phase(args, box, db)
        print(
            f"  RSS: idle {idle_rss:.0f} MiB, before the backlog {memory['before']:.0f} MiB, "
            f"peak while loading {memory['peak']:.0f} MiB, with {memory['rows']:.0f} outbox "
            f"rows {memory['after']:.0f} MiB"
        )
        box.stop()
        lines = box.out.read_text(errors="replace").count("\n")
        print(f"box stderr (its log): {lines} lines, {box.out.stat().st_size / 1e6:.1f} MB")

        flags = logs_off_flags(args, box.cmd)
        if flags is None:
            print("logs off: no setting of `serve` turns the request/attempt logs off; row skipped")
        else:
            print("logs off:", shlex.join(flags), f"({args.logs_pairs} pairs of fresh boxes)")
            log_pairs = logs_pairs(args, work, target, log, flags, servers)
        if args.split:
            rows.update(split_phases(args, work, target, log, servers))
    finally:
        for server in servers:
            server.stop()

    ordered = [r for k, r in rows.items() if "closed" not in k and not k.startswith("split")]
    ordered += [rows["closed"]]
    ordered += [rows["before-closed"]] if "before-closed" in rows else []
    ordered += [row for pair in log_pairs for row in pair]
    ordered += [r for k, r in rows.items() if k.startswith("split")]
    table(ordered, idle)
    thread_table(ordered)
    closed = rows["closed"]
    sustained = min(closed.achieved, closed.delivered)
    print(
        f"bare {r_bare.rps:.0f} rps (p99 {r_bare.p99_us / 1000:.1f} ms); closed loop: accepted "
        f"{closed.achieved:.0f}/s, delivered {closed.delivered:.0f}/s while wrk ran; sustained "
        f"= min(accepted/s, delivered/s) = {sustained:.0f}/s = {sustained / r_bare.rps:.3f} of "
        f"bare; accepted/bare {closed.achieved / r_bare.rps:.3f}"
    )
    if "split-closed" in rows:
        split = rows["split-closed"]
        print(
            f"split (serve --no-run-worker + worker), closed loop: accepted "
            f"{split.achieved:.0f}/s, "
            f"delivered {split.delivered:.0f}/s while wrk ran ({split.achieved / r_bare.rps:.3f} "
            f"and {split.delivered / r_bare.rps:.3f} of bare)"
        )
    if log_pairs:
        ratios = ", ".join(f"{on.achieved / off.achieved:.2f}" for on, off in log_pairs)
        print(f"logs on/off accepted/s, pair by pair: {ratios}")
    verdicts(args, rows, idle, r_bare.rps, memory, idle_rss, log_pairs)
    if profiled is not None:
        recorder, row = profiled
        print(f"\nprofile of the {row.load} phase: {recorder.out}")
        print(
            f"  box CPU in that phase: {row.cores:.2f} cores, {row.cpu_us:.0f} us/webhook, of "
            f"which idle (idle cores / rate) {idle.cores * 1e6 / row.offered:.0f} us"
        )
        profiling.show(profiling.parse(recorder.out, recorder.cpu_by_tid), row.cpu_us)
    plot(ordered, args.plot)
    lost = sum(r.lost for r in ordered)
    if lost:
        print(f"FAIL (exit 1): {lost} acked webhooks never reached the target; work dir {work}")
        return 1
    print("PASS  no acked webhook lost")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
