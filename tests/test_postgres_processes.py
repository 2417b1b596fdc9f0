"""Several processes on one PostgreSQL database, as a deployment across machines runs them:
three ``serve`` (each with its worker) and two ``worker`` processes, all real subprocesses.

Dedup, lane order and crash recovery hold across processes because the database keeps them
(``ON CONFLICT DO NOTHING``, lane heads claimed under the write lock, leases), not a process.
PostgreSQL only: without ``INGRESS_BOX_TEST_POSTGRESQL`` these tests skip.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import postgres
import pytest
from fake_target import FakeTarget, Received, Reply
from serving import BoxProcess
from signers import sign_generic
from waiting import eventually

from ingress_box.config import DatabaseUrl
from ingress_box.store import open_database

SECRET = "processes-test-secret"
URL = "/ingress/generic/main/events"
# Two delivering threads a process: five processes stay well inside the server's connections.
ENV = {"INGRESS_BOX_WORKERS": "2"}
# For the kill -9: a lease the killed process held runs out soon, and an attempt is short.
FAST = {"INGRESS_BOX_LEASE_SECONDS": "3", "INGRESS_BOX_DELIVERY_TIMEOUT_SECONDS": "1"}


@pytest.fixture
def url() -> Iterator[DatabaseUrl]:
    with postgres.fresh_schema() as fresh:
        yield fresh


class Deployment:
    """Three serves and two workers on one database, started together on the empty schema."""

    def __init__(self, url: DatabaseUrl, logs: Path, env: dict[str, str]) -> None:
        self.url = url
        env = {**env, "INGRESS_BOX_DB": url}  # logs / "box.db" names only the logs' folder
        self.serves = [BoxProcess(logs / "box.db", "serve", env=env) for _ in range(3)]
        self.workers = [BoxProcess(logs / "box.db", "worker", env=env) for _ in range(2)]

    def wait_ready(self, target: FakeTarget) -> None:
        for serve in self.serves:
            serve.wait_ready()
        for worker in self.workers:
            worker.wait_started()
        self.serves[0].add_instance(target_url=target.url, secret=SECRET)

    def stop(self) -> None:
        """SIGTERM to every process still running (all at once); each must exit 0."""
        alive = [box for box in [*self.serves, *self.workers] if box.proc.poll() is None]
        for box in alive:
            box.proc.terminate()
        codes = {box.log.name: box.proc.wait(timeout=30) for box in alive}
        assert set(codes.values()) <= {0}, codes

    def kill(self) -> None:
        for box in [*self.serves, *self.workers]:
            box.kill()


@pytest.fixture
def deployment(url: DatabaseUrl, tmp_path: Path, target: FakeTarget) -> Iterator[Deployment]:
    running = Deployment(url, tmp_path, ENV)
    try:
        running.wait_ready(target)
        yield running
        running.stop()
    finally:
        running.kill()


def send(box: BoxProcess, delivery_id: str, conversation: str | None = None) -> int | None:
    """Post one webhook; its status, or None when the box did not answer."""
    body = f'{{"id":"{delivery_id}"}}'.encode()
    headers = {"content-type": "application/json", **sign_generic(SECRET, body, msg_id=delivery_id)}
    if conversation is not None:
        headers["x-conversation"] = conversation
    try:
        return httpx.post(box.url + URL, content=body, headers=headers, timeout=10).status_code
    except httpx.HTTPError:
        return None


def delivered(target: FakeTarget) -> collections.Counter[str]:
    """How many times each provider delivery id reached the target."""
    return collections.Counter(r.headers["ingress-box-delivery-id"] for r in target.received)


def wait_delivered(target: FakeTarget, ids: set[str], timeout: float = 60) -> None:
    def all_there() -> bool:
        return ids <= set(delivered(target))

    try:
        eventually(all_there, timeout, f"{len(ids)} deliveries at the target")
    except AssertionError as exc:
        missing = sorted(ids - set(delivered(target)))
        raise AssertionError(f"{exc}; {len(missing)} missing, e.g. {missing[:5]}") from None


def settled(url: DatabaseUrl) -> None:
    """Wait until the outbox is empty: every outcome is committed, no attempt is left to make."""
    db = open_database(url, readonly=True).open()
    try:
        eventually(lambda: not db.read("SELECT 1 FROM outbox LIMIT 1"), 30, "an empty outbox")
    finally:
        db.close()


def read(url: DatabaseUrl, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db = open_database(url, readonly=True).open()
    try:
        return [tuple(r) for r in db.read(sql, params)]
    finally:
        db.close()


def test_a_duplicate_storm_over_three_serves_is_stored_and_forwarded_once_per_id(
    url: DatabaseUrl, deployment: Deployment, target: FakeTarget
) -> None:
    """200 delivery ids, each posted to all three serves at once: every post is acked, each id
    has one row and reaches the target exactly once."""
    ids = [f"storm-{n}" for n in range(200)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        posts = [pool.submit(send, serve, i) for i in ids for serve in deployment.serves]
        statuses = collections.Counter(p.result() for p in posts)
    assert statuses == {202: 600}, statuses
    wait_delivered(target, set(ids))
    settled(url)
    rows = read(url, "SELECT provider_delivery_id, count(*) FROM deliveries GROUP BY 1")
    assert len(rows) == 200 and {n for _, n in rows} == {1}
    forwards = delivered(target)
    assert set(forwards) == set(ids)
    assert forwards.most_common(1)[0][1] == 1, forwards.most_common(3)


class LaneWatch:
    """A target's answer that notes whether a request arrived while another one of the same
    conversation was still unanswered (two of a lane in flight at once)."""

    HOLD = 0.02  # seconds each answer takes, so an overlap has a window to show in

    def __init__(self, target: FakeTarget) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.overlaps = 0

    def __call__(self, got: Received) -> Reply:
        lane = got.headers.get("ingress-box-conversation", "")
        with self.lock:
            self.overlaps += self.in_flight[lane] > 0
            self.in_flight[lane] += 1
        try:
            self.target.stopping.wait(self.HOLD)  # the target at work, not a test waiting
        finally:
            with self.lock:
                self.in_flight[lane] -= 1
        return Reply(200)


def test_one_conversation_over_three_serves_is_delivered_in_acceptance_order_one_at_a_time(
    url: DatabaseUrl, deployment: Deployment, target: FakeTarget
) -> None:
    """A conversation's events, posted concurrently to three serves: the target gets them in
    the order they were accepted (seq), never two at once, while another lane runs beside."""
    watch = LaneWatch(target)
    target.answer_with(watch)
    posts = [(f"lane-{n}", "chat" if n % 4 else "other") for n in range(80)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(
            pool.map(lambda item: send(deployment.serves[item[0] % 3], *item[1]), enumerate(posts))
        )
    assert statuses == [202] * len(posts)
    wait_delivered(target, {i for i, _ in posts})
    settled(url)
    for lane in ("chat", "other"):
        in_seq = "SELECT provider_delivery_id FROM deliveries WHERE conversation = ? ORDER BY seq"
        accepted = [str(r[0]) for r in read(url, in_seq, (lane,))]
        arrived = [
            r.headers["ingress-box-delivery-id"]
            for r in target.received
            if r.headers.get("ingress-box-conversation") == lane
        ]
        assert arrived == accepted, lane
    assert watch.overlaps == 0


def test_kill_9_of_one_serve_under_load_loses_no_acked_event(
    url: DatabaseUrl, tmp_path: Path, target: FakeTarget
) -> None:
    """One serve is killed while webhooks pour in and it delivers; a sender retries what got no
    answer at the next serve, as a provider does. Every acked event reaches the target, each
    always under one webhook-id, delivered by the processes that are left."""
    running = Deployment(url, tmp_path, {**ENV, **FAST})
    try:
        running.wait_ready(target)
        victim = running.serves[0]
        acked: set[str] = set()
        acked_by_victim = threading.Event()
        lock = threading.Lock()

        def sender(n: int) -> None:
            delivery_id = f"load-{n}"
            for attempt in range(3):
                box = running.serves[(n + attempt) % 3]
                if send(box, delivery_id) == 202:
                    with lock:
                        acked.add(delivery_id)
                        if box is victim and len(acked) >= 150:
                            acked_by_victim.set()
                    return

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(sender, n) for n in range(450)]
            assert acked_by_victim.wait(60), "the serve to be killed acked nothing"
            victim.proc.kill()
            victim.proc.wait(timeout=10)
            concurrent.futures.wait(futures, timeout=120)
        assert len(acked) >= 150
        wait_delivered(target, acked)
        ids_of: dict[str, set[str]] = collections.defaultdict(set)
        for got in target.received:
            ids_of[got.headers["ingress-box-delivery-id"]].add(got.headers["webhook-id"])
        assert all(len(ids_of[i]) == 1 for i in acked), "a webhook-id changed between attempts"
        running.stop()
    finally:
        with contextlib.suppress(Exception):
            running.kill()
