"""Keeps the full-text index of kept bodies current, in ``serve``'s event loop.

:data:`INTERVAL` seconds after this process accepts a webhook it looks (a read) for the bodies
accepted since and hands the writer one op that indexes them
(:func:`ingress_box.store.search.index_pending`), then more at once while a backlog lasts (after
an upgrade, or a burst). Waiting that long is the point: one batch a second costs a third of
what a body per transaction would, and a search then lags by about a second. Bodies stored by
anything else (a probe, another process on the database) are found by a look every
:data:`QUIET_SECONDS`; an idle box neither writes nor wakes for it in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .errors import StorageUnavailable
from .store import Database
from .store.search import BATCH, awaiting, index_pending

log = logging.getLogger("ingress_box.indexer")

INTERVAL = 1.0
QUIET_SECONDS = 60.0


class Indexer:
    def __init__(self, db: Database, interval: float = INTERVAL) -> None:
        self.db = db
        self.interval = interval
        self._accepted = asyncio.Event()

    def accepted(self) -> None:
        """A webhook was accepted here: index its body within the interval (in the loop)."""
        self._accepted.set()

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
        """Catch up, wait for an accept (or the quiet look), and again, until cancelled; a
        failure is logged and tried later."""
        while True:
            self._accepted.clear()  # an accept from here on is looked for by the next round
            try:
                await self.catch_up()
            except StorageUnavailable as exc:
                log.warning("cannot index bodies now: %s", exc)
            except Exception:
                log.exception("indexing bodies failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._accepted.wait(), QUIET_SECONDS)
            await asyncio.sleep(self.interval)
