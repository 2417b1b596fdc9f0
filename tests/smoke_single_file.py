"""Smoke test of the built single file (``dist/ingress-box.pyz``): the whole appliance with no
virtualenv and no network.

    python3 tests/smoke_single_file.py [FILE] [--interpreter PYTHON] [--online]

FILE (default ``dist/ingress-box.pyz``) runs with a clean environment: ``PATH=/usr/bin:/bin`` (so
its ``#!/usr/bin/env python3`` finds the system Python, not a venv or pyenv), no ``PYTHONPATH``,
``HOME`` a fresh temporary folder (so shiv unpacks into an empty cache, as on a user's first run).
``--interpreter`` runs it as ``PYTHON FILE`` instead (e.g. python3.12). As root with ``unshare``
and ``ip`` at hand, everything runs in a new network namespace that has only loopback (proof of
"no network"); ``--online`` skips that.

It checks, in order: ``serve`` on an empty data path (parent folder missing) answers /healthz
and /readyz; an instance made with the admin API; a signed ``generic`` webhook is acked 202 and
forwarded byte for byte to a local target; SIGTERM exits 0; ``--version`` prints pyproject's
version; ``--help`` of every command and subcommand exits 0; the operator commands work on the
file (instances add/list/rotate/remove, deliveries list/show, dlq list/redrive, admin-token
reset); ``worker`` starts and exits 0 on SIGTERM; a
restarted ``serve`` still lists the delivery as delivered and answers a resend with the same ack
bytes, without forwarding it again; SIGTERM exits 0.

Only the standard library is used (and the tests' own helpers beside this file, which use only
it too: the fake target, the wait, the signer). Exit status 0 when every check passed. (Its
summary line is worded so that CI's reader still takes pytest's closing line as the test count.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fake_target import FakeTarget, running_target
from signers import sign_generic
from waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "smoke-admin-token-0123456789"
SECRET = "smoke-shared-secret"
BODY = b'{"event":"message","text":"hello from the smoke test"}'
PASSED: list[str] = []


def check(name: str, condition: bool, detail: object = "") -> None:
    if not condition:
        print(f"FAILED: {name} {detail}", flush=True)
        print(f"smoke test FAILED after {len(PASSED)} good checks")
        sys.exit(1)
    PASSED.append(name)
    print(f"ok: {name}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def admin(method: str, base: str, path: str, data: object = None) -> tuple[int, Any]:
    body = None if data is None else json.dumps(data).encode()
    status, _, raw = request(
        method,
        base + path,
        body,
        {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
    )
    return status, json.loads(raw) if raw else None


class Program:
    """How to run the built file: the file itself (its shebang) or ``PYTHON FILE``."""

    def __init__(self, file: Path, interpreter: str | None, home: Path) -> None:
        self.argv = [interpreter, str(file)] if interpreter else [str(file)]
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, log: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [*self.argv, *args], env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT
            )


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path) -> float:
    started = time.monotonic()

    def healthy() -> bool:
        if proc.poll() is not None:
            check("serve keeps running", False, log.read_text()[-3000:])
        try:
            return request("GET", base + "/healthz")[0] == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    ok = wait_for(healthy, 30)
    check("serve answers /healthz within 30 s", ok, "" if ok else log.read_text()[-3000:])
    return time.monotonic() - started


def stop(proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        check(f"{what} exits within 20 s of SIGTERM", False, log.read_text()[-3000:])
    check(f"{what} exits 0 on SIGTERM", code == 0, f"(exit {code})\n{log.read_text()[-3000:]}")


def wait_for(condition: Callable[[], object], seconds: float = 20) -> bool:
    """True once ``condition()`` holds; False at the deadline, for check() to report."""
    try:
        eventually(condition, seconds, "a smoke check")
    except AssertionError:
        return False
    return True


def every_command(program: Program, prefix: tuple[str, ...] = ()) -> list[str]:
    """Walk the command tree through ``--help`` (so each command's module loads from the file)."""
    out = program.run(*prefix, "--help")
    check(f"`{' '.join((*prefix, '--help'))}` exits 0", out.returncode == 0, out.stderr[-2000:])
    found = [" ".join(prefix)] if prefix else []
    lines = out.stdout.splitlines()
    if "Commands:" not in lines:
        return found
    for line in lines[lines.index("Commands:") + 1 :]:
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a wrapped description, not a command
        found += every_command(program, (*prefix, line.split()[0]))
    return found


def signed_post(base: str) -> tuple[int, dict[str, str], bytes]:
    return request(
        "POST",
        base + "/ingress/generic/smoke/events",
        BODY,
        {"content-type": "application/json", **sign_generic(SECRET, BODY, msg_id="smoke-evt-1")},
    )


def smoke(program: Program, work: Path) -> None:
    with running_target() as target:
        smoke_with(program, work, target)


def smoke_with(program: Program, work: Path, target: FakeTarget) -> None:
    db = work / "data" / "box.db"  # the parent folder does not exist yet
    log = work / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "INGRESS_BOX_DB": str(db),
        "INGRESS_BOX_HOST": "127.0.0.1",
        "INGRESS_BOX_PORT": str(port),
        "INGRESS_BOX_ADMIN_TOKEN": TOKEN,
        "INGRESS_BOX_RETRY_BASE_SECONDS": "0.1",
        "INGRESS_BOX_RETRY_MAX_SECONDS": "0.5",
    }
    serve = program.start(log, "serve", env=env)
    first = wait_healthy(serve, base, log)
    check(f"serve on an empty data path answers /healthz ({first:.2f} s, first run: unpacks)", True)
    check("the database was created", db.exists())
    check(
        "/readyz is 200 (database writable, worker alive)",
        wait_for(lambda: request("GET", base + "/readyz")[0] == 200, 10),
    )

    status, created = admin(
        "POST",
        base,
        "/admin/instances",
        {"plugin": "generic", "instance": "smoke", "target_url": target.url, "secret": SECRET},
    )
    check("POST /admin/instances is 201", status == 201, created)
    ack = signed_post(base)
    check("a signed webhook is acked 202", ack[0] == 202, ack)
    check("it is forwarded to the local target", wait_for(lambda: len(target.received) == 1))
    headers, body = target.received[0].headers, target.received[0].body
    check(
        "forwarded byte for byte, signed for the target",
        body == BODY
        and headers.get("webhook-signature", "").startswith("v1,")
        and headers.get("ingress-box-delivery-id") == "smoke-evt-1",
        headers,
    )

    def delivered() -> list[dict[str, Any]]:
        status, page = admin("GET", base, "/admin/deliveries?plugin=generic&instance=smoke")
        return [d for d in (page or {}).get("items", []) if d.get("state") == "delivered"]

    check("the delivery is listed as delivered", wait_for(lambda: len(delivered()) == 1))
    delivery_id = delivered()[0]["id"]
    stop(serve, "serve", log)

    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = program.run("--version")
    check(
        "--version prints pyproject's version",
        out.returncode == 0 and out.stdout.strip() == f"ingress-box, version {expected}",
        f"{out.returncode} {out.stdout!r} {out.stderr[-2000:]}",
    )
    commands = every_command(program)
    check(f"--help of every command ({len(commands)}) exits 0", len(commands) >= 10, commands)

    cli_env = {"INGRESS_BOX_DB": str(db)}
    for args in (
        ["instances", "list", "--db", str(db)],
        ["instances", "add", "generic", "cli-made", "--target-url", target.url, "--db", str(db)],
        ["instances", "rotate", "generic", "cli-made", "--db", str(db)],
        ["instances", "remove", "generic", "cli-made", "--db", str(db)],
        ["deliveries", "list", "--db", str(db), "--json"],
        ["deliveries", "show", delivery_id, "--db", str(db)],
        ["dlq", "list", "--db", str(db)],
        ["dlq", "redrive", "--db", str(db)],
        ["admin-token", "reset", "--db", str(db)],
    ):
        out = program.run(*args, env=cli_env)
        check(
            f"`{' '.join(a for a in args if a != str(db))}` exits 0",
            out.returncode == 0,
            f"{out.returncode} {out.stdout[-1000:]} {out.stderr[-2000:]}",
        )
        if args[:2] == ["instances", "list"]:
            check("`instances list` shows the instance", "smoke" in out.stdout, out.stdout)
        if args[:2] == ["deliveries", "list"]:
            items = json.loads(out.stdout)["items"]
            check(
                "`deliveries list` shows it delivered",
                [(d["id"], d["state"]) for d in items] == [(delivery_id, "delivered")],
                items,
            )

    worker_log = work / "worker.log"
    worker = program.start(worker_log, "worker", "--db", str(db), env={})
    check(
        "worker starts and is running",
        wait_for(lambda: " started on " in worker_log.read_text() or worker.poll() is not None)
        and worker.poll() is None,
        worker_log.read_text()[-3000:],
    )
    stop(worker, "worker", worker_log)

    serve = program.start(log, "serve", env=env)
    second = wait_healthy(serve, base, log)
    check(f"restarted serve answers /healthz ({second:.2f} s)", True)
    check(
        "after the restart the delivery is still delivered",
        [d["id"] for d in delivered()] == [delivery_id],
    )
    again = signed_post(base)
    check(
        "a resend is a duplicate with the same ack bytes",
        (again[0], again[2]) == (ack[0], ack[2]),
        (ack, again),
    )
    # A duplicate makes no new row, so there is nothing the worker could forward again.
    _, listing = admin("GET", base, "/admin/deliveries?plugin=generic&instance=smoke")
    check(
        "the duplicate is not stored again",
        [d["id"] for d in (listing or {}).get("items", [])] == [delivery_id],
        listing,
    )
    check("the duplicate is not forwarded again", len(target.received) == 1, target.received)
    stop(serve, "serve (restarted)", log)


