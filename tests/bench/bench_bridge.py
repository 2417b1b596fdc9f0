"""Bridges under load: ``ingress-box serve`` between FakeWAHA and FakeChatwoot, both ways, against
the same box's plain ``forward`` in the same run (issue 13, "Bridges").

Why: a bridged message costs the box more than a forward: two deliveries (the gateway's webhook
and Chatwoot's webhook of the copy the bridge made; or Chatwoot's webhook and the gateway's
report of the send), several HTTP calls, the link rows. This script says how much more, on the
machine it runs on, and how fast the bridge goes.

The box is ``ingress-box serve`` as a user starts it (``bench_appliance.Box``: the CLI, its
defaults, the admin token only); the bridge ``shop`` is made through ``POST /admin/bridges``.
The doubles (``tests/doubles/``) run in this process and answer at once; they share the
machine's cores with the box, as the senders do in the other benchmarks, and each posts its
webhooks from one thread, one at a time (as a chat's order needs): when e2e grows while the
box's outbox stays flat, the queue is in the double's sender, not in the box. The WAHA double
subscribes to ``message.any`` only (one webhook per message, as the README sets it up), and
each of ``--chats`` chats gets its conversation before anything is measured. Then:

1. **forward**: instance ``generic/bench`` to ``serve.py target``, open loop at ``--rate``
   (``bench_appliance.open_phase``): the baseline CPU per webhook;
2. **WA->CW**: the gateway double posts ``--rate`` messages/s for ``--duration`` s, round robin
   over the chats (open loop, fixed schedule); e2e = Chatwoot's receipt of the message's POST
   minus the moment the double queued the webhook;
3. **CW->WA**: agents reply at ``--rate``/s (FakeChatwoot's signed account webhooks); e2e = the
   gateway's receipt of the send minus the reply's creation;
4. **steps**: each direction again at each of ``--steps`` messages/s for ``--step-duration`` s,
   until one is not sustained: sustained = the backlog does not grow (slope at most 2 % of the
   rate), 95 % of the offered rate is bridged while sending, and everything arrives.

CPU is the box's (process and descendants, ``/proc``) from the first send until its outbox is
empty, over the messages bridged. ``ratio`` is that over the forward's CPU per webhook.

    python tests/bench/bench_bridge.py [--quick] [--rate 50] [--duration 20] [--chats 20]
        [--steps 100,200,400] [--step-duration 10] [--drain-timeout 60] [--keep]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
from bench_appliance import Box, Depth, Row, TargetLog, fmt, open_phase
from benchlib import Server, pct

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: the doubles
from doubles.chatwoot import FakeChatwoot  # noqa: E402
from doubles.waha import FakeWAHA, WahaRetries  # noqa: E402

BRIDGE = "shop"
GATEWAY_SECRET = "bench-gateway-secret-0123456789"
CHATWOOT_SECRET = "bench-chatwoot-secret-0123456789"


class Bridge:
    """The doubles, joined by bridge ``shop`` on ``box``; what each direction sends and sees."""

    def __init__(self, box: Box, chats: int) -> None:
        self.chatwoot = FakeChatwoot().start()
        self.account = self.chatwoot.add_account()
        inbox = self.chatwoot.add_inbox(self.account)
        self.waha = FakeWAHA(
            f"{box.url}/ingress/waha/{BRIDGE}/events",
            hmac_key=GATEWAY_SECRET,
            events=("message.any",),
            retries=WahaRetries(delay_seconds=0.5, attempts=20),
        ).start()
        box.admin(
            "POST",
            "/admin/bridges",
            {
                "id": BRIDGE,
                "gateway": {
                    "kind": "waha",
                    "url": self.waha.url,
                    "api_key": self.waha.api_key,
                    "session": self.waha.session,
                    "secret": GATEWAY_SECRET,
                },
                "chatwoot": {
                    "url": self.chatwoot.url,
                    "account_id": self.account,
                    "inbox_id": inbox,
                    "api_token": self.chatwoot.token,
                    "secret": CHATWOOT_SECRET,
                },
            },
        )
        hook = f"{box.url}/ingress/chatwoot/{BRIDGE}/events"
        self.chatwoot.add_webhook(self.account, hook, secret=CHATWOOT_SECRET)
        self.chats = [f"62812{n:07d}@c.us" for n in range(chats)]
        self.conversations: dict[str, int] = {}
        self._posts = f"/api/v1/accounts/{self.account}/conversations/"

    def open_chats(self, timeout: float) -> None:
        """Each chat's conversation, made by one message of its contact."""
        for chat in self.chats:
            self.waha.inbound(chat, "hello shop")
        deadline = time.monotonic() + timeout
        while len(self.conversations) < len(self.chats) and time.monotonic() < deadline:
            time.sleep(0.2)
            self.conversations = {
                c["meta"]["sender"]["identifier"]: int(c["id"])
                for c in self.chatwoot.conversations(self.account)
            }
        if len(self.conversations) < len(self.chats):
            raise RuntimeError(f"only {len(self.conversations)} conversations in {timeout}s")

    def inbound(self, n: int, text: str) -> None:
        self.waha.inbound(self.chats[n % len(self.chats)], text)

    def reply(self, n: int, text: str) -> None:
        chat = self.chats[n % len(self.chats)]
        self.chatwoot.agent_reply(self.account, self.conversations[chat], text)

    def in_chatwoot(self, prefix: str) -> dict[str, list[float]]:
        """Text -> receipt times of the bridge's message posts whose text starts with prefix."""
        got: dict[str, list[float]] = {}
        for call in self.chatwoot.calls_to("POST", self._posts):
            content = call.json.get("content") if isinstance(call.json, dict) else None
            if call.path.endswith("/messages") and str(content).startswith(prefix):
                got.setdefault(str(content), []).append(call.at)
        return got

    def at_gateway(self, prefix: str) -> dict[str, list[float]]:
        got: dict[str, list[float]] = {}
        for sent in self.waha.sent:
            if str(sent.text).startswith(prefix):
                got.setdefault(str(sent.text), []).append(sent.call.at)
        return got

    def stop(self) -> None:
        self.waha.stop()
        self.chatwoot.stop()


