"""Quarantine under a flood of wrong signatures: do valid webhooks still get through, and fast?

Why: a request refused for its signature is kept on disk (issue 14, "quarantine and admit"),
so a hostile flood of wrong signatures could turn into a write per request that starves valid
webhooks of the one writer. The box keeps at most 5 a second per instance, through the same
group commits, without waiting for them. This measures it, each phase on a fresh box
(``serve.py box --no-worker``, ``synchronous=FULL``, instance ``generic/bench``):

1. valid: signed ~1 KB webhooks at ``--rate`` for ``--duration`` s (open loop, sender.py);
2. flood: the same valid stream, and at the same time ``--flood-conns`` connections sending
   wrong signatures with ``--flood-bytes`` bodies back to back;
3. flood, quarantine off (``INGRESS_BOX_QUARANTINE_KEPT=0``): the same, nothing kept.

It prints the valid requests' ack p50/p99 and 202 count per phase, the flood's achieved rate,
and the rows and bytes kept at the end. The ratios that matter: the valid p99 in (2) against (3)
(the cost of keeping), and every valid request accepted in each phase. Exit 1 if a valid
request was not accepted or the kept rows exceed the caps.

    python tests/bench/bench_quarantine.py [--rate 200] [--duration 10] [--flood-conns 8]
        [--flood-bytes 65536]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
import sender
import uvloop
from benchlib import PATH, Server, pct

CAP_BYTES = 10_485_760  # the default INGRESS_BOX_QUARANTINE_BYTES
CAP_KEPT = 100  # the default INGRESS_BOX_QUARANTINE_KEPT


async def _flood(port: int, conns: int, size: int, stop_at: float) -> int:
    """Wrong signatures over ``conns`` connections until ``stop_at``; how many were answered."""
    post, close = await sender._post_raw(conns, port, PATH)
    wrong = {"content-type": "application/json", "x-signature": "sha256=" + "0" * 64}
    answered = 0

    async def one_connection(n: int) -> None:
        nonlocal answered
        i = 0
        while time.monotonic() < stop_at:
            raw = benchlib.body(n * 1_000_000 + i, size)
            i += 1
            if await post(raw, wrong) == 401:
                answered += 1

    await asyncio.gather(*(one_connection(n) for n in range(conns)))
    await close()
    return answered


async def _phase(port: int, args: argparse.Namespace, flood: bool) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    stop_at = time.monotonic() + args.duration + 0.1
    valid = sender._send(url, args.rate, args.duration, "q", 16)
    if not flood:
        return {"valid": await valid, "flood": 0}
    got, flooded = await asyncio.gather(
        valid, _flood(port, args.flood_conns, args.flood_bytes, stop_at)
    )
    return {"valid": got, "flood": flooded}


def run_phase(name: str, args: argparse.Namespace, flood: bool, kept: int) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="bench-quarantine-"))
    db = workdir / "box.db"
    benchlib.prepare_db(db)
    env = {"INGRESS_BOX_QUARANTINE_KEPT": str(kept)}
    box = Server("box", workdir, "--db", str(db), "--no-worker", env=env).wait_ready()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_phase(box.port, args, flood))
    finally:
        box.stop()
    valid = result["valid"]
    accepted = valid["acks"].get(202, 0)
    expected = int(args.rate * args.duration)
    rows = benchlib.count(db, "SELECT count(*) FROM rejections")
    stored = benchlib.count(db, "SELECT coalesce(sum(size), 0) FROM rejections")
    print(
        f"{name:<24} valid {accepted}/{expected} accepted, ack p50 "
        f"{pct(valid['ack_ms'], 50):6.1f} ms p99 {pct(valid['ack_ms'], 99):6.1f} ms; "
        f"flood {result['flood'] / args.duration:7.1f}/s; kept {rows} rows, {stored} bytes",
        flush=True,
    )
    ok = accepted == expected and rows <= CAP_KEPT and stored <= CAP_BYTES
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  FAIL: work folder kept at {workdir}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--flood-conns", type=int, default=8)
    parser.add_argument("--flood-bytes", type=int, default=65536)
    args = parser.parse_args()
    results = [
        run_phase("valid only", args, flood=False, kept=CAP_KEPT),
        run_phase("flood, quarantine on", args, flood=True, kept=CAP_KEPT),
        run_phase("flood, quarantine off", args, flood=True, kept=0),
    ]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
