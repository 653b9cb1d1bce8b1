"""The ceiling for ``wallet bench --baseline-echo``: bare Starlette routes on Hypercorn, on the same
worker and loop as the service (trio by default), that parse the same request bodies and answer
a constant. What the service does beyond this (auth, validation, idempotency, the ledger, the
WAL, metrics, logs) is what its throughput is compared against.

    python -m bench.echo --port 9000 [--loop trio|asyncio|uvloop]

Routes: ``POST /v1/transfers`` (JSON body -> 201 constant), ``POST /v1/transfers/batch`` (JSON or
MessagePack body -> 200 with one constant result per item, in the format asked for),
``GET /v1/wallets/{id}/balance`` (200 constant), ``GET /health`` and ``GET /ready``. No auth,
no validation beyond parsing, no middleware. It must never grow features: it is the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import msgpack
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TRANSFER = {"id": "tx_echo", "type": "transfer", "status": "posted", "amount": 1}
BALANCE = {"wallet_id": "echo", "balance": 0, "as_of": None}


async def transfer(request: Request) -> Response:
    body = json.loads(await request.body())
    assert isinstance(body, dict)
    return JSONResponse(TRANSFER, status_code=201)


async def transfer_batch(request: Request) -> Response:
    raw = await request.body()
    packed = request.headers.get("content-type", "").startswith("application/msgpack")
    body = msgpack.unpackb(raw) if packed else json.loads(raw)
    results = [{"status": 201, "transaction": TRANSFER}] * len(body["transfers"])
    if request.headers.get("accept", "").startswith("application/msgpack"):
        return Response(msgpack.packb({"results": results}), media_type="application/msgpack")
    return JSONResponse({"results": results})


async def balance(request: Request) -> Response:
    return JSONResponse(BALANCE)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app() -> Starlette:
    return Starlette(routes=[
        Route("/v1/transfers", transfer, methods=["POST"]),
        Route("/v1/transfers/batch", transfer_batch, methods=["POST"]),
        Route("/v1/wallets/{wallet_id}/balance", balance, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", health, methods=["GET"]),
    ])


def config(host: str, port: int) -> Config:
    # As the service configures Hypercorn (server/_serve.py): no access log, same backlog.
    settings = Config()
    settings.bind = [f"{host}:{port}"]
    settings.accesslog = None
    settings.errorlog = logging.getLogger("hypercorn.error")
    settings.backlog = 1024
    return settings


def serve(host: str, port: int, loop: str) -> None:
    app: Any = build_app()
    settings = config(host, port)
    if loop == "trio":
        import trio
        from hypercorn.trio import serve as trio_serve

        trio.run(trio_serve, app, settings)
        return
    import asyncio

    from hypercorn.asyncio import serve as asyncio_serve

    if loop == "uvloop":
        import uvloop

        uvloop.run(asyncio_serve(app, settings))
        return
    asyncio.run(asyncio_serve(app, settings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["trio", "asyncio", "uvloop"], default="trio")
    arguments = parser.parse_args(argv)
    try:
        serve(arguments.host, arguments.port, arguments.loop)
    except KeyboardInterrupt:
        pass
    except ImportError as error:
        print(f"bench.echo: --loop {arguments.loop} is not available: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
