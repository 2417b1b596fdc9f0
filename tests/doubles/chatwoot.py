"""FakeChatwoot: the Application API a bridge uses, and the webhooks Chatwoot sends back.

    with FakeChatwoot() as cw:
        acct = cw.add_account("Acme")
        inbox = cw.add_inbox(acct, "WhatsApp", webhook_url=receiver + "/inbox")
        hook = cw.add_webhook(acct, receiver + "/account")  # hook.secret is what the UI shows
        ...  # the bridge calls cw.url + "/api/v1/accounts/{acct}/..." with cw.token
        cw.agent_reply(acct, conversation_id, "hello from the UI")
        cw.wait_emitted()
        [attempt.json for attempt in cw.deliveries(receiver + "/inbox")]

What was checked against Chatwoot's code and tracker, and what was not:
- Confirmed (webhook_listener.rb): message and conversation events go to every account webhook
  subscribed to the event AND to the API inbox's `webhook_url` (which gets every event); contact
  events only to account webhooks. `message.webhook_sendable?` is incoming/outgoing/template, so
  private notes are emitted too; activity messages are not.
- Confirmed (message.rb): `message_type` enum incoming 0, outgoing 1, activity 2, template 3;
  status sent/delivered/read/failed; `webhook_data` carries the enum name, `push_event_data`
  (REST) the integer; any update of a message dispatches `message_updated`; an incoming message
  reopens a resolved conversation.
- Confirmed (PR #13573, v4.11.2; trigger_spec): account webhooks carry `X-Chatwoot-Delivery`,
  `X-Chatwoot-Timestamp` and `X-Chatwoot-Signature: sha256=hex(HMAC-SHA256(secret, "{ts}.{body}"))`.
  PR #13892 (v4.13.0) signs API-inbox webhooks the same way with the channel's own secret, so
  `add_inbox(secret=None)` (unsigned) is the pre-4.13 behaviour and `secret=...` the newer one.
  #13809: the displayed secret may not be the signing key (`signing_key_differs`).
- Confirmed (PR #8277, open PR #15913): any failure of the API-inbox webhook for
  `message_created`/`message_updated` marks the message `failed` with `external_error`, incoming
  ones included; with message.rb's update event that emits `message_updated` (so that part of the
  [guess] in the reference page is confirmed by reading, not by running Chatwoot).
- Confirmed (#15920, open; PR #15952 open): account and API-inbox webhooks are never retried.
- Confirmed (#15917): a duplicate phone/identifier answers 422
  `{"message": "Phone number has already been taken", "attributes": ["phone_number"]}`;
  `/contacts/search?q=` is a case-insensitive substring match over name, email, phone, identifier.
- Recalled, not confirmed: the nested `{payload: {contact, contact_inbox}}` create response, the
  401 body, 20 messages per page in `GET .../messages`, `conversation_updated` also firing on a
  status change, the `account_id` key in conversation payloads, the toggle_status and assignment
  response shapes.
- Deliberately harsher than Chatwoot: ids of contacts, conversations, messages and inboxes are
  per account (in Chatwoot only the conversation display id is), so two accounts collide.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from doubles.base import Attempt, Call, Delivery, Emitter, HttpDouble, Reply, route

A = "/api/v1/accounts/{account}"
EVENTS = (
    "conversation_created",
    "conversation_status_changed",
    "conversation_updated",
    "message_created",
    "message_updated",
    "contact_created",
    "contact_updated",
    "webwidget_triggered",
)
MESSAGE_TYPES = {"incoming": 0, "outgoing": 1, "activity": 2, "template": 3}
E164 = re.compile(r"\+[1-9]\d{1,14}")
PAGE = 20
NOT_FOUND: Reply = (404, {"error": "Resource could not be found"}, {})


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _invalid(*attributes: str, why: str = "has already been taken") -> Reply:
    words = [a.replace("_", " ").capitalize() + " " + why for a in attributes]
    return 422, {"message": ", ".join(words), "attributes": list(attributes)}, {}


@dataclass
class Webhook:
    """An account webhook: `secret` is what the API shows, `signing_key` what signs (#13809)."""

    id: int
    url: str
    subscriptions: list[str]
    secret: str
    signing_key: str


@dataclass(frozen=True)
class _Job:
    url: str
    body: bytes
    delivery_id: str
    key: str | None  # None: unsigned
    to_inbox: bool


@dataclass
class _Account:
    id: int
    name: str
    seq: dict[str, itertools.count[int]] = field(default_factory=dict)
    inboxes: dict[int, dict[str, Any]] = field(default_factory=dict)
    agents: dict[int, dict[str, Any]] = field(default_factory=dict)
    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    conversations: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    webhooks: list[Webhook] = field(default_factory=list)

    def next(self, kind: str) -> int:
        return next(self.seq.setdefault(kind, itertools.count(1)))


class FakeChatwoot(HttpDouble):
    """Chatwoot's Application API on 127.0.0.1; state is per account, ids collide across them."""

    def __init__(self, token: str = "cw-test-token", *, webhook_timeout: float = 5.0) -> None:
        super().__init__()
        self.token = token
        self._accounts: dict[int, _Account] = {}
        self._attachments: dict[str, tuple[str, bytes]] = {}
        # Fault switches; set them at any time.
        self.duplicate_emission = False  # every webhook POSTed twice (#11901)
        self.emission_delay = 0.0  # seconds before each webhook goes out (#12661)
        self.emit_before_response = False  # message POST answers after its webhooks were sent
        self.signing_key_differs = False  # sign with a key that is not the shown secret (#13809)
        self._held: list[_Job] | None = None
        # Two senders, so a slow inbox receiver does not delay account webhooks; no retries ever.
        self.account_emitter = Emitter(timeout=webhook_timeout)
        self.inbox_emitter = Emitter(timeout=webhook_timeout, on_attempt=self._inbox_attempted)
        self.emitters += [self.account_emitter, self.inbox_emitter]

    # ----------------------------------------------------------------- setup, for the test
    def add_account(self, name: str = "Acme") -> int:
        with self.lock:
            account = _Account(len(self._accounts) + 1, name)
            self._accounts[account.id] = account
            self.add_agent(account.id, "API user")  # the owner of `token`: sender of API posts
            return account.id

    def add_agent(self, account_id: int, name: str) -> int:
        with self.lock:
            account = self._accounts[account_id]
            agent_id = account.next("agent")
            account.agents[agent_id] = {"id": agent_id, "name": name, "type": "user"}
            return agent_id

    def add_inbox(
        self,
        account_id: int,
        name: str = "WhatsApp",
        webhook_url: str | None = None,
        secret: str | None = None,
    ) -> int:
        """An API-channel inbox; `secret` signs its webhooks as Chatwoot >= 4.13 does."""
        with self.lock:
            account = self._accounts[account_id]
            inbox_id = account.next("inbox")
            account.inboxes[inbox_id] = {
                "id": inbox_id,
                "name": name,
                "channel_type": "Channel::Api",
                "webhook_url": webhook_url,
                "secret": secret,
            }
            return inbox_id

    def add_webhook(
        self,
        account_id: int,
        url: str,
        subscriptions: Iterable[str] = EVENTS,
        secret: str | None = None,
    ) -> Webhook:
        with self.lock:
            account = self._accounts[account_id]
            shown = secret or secrets.token_urlsafe(24)
            hook = Webhook(account.next("webhook"), url, list(subscriptions), shown, shown)
            account.webhooks.append(hook)
            return hook

    # ------------------------------------------------------------- inspection and driving
    def contacts(self, account_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [
                self._contact_json(self._accounts[account_id], c["id"])
                for c in self._accounts[account_id].contacts.values()
            ]

    def conversations(self, account_id: int) -> list[dict[str, Any]]:
        with self.lock:
            account = self._accounts[account_id]
            return [self._conversation_json(account, c) for c in account.conversations.values()]

    def messages(self, account_id: int, conversation_id: int) -> list[dict[str, Any]]:
        """Every message of the conversation, oldest first, as the REST API shows them."""
        with self.lock:
            account = self._accounts[account_id]
            return [
                self._message_json(account, m)
                for m in account.messages.values()
                if m["conversation_id"] == conversation_id
            ]

    def agent_reply(
        self,
        account_id: int,
        conversation_id: int,
        text: str,
        *,
        private: bool = False,
        attachments: Iterable[tuple[str, str, bytes]] = (),
        agent_id: int | None = None,
    ) -> dict[str, Any]:
        """An agent types in the UI: an outgoing message, no source_id, emitted like any other.
        `attachments` are (filename, content type, bytes)."""
        with self.lock:
            account = self._accounts[account_id]
            conversation = account.conversations[conversation_id]
            sender = account.agents[agent_id or max(account.agents)]
            message = self._create_message(
                account,
                conversation,
                "outgoing",
                text,
                private,
                None,
                {},
                list(attachments),
                ("user", sender["id"]),
            )
            deliveries = self._message_events(account, message, "message_created")
            reply = self._message_json(account, message)
        self._maybe_wait(deliveries)
        return reply

    def set_status(self, account_id: int, conversation_id: int, status: str) -> None:
        """An agent changes the status in the UI."""
        with self.lock:
            account = self._accounts[account_id]
            self._set_status(account, account.conversations[conversation_id], status)

    def assign(self, account_id: int, conversation_id: int, agent_id: int | None) -> None:
        """An agent takes (or, with None, releases) the conversation in the UI."""
        with self.lock:
            account = self._accounts[account_id]
            self._assign(account, account.conversations[conversation_id], agent_id)

    def hold_emissions(self) -> None:
        """Queue webhooks instead of sending them, until `release`."""
        with self.lock:
            self._held = []

    def release(self, *, reverse: bool = False) -> None:
        """Send what was held, in order or reversed (a Sidekiq-congestion reorder, #12661)."""
        with self.lock:
            held, self._held = self._held or [], None
        for job in reversed(held) if reverse else held:
            self._send(job)

    def deliveries(self, url_prefix: str = "") -> list[Attempt]:
        return sorted(
            self.account_emitter.attempts_to(url_prefix)
            + self.inbox_emitter.attempts_to(url_prefix),
            key=lambda a: a.at,
        )

    def wait_emitted(self, timeout: float = 10.0) -> bool:
        return all(e.wait_idle(timeout) for e in self.emitters)

    # -------------------------------------------------------------------------- REST: auth
    def authorize(self, call: Call) -> Reply | None:
        if call.path.startswith("/rails/active_storage/"):
            return None
        if not hmac.compare_digest(call.headers.get("api_access_token", ""), self.token):
            return 401, {"error": "Invalid Access Token"}, {}
        account = call.params.get("account")
        if account is not None and (not account.isdigit() or int(account) not in self._accounts):
            return 401, {"error": "You are not authorized to access this account"}, {}
        return None

    def _account(self, call: Call) -> _Account:
        return self._accounts[int(call.params["account"])]

    # ------------------------------------------------------------------- REST: inboxes etc.
    @route("POST", A + "/inboxes")
    def create_inbox(self, call: Call) -> Reply:
        body = call.json or {}
        channel = body.get("channel") or {}
        if channel.get("type") != "api":
            return 422, {"message": "only API channels are emulated"}, {}
        with self.lock:
            account = self._account(call)
            inbox_id = self.add_inbox(
                account.id, body.get("name", "API"), channel.get("webhook_url")
            )
            return 200, self._inbox_json(account, inbox_id), {}

    @route("GET", A + "/webhooks")
    def list_webhooks(self, call: Call) -> Reply:
        with self.lock:
            hooks = [
                {
                    "id": h.id,
                    "url": h.url,
                    "subscriptions": h.subscriptions,
                    "secret": h.secret,
                    "account_id": self._account(call).id,
                    "webhook_type": "account_type",
                }
                for h in self._account(call).webhooks
            ]
        return 200, {"payload": {"webhooks": hooks}}, {}

    # ---------------------------------------------------------------------- REST: contacts
    @route("POST", A + "/contacts")
    def create_contact(self, call: Call) -> Reply:
        body = call.json or {}
        with self.lock:
            account = self._account(call)
            inbox_id = body.get("inbox_id")
            if inbox_id is not None and int(inbox_id) not in account.inboxes:
                return NOT_FOUND
            if (refusal := self._check_unique(account, body, None)) is not None:
                return refusal
            contact_id = account.next("contact")
            account.contacts[contact_id] = {
                "id": contact_id,
                "name": body.get("name") or "",
                "email": body.get("email"),
                "phone_number": body.get("phone_number"),
                "identifier": body.get("identifier"),
                "custom_attributes": body.get("custom_attributes") or {},
                "additional_attributes": body.get("additional_attributes") or {},
                "created_at": int(time.time()),
                "contact_inboxes": [],
            }
            contact_inbox = None
            if inbox_id is not None:
                contact_inbox = self._add_contact_inbox(account, contact_id, int(inbox_id), None)
            contact = self._contact_json(account, contact_id)
            self._dispatch(account, "contact_created", {**contact, "account": self._acct(account)})
            nested = (
                None if contact_inbox is None else self._contact_inbox_json(account, contact_inbox)
            )
            return 200, {"payload": {"contact": contact, "contact_inbox": nested}}, {}

    @route("GET", A + "/contacts/search")
    def search_contacts(self, call: Call) -> Reply:
        needle = (call.arg("q") or "").lower()
        with self.lock:
            account = self._account(call)
            found = [
                self._contact_json(account, c["id"])
                for c in account.contacts.values()
                if needle
                and any(
                    needle in str(c.get(k) or "").lower()
                    for k in ("name", "email", "phone_number", "identifier")
                )
            ]
        return 200, {"meta": {"count": len(found), "current_page": 1}, "payload": found}, {}

    @route("POST", A + "/contacts/filter")
    def filter_contacts(self, call: Call) -> Reply:
        conditions = (call.json or {}).get("payload") or []
        with self.lock:
            account = self._account(call)
            found = [
                self._contact_json(account, c["id"])
                for c in account.contacts.values()
                if _matches(c, conditions)
            ]
        return 200, {"meta": {"count": len(found), "current_page": 1}, "payload": found}, {}

    @route("GET", A + "/contacts/{contact}")
    def get_contact(self, call: Call) -> Reply:
        with self.lock:
            account = self._account(call)
            if (contact_id := _id(call, "contact")) not in account.contacts:
                return NOT_FOUND
            return 200, {"payload": self._contact_json(account, contact_id)}, {}

    @route("PUT", A + "/contacts/{contact}")
    def update_contact(self, call: Call) -> Reply:
        body = call.json or {}
        with self.lock:
            account = self._account(call)
            if (contact_id := _id(call, "contact")) not in account.contacts:
                return NOT_FOUND
            if (refusal := self._check_unique(account, body, contact_id)) is not None:
                return refusal
            contact = account.contacts[contact_id]
            editable = ("name", "email", "phone_number", "identifier", "custom_attributes")
            changed = [
                {k: {"previous_value": contact.get(k), "current_value": body[k]}}
                for k in editable
                if k in body and body[k] != contact.get(k)
            ]
            contact.update({k: body[k] for k in editable if k in body})
            result = self._contact_json(account, contact_id)
            if changed:
                self._dispatch(
                    account,
                    "contact_updated",
                    {**result, "changed_attributes": changed, "account": self._acct(account)},
                )
            return 200, {"payload": result}, {}

    @route("POST", A + "/contacts/{contact}/contact_inboxes")
    def create_contact_inbox(self, call: Call) -> Reply:
        body = call.json or {}
        with self.lock:
            account = self._account(call)
            contact_id, inbox_id = _id(call, "contact"), int(body.get("inbox_id") or 0)
            if contact_id not in account.contacts or inbox_id not in account.inboxes:
                return NOT_FOUND
            source_id = body.get("source_id")
            if source_id and self._source_owner(account, inbox_id, source_id) not in (
                None,
                contact_id,
            ):
                return _invalid("source_id")
            contact_inbox = self._add_contact_inbox(account, contact_id, inbox_id, source_id)
            return 200, self._contact_inbox_json(account, contact_inbox), {}

    @route("GET", A + "/contacts/{contact}/conversations")
    def contact_conversations(self, call: Call) -> Reply:
        with self.lock:
            account = self._account(call)
            if (contact_id := _id(call, "contact")) not in account.contacts:
                return NOT_FOUND
            found = [
                self._conversation_json(account, c)
                for c in account.conversations.values()
                if c["contact_id"] == contact_id and not c["deleted"]
            ]
        return 200, {"payload": found}, {}

    # ----------------------------------------------------------------- REST: conversations
    @route("POST", A + "/conversations")
    def create_conversation(self, call: Call) -> Reply:
        body = call.json or {}
        with self.lock:
            account = self._account(call)
            inbox_id, source_id = int(body.get("inbox_id") or 0), body.get("source_id")
            if inbox_id not in account.inboxes:
                return NOT_FOUND
            owner = self._source_owner(account, inbox_id, source_id) if source_id else None
            contact_id = int(body.get("contact_id") or owner or 0)
            if contact_id not in account.contacts or owner not in (None, contact_id):
                return NOT_FOUND if owner is None else _invalid("source_id")
            if owner is None:  # a new contact_inbox: the orphan of #2578 when source_id is absent
                source_id = self._add_contact_inbox(account, contact_id, inbox_id, source_id)[
                    "source_id"
                ]
            conversation_id = account.next("conversation")
            conversation = account.conversations[conversation_id] = {
                "id": conversation_id,
                "inbox_id": inbox_id,
                "contact_id": contact_id,
                "source_id": source_id,
                "status": body.get("status") or "open",
                "assignee_id": body.get("assignee_id"),
                "deleted": False,
                "custom_attributes": body.get("custom_attributes") or {},
                "additional_attributes": body.get("additional_attributes") or {},
                "created_at": time.time(),
            }
            self._conversation_event(account, conversation, "conversation_created", None)
            return 200, self._conversation_json(account, conversation), {}

    @route("GET", A + "/conversations/{conversation}")
    def get_conversation(self, call: Call) -> Reply:
        with self.lock:
            account, conversation = self._conversation(call)
            if conversation is None:
                return NOT_FOUND
            return 200, self._conversation_json(account, conversation), {}

    @route("DELETE", A + "/conversations/{conversation}")
    def delete_conversation(self, call: Call) -> Reply:
        with self.lock:
            _, conversation = self._conversation(call)
            if conversation is None:
                return NOT_FOUND
            conversation["deleted"] = True
            return 200, {}, {}

    @route("POST", A + "/conversations/{conversation}/toggle_status")
    def toggle_status(self, call: Call) -> Reply:
        with self.lock:
            account, conversation = self._conversation(call)
            if conversation is None:
                return NOT_FOUND
            wanted = (call.json or {}).get("status")
            if wanted is None:
                wanted = "resolved" if conversation["status"] == "open" else "open"
            if wanted not in ("open", "resolved", "pending", "snoozed"):
                return 422, {"message": f"'{wanted}' is not a valid status"}, {}
            self._set_status(account, conversation, wanted)
            return (
                200,
                {
                    "meta": {},
                    "payload": {
                        "success": True,
                        "current_status": wanted,
                        "conversation_id": conversation["id"],
                    },
                },
                {},
            )

    @route("POST", A + "/conversations/{conversation}/assignments")
    def assignments(self, call: Call) -> Reply:
        with self.lock:
            account, conversation = self._conversation(call)
            if conversation is None:
                return NOT_FOUND
            agent_id = (call.json or {}).get("assignee_id")
            if agent_id is not None and int(agent_id) not in account.agents:
                return NOT_FOUND
            self._assign(account, conversation, None if agent_id is None else int(agent_id))
            return 200, (account.agents[int(agent_id)] if agent_id is not None else None), {}

    # ---------------------------------------------------------------------- REST: messages
    @route("GET", A + "/conversations/{conversation}/messages")
    def list_messages(self, call: Call) -> Reply:
        with self.lock:
            account, conversation = self._conversation(call)
            if conversation is None:
                return NOT_FOUND
            before = int(call.arg("before") or 0)
            mine = [
                m
                for m in account.messages.values()
                if m["conversation_id"] == conversation["id"] and (not before or m["id"] < before)
            ][-PAGE:]
            contact = self._contact_json(account, conversation["contact_id"])
            meta = {
                "contact": contact,
                "assignee": self._agent(account, conversation["assignee_id"]),
            }
            return (
                200,
                {"meta": meta, "payload": [self._message_json(account, m) for m in mine]},
                {},
            )

    @route("POST", A + "/conversations/{conversation}/messages")
    def create_message(self, call: Call) -> Reply:
        fields, files = _message_fields(call)
        message_type = str(fields.get("message_type") or "outgoing")
        if message_type not in ("incoming", "outgoing"):
            return 422, {"message": f"'{message_type}' is not a valid message_type"}, {}
        with self.lock:
            account, conversation = self._conversation(call)
            if conversation is None:
                return NOT_FOUND
            sender = (
                ("contact", conversation["contact_id"])
                if message_type == "incoming"
                else ("user", min(account.agents))
            )
            message = self._create_message(
                account,
                conversation,
                message_type,
                fields.get("content"),
                _truthy(fields.get("private")),
                fields.get("source_id"),
                dict(fields.get("content_attributes") or {}),
                files,
                sender,
            )
            deliveries = self._message_events(account, message, "message_created")
            reply = self._message_json(account, message)
        self._maybe_wait(deliveries)
        return 200, reply, {}

    @route("PATCH", A + "/conversations/{conversation}/messages/{message}")
    def update_message(self, call: Call) -> Reply:
        body = call.json or {}
        with self.lock:
            account, conversation = self._conversation(call)
            message = account.messages.get(_id(call, "message"))
            if conversation is None or message is None:
                return NOT_FOUND
            if body.get("status") not in (None, "sent", "delivered", "read", "failed"):
                return 422, {"message": "invalid status"}, {}
            message["status"] = body.get("status") or message["status"]
            if "external_error" in body:
                message["content_attributes"]["external_error"] = body["external_error"]
            self._message_events(account, message, "message_updated")
            return 200, self._message_json(account, message), {}

    @route("GET", "/rails/active_storage/blobs/{key}/{filename}")
    def attachment(self, call: Call) -> Reply:
        with self.lock:
            found = self._attachments.get(call.params["key"])
        if found is None:
            return NOT_FOUND
        return 200, found[1], {"Content-Type": found[0]}

    # ----------------------------------------------------------------------------- state
    def _conversation(self, call: Call) -> tuple[_Account, dict[str, Any] | None]:
        account = self._account(call)
        conversation = account.conversations.get(_id(call, "conversation"))
        return account, None if conversation is None or conversation["deleted"] else conversation

    def _check_unique(
        self, account: _Account, body: dict[str, Any], me: int | None
    ) -> Reply | None:
        phone = body.get("phone_number")
        if phone and not E164.fullmatch(str(phone)):
            return _invalid("phone_number", why="should be in e164 format")
        taken = [
            k
            for k in ("email", "phone_number", "identifier")
            if body.get(k)
            and any(c["id"] != me and c.get(k) == body[k] for c in account.contacts.values())
        ]
        return _invalid(*taken) if taken else None

    def _source_owner(self, account: _Account, inbox_id: int, source_id: str) -> int | None:
        for contact in account.contacts.values():
            for ci in contact["contact_inboxes"]:
                if ci["inbox_id"] == inbox_id and ci["source_id"] == source_id:
                    return int(contact["id"])
        return None

    def _add_contact_inbox(
        self, account: _Account, contact_id: int, inbox_id: int, source_id: str | None
    ) -> dict[str, Any]:
        contact = account.contacts[contact_id]
        for ci in contact["contact_inboxes"]:
            if source_id and ci["inbox_id"] == inbox_id and ci["source_id"] == source_id:
                return dict(ci)
        ci = {
            "id": account.next("contact_inbox"),
            "contact_id": contact_id,
            "inbox_id": inbox_id,
            "source_id": source_id or str(uuid.uuid4()),
        }
        contact["contact_inboxes"].append(ci)
        return dict(ci)

    def _create_message(
        self,
        account: _Account,
        conversation: dict[str, Any],
        message_type: str,
        content: str | None,
        private: bool,
        source_id: str | None,
        content_attributes: dict[str, Any],
        files: list[tuple[str, str, bytes]],
        sender: tuple[str, int],
    ) -> dict[str, Any]:
        in_reply_to = str(content_attributes.get("in_reply_to") or "")
        quoted = account.messages.get(int(in_reply_to)) if in_reply_to.isdigit() else None
        if quoted is not None:  # the quoted message's source_id is handed back (A.0 6)
            content_attributes["in_reply_to_external_id"] = quoted["source_id"]
        message_id = account.next("message")
        message = account.messages[message_id] = {
            "id": message_id,
            "conversation_id": conversation["id"],
            "inbox_id": conversation["inbox_id"],
            "message_type": message_type,
            "content": content,
            "content_type": "text",
            "private": private,
            "source_id": source_id,
            "status": "sent",
            "content_attributes": content_attributes,
            "sender": sender,
            "created_at": time.time(),
            "attachments": [self._store_attachment(account, message_id, f) for f in files],
        }
        if message_type == "incoming" and conversation["status"] == "resolved":
            self._set_status(account, conversation, "open")
        return message

    def _store_attachment(
        self, account: _Account, message_id: int, file: tuple[str, str, bytes]
    ) -> dict[str, Any]:
        filename, content_type, data = file
        key = secrets.token_hex(8)
        self._attachments[key] = (content_type, data)
        kind = content_type.split("/")[0]
        url = f"{self.url}/rails/active_storage/blobs/{key}/{filename}"
        return {
            "id": account.next("attachment"),
            "message_id": message_id,
            "file_type": kind if kind in ("image", "audio", "video") else "file",
            "account_id": account.id,
            "extension": filename.rpartition(".")[2] or None,
            "data_url": url,
            "thumb_url": url if kind == "image" else "",
            "file_size": len(data),
        }

    def _set_status(self, account: _Account, conversation: dict[str, Any], status: str) -> None:
        previous = conversation["status"]
        if previous == status:
            return
        conversation["status"] = status
        change = [{"status": {"previous_value": previous, "current_value": status}}]
        self._conversation_event(account, conversation, "conversation_status_changed", change)
        self._conversation_event(account, conversation, "conversation_updated", change)

    def _assign(
        self, account: _Account, conversation: dict[str, Any], agent_id: int | None
    ) -> None:
        previous = conversation["assignee_id"]
        if previous == agent_id:
            return
        conversation["assignee_id"] = agent_id
        change = [{"assignee_id": {"previous_value": previous, "current_value": agent_id}}]
        self._conversation_event(account, conversation, "conversation_updated", change)

    def _inbox_attempted(self, delivery: Delivery, attempt: Attempt) -> None:
        """A failed API-inbox webhook marks its message failed (PR #8277), which emits
        message_updated; a message already failed is left alone (trigger.rb)."""
        if attempt.status is not None and 200 <= attempt.status < 300:
            return
        payload = attempt.json
        if payload.get("event") not in ("message_created", "message_updated"):
            return
        with self.lock:
            account = self._accounts.get(payload["account"]["id"])
            message = account.messages.get(payload["id"]) if account else None
            if account is None or message is None or message["status"] == "failed":
                return
            message["status"] = "failed"
            message["content_attributes"]["external_error"] = attempt.error or str(attempt.status)
            self._message_events(account, message, "message_updated")

    # ------------------------------------------------------------------------- emission
    def _message_events(
        self, account: _Account, message: dict[str, Any], event: str
    ) -> list[Delivery]:
        if message["message_type"] not in ("incoming", "outgoing", "template"):
            return []
        conversation = account.conversations[message["conversation_id"]]
        payload = {
            "account": self._acct(account),
            "additional_attributes": {},
            "content_attributes": message["content_attributes"],
            "content_type": message["content_type"],
            "content": message["content"],
            "conversation": self._conversation_json(account, conversation),
            "created_at": _iso(message["created_at"]),
            "id": message["id"],
            "inbox": {
                "id": message["inbox_id"],
                "name": account.inboxes[message["inbox_id"]]["name"],
            },
            "message_type": message["message_type"],
            "private": message["private"],
            "sender": self._sender(account, message["sender"]),
            "source_id": message["source_id"],
        }
        if message["attachments"]:
            payload["attachments"] = message["attachments"]
        return self._dispatch(account, event, payload, message["inbox_id"])

    def _conversation_event(
        self,
        account: _Account,
        conversation: dict[str, Any],
        event: str,
        changed: list[dict[str, Any]] | None,
    ) -> None:
        payload = self._conversation_json(account, conversation)
        if changed is not None:
            payload["changed_attributes"] = changed
        self._dispatch(account, event, payload, conversation["inbox_id"])

    def _dispatch(
        self, account: _Account, event: str, payload: dict[str, Any], inbox_id: int | None = None
    ) -> list[Delivery]:
        """Fan out as webhook_listener.rb does: subscribed account webhooks, then the inbox's.
        The body is fixed now; the timestamp and signature when it is handed to the sender."""
        body = json.dumps({**payload, "event": event}).encode()
        targets: list[tuple[str, str | None, bool]] = []
        for hook in account.webhooks:
            if event in hook.subscriptions:
                targets.append((hook.url, self._signing_key(hook.signing_key), False))
        inbox = account.inboxes.get(inbox_id) if inbox_id is not None else None
        if inbox is not None and inbox["webhook_url"]:
            targets.append((inbox["webhook_url"], self._signing_key(inbox["secret"]), True))
        sent = []
        for url, key, to_inbox in targets:
            # A duplicate is a second job for the same event, so it has its own delivery id.
            for _ in range(2 if self.duplicate_emission else 1):
                job = _Job(url, body, str(uuid.uuid4()), key, to_inbox)
                if self._held is not None:
                    self._held.append(job)
                else:
                    sent.append(self._send(job))
        return sent

    def _signing_key(self, shown: str | None) -> str | None:
        if shown is None:
            return None
        return shown + "-internal" if self.signing_key_differs else shown

    def _send(self, job: _Job) -> Delivery:
        headers = {"X-Chatwoot-Delivery": job.delivery_id}
        if job.key is not None:
            ts = str(int(time.time()))
            signed = f"{ts}.".encode() + job.body
            digest = hmac.new(job.key.encode(), signed, hashlib.sha256).hexdigest()
            headers |= {"X-Chatwoot-Timestamp": ts, "X-Chatwoot-Signature": f"sha256={digest}"}
        emitter = self.inbox_emitter if job.to_inbox else self.account_emitter
        return emitter.emit(job.url, job.body, headers=headers, delay=self.emission_delay)

    def _maybe_wait(self, deliveries: list[Delivery]) -> None:
        if self.emit_before_response:
            for delivery in deliveries:
                delivery.wait(self.inbox_emitter.timeout + 5)

    # ----------------------------------------------------------------------------- shapes
    def _acct(self, account: _Account) -> dict[str, Any]:
        return {"id": account.id, "name": account.name}

    def _agent(self, account: _Account, agent_id: int | None) -> dict[str, Any] | None:
        return None if agent_id is None else dict(account.agents[agent_id])

    def _sender(self, account: _Account, sender: tuple[str, int]) -> dict[str, Any]:
        kind, sender_id = sender
        if kind == "user":
            return dict(account.agents[sender_id])
        contact = account.contacts[sender_id]
        return {
            "id": sender_id,
            "name": contact["name"],
            "phone_number": contact["phone_number"],
            "identifier": contact["identifier"],
            "type": "contact",
        }

    def _inbox_json(self, account: _Account, inbox_id: int) -> dict[str, Any]:
        inbox = account.inboxes[inbox_id]
        return {
            "id": inbox_id,
            "name": inbox["name"],
            "channel_type": inbox["channel_type"],
            "webhook_url": inbox["webhook_url"],
            "account_id": account.id,
        }

    def _contact_inbox_json(self, account: _Account, ci: dict[str, Any]) -> dict[str, Any]:
        return {"source_id": ci["source_id"], "inbox": self._inbox_json(account, ci["inbox_id"])}

    def _contact_json(self, account: _Account, contact_id: int) -> dict[str, Any]:
        contact = account.contacts[contact_id]
        data = {k: v for k, v in contact.items() if k != "contact_inboxes"}
        data["contact_inboxes"] = [
            self._contact_inbox_json(account, ci) for ci in contact["contact_inboxes"]
        ]
        return data

    def _conversation_json(self, account: _Account, conversation: dict[str, Any]) -> dict[str, Any]:
        contact = account.contacts[conversation["contact_id"]]
        last = [m for m in account.messages.values() if m["conversation_id"] == conversation["id"]]
        return {
            "id": conversation["id"],
            "account_id": account.id,
            "inbox_id": conversation["inbox_id"],
            "status": conversation["status"],
            "channel": "Channel::Api",
            "can_reply": True,
            "contact_inbox": {
                "source_id": conversation["source_id"],
                "contact_id": contact["id"],
                "inbox_id": conversation["inbox_id"],
            },
            "meta": {
                "sender": {
                    "id": contact["id"],
                    "name": contact["name"],
                    "phone_number": contact["phone_number"],
                    "identifier": contact["identifier"],
                    "custom_attributes": contact["custom_attributes"],
                    "type": "contact",
                },
                "assignee": self._agent(account, conversation["assignee_id"]),
                "team": None,
            },
            "messages": [self._message_json(account, m) for m in last[-1:]],
            "custom_attributes": conversation["custom_attributes"],
            "additional_attributes": conversation["additional_attributes"],
            "labels": [],
            "created_at": int(conversation["created_at"]),
            "timestamp": int(time.time()),
        }

    def _message_json(self, account: _Account, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": message["id"],
            "content": message["content"],
            "account_id": account.id,
            "inbox_id": message["inbox_id"],
            "conversation_id": message["conversation_id"],
            "message_type": MESSAGE_TYPES[message["message_type"]],
            "content_type": message["content_type"],
            "status": message["status"],
            "content_attributes": message["content_attributes"],
            "private": message["private"],
            "source_id": message["source_id"],
            "created_at": int(message["created_at"]),
            "sender_type": message["sender"][0].capitalize(),
            "sender_id": message["sender"][1],
            "sender": self._sender(account, message["sender"]),
            "attachments": message["attachments"],
        }


def _id(call: Call, name: str) -> int:
    value = call.params[name]
    return int(value) if value.isdigit() else 0


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")


def _matches(contact: dict[str, Any], conditions: list[dict[str, Any]]) -> bool:
    """POST /contacts/filter over standard attributes: equal_to / contains, joined by the
    previous condition's query_operator (AND or OR), left to right."""
    result: bool | None = None
    joiner = "OR"
    for condition in conditions:
        value = str(contact.get(condition.get("attribute_key", "")) or "").lower()
        wanted = [str(v).lower() for v in condition.get("values") or []]
        if condition.get("filter_operator") == "contains":
            hit = any(w in value for w in wanted)
        else:
            hit = value in wanted and value != ""
        result = hit if result is None else (result or hit if joiner == "OR" else result and hit)
        joiner = str(condition.get("query_operator") or "OR").upper()
    return bool(result)


def _message_fields(call: Call) -> tuple[dict[str, Any], list[tuple[str, str, bytes]]]:
    """JSON body, or multipart with `attachments[]` files and `content_attributes[x]` fields."""
    if call.json is not None:
        return dict(call.json), []
    fields: dict[str, Any] = {}
    files = []
    for part in call.form():
        if part.name == "attachments[]" and part.filename is not None:
            files.append(
                (part.filename, part.content_type or "application/octet-stream", part.data)
            )
        elif match := re.fullmatch(r"content_attributes\[(\w+)\]", part.name):
            fields.setdefault("content_attributes", {})[match.group(1)] = part.data.decode()
        else:
            fields[part.name] = part.data.decode()
    return fields, files
