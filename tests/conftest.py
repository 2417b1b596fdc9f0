"""Shared fixtures: settings on a real SQLite file in tmp_path, the app with its lifespan running,
the admin token, a controllable clock, and factories for deliveries and dead letters."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import postgres
import pytest
from fake_target import FakeTarget, running_target
from hypothesis import settings as hypothesis_settings
from starlette.testclient import TestClient

from ingress_box import worker as worker_module
from ingress_box.app import App, create_app
from ingress_box.config import DatabaseUrl, Settings, load_settings
from ingress_box.store import Database, open_database
from ingress_box.store.deliveries import NewDelivery, accept
from ingress_box.store.outbox import Outcome, claim, record_outcome
from ingress_box.web.box import Box

ADMIN_TOKEN = "test-admin-token"
T0 = 1_700_000_000.0  # the fake clock's start: far from 0 so no "falsy timestamp" bug hides


# The machines are shared and slow at times: a property test fails on a wrong answer, never on
# how long one example took.
hypothesis_settings.register_profile("box", deadline=None)
hypothesis_settings.load_profile("box")


@pytest.fixture(autouse=True)
def _no_hourly_maintenance(monkeypatch: pytest.MonkeyPatch) -> None:
    """huey runs the workers' maintenance at minute 7 of every hour, by the wall clock, and it
    prunes by the wall clock too: a test's rows dated T0 (2023) would go if one of its boxes
    were up then (a CI run met it). Tests run retention themselves; subprocess boxes that load
    old rows set long retention (test_move)."""
    monkeypatch.setattr(worker_module, "MAINTENANCE", lambda _when: False)


@pytest.fixture
def target() -> Iterator[FakeTarget]:
    """The fake target: a real local HTTP server recording what is forwarded to it (answers 200
    unless told)."""
    with running_target() as t:
        yield t


def pytest_report_header() -> str:
    return f"sqlite: {sqlite3.sqlite_version}; postgresql: {postgres.describe()}"


class Reply(Protocol):
    """What tests read of a TestClient answer (httpx's Response, or httpx2's on Starlette 1.x)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    @property
    def content(self) -> bytes: ...
    def json(self, **kwargs: Any) -> Any: ...


class Clock:
    """A clock tests move by hand: ``clock()`` is now, ``clock.advance(s)`` moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_stores: run on SQLite and on PostgreSQL (the store fixture is parametrized)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("store", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | DatabaseUrl]:
    """Where the box keeps everything: a SQLite file in tmp_path, or (in a test marked
    ``both_stores``, its second run) a fresh PostgreSQL schema of its own."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield tmp_path / "box.db"
        return
    with postgres.fresh_schema() as url:
        yield url


def file_of(location: Path | DatabaseUrl) -> Path:
    """The SQLite file of a test that is about the file itself."""
    assert isinstance(location, Path), f"a SQLite test was given {location}"
    return location


@pytest.fixture
def db_path(store: Path | DatabaseUrl, tmp_path: Path) -> Path | DatabaseUrl:
    """What a CLI test passes as ``--db``: a file, or (in a test marked ``both_stores``, its
    second run) the PostgreSQL schema's URL. ``file_of(db_path)`` where it must be the file."""
    return store if isinstance(store, DatabaseUrl) else tmp_path / "cli.db"


@pytest.fixture
def db(db_path: Path | DatabaseUrl) -> Iterator[Database]:
    """The same store the CLI works on, opened as serve would (it may run meanwhile)."""
    database = open_database(db_path).open()
    yield database
    database.close()


@pytest.fixture
def settings(store: Path | DatabaseUrl) -> Settings:
    # An empty environment, so the developer's INGRESS_BOX_* variables cannot leak in.
    return load_settings({}, db_path=store, admin_token=ADMIN_TOKEN)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(settings: Settings, clock: Clock) -> App:
    return create_app(settings, clock=clock, run_worker=False)


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with TestClient(app) as c:  # a context manager, so the lifespan opens the database
        yield c


def box_of(client: TestClient) -> Box:
    """The Box behind a TestClient of ``create_app`` (once its lifespan has opened it)."""
    app = client.app
    assert isinstance(app, App)
    the_box: Box = app.state.box
    return the_box


@pytest.fixture
def box(client: TestClient) -> Box:
    return box_of(client)


def scalar(db: Database, sql: str) -> Any:
    """The one value a query like ``SELECT count(*) FROM ...`` answers."""
    row = db.read_one(sql)
    assert row is not None, sql
    return row[0]


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_TOKEN}"}


MakeDeliveries = Callable[..., list[str]]
MakeDeadLetters = Callable[..., list[str]]


def new_delivery(
    n: int,
    plugin: str = "generic",
    instance: str = "main",
    received_at: float = T0,
    *,
    conversation: str | None = None,
    name: str = "test",
) -> NewDelivery:
    """The ``n``-th made-up delivery (``msg_<name>000001``, provider id ``<name>-1``)."""
    return NewDelivery(
        id=f"msg_{name}{n:06d}",
        plugin_id=plugin,
        instance_id=instance,
        route="events",
        provider_delivery_id=f"{name}-{n}",
        conversation=conversation,
        method="POST",
        subpath="",
        content_type="application/json",
        headers="{}",
        body=b'{"n": %d}' % n,
        received_at=received_at,
    )


@pytest.fixture
def make_deliveries() -> MakeDeliveries:
    """``make_deliveries(db, count=1, plugin=, instance=)``: pending deliveries, their ids."""
    numbers = itertools.count(1)

    def make(
        db: Database,
        count: int = 1,
        plugin: str = "generic",
        instance: str = "main",
        received_at: float = T0,
    ) -> list[str]:
        new = [new_delivery(next(numbers), plugin, instance, received_at) for _ in range(count)]

        def op(conn: sqlite3.Connection) -> None:
            for delivery in new:
                assert accept(conn, delivery)

        db.write(op)
        return [d.id for d in new]

    return make


@pytest.fixture
def make_dead_letters(make_deliveries: MakeDeliveries) -> MakeDeadLetters:
    """``make_dead_letters(db, count=1, plugin=, instance=)``: dead-lettered deliveries, as the
    worker leaves them (claimed, then settled dead); returns the dead letter ids."""

    def make(
        db: Database, count: int = 1, plugin: str = "generic", instance: str = "main"
    ) -> list[str]:
        doomed = set(make_deliveries(db, count, plugin, instance))
        now = T0 + 1

        def op(conn: sqlite3.Connection) -> list[str]:
            dead = []
            for row in claim("tests", now, 60, 1_000_000)(conn):
                # Other pending rows were claimed too: hand them back untouched.
                fate = "dead" if row.event.id in doomed else "retry"
                record_outcome(
                    Outcome(
                        seq=row.seq,
                        owner="tests",
                        outcome=fate,
                        started_at=now,
                        duration_ms=1.0,
                        status_code=500,
                        error="HTTP 500",
                        next_attempt_at=T0,
                        dead_letter_id=f"dlq_{row.event.id}",
                    ),
                    now,
                )(conn)
                if fate == "dead":
                    dead.append(f"dlq_{row.event.id}")
            return dead

        return db.write(op)

    return make
