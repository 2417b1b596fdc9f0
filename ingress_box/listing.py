"""The deliveries list as an operator asks for it: its filters, and the list as a file.

The admin API (``GET /admin/deliveries`` and ``.../export``), the dashboard's deliveries page
and ``ingress-box deliveries list|export`` take the same filters, read by :func:`filters_of`:
``plugin``, ``instance``, ``state``, ``event_type``, ``since`` and ``until`` (``received_at``;
unix seconds or ISO 8601, see :func:`ingress_box.values.check_time`) and ``q``, words the body
must contain.

An export is CSV with a header row, or one JSON array, of the list's fields (the list's items),
never bodies or headers, at most :data:`MAX_ROWS` of them, newest first; every caller writes
the same bytes from :func:`chunks`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .errors import InvalidInput
from .extract import MAX_EVENT_TYPE_CHARS, MAX_VALUE_CHARS
from .store.deliveries import STATES, Delivery, Filters
from .store.pages import clamp_limit
from .values import check_time, check_unicode

MAX_SEARCH_CHARS = MAX_VALUE_CHARS
FORMATS = ("csv", "json")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
MAX_ROWS = 100_000
ROWS_PER_CHUNK = 500

COLUMNS = (
    "id",
    "plugin",
    "instance",
    "route",
    "event_type",
    "provider_delivery_id",
    "conversation",
    "state",
    "attempts",
    "received_at",
    "delivered_at",
    "last_error",
    "note",
    "content_type",
    "size",
)


def filters_of(query: Mapping[str, str | None]) -> Filters:
    """The filters a query string (or the CLI's flags) names; InvalidInput for a value that
    cannot be one. Blank means "any"."""

    def given(name: str) -> str | None:
        value = (query.get(name) or "").strip()
        return check_unicode(name, value) if value else None

    state = given("state")
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}")
    event_type = given("event_type")
    if event_type is not None and len(event_type) > MAX_EVENT_TYPE_CHARS:
        raise InvalidInput(f"event_type must be at most {MAX_EVENT_TYPE_CHARS} characters")
    search = given("q")
    if search is not None and len(search) > MAX_SEARCH_CHARS:
        raise InvalidInput(f"q must be at most {MAX_SEARCH_CHARS} characters")
    # FTS5 reads a NUL as the end of the query; PostgreSQL text cannot hold one.
    if search is not None and "\x00" in search:
        raise InvalidInput("q must not contain a NUL character")
    since, until = given("since"), given("until")
    return Filters(
        plugin_id=given("plugin"),
        instance_id=given("instance"),
        state=state,
        event_type=event_type,
        since=None if since is None else check_time("since", since),
        until=None if until is None else check_time("until", until),
        search=search,
    )


def export_limit(raw: str | None) -> int:
    """An export's ``limit``: all it may hold unless fewer are asked for."""
    return clamp_limit(raw, default=MAX_ROWS, maximum=MAX_ROWS)


# A spreadsheet runs a cell that starts with one of these as a formula; the values come from
# providers, so such text gets a leading apostrophe (the spreadsheets' own "this is text").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


async def chunks(items: AsyncIterator[Delivery], fmt: str) -> AsyncIterator[str]:
    """The file, a few hundred rows at a time."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if fmt == "csv":
        writer.writerow(COLUMNS)
    else:
        buffer.write("[")
    count = 0
    async for delivery in items:
        data = delivery.to_json()
        if fmt == "csv":
            writer.writerow([_cell(data[name]) for name in COLUMNS])
        else:
            buffer.write(("," if count else "") + "\n" + json.dumps(data, ensure_ascii=False))
        count += 1
        if count % ROWS_PER_CHUNK == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if fmt == "json":
        buffer.write("\n]\n" if count else "]\n")
    yield buffer.getvalue()