def bridge_phase(
    args: argparse.Namespace,
    box: Box,
    db: Path,
    name: str,
    send: Callable[[int, str], None],
    arrived: Callable[[str], dict[str, list[float]]],
    rate: float,
    seconds: float,
    prefix: str,
) -> Row:
    """``rate`` messages/s for ``seconds`` through ``send`` (a fixed schedule: a late send is
    made at once, not skipped); ``arrived`` says which reached the other side, and when."""
    depth = Depth(db)
    depth.start()
    sent: dict[str, float] = {}
    cpu0, ticks, t0 = box.cpu_seconds(), benchlib.cpu_ticks(), time.monotonic()
    try:
        for n in range(round(rate * seconds)):
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
            text = f"{prefix}{n}"
            sent[text] = time.time()
            send(n, text)
        t1, wall1 = time.monotonic(), time.time()
        cpu_send, busy = box.cpu_seconds() - cpu0, benchlib.busy_since(ticks)
        deadline = t1 + args.drain_timeout
        got = arrived(prefix)
        while time.monotonic() < deadline and not (
            len(got) == len(sent) and depth.samples and depth.samples[-1][1] == 0
        ):
            time.sleep(0.2)
            got = arrived(prefix)
        cpu_all = box.cpu_seconds() - cpu0
    finally:
        depth.stop()
    first = {text: times[0] for text, times in got.items()}
    wall0 = wall1 - (t1 - t0)
    drained = len(got) == len(sent) and bool(depth.samples) and depth.samples[-1][1] == 0
    return Row(
        load=f"{name} {rate:g}/s",
        offered=rate,
        achieved=(len(sent) - 1) / max(1e-9, t1 - t0),
        cores=cpu_send / (t1 - t0),
        cpu_us=cpu_all * 1e6 / max(1, len(got)),
        e2e=[(first[text] - sent[text]) * 1000 for text in first],
        slope=depth.slope(t0, t1),
        delivered=sum(1 for at in first.values() if wall0 <= at <= wall1) / (t1 - t0),
        drain=max(0.0, max(first.values(), default=wall1) - wall1) if drained else float("nan"),
        lost=len(sent) - len(got),
        repeated=sum(1 for times in got.values() if len(times) > 1),
        acked=len(sent),
        busy=busy,
    )


