"""Quarantine: requests a known instance refused for their signature or timestamp, kept on disk
so that once the secret is fixed they can be admitted instead of lost.

Keeping costs the refusal nothing. The row is handed to the writer and not waited for, so the
``401`` goes out as soon as it is decided, and a row that cannot be stored is only logged. It
is written ``durable=False`` (a power cut may lose the last few; nobody was told they were
kept), in the same group commits as everything else. A flood of wrong signatures does not
become a write per request: each instance keeps at most :data:`RATE_PER_SECOND` a second
(bursts as large; the rest still show in the in-memory record of refusals); and the store keeps
at most ``quarantine_kept`` rows per instance and ``quarantine_bytes`` in all, oldest first out.

Stored headers are the received ones minus credentials, as a delivery stores them, except that
the route's verification headers (signature, timestamp, id, or a shared secret a provider sent)
keep their values: admission must verify them again. They are never shown (:func:`detail_json`).

Admission (:func:`admit`) runs the kept request through the live pipeline
(:meth:`Ingress.handle` with ``arrived_at``): the same verifier with the instance's secrets of
now and the timestamp tolerance measured from the request's arrival, then dedup, delivery and
outbox in one transaction, mapping learning, as for a new request.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from . import extract
from .config import Settings
from .errors import NotFound, StillRejected
from .ingress import Answer, Inbound, Ingress
from .plugins import Registry, Route
from .ratelimit import RateLimiter
from .signatures import VerifySpec
from .store import Database
from .store import rejections as store_rejections

log = logging.getLogger("ingress_box.quarantine")

# Reasons a request may verify once the instance's secret is right: the ones worth keeping.
KEPT_REASONS = frozenset({"bad_signature", "stale_timestamp", "no_secret"})
ADMITTED = frozenset({"accepted", "duplicate"})
RATE_PER_SECOND = 5.0  # kept rows per instance per second, bursts as large

# Credential-looking headers some schemes read besides the ones their spec names.
_SCHEME_HEADERS = {
    "standard-webhooks": ("webhook-signature", "svix-signature"),
    "twilio": ("x-twilio-webhooks-signature-settings",),
}


def verification_headers(spec: VerifySpec | None) -> frozenset[str]:
    """The (lower-case) names of the headers a route's verifier reads."""
    names = set(_SCHEME_HEADERS.get(spec.scheme, ())) if spec is not None else set()
    while spec is not None:
        for attribute in ("header", "timestamp_header", "id_header"):
            name = getattr(spec, attribute, None)
            if name:
                names.add(name.lower())
        spec = getattr(spec, "variant", None)
    return frozenset(names)


def detail_json(kept: store_rejections.Rejection, registry: Registry) -> dict[str, Any]:
    """One kept request as an operator sees it: every credential masked again, the body as
    text when it is UTF-8, else base64."""
    plugin = registry.get(kept.plugin_id)
    route = plugin.routes.get(kept.route) if plugin is not None else None
    header = getattr(route.verify, "header", None) if route is not None else None
    data = {
        **kept.to_json(),
        "method": kept.method,
        "subpath": kept.subpath,
        "headers": json.loads(extract.redact_headers(kept.headers, header)),
    }
    try:
        data["body"] = kept.body.decode("utf-8")
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(kept.body).decode()
    return data


class Quarantine:
    """Hears the ingress's refusals and keeps the ones worth admitting later."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.limiter = RateLimiter(RATE_PER_SECOND, clock=monotonic)

    def keep(self, req: Inbound, route: Route, raw: bytes, answer: Answer) -> None:
        """Queue ``answer``'s request for keeping, if it is worth it; never waits."""
        kept = self.settings.quarantine_kept
        if answer.status != 401 or answer.outcome not in KEPT_REASONS or kept == 0:
            return
        assert answer.rejected is not None
        plugin_id, instance_id, _ = answer.rejected
        if self.limiter.take((plugin_id, instance_id)) > 0:
            return
        new = store_rejections.NewRejection(
            plugin_id=plugin_id,
            instance_id=instance_id,
            route=route.name,
            method=req.method,
            subpath=_redacted(req.subpath),
            url=_redacted(req.url),
            headers=extract.redact_headers(
                req.headers,
                limit=self.settings.max_header_bytes,
                keep=verification_headers(route.verify),
            ),
            body=raw,
            received_at=self.clock(),
            status=answer.status,
            reason=answer.outcome,
        )
        op = store_rejections.keep(new, kept, self.settings.quarantine_bytes)
        self.db.submit(op, durable=False).add_done_callback(_log_failure)


def _log_failure(done: concurrent.futures.Future[int | None]) -> None:
    error = done.exception()
    if error is not None:
        log.warning("cannot keep a refused request: %s", error)


def _redacted(url: str) -> str:
    """``url`` (or a subpath) with credential-looking query values replaced."""
    path, mark, query = url.partition("?")
    return path + mark + extract.redact_query(query)


def _admission_url(stored: str, public_url: str | None) -> str:
    """The URL a kept request was called at, under the public URL configured now if there is
    one (a Twilio signature refused for a missing public URL verifies once it is set)."""
    if not public_url:
        return stored
    base = public_url.rstrip("/")
    if stored.startswith(base + "/"):
        return stored
    parts = urlsplit(stored)
    return base + parts.path + ("?" + parts.query if parts.query else "")


def inbound(kept: store_rejections.Rejection, public_url: str | None) -> Inbound:
    """A kept request as the edge would hand it over."""

    async def body() -> AsyncIterator[bytes]:
        yield kept.body

    return Inbound(
        method=kept.method,
        plugin=kept.plugin_id,
        instance=kept.instance_id,
        route=kept.route,
        subpath=kept.subpath,
        url=_admission_url(kept.url, public_url),
        query_string=kept.subpath.partition("?")[2],
        headers=kept.headers,
        body=body(),
        content_length=len(kept.body),
    )


async def find(
    db: Database, plugin_id: str, instance_id: str, rejection_id: str
) -> store_rejections.Rejection:
    """The kept request an admin URL names (an id that is not a number names none)."""
    if not rejection_id.isascii() or not rejection_id.isdigit():
        raise NotFound(f"no kept rejection {rejection_id!r}")
    return await store_rejections.aget(db, plugin_id, instance_id, int(rejection_id))


async def admit(ingress: Ingress, kept: store_rejections.Rejection) -> Answer:
    """Run ``kept`` through the pipeline again. Accepted (or found a duplicate), it leaves the
    quarantine and the ack is returned; refused for its signature or timestamp again, it stays
    and :class:`StillRejected` says why; any other answer (the instance disabled meanwhile, the
    rate limit, storage) is returned as a provider would hear it."""
    req = inbound(kept, ingress.settings.public_url)
    answer = await ingress.handle(req, arrived_at=kept.received_at)
    if answer.status == 401:
        raise StillRejected(answer.outcome)
    if answer.outcome in ADMITTED:
        await ingress.db.awrite(store_rejections.remove(kept.plugin_id, kept.instance_id, kept.id))
    return answer
