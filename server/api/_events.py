"""Routes of the event feed (admin): ``GET /v1/events`` (a page, optionally waiting for the
next record) and ``GET /v1/events/stream`` (server-sent events, resumed with
``Last-Event-ID``). Only durable records are shown. Runs in every HTTP worker, and in the one
process of ``--workers 0``; the feed itself lives in the ledger process.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ledger import EVENTS_PAGE_MAX, INT64_MAX, Gone
from server import _validate as v
from server._errors import ApiError
from server._port import Unauthorized, Unavailable
from server.api._auth import admin
from server.api._deps import Deps, call
from server.api._render import event_items, json_response


def _after(raw: str | None) -> int:
    if raw is None:
        return 0
    after = None if raw.startswith("-") else v.integer_in(raw, 0, INT64_MAX)
    if after is None:
        raise v.invalid_field("after", f"must be an LSN (an integer from 0 to {INT64_MAX})")
    return after


def _gone(error: Gone) -> ApiError:
    failure = ApiError(410, "gone", "Gone", f"{error}; start again from after={error.oldest_lsn - 1}")
    failure.extra = {"oldest_lsn": error.oldest_lsn}
    return failure


class Events:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def events(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, {"after", "limit", "wait"})
        params = request.query_params
        after = _after(params.get("after"))
        limit = v.limit(request, default=100, maximum=EVENTS_PAGE_MAX)
        wait_s = 0.0
        if (raw := params.get("wait")) is not None:
            try:
                wait_s = float(raw) if len(raw) <= 10 else -1.0
            except ValueError:
                wait_s = -1.0
            if not 0 <= wait_s <= 30:
                raise v.invalid_field("wait", "must be a number of seconds from 0 to 30")
        try:
            found = await call(self._deps.port().events(after, limit, wait_s))
        except Gone as error:
            raise _gone(error) from None
        items = [item for lsn, event in found for item in event_items(lsn, event)]
        return json_response({"items": items, "next_after": found[-1][0] if found else after})

    async def event_stream(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, {"after"})
        resume = request.headers.get("last-event-id")
        after = _after(resume if resume is not None else request.query_params.get("after"))
        port = self._deps.port()
        try:
            first = await call(port.events(after, EVENTS_PAGE_MAX, 0.0))
        except Gone as error:
            raise _gone(error) from None

        async def stream() -> AsyncIterator[bytes]:
            position = after
            batch = first
            while True:
                if not batch:
                    yield b": keep-alive\n\n"
                for lsn, event in batch:
                    items = event_items(lsn, event)
                    for number, body in enumerate(items, start=1):
                        # The id only on a record's last item: a client that reconnects after
                        # part of a batch record gets the whole record again (at least once).
                        marker = f"id: {lsn}\n" if number == len(items) else ""
                        yield f"{marker}event: {body['type']}\ndata: {json.dumps(body)}\n\n".encode()
                    position = lsn
                try:
                    batch = await port.events(position, EVENTS_PAGE_MAX, 15.0)
                except (Unavailable, Unauthorized):
                    return  # the client reconnects with Last-Event-ID
                except Gone as error:
                    yield f"event: gone\ndata: {json.dumps({'oldest_lsn': error.oldest_lsn})}\n\n".encode()
                    return

        return StreamingResponse(
            stream(), media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no"},  # Observe adds Cache-Control: no-store
        )
