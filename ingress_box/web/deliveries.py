"""The export of the deliveries list as an HTTP answer (the admin API's and the dashboard's).

The filters and the file's format are :mod:`ingress_box.listing`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response, StreamingResponse

from .. import listing
from ..errors import InvalidInput
from ..store import deliveries as store_deliveries
from ..store.db import Database


async def export_response(db: Database, query: Mapping[str, str]) -> Response:
    """The deliveries the query selects, as the CSV or JSON download ``?format=`` names."""
    fmt = query.get("format")
    if fmt is None or fmt not in listing.FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(listing.FORMATS)}")
    rows = store_deliveries.aevery(
        db, listing.filters_of(query), listing.export_limit(query.get("limit"))
    )
    # The first row is read before the answer starts, so a failing read is still an error
    # answer rather than a download cut short.
    first = await anext(rows, None)

    async def everything() -> AsyncIterator[store_deliveries.Delivery]:
        if first is not None:
            yield first
            async for delivery in rows:
                yield delivery

    async def body() -> AsyncIterator[bytes]:
        async for chunk in listing.chunks(everything(), fmt):
            yield chunk.encode("utf-8", "replace")  # a row stored before today's text checks

    return StreamingResponse(
        body(),
        media_type=listing.MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="deliveries.{fmt}"'},
    )
