"""Idle CPU of ``ingress-box serve`` and the cost of a log line, before and after, in one run.

Why: issue "Light as shipped" measured an idle box at 2.2 % of a core (consumer threads polling
the queue) and the request and attempt lines at ~218 us per webhook (a contended handler lock,
one ``write()`` per line, logging's formatting). This script measures both for two source trees:
``--baseline`` (a git ref, exported with ``git archive``) and the working tree, each run with
``PYTHONPATH`` pointing at its tree, and prints the ratios.

1. idle: ``python -m ingress_box serve`` at its defaults (fresh database, in-process worker),
   left ``--settle`` s after /healthz answers, then its CPU (utime + stime of the process and
   its children, from ``/proc/<pid>/stat``) over ``--idle`` s, as a share of one core;
2. logs: a child process calls ``logs.configure`` as serve does, with stderr to a file, and
   four threads log ``--lines`` request and attempt lines between them, shaped like the ones of
   ``metrics.py``; it prints CPU and wall microseconds per line, the handler's final flush
   included, and the parent checks that the file holds every line.

The machine is shared and noisy: compare the ratios of one run, not figures across runs.

    python tests/bench/bench_idle_logs.py --baseline REF [--idle 20] [--lines 40000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parents[2]
THREADS = 4


def child_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}
    return {**env, "PYTHONPATH": str(tree), "INGRESS_BOX_ADMIN_TOKEN": "bench-idle-token-0123456"}


def idle_share(tree: Path, work: Path, settle: float, seconds: float) -> float:
    """The share of one core an idle ``serve`` of ``tree`` used over ``seconds``."""
    port = benchlib.free_port()
    db = work / f"idle-{port}.db"
    with open(work / f"serve-{port}.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingress_box", "serve", "--db", str(db), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_env(tree),
            cwd=work,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError((work / f"serve-{port}.log").read_text()[-2000:])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("serve did not answer /healthz in 30 s") from None
                time.sleep(0.05)
        time.sleep(settle)  # start-up work (migrations, the first sweep) is not idle cost
        cpu0, t0 = benchlib.tree_cpu_seconds(proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = benchlib.tree_cpu_seconds(proc.pid), time.monotonic()
        return (cpu1 - cpu0) / (t1 - t0)
    finally:
        proc.terminate()
        proc.wait(20)


def log_child(lines: int, log_format: str) -> None:
    """Runs in the child: ``lines`` lines from THREADS threads; prints the figures as JSON."""
    from ingress_box import logs

    logs.configure(log_format)
    access, delivery = (
        logging.getLogger("ingress_box.access"),
        logging.getLogger("ingress_box.delivery"),
    )
    start = threading.Barrier(THREADS + 1)

    def run(n: int, thread: int) -> None:
        start.wait()
        for i in range(n):
            if i % 2:
                delivery.info(
                    "attempt",
                    extra={
                        "fields": {
                            "plugin": "generic",
                            "instance": "bench",
                            "delivery_id": f"d-{thread}-{i}",
                            "attempt": 1,
                            "outcome": "delivered",
                            "status": 200,
                            "error": None,
                            "next_in_s": None,
                            "ms": 1.23,
                        }
                    },
                )
            else:
                access.info(
                    "request",
                    extra={
                        "fields": {
                            "plugin": "generic",
                            "instance": "bench",
                            "route": "events",
                            "method": "POST",
                            "status": 202,
                            "outcome": "accepted",
                            "delivery_id": f"d-{thread}-{i}",
                            "ms": 0.42,
                        }
                    },
                )

    threads = [threading.Thread(target=run, args=(lines // THREADS, t)) for t in range(THREADS)]
    for t in threads:
        t.start()
    start.wait()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.join()
    logging.shutdown()  # the final flush is part of the cost
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    total = lines // THREADS * THREADS
    print(json.dumps({"cpu_us": cpu / total * 1e6, "wall_us": wall / total * 1e6, "n": total}))


def log_cost(tree: Path, work: Path, lines: int, log_format: str) -> dict[str, float]:
    err = work / f"log-{tree.name}-{log_format}.err"
    with open(err, "wb") as stderr:
        done = subprocess.run(
            [sys.executable, __file__, "--log-child", str(lines), "--format", log_format],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(tree),
            check=True,
            timeout=300,
        )
    figures: dict[str, float] = json.loads(done.stdout)
    written = err.read_text().count("\n")
    if written != figures["n"]:
        raise RuntimeError(f"{tree}: {written} lines written of {figures['n']}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git ref of the code before the change (HEAD~1, say)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--lines", type=int, default=40_000)
    parser.add_argument("--repeat", type=int, default=3, help="log runs per tree (best kept)")
    parser.add_argument("--log-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--format", default="text", help=argparse.SUPPRESS)
    parser.add_argument("--skip", choices=["idle", "logs"])
    args = parser.parse_args()
    if args.log_child:
        log_child(args.log_child, args.format)
        return 0
    if not args.baseline:
        parser.error("--baseline REF is required: the code to compare the working tree with")
    with tempfile.TemporaryDirectory(prefix="bench-idle-logs-") as tmp:
        work = Path(tmp)
        trees = {
            f"before ({args.baseline})": benchlib.export(args.baseline, work / "before"),
            "after (working tree)": ROOT,
        }
        print(f"cores: {os.cpu_count()}; the machine is shared, so compare within this run")
        if args.skip != "idle":
            idle = {
                name: idle_share(tree, work, args.settle, args.idle) for name, tree in trees.items()
            }
            for name, share in idle.items():
                print(f"idle serve, {name}: {share * 100:.2f} % of a core over {args.idle:.0f} s")
            before, after = idle.values()
            print(f"idle after/before: {after / before:.2f}" if before else "idle: before is 0")
        if args.skip != "logs":
            for log_format in ("text", "json"):
                costs = {
                    name: min(
                        (log_cost(tree, work, args.lines, log_format) for _ in range(args.repeat)),
                        key=lambda f: f["cpu_us"],
                    )
                    for name, tree in trees.items()
                }
                for name, f in costs.items():
                    print(
                        f"log line ({log_format}, {THREADS} threads), {name}: "
                        f"{f['cpu_us']:.1f} us CPU, {f['wall_us']:.1f} us wall per line"
                    )
                before_cost, after_cost = (f["cpu_us"] for f in costs.values())
                print(f"log line ({log_format}) CPU after/before: {after_cost / before_cost:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
