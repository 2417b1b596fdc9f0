"""The full-text index of kept bodies (``deliveries_search``), filled off the accept path.

Indexing a body in the accept transaction costs more than the rest of storing it (FTS5 writes a
segment per transaction: about 150 µs of CPU per 1 KB body in the small transactions of the
group commit, 50 µs in batches of hundreds), so the writer only marks a UTF-8 body
(``searchable = 1``) and :func:`index_pending` adds the marked ones a batch at a time: the
outbox stays the source of truth, and a search lags behind by up to the indexer's interval
(:mod:`ingress_box.indexer`). Triggers in ``schema.sql`` take a body out of the index when
retention prunes it or its row goes.

On SQLite the index is FTS5 over the body; on PostgreSQL it is a ``tsvector`` of the body's
words per row (``simple`` configuration: lower-cased words, no stemming or stop words), with a
GIN index, and a trigger in ``postgres_schema.sql`` takes the words out with a pruned body.
"""

from __future__ import annotations

from collections.abc import Callable

from .db import Database
from .sql import Conn, dialect

BATCH = 256  # bodies per writer op: a few milliseconds of the writer, however large the backlog

_PENDING = "SELECT seq FROM deliveries WHERE searchable = 1 ORDER BY seq LIMIT ?"
_INDEX = {
    "sqlite": """
INSERT INTO deliveries_search (rowid, body)
SELECT seq, CAST(body AS TEXT) FROM deliveries WHERE seq IN ({seqs}) AND body IS NOT NULL
""",
    # PostgreSQL text cannot hold a NUL: a body with one stays out of the index. A tsvector
    # holds at most 1 MB, which a large body of distinct words can pass (and one failing body
    # would stop its whole batch): the words of the first 100,000 characters are indexed.
    "postgresql": """
INSERT INTO deliveries_search (seq, words)
SELECT seq, to_tsvector('simple', left(convert_from(body, 'UTF8'), 100000)) FROM deliveries
WHERE seq IN ({seqs}) AND body IS NOT NULL AND position('\\x00'::bytea IN body) = 0
""",
}
# 2 also for a body pruned before its turn: the triggers look for a body before taking one out.
_DONE = "UPDATE deliveries SET searchable = 2 WHERE seq IN ({seqs})"


async def awaiting(db: Database) -> bool:
    """Whether any body waits to be indexed: a read, so an idle box writes nothing."""
    return await db.aread_one("SELECT 1 FROM deliveries WHERE searchable = 1 LIMIT 1") is not None


def index_pending(limit: int = BATCH) -> Callable[[Conn], int]:
    """A writer op: index up to ``limit`` waiting bodies, oldest first; how many it took."""

    def op(conn: Conn) -> int:
        seqs = [row[0] for row in conn.execute(_PENDING, (limit,))]
        if seqs:
            marks = ",".join("?" * len(seqs))
            conn.execute(_INDEX[dialect(conn)].format(seqs=marks), seqs)
            conn.execute(_DONE.format(seqs=marks), seqs)
        return len(seqs)

    return op
