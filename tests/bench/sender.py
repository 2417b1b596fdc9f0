"""Open-loop sender of the benchmarks: signed ~1 KB webhooks to generic/bench on a fixed
schedule (request i is due at start + i / rate, whatever happened to the earlier ones).

Requests go over ``conns`` keep-alive connections of a minimal raw HTTP/1.1 client, or through
httpx.AsyncClient (``use_httpx``). Measured on 2 cores against the box with its worker off:
httpx reaches only 716-861/s of an asked 1,000/s, with acks queued 11-17 s in its own pool, so
at that rate it measures itself; the raw client sends at 1,000/s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import benchlib
import httpx
import uvloop
from benchlib import PATH, pct

BODIES = [(raw, benchlib.sign(raw)) for raw in (benchlib.body(i) for i in range(500))]


Post = Callable[[bytes, dict[str, str]], Awaitable[object]]


async def _post_raw(
    conns: int, port: int, path: str = PATH
) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """A minimal keep-alive HTTP/1.1 client: ``conns`` connections fed from one queue."""
    Item = tuple[bytes, dict[str, str], asyncio.Future[object]]
    queue: asyncio.Queue[Item | None] = asyncio.Queue()

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while (item := await queue.get()) is not None:
            raw, headers, done = item
            request = (
                f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(raw)}"
                "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            )
            for attempt in (1, 2):  # once more on a fresh connection if keep-alive closed it
                try:
                    if reader is None or writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(request.encode() + raw)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    done.set_result(int(head[9:12]))
                    break
                except (OSError, asyncio.IncompleteReadError) as exc:
                    writer = None
                    if attempt == 2:
                        done.set_result(type(exc).__name__)
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(conns)]

    async def post(raw: bytes, headers: dict[str, str]) -> object:
        done = asyncio.get_running_loop().create_future()
        await queue.put((raw, headers, done))
        return await done

    async def close() -> None:
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.wait(workers, timeout=5)

    return post, close


async def _send(
    url: str, rate: float, duration: float, prefix: str, conns: int, use_httpx: bool = False
) -> dict[str, Any]:
    n, sent, ack_ms, late = int(rate * duration), {}, [], []
    acks: Counter[object] = Counter()
    status: dict[str, object] = {}  # per id: the HTTP status, or the exception's name
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    client = httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0)
    raw_post, raw_close = await _post_raw(conns, int(url.rsplit(":", 1)[1]))

    async def one(i: int) -> None:
        raw, sig = BODIES[i % len(BODIES)]
        headers = {
            "content-type": "application/json",
            "x-signature": sig,
            "x-delivery": f"{prefix}{i}",
        }
        t = sent[f"{prefix}{i}"] = time.monotonic()
        try:
            if use_httpx:
                code: object = (await client.post(PATH, content=raw, headers=headers)).status_code
            else:
                code = await raw_post(raw, headers)
            ack_ms.append((time.monotonic() - t) * 1000)
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        acks[code] += 1
        status[f"{prefix}{i}"] = code

    tasks, start = [], time.monotonic() + 0.1
    for i in range(n):
        due = start + i / rate
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())
        late.append((time.monotonic() - due) * 1000)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.wait(tasks, timeout=30)
    await raw_close()
    await client.aclose()
    times = sorted(sent.values())
    return {
        "sent": sent,
        "status": status,
        "acks": dict(acks),
        "ack_ms": ack_ms,
        "late_p99": pct(late, 99),
        "rate": (n - 1) / (times[-1] - times[0]) if n > 1 else 0.0,
    }


def send(
    url: str, rate: float, duration: float, prefix: str, conns: int, use_httpx: bool = False
) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_send(url, rate, duration, prefix, conns, use_httpx))


def show_send(name: str, s: dict[str, Any], rate: float) -> None:
    print(
        f"{name}: sent {len(s['sent'])} at {s['rate']:.0f}/s (asked {rate:g}/s; sender "
        f"lateness p99 {s['late_p99']:.1f} ms), acks {s['acks']}, ack p50 "
        f"{pct(s['ack_ms'], 50):.1f} ms p99 {pct(s['ack_ms'], 99):.1f} ms"
    )
