"""py-spy around a benchmark phase, and what its samples say: top functions by own and by
cumulative samples, per thread, and per cost category (ingress, logging, metrics, claim and
outcome transactions, the commit, HTTP client, hand-offs, huey, the event loop).

py-spy counts a thread's sample whenever the thread is not sleeping, which includes waiting for a
CPU on a busy machine and for the disk (fsync). So samples are turned into CPU with each thread's
own CPU from ``/proc/<pid>/task/<tid>/stat`` over the same window: a function's estimated CPU is
its share of its thread's samples times that thread's CPU. ``--nonblocking`` because pausing the
process (py-spy's default) makes sleeping threads look active here (186 samples of an idle box in
3 s, against 13 without pausing).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import benchlib

# A sample's category: the first of DOMINANT that matches any frame of its stack (so a lock
# taken inside logging counts as logging), else the first of NEAREST met walking from the leaf
# towards the root. A rule is (category, file regex, qualname regex); frames read
# "qualname (file:line)", files relative to site-packages or the project.
DOMINANT: list[tuple[str, str, str]] = [
    ("logging (format, lock, write)", r"^(logging/|ingress_box/logs\.py)", ""),
    ("metrics (prometheus observers)", r"^prometheus_client/", ""),
    ("metrics (prometheus observers)", r"^ingress_box/metrics\.py", ""),
    (
        "huey queue (enqueue, dequeue polling, scheduler)",
        r"^(huey/|ingress_box/worker\.py|ingress_box/store/queue\.py)",
        r"^(Huey\.(dequeue|enqueue|pending_count)|_Waking\.|SqliteQueue\.|PostgresQueue\.|"
        r"Scheduler\.|BaseProcess\.sleep)",
    ),
    ("claim transaction (SQL)", r"^ingress_box/store/deliveries\.py", r"^claim\b"),
    ("outcome transaction (SQL)", r"^ingress_box/store/deliveries\.py", r"^(record_outcome|_rec)"),
    ("ingress insert (SQL)", r"^ingress_box/store/(deliveries|acceptor)\.py", r"^(accept|_Flush)"),
    ("HTTP client (httpx, httpcore, h11)", r"^(httpx|httpcore)/", ""),
]
NEAREST: list[tuple[str, str, str]] = [
    ("writer: BEGIN/SAVEPOINT/COMMIT (WAL, fsync)", r"^ingress_box/store/db\.py", r"^Database\._"),
    ("other store SQL (reads, instance cache)", r"^ingress_box/store/", ""),
    ("thread hand-offs (locks, conditions, queues)", r"^(threading|queue)\.py", ""),
    ("thread hand-offs (locks, conditions, queues)", r"^(concurrent/futures/|asyncio/futures)", ""),
    ("delivery (attempt, forward, signing)", r"^ingress_box/(attempt|forward|signing)", ""),
    ("worker loop (drain, wake)", r"^ingress_box/worker\.py", ""),
    ("huey task plumbing", r"^huey/", ""),
    ("ingress pipeline (verify, dedup, mapping)", r"^ingress_box/", ""),
    ("HTTP server (uvicorn, starlette)", r"^(uvicorn|starlette|httptools|h11)/", ""),
    ("event loop (uvloop C code: sockets, parsing)", r"^asyncio/", ""),
]
# Left out of the cumulative list: every sample of a thread passes through these.
ENTRY = re.compile(
    r"^(Thread\._bootstrap|Thread\._bootstrap_inner|Thread\.run|<module>) |\((click|huey)/"
    r"|^(Runner\.run|asyncio_run|Server\.run|serve|_Group\.invoke|Worker\.drain) "
)
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]*):(?P<line>\d+)\)$")
THREAD = re.compile(r"^thread \((?P<tid>\d+)\): ?(?P<name>.*)$")


def find_pyspy() -> str | None:
    return shutil.which("py-spy") or (
        str(Path(sys.executable).with_name("py-spy"))
        if Path(sys.executable).with_name("py-spy").exists()
        else None
    )


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of every thread of ``pid`` and of its descendants' threads."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for member in benchlib.tree(pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{member}/task"):
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{member}/task/{tid}/stat").read_text()
                    fields = stat.rsplit(")", 1)[1].split()
                    out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


class Recorder:
    """``py-spy record`` on ``pid`` for ``seconds``, with the threads' CPU over the same window."""

    def __init__(
        self, pyspy: str, pid: int, seconds: float, out: Path, *, rate: int, gil: bool
    ) -> None:
        self.out, self.rate, self.pid = out, rate, pid
        cmd = [pyspy, "record", "--pid", str(pid), "--subprocesses", "--threads"]
        cmd += ["--nonblocking", "--rate", str(rate), "--duration", f"{seconds:.0f}"]
        cmd += ["--format", "raw", "-o", str(out)] + (["--gil"] if gil else [])
        self.log = out.with_suffix(".log")
        self.cpu_before = thread_cpu(pid)
        self.cpu_by_tid: dict[int, float] = {}  # CPU seconds per thread over the window
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait(self, timeout: float) -> None:
        """Wait for py-spy to finish; then note the CPU each thread used meanwhile."""
        try:
            self.proc.wait(timeout)
        finally:
            self.stop()
        after = thread_cpu(self.pid)
        self.cpu_by_tid = {tid: cpu - self.cpu_before.get(tid, 0.0) for tid, cpu in after.items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)  # py-spy writes what it has on SIGINT
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@dataclass
class Profile:
    """Samples of a raw (collapsed) py-spy file, weighted to CPU seconds per thread."""

    own: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # as the leaf
    cumulative: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # on stack
    categories: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    threads: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # by name
    samples: int = 0
    cpu: float = 0.0  # CPU seconds of the profiled threads over the window


