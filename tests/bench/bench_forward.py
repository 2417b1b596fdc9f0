"""CPU per forward: the lean outbound client against the httpx transport it replaced.

Why: a profile of ``ingress-box serve`` at 320 webhooks/s (issue "Light as shipped") found httpx
and httpcore the largest cost of the delivery side (~865 us of ~2,000 per webhook). This posts the
same signed ~1 KB webhook N times, one after the other, to a local keep-alive target (serve.py
target, its own process, so its CPU is not counted) and reports this process's CPU
(``time.process_time``) per request:

1. httpx: ``httpx.HTTPTransport.handle_request`` with the headers forward sends, the answer read
   raw and closed (what forward did, minus its per-attempt deadline wrapper, so an underestimate);
2. outbound: ``outbound.Pool.post`` with the same headers;
3. forward: the whole handler (signing and headers included) over a Pool.

Rounds alternate (httpx, outbound, forward, httpx, ...) and the median round counts; the ratio
outbound / httpx is printed from the same run. The machine is shared: compare ratios, not runs.

    python tests/bench/bench_forward.py [--requests 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
import httpx
from benchlib import Server

from ingress_box import outbound
from ingress_box.delivery import Event, HandlerContext, Target
from ingress_box.forward import MAX_RESPONSE_BYTES, forward
from ingress_box.signing import generate_outbound_secret, sign

SECRET = generate_outbound_secret()


def event(body: bytes) -> Event:
    return Event(
        id="msg_bench",
        plugin="generic",
        instance="bench",
        route="events",
        provider_delivery_id="d1",
        conversation="42",
        method="POST",
        subpath="",
        content_type="application/json",
        headers={},
        body=body,
        attempt=1,
        received_at=time.time(),
    )


def wire_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers forward sends, once (their cost is the same for both clients)."""
    now = int(time.time())
    return [
        (b"user-agent", b"ingress-box/bench"),
        (b"accept-encoding", b"identity"),
        (b"content-type", b"application/json"),
        (b"webhook-id", b"msg_bench"),
        (b"webhook-timestamp", str(now).encode()),
        (b"webhook-signature", sign("msg_bench", now, body, SECRET).encode()),
        (b"ingress-box-plugin", b"generic"),
        (b"ingress-box-instance", b"bench"),
        (b"ingress-box-route", b"events"),
        (b"ingress-box-delivery-id", b"d1"),
        (b"ingress-box-attempt", b"1"),
        (b"ingress-box-conversation", b"42"),
    ]


def httpx_sender(url: str, body: bytes) -> tuple[Callable[[], None], Callable[[], None]]:
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=8))
    headers = wire_headers(body)
    timeout = httpx.Timeout(10.0).as_dict()

    def send() -> None:
        request = httpx.Request(
            "POST", url, content=body, headers=headers, extensions={"timeout": timeout}
        )
        response = transport.handle_request(request)
        try:
            received = bytearray()
            for chunk in response.iter_raw():
                received += chunk
                if len(received) >= MAX_RESPONSE_BYTES:
                    break
            assert response.status_code == 200
        finally:
            response.close()

    return send, transport.close


def outbound_sender(url: str, body: bytes) -> tuple[Callable[[], None], Callable[[], None]]:
    pool = outbound.Pool()
    headers = wire_headers(body)

    def send() -> None:
        assert pool.post(url, headers, body, 10.0, MAX_RESPONSE_BYTES).status == 200

    return send, pool.close


def forward_sender(url: str, body: bytes) -> tuple[Callable[[], None], Callable[[], None]]:
    pool = outbound.Pool()
    client = httpx.Client()
    ctx = HandlerContext(
        target=Target(url, SECRET, {}), client=client, timeout=10.0, now=time.time, outbound=pool
    )
    webhook = event(body)

    def send() -> None:
        forward(webhook, ctx)

    def close() -> None:
        pool.close()
        client.close()

    return send, close


def cpu_per_request(send: Callable[[], None], n: int) -> tuple[float, float]:
    """CPU and wall microseconds per request over ``n`` requests."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        send()
    return (
        (time.process_time() - cpu) / n * 1e6,
        (time.perf_counter() - wall) / n * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    body = benchlib.body(0)
    kinds = {"httpx": httpx_sender, "outbound": outbound_sender, "forward": forward_sender}
    with tempfile.TemporaryDirectory() as tmp:
        target = Server("target", Path(tmp), "--log", str(Path(tmp) / "target.log"))
        try:
            target.wait_ready()
            url = target.url + "/hook"
            results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
            for _ in range(args.rounds):
                for kind, make in kinds.items():
                    send, close = make(url, body)
                    try:
                        for _ in range(200):  # warm: connection open, caches filled
                            send()
                        results[kind].append(cpu_per_request(send, args.requests))
                    finally:
                        close()
        finally:
            target.stop()
    print(f"{args.requests} sequential POSTs of {len(body)} B per round, {args.rounds} rounds")
    print(f"{'client':<10} {'CPU us/req':>11} {'wall us/req':>12}   (median round)")
    medians = {}
    for kind, rounds in results.items():
        cpu = statistics.median(c for c, _ in rounds)
        wall = statistics.median(w for _, w in rounds)
        medians[kind] = cpu
        print(f"{kind:<10} {cpu:>11.1f} {wall:>12.1f}")
    print(f"outbound / httpx CPU: {medians['outbound'] / medians['httpx']:.2f}")


if __name__ == "__main__":
    main()
