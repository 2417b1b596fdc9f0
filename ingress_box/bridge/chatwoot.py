"""The few calls of Chatwoot's Application API a bridge makes, over the worker's httpx client.

Paths are under ``/api/v1/accounts/{account_id}``, authorized by the ``api_access_token``
header; the token is never logged or put in an error (see :mod:`.calls`). Response shapes that
vary between Chatwoot versions (a created contact nested in ``payload.contact``, in ``payload``,
or at the root) are read here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..errors import PermanentFailure
from ..store.bridges import Chatwoot
from .calls import Deadline, call, ok


class ChatwootClient:
    def __init__(self, config: Chatwoot, client: httpx.Client, deadline: Deadline) -> None:
        self.config = config
        self.client = client
        self.deadline = deadline
        self.base = f"{config.url.rstrip('/')}/api/v1/accounts/{config.account_id}"
        self._headers = {"api_access_token": config.api_token, "accept": "application/json"}

    def _call(self, method: str, path: str, **options: Any) -> httpx.Response:
        return call(self.client, self.deadline, method, self.base + path, self._headers, **options)

    # -- contacts ------------------------------------------------------------------------

    def search_contacts(self, query: str) -> list[dict[str, Any]]:
        found = ok(self._call("GET", "/contacts/search", params={"q": query}))
        payload = found.get("payload") if isinstance(found, Mapping) else None
        return [c for c in payload or [] if isinstance(c, dict)]

    def create_contact(
        self, name: str, identifier: str, phone_number: str | None
    ) -> dict[str, Any] | None:
        """The new contact (with the inbox's contact-inbox), or None when Chatwoot answers 422
        (its identifier or phone number is taken: the caller adopts the existing contact)."""
        body: dict[str, Any] = {
            "inbox_id": self.config.inbox_id,
            "name": name,
            "identifier": identifier,
        }
        if phone_number:
            body["phone_number"] = phone_number
        response = self._call("POST", "/contacts", json=body)
        if response.status_code == 422:
            return None
        created = ok(response)
        payload = created.get("payload", created) if isinstance(created, Mapping) else None
        if isinstance(payload, Mapping) and isinstance(payload.get("contact"), Mapping):
            contact = dict(payload["contact"])
            nested = payload.get("contact_inbox")
            if isinstance(nested, Mapping) and not contact.get("contact_inboxes"):
                contact["contact_inboxes"] = [nested]
            return contact
        if isinstance(payload, Mapping) and "id" in payload:
            return dict(payload)
        raise PermanentFailure("Chatwoot answered a contact create without a contact")

    def source_id_in_inbox(self, contact: Mapping[str, Any]) -> str | None:
        """The contact's ``source_id`` in the bridge's inbox, if it has a contact-inbox there."""
        for ci in contact.get("contact_inboxes") or []:
            if not isinstance(ci, Mapping):
                continue
            inbox = ci.get("inbox")
            inbox_id = inbox.get("id") if isinstance(inbox, Mapping) else ci.get("inbox_id")
            if inbox_id == self.config.inbox_id and isinstance(ci.get("source_id"), str):
                return str(ci["source_id"])
        return None

    def create_contact_inbox(self, contact_id: int) -> str:
        body = {"inbox_id": self.config.inbox_id}
        made = ok(self._call("POST", f"/contacts/{contact_id}/contact_inboxes", json=body))
        payload = made.get("payload", made) if isinstance(made, Mapping) else {}
        source_id = payload.get("source_id") if isinstance(payload, Mapping) else None
        if not isinstance(source_id, str):
            raise PermanentFailure("Chatwoot answered a contact-inbox create without a source_id")
        return source_id

    # -- conversations -------------------------------------------------------------------

    def open_conversation_of(self, contact_id: int) -> int | None:
        """The contact's open (or pending) conversation in the bridge's inbox, if any."""
        found = ok(self._call("GET", f"/contacts/{contact_id}/conversations"))
        payload = found.get("payload") if isinstance(found, Mapping) else None
        for conversation in payload or []:
            if (
                isinstance(conversation, Mapping)
                and conversation.get("inbox_id") == self.config.inbox_id
                and conversation.get("status") in ("open", "pending")
                and isinstance(conversation.get("id"), int)
            ):
                return int(conversation["id"])
        return None

    def create_conversation(self, contact_id: int, source_id: str) -> int:
        # The contact-inbox's source_id, always: without it Chatwoot makes an orphan one.
        body = {
            "source_id": source_id,
            "inbox_id": self.config.inbox_id,
            "contact_id": contact_id,
            "status": "open",
        }
        made = ok(self._call("POST", "/conversations", json=body))
        if not isinstance(made, Mapping) or not isinstance(made.get("id"), int):
            raise PermanentFailure("Chatwoot answered a conversation create without an id")
        return int(made["id"])

    # -- messages ------------------------------------------------------------------------

    def find_message(self, conversation_id: int, source_id: str) -> int | None:
        """The id of the conversation's recent message with ``source_id``; None if none (or
        the conversation is gone)."""
        response = self._call("GET", f"/conversations/{conversation_id}/messages")
        if response.status_code == 404:
            return None
        found = ok(response)
        payload = found.get("payload") if isinstance(found, Mapping) else None
        for message in payload or []:
            if isinstance(message, Mapping) and message.get("source_id") == source_id:
                return int(message["id"])
        return None

    def post_message(
        self,
        conversation_id: int,
        fields: Mapping[str, Any],
        files: Sequence[tuple[str, bytes, str]] = (),
    ) -> int | None:
        """Create a message; its id, or None when the conversation is gone (404).

        With ``files`` (name, bytes, content type) it is multipart (``attachments[]``), nested
        fields as ``name[key]``.
        """
        path = f"/conversations/{conversation_id}/messages"
        if files:
            form: dict[str, str] = {}
            for name, value in fields.items():
                if isinstance(value, Mapping):
                    form |= {f"{name}[{k}]": str(v) for k, v in value.items()}
                else:
                    form[name] = str(value).lower() if isinstance(value, bool) else str(value)
            # httpx draws a random boundary per request, so no file's bytes can end a part.
            files_field = [("attachments[]", file) for file in files]
            response = self._call("POST", path, data=form, files=files_field)
        else:
            response = self._call("POST", path, json=dict(fields))
        if response.status_code == 404:
            return None
        made = ok(response)
        if not isinstance(made, Mapping) or not isinstance(made.get("id"), int):
            raise PermanentFailure("Chatwoot answered a message create without an id")
        return int(made["id"])

    def note(self, conversation_id: int, text: str) -> None:
        """A private note in the conversation (agents see it; it is never sent)."""
        body = {"content": text, "message_type": "outgoing", "private": True}
        ok(self._call("POST", f"/conversations/{conversation_id}/messages", json=body))