def offline_wrapper(args: argparse.Namespace) -> list[str] | None:
    """The command that re-runs this script in a network namespace with only loopback."""
    if args.online or os.environ.get("SMOKE_IN_NETNS") or os.geteuid() != 0:
        return None
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        return None
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    inner = " ".join(["exec", sys.executable, *map(_quote, sys.argv)])
    return [unshare, "--net", "sh", "-c", f"{ip} link set lo up && {inner}"]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", default=str(ROOT / "dist" / "ingress-box.pyz"))
    parser.add_argument("--interpreter", help="run the file as INTERPRETER FILE")
    parser.add_argument("--online", action="store_true", help="do not cut off the network")
    args = parser.parse_args()
    wrapper = offline_wrapper(args)
    if wrapper:
        print("(running in a network namespace with only loopback: no network)", flush=True)
        return subprocess.run(wrapper, env={**os.environ, "SMOKE_IN_NETNS": "1"}).returncode
    file = Path(args.file).resolve()
    if not file.is_file():
        print(f"no file {file}: run tests/build_single_file.sh first", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ingress-box-smoke-") as tmp:
        work = Path(tmp)
        (work / "home").mkdir()
        try:
            smoke(Program(file, args.interpreter, work / "home"), work)
        except SystemExit:
            raise
        except BaseException:
            for name in ("serve.log", "worker.log"):
                if (work / name).exists():
                    print(f"--- {name}\n{(work / name).read_text()[-3000:]}")
            raise
    print(
        f"smoke test of {file.name} passed: all {len(PASSED)} checks, "
        f"{time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
