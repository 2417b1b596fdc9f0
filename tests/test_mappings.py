"""Conversation mappings: the store (a real SQLite file, or PostgreSQL), the admin API, the
CLI, and a rule-based property test against an in-memory model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import Reply
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from starlette.testclient import TestClient

from ingress_box.cli.main import main
from ingress_box.config import DatabaseUrl
from ingress_box.errors import MappingConflict, NotFound
from ingress_box.store import Database, mappings, open_database
from ingress_box.store.mappings import ConversationMapping, Upsert
from ingress_box.store.sql import Conn

pytestmark = pytest.mark.both_stores

Headers = dict[str, str]
NOW = 1_700_000_000.0


@pytest.fixture
def db(store: Path | DatabaseUrl) -> Iterator[Database]:
    database = open_database(store).open()
    yield database
    database.close()


def bind(
    db: Database,
    chat: str,
    conversation: str,
    session: str = "s1",
    instance: str = "main",
    **extra: Any,
) -> ConversationMapping:
    mapping, _ = db.write(
        mappings.upsert(Upsert("generic", instance, session, chat, conversation, **extra), NOW)
    )
    return mapping


def owner(db: Database, conversation: str, instance: str = "main") -> str | None:
    found = mappings.of_conversation(db, "generic", instance, conversation)
    return None if found is None else found.chat


# -- the store ------------------------------------------------------------------------------


def test_a_second_upsert_on_the_forward_key_keeps_the_row_id(db: Database) -> None:
    """Re-pointing a chat updates its row in place: same id, the new conversation."""
    first = bind(db, "c1", "v1")
    second = bind(db, "c1", "v2")
    assert second.id == first.id and second.conversation == "v2"


def test_the_old_conversation_no_longer_resolves_after_a_repoint(db: Database) -> None:
    """After re-pointing, the chat's old conversation id maps to nothing."""
    bind(db, "c1", "v1")
    bind(db, "c1", "v2")
    assert owner(db, "v1") is None and owner(db, "v2") == "c1"


def test_a_repointed_chat_frees_its_old_conversation_for_another_chat(db: Database) -> None:
    """Another chat may bind the conversation a re-pointed chat let go of."""
    bind(db, "c1", "v1")
    bind(db, "c1", "v2")
    assert bind(db, "c2", "v1").chat == "c2"


def test_binding_a_held_conversation_raises_a_conflict_naming_the_holder(db: Database) -> None:
    """A conversation bound to another chat is a MappingConflict that names that chat."""
    held = bind(db, "c1", "v1")
    with pytest.raises(MappingConflict) as caught:
        bind(db, "c2", "v1", session="s2")
    assert (caught.value.chat, caught.value.session, caught.value.mapping_id) == (
        "c1",
        "s1",
        held.id,
    )
    assert owner(db, "v1") == "c1"


def test_repointing_onto_a_held_conversation_conflicts_and_changes_nothing(db: Database) -> None:
    """A chat re-pointed onto another chat's conversation conflicts and keeps its own."""
    bind(db, "c1", "v1")
    bind(db, "c2", "v2")
    with pytest.raises(MappingConflict):
        bind(db, "c1", "v2")
    assert (owner(db, "v1"), owner(db, "v2")) == ("c1", "c2")


def test_delete_frees_the_conversation(db: Database) -> None:
    """Deleting a mapping frees its conversation id for any chat."""
    held = bind(db, "c1", "v1")
    db.write(mappings.delete(held.id))
    assert owner(db, "v1") is None
    assert bind(db, "c2", "v1").chat == "c2"


def test_deleting_a_missing_mapping_is_not_found(db: Database) -> None:
    """Deleting an id that does not exist raises NotFound."""
    with pytest.raises(NotFound):
        db.write(mappings.delete(12345))


def test_an_upsert_without_state_or_metadata_keeps_them(db: Database) -> None:
    """State and metadata survive an upsert that does not give them."""
    bind(db, "c1", "v1", state="human", metadata={"agent": "ana"})
    again = bind(db, "c1", "v2")
    assert (again.state, again.metadata) == ("human", {"agent": "ana"})


