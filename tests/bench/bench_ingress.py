"""Ingress foundation benchmark: how close does the box get to a bare HMAC endpoint?

Why: the issue asks that verifying + durably committing a webhook (SQLite, synchronous=FULL,
group commit) costs little next to the HTTP stack itself. The machine is shared and noisy, so
every figure is a ratio against a baseline measured in the same run:

1. bare: a Starlette endpoint that reads the body and checks X-Signature (the ceiling);
2. box: ingress_box.app.create_app(...) with run_worker=False (ingress alone; no target, so a
   worker would only dead-letter and compete for CPU), fresh database, synchronous=FULL, instance
   generic/bench with verification ON;
3. dup: the box again, resending ids that are already stored (the duplicate path).

Same uvicorn options for both servers (serve.py), same wrk load (-t2 -c64, ~1 KB signed JSON
bodies, a unique X-Delivery per request). wrk's Lua counts statuses and requests sent per thread
(wrk calls request() once more to check the script: that id, m1-1, is never sent), so the script
checks that every 202 is a committed row: 202s <= rows <= 202s + requests still in flight when
wrk stopped (their answer was never read; the box may have committed them). It exits 1 if that
fails or if the dup run stores anything; target misses (box >= 70% of bare rps, the first
release's target, and >= 50%, issue "Light as shipped"; p99 < 50 ms) only print FAIL.

    python tests/bench/bench_ingress.py [--duration 15] [--warmup 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib
from benchlib import PATH, SECRET, Server

LUA = r"""
local data = dofile("%(bodies)s")
local bodies, sigs, nb = data.bodies, data.sigs, #data.bodies
local path, prefix, dup, out = "%(path)s", "%(prefix)s", %(dup)d, "%(out)s"
local threads = {}
function setup(thread) table.insert(threads, thread); thread:set("tid", #threads) end
function init(args) sent, codes = 0, {}; hdr = {["Content-Type"] = "application/json"} end
function request()
  sent = sent + 1
  local i = sent %% nb + 1
  hdr["X-Signature"] = sigs[i]
  if dup > 0 then hdr["X-Delivery"] = prefix .. (sent %% dup + 2)
  else hdr["X-Delivery"] = prefix .. tid .. "-" .. sent end
  return wrk.format("POST", path, hdr, bodies[i])
end
function response(status, headers, body) codes[status] = (codes[status] or 0) + 1 end
function done(summary, latency, requests)
  local f = io.open(out, "w")
  local e = summary.errors
  f:write(string.format("requests %%d\nduration_us %%d\np50_us %%d\np99_us %%d\nmax_us %%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max))
  f:write(string.format("errors %%d %%d %%d %%d %%d\n", e.connect, e.read, e.write, e.status,
    e.timeout))
  local total = 0
  for _, t in ipairs(threads) do
    total = total + t:get("sent")
    for code, n in pairs(t:get("codes")) do f:write(string.format("code %%d %%d\n", code, n)) end
  end
  f:write("sent " .. total - 1 .. "\n")  -- wrk calls request() once to verify it: not sent
  f:close()
end
"""


def write_bodies(path: Path, n: int, size: int) -> None:
    """A Lua table of n distinct ~1 KB JSON bodies and their signatures (wrk stays cheap)."""
    raws = [benchlib.body(i, size) for i in range(n)]
    assert not any(b"]]" in raw for raw in raws)
    with open(path, "w") as f:
        f.write("return {bodies = {\n")
        f.writelines(f"[[{raw.decode()}]],\n" for raw in raws)
        f.write("}, sigs = {\n")
        f.writelines(f'"{benchlib.sign(raw)}",\n' for raw in raws)
        f.write("}}\n")


@dataclass
class Run:
    """What one wrk run's Lua done() reported, plus the server's CPU and the machine's load."""

    requests: int = 0
    duration_us: int = 1
    p50_us: int = 0
    p99_us: int = 0
    max_us: int = 0
    sent: int = 0
    codes: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cpu: float = 0.0  # server CPU seconds during the run
    busy: float = 0.0  # fraction of all cores busy during the run

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def inflight(self) -> int:  # sent, but wrk stopped before reading the answer
        return self.sent - sum(self.codes.values())

    def show(self, name: str) -> None:
        errors = {k: v for k, v in self.errors.items() if v}
        print(
            f"{name:<5} {self.rps:7.0f} rps  p50 {self.p50_us / 1000:5.1f} ms  p99 "
            f"{self.p99_us / 1000:5.1f} ms  max {self.max_us / 1000:5.1f} ms  server CPU "
            f"{self.cpu * 1e6 / max(1, self.requests):4.0f} us/req  machine {self.busy:4.0%} "
            f"busy  statuses {self.codes}" + (f"  socket errors {errors}" if errors else "")
        )


def wrk(
    args: argparse.Namespace,
    work: Path,
    server: Server,
    name: str,
    seconds: float,
    prefix: str,
    dup: int = 0,
) -> Run:
    """One bounded wrk run against ``server``."""
    script, out = work / f"{name}.lua", work / f"{name}.result"
    script.write_text(
        LUA
        % {"bodies": work / "bodies.lua", "path": PATH, "prefix": prefix, "dup": dup, "out": out}
    )
    cmd = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        server.url + PATH,
    ]
    cpu, ticks = server.cpu_seconds(), benchlib.cpu_ticks()
    with open(work / f"{name}.wrk.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(seconds + 30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    run = Run(cpu=server.cpu_seconds() - cpu, busy=benchlib.busy_since(ticks))
    for line in out.read_text().splitlines():
        key, *vals = line.split()
        if key == "code":
            run.codes[int(vals[0])] = run.codes.get(int(vals[0]), 0) + int(vals[1])
        elif key == "errors":
            run.errors = dict(
                zip(("connect", "read", "write", "status", "timeout"), map(int, vals), strict=False)
            )
        else:
            setattr(run, key, int(vals[0]))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--bodies", type=int, default=1000, help="distinct signed bodies")
    parser.add_argument("--body-size", type=int, default=1024)
    parser.add_argument("--dup-ids", type=int, default=1000, help="stored ids the dup run resends")
    parser.add_argument(
        "--logs",
        action="store_true",
        help="also run the box logging one line "
        "per request, as `ingress-box serve` does (serve.py box --logs)",
    )
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    write_bodies(work / "bodies.lua", args.bodies, args.body_size)
    print(
        f"# ingress benchmark {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
        f"(+{args.warmup:g}s warm-up), {args.body_size} B bodies, work dir {work}"
    )
    servers: list[Server] = []
    try:
        bare = Server("bare", work, "--secret", SECRET).wait_ready()
        servers.append(bare)
        print("bare", bare.settings_line())
        wrk(args, work, bare, "bare-warmup", args.warmup, "bw")
        r_bare = wrk(args, work, bare, "bare", args.duration, "b")
        bare.stop()

        db = work / "box.db"
        benchlib.prepare_db(db)
        box = Server("box", work, "--db", str(db), "--no-worker").wait_ready()
        servers.append(box)
        print("box ", box.settings_line())
        r_warm = wrk(args, work, box, "box-warmup", args.warmup, "w")
        r_box = wrk(args, work, box, "box", args.duration, "m")
        time.sleep(0.5)  # let the abandoned in-flight requests finish committing
        rows = benchlib.count(db, "SELECT count(*) FROM deliveries")
        dup = max(1, min(args.dup_ids, r_box.codes.get(202, 0) // args.threads - 2))
        r_dup = wrk(args, work, box, "dup", args.duration, "m1-", dup)
        rows_after_dup = benchlib.count(db, "SELECT count(*) FROM deliveries")
        box.stop()

        r_log: Run | None = None
        if args.logs:
            benchlib.prepare_db(work / "log.db")
            logged = Server(
                "box", work, "--db", str(work / "log.db"), "--no-worker", "--logs"
            ).wait_ready()
            servers.append(logged)
            wrk(args, work, logged, "log-warmup", args.warmup, "lw")
            r_log = wrk(args, work, logged, "logged", args.duration, "l")
            logged.stop()
    finally:
        for server in servers:
            server.stop()

    print()
    r_bare.show("bare")
    r_box.show("box")
    r_dup.show("dup")
    if r_log is not None:
        r_log.show("logs")  # the box logging one line per request, as `ingress-box serve`
    ratio = r_box.rps / r_bare.rps
    cpu_ratio = (r_box.cpu / r_box.requests) / (r_bare.cpu / r_bare.requests)
    print(f"ratio box/bare rps {ratio:.2f} (server CPU per request box/bare {cpu_ratio:.1f}x)")
    print(f"ratio dup/bare rps {r_dup.rps / r_bare.rps:.2f}")
    if r_log is not None:
        print(f"ratio box-with-logs/box rps {r_log.rps / r_box.rps:.2f}")
    print(f"{'PASS' if ratio >= 0.70 else 'FAIL'}  box >= 70% of bare rps ({ratio:.0%})")
    print(f"{'PASS' if ratio >= 0.50 else 'FAIL'}  box >= 50% of bare rps, issue 12 ({ratio:.0%})")
    p99 = r_box.p99_us / 1000
    print(f"{'PASS' if p99 < 50 else 'FAIL'}  box p99 < 50 ms ({p99:.1f} ms)")

    ok = r_warm.codes.get(202, 0) + r_box.codes.get(202, 0)
    other = {c: n for r in (r_warm, r_box) for c, n in r.codes.items() if c != 202}
    inflight = r_warm.inflight + r_box.inflight
    print(
        f"committed-row check: 202 responses {ok}, rows in deliveries {rows}, requests in "
        f"flight at wrk's stop {inflight}, non-202 {other or 'none'}"
    )
    print(
        f"dup run: rows before {rows}, after {rows_after_dup} (must not change), statuses "
        f"{r_dup.codes}"
    )
    failed = []
    if not ok <= rows <= ok + inflight:
        failed.append(f"rows ({rows}) outside [202s, 202s + in flight] = [{ok}, {ok + inflight}]")
    if rows_after_dup != rows:
        failed.append(f"the duplicate run stored {rows_after_dup - rows} new rows")
    for problem in failed:
        print("FAIL (exit 1):", problem)
    if not failed:
        print("PASS  every 202 is a committed row")
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
