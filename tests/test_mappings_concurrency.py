"""Concurrent writers of mappings on one store (a SQLite file, or PostgreSQL): threads with
their own connections, separate processes, and parallel admin requests to a real server. The
only error allowed is a conflict, and the table ends with one row per chat and one chat per
conversation."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from live import running_box

from ingress_box.config import DatabaseUrl, load_settings
from ingress_box.errors import MappingConflict
from ingress_box.store import mappings, open_database
from ingress_box.store.mappings import ConversationMapping, Upsert

pytestmark = pytest.mark.both_stores

ROOT = Path(__file__).resolve().parent.parent
N = 20
# One process: open the store, wait for the common start instant, upsert, print what happened.
WRITER = """
import json, sys, time
from ingress_box.errors import MappingConflict
from ingress_box.store import open_database
from ingress_box.store import mappings
where, start, chat, conversation = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
db = open_database(where, busy_timeout=30).open()
time.sleep(max(0.0, start - time.time()))
try:
    m, _ = db.write(mappings.upsert(
        mappings.Upsert("generic", "main", "s1", chat, conversation), time.time()))
    print(json.dumps({"id": m.id, "chat": m.chat}))
except MappingConflict as exc:
    print(json.dumps({"conflict": exc.chat}))
finally:
    db.close()
"""


def rows(store: Path | DatabaseUrl) -> list[tuple[str, str]]:
    db = open_database(store).open()
    try:
        return [
            (r[0], r[1])
            for r in db.read("SELECT chat, provider_conversation_id FROM conversation_mappings")
        ]
    finally:
        db.close()


def in_threads(
    store: Path | DatabaseUrl, pairs: list[tuple[str, str]]
) -> list[ConversationMapping | Exception]:
    """Each pair upserted by its own thread through its own Database (its own writer)."""
    databases = [open_database(store, busy_timeout=30).open() for _ in pairs]
    start = threading.Barrier(len(pairs))

    def one(i: int) -> ConversationMapping | Exception:
        chat, conversation = pairs[i]
        start.wait()
        try:
            mapping, _ = databases[i].write(
                mappings.upsert(Upsert("generic", "main", "s1", chat, conversation), time.time())
            )
            return mapping
        except Exception as exc:  # noqa: BLE001 (the test asserts on whatever was raised)
            return exc

    try:
        with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
            return list(pool.map(one, range(len(pairs))))
    finally:
        for db in databases:
            db.close()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("INGRESS_BOX_")}


def test_twenty_threads_upserting_one_chat_converge_on_one_row(store: Path | DatabaseUrl) -> None:
    """20 threads re-pointing one chat all succeed on one row id; one row remains."""
    results = in_threads(store, [("c1", f"v{i}") for i in range(N)])
    assert all(isinstance(r, ConversationMapping) for r in results), results
    assert len({r.id for r in results if isinstance(r, ConversationMapping)}) == 1
    ((chat, conversation),) = rows(store)
    assert chat == "c1" and conversation in {f"v{i}" for i in range(N)}


def test_twenty_threads_binding_one_conversation_to_twenty_chats_one_wins(
    store: Path | DatabaseUrl,
) -> None:
    """Of 20 threads binding one conversation to 20 chats, one wins and 19 get a conflict."""
    results = in_threads(store, [(f"c{i}", "v1") for i in range(N)])
    won = [r for r in results if isinstance(r, ConversationMapping)]
    lost = [r for r in results if isinstance(r, MappingConflict)]
    assert len(won) == 1 and len(lost) == N - 1, results
    assert {exc.chat for exc in lost} == {won[0].chat}
    assert rows(store) == [(won[0].chat, "v1")]


def test_twenty_processes_upserting_one_chat_converge_on_one_row(
    store: Path | DatabaseUrl,
) -> None:
    """20 `ingress-box mappings set` processes re-pointing one chat all exit 0; one row remains."""
    open_database(store).open().close()  # the schema exists before the race starts
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ingress_box",
                "mappings",
                "set",
                "generic",
                "main",
                "--session",
                "s1",
                "--chat",
                "c1",
                "--conversation",
                f"v{i}",
                "--db",
                str(store),
                "--json",
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * N, [err for _, err in outputs]
    assert len({json.loads(out)["id"] for out, _ in outputs}) == 1
    ((chat, _),) = rows(store)
    assert chat == "c1"


def test_twenty_processes_binding_one_conversation_to_twenty_chats_one_wins(
    store: Path | DatabaseUrl,
) -> None:
    """20 processes that start their upsert at the same instant: one binding, 19 conflicts."""
    open_database(store).open().close()
    start = time.time() + 3.0  # every process has opened the store by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store), str(start), f"c{i}", "v1"],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * N, [err for _, err in outputs]
    answers = [json.loads(out) for out, _ in outputs]
    winners = [a["chat"] for a in answers if "id" in a]
    assert len(winners) == 1
    assert [a["conflict"] for a in answers if "conflict" in a] == winners * (N - 1)
    assert rows(store) == [(winners[0], "v1")]


@pytest.mark.parametrize("shape", ["one chat", "one conversation"])
def test_twenty_parallel_admin_puts_answer_only_200_or_409(
    store: Path | DatabaseUrl, shape: str
) -> None:
    """Parallel PUTs to a real server never answer anything but 200 or 409."""
    settings = load_settings({}, db_path=store, admin_token="t" * 16)
    pairs = (
        [("c1", f"v{i}") for i in range(N)]
        if shape == "one chat"
        else [(f"c{i}", "v1") for i in range(N)]
    )
    with (
        running_box(settings, run_worker=False) as live,
        concurrent.futures.ThreadPoolExecutor(N) as pool,
    ):
        answers = list(
            pool.map(
                lambda pair: httpx.put(
                    live.url + "/admin/mappings",
                    headers={"authorization": "Bearer " + "t" * 16},
                    json={
                        "plugin": "generic",
                        "instance": "main",
                        "session": "s1",
                        "chat": pair[0],
                        "conversation": pair[1],
                    },
                    timeout=30,
                ),
                pairs,
            )
        )
    codes = sorted(a.status_code for a in answers)
    made = [a.json()["created"] for a in answers if a.status_code == 200]
    if shape == "one chat":
        assert codes == [200] * N and made.count(True) == 1
    else:
        assert codes == [200] + [409] * (N - 1) and made == [True]
        assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
            "mapping_conflict"
        }
    assert len(rows(store)) == 1
