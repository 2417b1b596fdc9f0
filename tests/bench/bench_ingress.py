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
fails or if the dup run stores anything; target misses (box >= 70% of bare rps, p99 < 50 ms) only
print FAIL.

    python tests/bench/bench_ingress.py [--duration 15] [--warmup 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def wrk(args: argparse.Namespace, work: Path, url: str, name: str, seconds: float,
        prefix: str, dup: int = 0) -> dict[str, object]:
    """One bounded wrk run; returns what its Lua done() wrote."""
    script, out = work / f"{name}.lua", work / f"{name}.result"
    script.write_text(LUA % {"bodies": work / "bodies.lua", "path": PATH, "prefix": prefix,
                             "dup": dup, "out": out})
    cmd = [args.wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s",
           "--timeout", "10s", "--latency", "-s", str(script), url + PATH]
    with open(work / f"{name}.wrk.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(seconds + 30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    result: dict[str, object] = {"codes": {}}
    for line in out.read_text().splitlines():
        key, *vals = line.split()
        if key == "code":
            codes = result["codes"]
            assert isinstance(codes, dict)
            codes[int(vals[0])] = codes.get(int(vals[0]), 0) + int(vals[1])
        elif key == "errors":
            result["errors"] = dict(zip(("connect", "read", "write", "status", "timeout"),
                                        map(int, vals)))
        else:
            result[key] = int(vals[0])
    result["rps"] = int(result["requests"]) / (int(result["duration_us"]) / 1e6)  # type: ignore
    return result


def show(name: str, r: dict[str, object], cpu: float | None = None) -> None:
    cpu_txt = f"  server CPU {cpu * 1e6 / int(r['requests']):6.0f} us/req" if cpu else ""  # type: ignore
    print(f"{name:<6} {r['rps']:9.0f} rps  p50 {int(r['p50_us']) / 1000:6.2f} ms  "  # type: ignore
          f"p99 {int(r['p99_us']) / 1000:6.2f} ms  max {int(r['max_us']) / 1000:7.1f} ms  "  # type: ignore
          f"statuses {r['codes']}  socket errors {r.get('errors')}{cpu_txt}")


def measured(args: argparse.Namespace, work: Path, server: Server, name: str,
             prefix: str, dup: int = 0) -> tuple[dict[str, object], float]:
    before = server.cpu_seconds()
    result = wrk(args, work, server.url, name, args.duration, prefix, dup)
    return result, server.cpu_seconds() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--bodies", type=int, default=1000, help="distinct signed bodies")
    parser.add_argument("--body-size", type=int, default=1024)
    parser.add_argument("--dup-ids", type=int, default=1000, help="stored ids the dup run resends")
    parser.add_argument("--access-log", action="store_true",
                        help="also run the box with log_level info + access log (as the CLI)")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    write_bodies(work / "bodies.lua", args.bodies, args.body_size)
    print(f"# ingress benchmark {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
          f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
          f"(+{args.warmup:g}s warm-up), {args.body_size} B bodies, work dir {work}")
    servers: list[Server] = []
    try:
        bare = Server("bare", work, "--secret", SECRET).wait_ready()
        servers.append(bare)
        print("bare", bare.settings_line())
        wrk(args, work, bare.url, "bare-warmup", args.warmup, "bw")
        r_bare, cpu_bare = measured(args, work, bare, "bare", "b")
        bare.stop()

        db = work / "box.db"
        benchlib.prepare_db(db)
        box = Server("box", work, "--db", str(db), "--no-worker").wait_ready()
        servers.append(box)
        print("box ", box.settings_line())
        r_warm = wrk(args, work, box.url, "box-warmup", args.warmup, "w")
        r_box, cpu_box = measured(args, work, box, "box", "m")
        time.sleep(0.5)  # let the abandoned in-flight requests finish committing
        rows = benchlib.count(db, "SELECT count(*) FROM deliveries")
        dup = min(args.dup_ids, int(r_box["codes"].get(202, 0)) // args.threads)  # type: ignore
        r_dup, cpu_dup = measured(args, work, box, "dup", "m1-", dup=max(dup, 1))
        rows_after_dup = benchlib.count(db, "SELECT count(*) FROM deliveries")
        box.stop()

        r_log = None
        if args.access_log:
            benchlib.prepare_db(work / "log.db")
            logged = Server("box", work, "--db", str(work / "log.db"), "--no-worker",
                            "--access-log").wait_ready()
            servers.append(logged)
            wrk(args, work, logged.url, "log-warmup", args.warmup, "lw")
            r_log, cpu_log = measured(args, work, logged, "logged", "l")
            logged.stop()
    finally:
        for server in servers:
            server.stop()

    print()
    show("bare", r_bare, cpu_bare)
    show("box", r_box, cpu_box)
    show("dup", r_dup, cpu_dup)
    if r_log is not None:
        show("box+access-log", r_log, cpu_log)
    ratio = float(r_box["rps"]) / float(r_bare["rps"])  # type: ignore
    print(f"ratio box/bare rps      {ratio:.2f}   (server CPU per request box/bare "
          f"{cpu_box / int(r_box['requests']) / (cpu_bare / int(r_bare['requests'])):.2f})")  # type: ignore
    print(f"ratio dup/bare rps      {float(r_dup['rps']) / float(r_bare['rps']):.2f}")  # type: ignore
    if r_log is not None:
        print(f"ratio box+access-log/box rps {float(r_log['rps']) / float(r_box['rps']):.2f}")  # type: ignore
    print(f"{'PASS' if ratio >= 0.70 else 'FAIL'}  box >= 70% of bare rps ({ratio:.0%})")
    p99 = int(r_box["p99_us"]) / 1000  # type: ignore
    print(f"{'PASS' if p99 < 50 else 'FAIL'}  box p99 < 50 ms ({p99:.1f} ms)")

    ok = sum(int(r["codes"].get(202, 0)) for r in (r_warm, r_box))  # type: ignore
    other = {c: n for r in (r_warm, r_box) for c, n in r["codes"].items() if c != 202}  # type: ignore
    inflight = sum(int(r["sent"]) - sum(r["codes"].values()) for r in (r_warm, r_box))  # type: ignore
    print(f"committed-row check: 202 responses {ok}, rows in deliveries {rows}, requests in "
          f"flight at wrk's stop {inflight}, non-202 {other or 'none'}")
    print(f"dup run: rows before {rows}, after {rows_after_dup} (must not change), statuses "
          f"{r_dup['codes']}")
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