def test_the_same_conversation_in_another_instance_is_independent(db: Database) -> None:
    """The reverse key is per plugin instance: two instances may each bind conversation v1."""
    bind(db, "c1", "v1", instance="a")
    assert bind(db, "c2", "v1", instance="b").instance_id == "b"


# -- the admin API --------------------------------------------------------------------------


def put(client: TestClient, headers: Headers, **body: Any) -> Reply:
    body = {"plugin": "generic", "instance": "main", "session": "s1", **body}
    return client.put("/admin/mappings", json=body, headers=headers)


def test_put_creates_with_200_and_the_mapping_json(
    client: TestClient, admin_headers: Headers
) -> None:
    """A new mapping is 200 with every field of the mapping document and created: true."""
    response = put(client, admin_headers, chat="c1", conversation="v1")
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {
        "id",
        "plugin",
        "instance",
        "session",
        "chat",
        "conversation",
        "state",
        "metadata",
        "created_at",
        "updated_at",
        "created",
    }
    assert data["created"] is True
    assert (data["chat"], data["conversation"], data["state"], data["metadata"]) == (
        "c1",
        "v1",
        "bot",
        {},
    )


def test_put_on_an_existing_chat_is_200_with_the_same_id(
    client: TestClient, admin_headers: Headers
) -> None:
    """Re-pointing through the API answers 200 and keeps the id."""
    first = put(client, admin_headers, chat="c1", conversation="v1").json()
    response = put(client, admin_headers, chat="c1", conversation="v2")
    assert response.status_code == 200 and response.json()["id"] == first["id"]


def test_put_of_a_held_conversation_is_409_naming_the_chat(
    client: TestClient, admin_headers: Headers
) -> None:
    """Binding a conversation held by another chat is 409 mapping_conflict in the error shape."""
    put(client, admin_headers, chat="c1", conversation="v1")
    response = put(client, admin_headers, chat="c2", conversation="v1")
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "code": "mapping_conflict",
            "message": ("conversation 'v1' is already bound to chat 'c1' of session 's1'"),
        }
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"plugin": "nope"},
        {"instance": "bad id"},
        {"instance": "x" * 65},
        {"session": ""},
        {"chat": "   "},
        {"chat": "c" * 257},
        {"conversation": 7},
        {"state": "robot"},
        {"metadata": [1]},
        {"extra": 1},
    ],
)
def test_put_with_a_bad_value_is_400(
    client: TestClient, admin_headers: Headers, bad: dict[str, Any]
) -> None:
    """Unknown plugin, bad instance id, empty or long ids, bad state or metadata are 400."""
    response = put(client, admin_headers, **{"chat": "c1", "conversation": "v1", **bad})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_input"


def test_get_finds_a_mapping_by_conversation_or_by_chat(
    client: TestClient, admin_headers: Headers
) -> None:
    """The conversation query and the session+chat query both find the one mapping."""
    made = put(client, admin_headers, chat="c1", conversation="v1").json()
    del made["created"]  # only the PUT says whether it made the row
    put(client, admin_headers, chat="c2", conversation="v2")
    by_conversation = client.get(
        "/admin/mappings?plugin=generic&instance=main&conversation=v1", headers=admin_headers
    ).json()
    by_chat = client.get(
        "/admin/mappings?plugin=generic&instance=main&session=s1&chat=c1", headers=admin_headers
    ).json()
    assert by_conversation == by_chat == {"items": [made], "next_cursor": None}


