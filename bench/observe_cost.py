"""CPU cost per request of the observing middleware (metrics, headers, request id, access log),
measured in process around a trivial ASGI app.

    python -m bench.observe_cost            # with the JSON access log line
    python -m bench.observe_cost --no-log   # metrics and headers only
"""

from __future__ import annotations

import io
import logging
import sys
import time
from typing import Any

import trio

from server._observe import JsonFormatter, Metrics, Observe

REQUESTS = 20_000


class _Route:
    path = "/v1/transfers"


async def _app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = _Route
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _send(message: Any) -> None:
    return None


async def _receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _measure() -> None:
    scope = {"type": "http", "method": "POST", "path": "/v1/transfers", "headers": [(b"x-request-id", b"abc")]}
    for label, app in (("bare", _app), ("observed", Observe(_app, Metrics()))):
        started = time.perf_counter()
        for _ in range(REQUESTS):
            await app(dict(scope), _receive, _send)
        print(f"{label}: {1e6 * (time.perf_counter() - started) / REQUESTS:.1f} us per request")


def main() -> int:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level="INFO", handlers=[handler])
    logging.getLogger("server.access").disabled = "--no-log" in sys.argv
    trio.run(_measure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