def sustained(row: Row) -> bool:
    return (
        row.lost == 0
        and row.drain == row.drain  # drained
        and row.delivered >= 0.95 * row.offered
        and not row.slope > 0.02 * row.offered  # a backlog that grows (nan: too short to say)
    )


def table(rows: list[Row], forward_us: float) -> None:
    print(
        f"\n{'load':<16} {'achieved':>8} {'box CPU':>8} {'CPU/message':>11} {'ratio':>6}"
        f" {'e2e p50/p99':>16} {'backlog':>9} {'bridged/s':>9} {'drain':>7} {'lost/rep':>9}"
        f" {'machine':>7}"
    )
    for r in rows:
        e2e = f"{pct(r.e2e, 50):.1f}/{pct(r.e2e, 99):.1f} ms" if r.e2e else "-"
        print(
            f"{r.load:<16} {fmt(r.achieved):>6}/s {r.cores:7.2f}c {fmt(r.cpu_us):>8} us "
            f"{fmt(r.cpu_us / forward_us, '.1f'):>6} {e2e:>16} {fmt(r.slope, '+.0f'):>7}/s "
            f"{fmt(r.delivered):>9} {fmt(r.drain, '.1f'):>5} s {r.lost:>4}/{r.repeated:<4} "
            f"{r.busy:6.0%}"
        )
    print(
        "  CPU/message: the box's CPU from the first send until its outbox was empty / messages\n"
        "  bridged (forward: webhooks acked); ratio: that over the forward's; e2e: the other\n"
        "  side's receipt - the send (forward: the target's); backlog: outbox depth slope while\n"
        "  sending; bridged/s: arrivals while sending; drain: last arrival - last send; lost:\n"
        "  sent, never arrived; rep: arrived more than once; machine: all cores busy"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--rate", type=float, default=50.0, help='messages/s, "a busy shop"')
    parser.add_argument("--duration", type=float, default=20.0, help="s of each open loop")
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--steps", default="100,200,400", help="messages/s, in order")
    parser.add_argument("--step-duration", type=float, default=10.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=16, help="the forward's sender")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.step_duration, args.steps = 5.0, 5.0, "100"
    args.steps = [float(s) for s in args.steps.split(",") if s]
    return args


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    print(
        f"# bridge benchmark {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}, work dir {work}"
    )
    servers: list[Server] = []
    bridge: Bridge | None = None
    try:
        target = Server("target", work, "--log", str(work / "target.log")).wait_ready()
        servers.append(target)
        db = work / "box.db"
        box = Box(work, db)
        servers.append(box)
        box.wait_ready()
        box.add_instance("bench", target.url + "/hook")
        bridge = Bridge(box, args.chats)
        bridge.open_chats(args.drain_timeout)
        forward = open_phase(
            args, box, TargetLog(work / "target.log"), db, args.rate, args.duration, "f-"
        )
        forward.load = f"forward {args.rate:g}/s"
        rows = [forward]
        directions = [
            ("WA->CW", bridge.inbound, bridge.in_chatwoot),
            ("CW->WA", bridge.reply, bridge.at_gateway),
        ]
        for name, send, arrived in directions:
            tag = name[:2].lower()
            rows.append(
                bridge_phase(
                    args, box, db, name, send, arrived, args.rate, args.duration, f"{tag}-"
                )
            )
            for step in args.steps:
                row = bridge_phase(
                    args, box, db, name, send, arrived, step, args.step_duration, f"{tag}{step:g}-"
                )
                rows.append(row)
                if not sustained(row):
                    break
        table(rows, forward.cpu_us)
        for name, *_ in directions:
            held = [r.offered for r in rows if r.load.startswith(name) and sustained(r)]
            print(f"{name}: sustained up to {fmt(max(held, default=float('nan')))} messages/s")
        return 1 if any(r.lost for r in rows) else 0
    finally:
        if bridge is not None:
            bridge.stop()
        for server in reversed(servers):
            server.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
