"""Start-up time and idle memory of ``serve`` on an empty database (issue 7's budget: answering
``/healthz`` in under 1 s, idle under 80 MB RSS).

    python tests/bench/bench_startup.py [--runs N] [--idle SECONDS] [--json] -- COMMAND...

COMMAND is how to start the program, e.g. ``ingress-box`` (a venv install), ``dist/ingress-box.pyz``
(the shiv build) or ``dist/ingress-box`` (a PyInstaller one-file build); ``serve`` and the options
are added here. Each run starts ``COMMAND serve`` on a fresh empty database in a fresh folder and
measures the wall time from ``Popen`` to the first ``200`` from ``/healthz`` (polled every 5 ms),
then waits ``--idle`` seconds and sums ``VmRSS`` over the process and all its descendants
(PyInstaller's one-file bootloader is a parent process of the real one), then stops it with
SIGTERM and checks it exits 0.

HOME (and so shiv's extraction cache, ``~/.shiv``) is one fresh folder for all runs of one
invocation: run 1 is the first run of a single-file build (it unpacks), the later runs are
warm. Exit status 1 when the later runs' median misses 1 s or the idle RSS median 80 MiB. Only
the standard library is used, so any Python runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and every descendant, in KiB (shared pages counted once per process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def one_run(command: list[str], workdir: Path, home: Path, idle: float) -> dict[str, float]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "INGRESS_BOX_DB": str(workdir / "box.db"),
        "INGRESS_BOX_HOST": "127.0.0.1",
        "INGRESS_BOX_PORT": str(port),
        "INGRESS_BOX_ADMIN_TOKEN": "bench-admin-token",
    }
    url = f"http://127.0.0.1:{port}/healthz"
    log = workdir / "serve.log"
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*command, "serve"], env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}:\n{log.read_text()[-2000:]}")
            if time.perf_counter() - started > 60:
                raise RuntimeError("serve did not answer /healthz within 60 s")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        ready = time.perf_counter() - started
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.005)
        time.sleep(idle)
        rss = tree_rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    if code != 0:
        raise RuntimeError(f"serve exited {code} on SIGTERM:\n{log.read_text()[-2000:]}")
    return {"healthz_seconds": round(ready, 3), "idle_rss_mib": round(rss / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading RSS")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("command", nargs="+", help="the program, e.g. ingress-box")
    args = parser.parse_args()
    program = args.command[0]
    program = os.path.abspath(program) if os.sep in program else shutil.which(program) or program
    command = [program, *args.command[1:]]
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        home = root / "home"
        home.mkdir()
        runs = []
        for i in range(args.runs):
            workdir = root / f"run{i}"
            workdir.mkdir()
            runs.append(one_run(command, workdir, home, args.idle))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    warm = runs[1:] or runs
    warm_median = statistics.median(r["healthz_seconds"] for r in warm)
    rss_median = statistics.median(r["idle_rss_mib"] for r in runs)
    result = {
        "command": " ".join(args.command),
        "first_healthz_seconds": runs[0]["healthz_seconds"],
        "warm_healthz_seconds_median": warm_median,
        "idle_rss_mib_median": rss_median,
        "runs": runs,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['command']}: first /healthz {result['first_healthz_seconds']} s, "
            f"warm median {result['warm_healthz_seconds_median']} s, idle RSS median "
            f"{result['idle_rss_mib_median']} MiB ({len(runs)} runs)"
        )
    return 0 if warm_median < 1.0 and rss_median < 80 else 1


if __name__ == "__main__":
    sys.exit(main())
