"""Keeps the full-text index of kept bodies current, in ``serve``'s event loop.

Every :data:`INTERVAL` seconds it looks (a read) for bodies accepted since and hands the writer
one op that indexes them (:func:`ingress_box.store.search.index_pending`), then more at once
while a backlog lasts (after an upgrade, or a burst); an idle box writes nothing. Waiting that
long is the point: one batch a second costs a third of what a body per transaction would, and
a search then lags by about a second.
"""

from __future__ import annotations

import asyncio
import logging

from .errors import StorageUnavailable
from .store import Database
from .store.search import BATCH, awaiting, index_pending

log = logging.getLogger("ingress_box.indexer")

INTERVAL = 1.0


class Indexer:
    def __init__(self, db: Database, interval: float = INTERVAL) -> None:
        self.db = db
        self.interval = interval

    async def catch_up(self) -> int:
        """Index every body waiting now; how many."""
        total = 0
        while await awaiting(self.db):
            # Not durable: a power cut that loses it loses the marks with it, so those bodies
            # are indexed again; lazy: it may share a transaction with the webhooks of now.
            done = await asyncio.wrap_future(
                self.db.submit(index_pending(BATCH), durable=False, lazy=True)
            )
            total += done
            if done < BATCH:
                break
        return total

    async def run(self) -> None:
        """Catch up, wait, and again, until cancelled; a failure is logged and tried later."""
        while True:
            try:
                await self.catch_up()
            except StorageUnavailable as exc:
                log.warning("cannot index bodies now: %s", exc)
            except Exception:
                log.exception("indexing bodies failed")
            await asyncio.sleep(self.interval)