def test_list_pages_with_a_cursor(client: TestClient, admin_headers: Headers) -> None:
    """Listing follows next_cursor through every mapping exactly once."""
    for n in range(5):
        put(client, admin_headers, chat=f"c{n}", conversation=f"v{n}")
    seen, cursor = [], ""
    for _ in range(10):  # three pages are enough: a cursor that loops must not hang the test
        page = client.get(f"/admin/mappings?limit=2&cursor={cursor}", headers=admin_headers).json()
        seen += [item["chat"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    else:
        raise AssertionError(f"the cursor never ran out: {seen}")
    assert seen == [f"c{n}" for n in range(5)]


def test_patch_changes_the_handover_state(client: TestClient, admin_headers: Headers) -> None:
    """PATCH with a state answers the mapping in that state (metadata replaced when given)."""
    made = put(client, admin_headers, chat="c1", conversation="v1").json()
    response = client.patch(
        f"/admin/mappings/{made['id']}",
        headers=admin_headers,
        json={"state": "human", "metadata": {"agent": 3}},
    )
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["metadata"]) == ("human", {"agent": 3})


def test_patch_with_a_bad_state_is_400(client: TestClient, admin_headers: Headers) -> None:
    """A state outside bot, human, closed is refused."""
    made = put(client, admin_headers, chat="c1", conversation="v1").json()
    response = client.patch(
        f"/admin/mappings/{made['id']}", headers=admin_headers, json={"state": "asleep"}
    )
    assert response.status_code == 400


def test_delete_is_204_and_frees_the_conversation(
    client: TestClient, admin_headers: Headers
) -> None:
    """DELETE answers 204, the id is gone, and another chat can take the conversation."""
    made = put(client, admin_headers, chat="c1", conversation="v1").json()
    assert client.delete(f"/admin/mappings/{made['id']}", headers=admin_headers).status_code == 204
    assert client.get(f"/admin/mappings/{made['id']}", headers=admin_headers).status_code == 404
    again = put(client, admin_headers, chat="c2", conversation="v1")
    assert (again.status_code, again.json()["created"]) == (200, True)


@pytest.mark.parametrize(
    "path", ["/admin/mappings/999", "/admin/mappings/" + "9" * 30, "/admin/mappings/abc"]
)
def test_an_unknown_mapping_id_is_404(
    client: TestClient, admin_headers: Headers, path: str
) -> None:
    """A missing, out-of-range or non-numeric id is 404 in the error shape, never a 500."""
    for method in ("GET", "PATCH", "DELETE"):
        response = client.request(method, path, headers=admin_headers, json={"state": "bot"})
        assert response.status_code == 404, (method, response.text)


def test_mappings_require_the_admin_token(client: TestClient) -> None:
    """Without a token the mapping endpoints answer 401."""
    assert client.put("/admin/mappings", json={}).status_code == 401


# -- the CLI --------------------------------------------------------------------------------


def cli(*args: str) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("INGRESS_BOX_")}
    return CliRunner().invoke(main, list(args), env=clean)


def test_cli_set_list_state_and_delete_work_on_the_store(store: Path | DatabaseUrl) -> None:
    """mappings set, list, state and delete round-trip on the database."""
    path = str(store)
    made = json.loads(
        cli(
            "mappings",
            "set",
            "generic",
            "main",
            "--session",
            "s1",
            "--chat",
            "c1",
            "--conversation",
            "v1",
            "--db",
            path,
            "--json",
        ).stdout
    )
    listed = json.loads(
        cli("mappings", "list", "--conversation", "v1", "--db", path, "--json").stdout
    )
    assert listed["items"] == [made]
    assert "human" in cli("mappings", "state", str(made["id"]), "human", "--db", path).stdout
    assert cli("mappings", "delete", str(made["id"]), "--db", path).exit_code == 0
    assert json.loads(cli("mappings", "list", "--db", path, "--json").stdout)["items"] == []


def test_cli_conflict_exits_1_naming_the_chat(store: Path | DatabaseUrl) -> None:
    """mappings set onto a held conversation fails with exit 1 and names the holding chat."""
    path = str(store)
    first, second = (
        cli(
            "mappings",
            "set",
            "generic",
            "main",
            "--session",
            "s1",
            "--chat",
            chat,
            "--conversation",
            "v1",
            "--db",
            path,
        )
        for chat in ("c1", "c2")
    )
    assert first.exit_code == 0
    assert second.exit_code == 1 and "chat 'c1'" in second.stderr


