"""The exception tree, and the one JSON error body. No HTTP codes here: the edges translate
(``web/kit.py`` holds the table of statuses, ``cli/main.py`` maps errors to exit codes).

IngressBoxError
├── ConfigError            a setting cannot be read or makes no sense
├── ManifestError          a plugin manifest is wrong (names the file and the field)
├── StorageUnavailable     the database cannot commit now (locked past its timeout, disk full)
├── SchemaTooNew           the database file was made by a newer release than this one
├── NotFound               no such instance, delivery, dead letter or mapping
├── AlreadyExists          an instance with that plugin and id exists
├── InvalidInput           a request or command carries a bad value
│   ├── InvalidJson        the body is not JSON at all
│   └── BodyTooLarge       the body is larger than its endpoint accepts
├── MappingConflict        the conversation is already bound to another chat
├── StillRejected          a kept request does not verify with the instance's secrets now
├── NoTarget               the instance has nowhere to deliver (a test event cannot be sent)
├── NotReplayable          a delivery cannot be replayed as it stands
│   ├── AlreadyPending     it is still waiting in the outbox
│   └── PayloadPruned      its body was dropped after delivery (payload retention)
├── ClientDisconnected     the caller went away before its request was read
└── DeliveryError          raised by a handler to say how an attempt ended
    ├── RetryLater         transient: try again (after ``delay`` seconds when given)
    │   └── Waiting        not a failure: another delivery or attempt of the box goes first
    └── PermanentFailure   do not retry: dead-letter now

A handler's failure may carry the target's HTTP ``status_code``, recorded with the attempt.
"""

from __future__ import annotations


class IngressBoxError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(IngressBoxError):
    pass


class ManifestError(IngressBoxError):
    def __init__(self, file: str, field: str, problem: str) -> None:
        super().__init__(f"{file}: {field}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem


class StorageUnavailable(IngressBoxError):
    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SchemaTooNew(IngressBoxError):
    """Refused rather than guessed at: this program does not know the newer tables."""

    def __init__(self, database: str, version: int, known: int) -> None:
        super().__init__(
            f"{database} has schema version {version}; "
            f"this ingress-box knows up to {known}: upgrade ingress-box"
        )
        self.database = database
        self.version = version
        self.known = known


class NotFound(IngressBoxError):
    pass


class AlreadyExists(IngressBoxError):
    pass


class InvalidInput(IngressBoxError):
    pass


class InvalidJson(InvalidInput):
    """A distinct code, so a script can tell a body that is not JSON from a bad value."""


class BodyTooLarge(InvalidInput):
    pass


class MappingConflict(IngressBoxError):
    """The conversation is bound to another chat in this plugin instance."""

    def __init__(self, conversation: str, session: str, chat: str, mapping_id: int) -> None:
        super().__init__(
            f"conversation {conversation!r} is already bound to chat {chat!r} "
            f"of session {session!r}"
        )
        self.conversation = conversation
        self.session = session
        self.chat = chat
        self.mapping_id = mapping_id


class StillRejected(IngressBoxError):
    """Admission verified a kept request again, and it failed again for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: the request does not verify with the instance's secrets now")
        self.reason = reason


class NoTarget(IngressBoxError):
    pass


class NotReplayable(IngressBoxError):
    pass


class AlreadyPending(NotReplayable):
    pass


class PayloadPruned(NotReplayable):
    pass


class ClientDisconnected(IngressBoxError):
    pass


class DeliveryError(IngressBoxError):
    def __init__(self, error: str, status_code: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status_code = status_code


class RetryLater(DeliveryError):
    def __init__(
        self, error: str, delay: float | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(error, status_code)
        self.delay = delay


class Waiting(RetryLater):
    """The delivery must let another delivery or attempt of this box go first (an earlier
    message of its chat, the attempt making the chat's conversation). Nothing failed, so it
    does not spend the retry budget (see :func:`ingress_box.retry.decide`); each place that
    raises it waits for something that ends by itself."""


class PermanentFailure(DeliveryError):
    pass


def error_document(code: str, message: str) -> dict[str, dict[str, str]]:
    """The one error body of every HTTP answer: ``{"error": {"code", "message"}}``."""
    return {"error": {"code": code, "message": message}}