def _function(frame: str) -> str:
    m = FRAME.match(frame)
    return f"{m['name']} ({m['file']})" if m else frame


def _matches(rule: tuple[str, str, str], m: re.Match[str]) -> bool:
    _, file_rule, name_rule = rule
    return bool(re.search(file_rule, m["file"])) and (
        not name_rule or bool(re.search(name_rule, m["name"]))
    )


def _category(frames: list[str]) -> str:
    parsed = [m for m in map(FRAME.match, reversed(frames)) if m]  # leaf first
    for rule in DOMINANT:
        if any(_matches(rule, m) for m in parsed):
            return rule[0]
    for m in parsed:
        for rule in NEAREST:
            if _matches(rule, m):
                return rule[0]
    return "other (click, start-up frames, unknown)"


def parse(path: Path, cpu_by_tid: dict[int, float]) -> Profile:
    stacks: list[tuple[int, str, list[str], int]] = []
    per_tid: Counter[int] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue  # a wrapped command line of --subprocesses; ours fit on one line
        parts = stack.split(";")
        tid, name, frames = -1, "?", []
        for part in parts:
            if part.startswith("process "):
                continue
            t = THREAD.match(part)
            if t:
                tid, name = int(t["tid"]), t["name"] or t["tid"]
            else:
                frames.append(part)
        stacks.append((tid, name, frames, int(count)))
        per_tid[tid] += int(count)
    profile = Profile()
    for tid, name, frames, n in stacks:
        # A thread without a CPU figure (it ended meanwhile) counts as its samples' time.
        cpu = cpu_by_tid.get(tid)
        weight = (cpu / per_tid[tid]) if cpu is not None else 0.0
        seconds = n * weight
        profile.samples += n
        if not frames:
            continue
        profile.own[_function(frames[-1])] += seconds
        for function in {_function(f) for f in frames}:
            if not ENTRY.search(function):
                profile.cumulative[function] += seconds
        profile.categories[_category(frames)] += seconds
        profile.threads[re.sub(r"-\d+$", "-N", name)] += seconds
    profile.cpu = sum(cpu_by_tid.get(tid, 0.0) for tid in per_tid)
    return profile


def show(profile: Profile, us_per_webhook: float, top: int = 25) -> None:
    """Print the tables: each figure is a share of the profiled threads' CPU, also shown as
    that share of ``us_per_webhook`` (the phase's measured CPU per webhook)."""

    def per(seconds: float) -> str:
        share = seconds / max(profile.cpu, 1e-9)
        return f"{share * us_per_webhook:7.0f} us  {share:5.1%}"

    print(
        f"profile: {profile.samples} samples, {profile.cpu:.1f} CPU s in the sampled threads; "
        f"shares of it, and that share of the phase's {us_per_webhook:.0f} us per webhook"
    )
    print("  (a function's CPU = its share of its thread's samples x that thread's CPU)")
    for title, counter, n in (
        ("by thread", profile.threads, 20),
        ("by category (the rules in profiling.py)", profile.categories, 30),
        (f"top {top} functions by own time", profile.own, top),
        (
            f"top {top} functions by cumulative time (thread entry frames left out)",
            profile.cumulative,
            top,
        ),
    ):
        print(f"  {title}:")
        for name, seconds in sorted(counter.items(), key=lambda kv: -kv[1])[:n]:
            print(f"    {per(seconds)}  {name}")