# -- any sequence of upserts and deletes against a model ------------------------------------

INSTANCES, SESSIONS = st.sampled_from(["a", "b"]), st.sampled_from(["s1", "s2"])
CHATS, CONVERSATIONS = st.sampled_from(["c1", "c2", "c3"]), st.sampled_from(["v1", "v2", "v3"])
STATES = st.none() | st.sampled_from(["bot", "human", "closed"])
Key = tuple[str, str, str]  # instance, session, chat


def _empty(conn: Conn) -> None:
    conn.execute("DELETE FROM conversation_mappings")


class MappingModel(RuleBasedStateMachine):
    """The table must always equal a dict of chat -> (id, conversation, state)."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self.db.write(_empty)  # each example starts from an empty table
        self.model: dict[Key, tuple[int, str, str]] = {}

    @rule(
        instance=INSTANCES, session=SESSIONS, chat=CHATS, conversation=CONVERSATIONS, state=STATES
    )
    def upsert(
        self, instance: str, session: str, chat: str, conversation: str, state: str | None
    ) -> None:
        key = (instance, session, chat)
        holder = [
            k
            for k, (_, conv, _) in self.model.items()
            if k[0] == instance and conv == conversation and k != key
        ]
        try:
            mapping, created = self.db.write(
                mappings.upsert(
                    Upsert("generic", instance, session, chat, conversation, state), NOW
                )
            )
        except MappingConflict as exc:
            assert holder == [(instance, exc.session, exc.chat)]
            return
        assert not holder
        assert created == (key not in self.model)
        if key in self.model:
            assert mapping.id == self.model[key][0]
        kept = self.model[key][2] if key in self.model else "bot"
        self.model[key] = (mapping.id, conversation, state or kept)

    @rule(instance=INSTANCES, session=SESSIONS, chat=CHATS)
    def delete(self, instance: str, session: str, chat: str) -> None:
        key = (instance, session, chat)
        if key not in self.model:
            return
        deleted = self.db.write(mappings.delete(self.model.pop(key)[0]))
        assert deleted.chat == chat
        with pytest.raises(NotFound):  # its id is gone for good
            self.db.write(mappings.delete(deleted.id))

    @invariant()
    def table_equals_model(self) -> None:
        rows = self.db.read(
            "SELECT id, instance_id, session, chat, provider_conversation_id, "
            "state FROM conversation_mappings"
        )
        table = {(r[1], r[2], r[3]): (r[0], r[4], r[5]) for r in rows}
        assert table == self.model and len(rows) == len(table)
        reverse = {(r[1], r[4]) for r in rows}
        assert len(reverse) == len(rows)

    @invariant()
    def lookups_agree_with_model(self) -> None:
        for (instance, session, chat), (_, conversation, _) in self.model.items():
            found = mappings.of_conversation(self.db, "generic", instance, conversation)
            assert found is not None and (found.session, found.chat) == (session, chat)
            by_chat = mappings.of_chat(self.db, "generic", instance, session, chat)
            assert by_chat is not None and by_chat.conversation == conversation
        bound = {(k[0], conv) for k, (_, conv, _) in self.model.items()}
        for instance in ("a", "b"):
            for conversation in ("v1", "v2", "v3"):
                if (instance, conversation) not in bound:
                    assert (
                        mappings.of_conversation(self.db, "generic", instance, conversation) is None
                    )


def test_any_upserts_and_deletes_keep_the_table_equal_to_the_model(
    store: Path | DatabaseUrl,
) -> None:
    """Whatever the sequence, the table holds what the model holds and lookups agree."""
    db = open_database(store, synchronous="NORMAL").open()

    class OnThisStore(MappingModel):
        def __init__(self) -> None:
            super().__init__(db)

    try:
        run_state_machine_as_test(
            OnThisStore,
            settings=hypothesis_settings(max_examples=60, stateful_step_count=30, deadline=None),
        )
    finally:
        db.close()
