"""Crash safety with real processes: kill -9, SIGTERM, and two workers on one store."""

from __future__ import annotations

import collections
import concurrent.futures
import signal
import time
from pathlib import Path

import httpx
import pytest
from conftest import scalar
from fake_target import FakeTarget
from serving import BoxProcess
from signers import sign_generic
from waiting import eventually

from ingress_box.config import DatabaseUrl
from ingress_box.store import open_database
from ingress_box.worker import MAX_UNSETTLED

SECRET = "crash-test-secret"

pytestmark = pytest.mark.both_stores


class Box(BoxProcess):
    """`ingress-box serve` (or `worker`) on one store, with short leases and fast retries; its
    log goes to ``logs``."""

    def __init__(
        self, store: Path | DatabaseUrl, logs: Path, command: str = "serve", **env: str
    ) -> None:
        fast = {
            "INGRESS_BOX_LEASE_SECONDS": "2",
            "INGRESS_BOX_DELIVERY_TIMEOUT_SECONDS": "1",
            "INGRESS_BOX_RETRY_BASE_SECONDS": "0.05",
            "INGRESS_BOX_RETRY_MAX_SECONDS": "0.2",
        }
        where = {"INGRESS_BOX_DB": str(store)}
        super().__init__(logs / "box.db", command, env={**fast, **where, **env})
        if command == "serve":
            self.wait_ready()

    def add_generic(self, target_url: str) -> None:
        self.add_instance(target_url=target_url, secret=SECRET)

    def send(self, n: int) -> bool:
        """Post webhook ``n``; True only when the box acked it with a 2xx."""
        body = f'{{"n":{n}}}'.encode()
        try:
            response = httpx.post(
                self.url + "/ingress/generic/main/events",
                content=body,
                timeout=5,
                headers={
                    "content-type": "application/json",
                    **sign_generic(SECRET, body, msg_id=f"d-{n}"),
                },
            )
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 300


def delivered_ids(target: FakeTarget) -> collections.Counter[str]:
    return collections.Counter(r.headers["ingress-box-delivery-id"] for r in target.received)


def wait_all(target: FakeTarget, ids: set[str], timeout: float = 30) -> collections.Counter[str]:
    def all_there() -> collections.Counter[str] | None:
        got = delivered_ids(target)
        return got if ids <= set(got) else None

    try:
        return eventually(all_there, timeout, f"{len(ids)} acked deliveries at the target")
    except AssertionError as exc:
        missing = ids - set(delivered_ids(target))
        raise AssertionError(
            f"{exc}; {len(missing)} never arrived: {sorted(missing)[:5]}"
        ) from None


def claims(store: Path | DatabaseUrl) -> tuple[int, int]:
    """(outbox rows left, the most attempts any delivery was claimed for), read from the store."""
    db = open_database(store, readonly=True).open()
    try:
        left = scalar(db, "SELECT count(*) FROM outbox")
        most = scalar(db, "SELECT max(attempts) FROM deliveries")
        return int(left), int(most or 0)
    finally:
        db.close()


def test_kill_9_under_load_loses_no_acked_delivery(
    store: Path | DatabaseUrl, tmp_path: Path, target: FakeTarget
) -> None:
    """Every webhook acked before a SIGKILL reaches the target after a restart."""
    box = Box(store, tmp_path)
    box.add_generic(target.url)
    acked: set[str] = set()

    def sender(n: int) -> None:
        if box.send(n):
            acked.add(f"d-{n}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(sender, n) for n in range(400)]
        eventually(lambda: len(acked) >= 150, 20, "150 acked webhooks", interval=0.005)
        box.proc.kill()
        box.proc.wait(timeout=10)
        concurrent.futures.wait(futures)
    assert len(acked) >= 150
    restarted = Box(store, tmp_path)
    try:
        got = wait_all(target, acked)
    finally:
        assert restarted.stop() == 0
    duplicates = sum(c - 1 for c in got.values() if c > 1)
    # Only deliveries whose outcome was not committed may repeat: per drain (4 by default) at
    # most MAX_UNSETTLED, the outcomes waiting to share the writer's next transaction.
    bound = 4 * MAX_UNSETTLED
    assert duplicates <= bound, f"{duplicates} duplicates; only unrecorded deliveries may repeat"


def test_sigterm_during_deliveries_exits_cleanly_and_loses_nothing(
    store: Path | DatabaseUrl, tmp_path: Path, target: FakeTarget
) -> None:
    """SIGTERM with slow deliveries in flight: exit 0 within 15 s, all delivered after restart."""
    target.delay = 0.3
    box = Box(store, tmp_path)
    box.add_generic(target.url)
    acked = {f"d-{n}" for n in range(20) if box.send(n)}
    assert len(acked) == 20
    target.wait_for(2)
    started = time.monotonic()
    assert box.stop(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - started < 15
    restarted = Box(store, tmp_path)
    try:
        wait_all(target, acked)
    finally:
        assert restarted.stop() == 0


def test_serve_and_a_separate_worker_deliver_each_event_once(
    store: Path | DatabaseUrl, tmp_path: Path, target: FakeTarget
) -> None:
    """Two processes draining one store never deliver one event twice in normal operation."""
    box = Box(store, tmp_path)
    box.add_generic(target.url)
    worker = Box(store, tmp_path, command="worker")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            sent = pool.map(box.send, range(200))
            acked = {f"d-{n}" for n, ok in enumerate(sent) if ok}
        assert len(acked) == 200
        got = wait_all(target, acked)
        # A claim needs an outbox row and counts an attempt: once the outbox is empty, every
        # claim there will be has been made, and a second claim of one event would show.
        eventually(lambda: claims(store)[0] == 0, 10, "an empty outbox")
        assert claims(store) == (0, 1)
        assert max(delivered_ids(target).values()) == 1, got.most_common(3)
    finally:
        assert worker.stop() == 0
        assert box.stop() == 0


def test_serve_without_its_worker_wakes_a_separate_worker_at_once(
    store: Path | DatabaseUrl, tmp_path: Path, target: FakeTarget
) -> None:
    """Split deployment: `serve --no-run-worker` accepts, an `ingress-box worker` delivers."""
    box = Box(store, tmp_path, INGRESS_BOX_RUN_WORKER="0")
    box.add_generic(target.url)
    worker = Box(store, tmp_path, command="worker")
    try:
        worker.wait_started()
        started = time.monotonic()
        assert box.send(1)
        target.wait_for(1, timeout=10)
        assert time.monotonic() - started < 2.0, "the separate worker was not woken"
    finally:
        assert worker.stop() == 0
        assert box.stop() == 0
    assert delivered_ids(target) == {"d-1": 1}
