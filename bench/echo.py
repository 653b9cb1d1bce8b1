"""The ceiling for ``wallet bench --baseline-echo``: bare Starlette routes on Hypercorn, on the same
worker and loop as the service (trio by default), that parse the same request bodies and answer
a constant. What the service does beyond this (auth, validation, idempotency, the ledger, the
WAL, metrics, logs) is what its throughput is compared against.

    python -m bench.echo --port 9000 [--loop trio|asyncio|uvloop] [--workers N]

``--workers N`` (N >= 1) mirrors ``wallet serve --workers N``'s front: this process binds the
port (``server._supervisor.bind``, the service's own function) and runs N worker processes that
serve the inherited socket, each with Hypercorn on the loop asked for; it forwards SIGTERM and
SIGINT to them and exits when they have. ``--workers 0`` (the default) serves in this process.
Workers die with this process (``PR_SET_PDEATHSIG``, as the service's children do).

Routes: ``POST /v1/transfers`` (JSON body -> 201 constant), ``POST /v1/transfers/batch`` (JSON or
MessagePack body -> 200 with one constant result per item, in the format asked for),
``GET /v1/wallets/{id}/balance`` (200 constant), ``GET /health`` and ``GET /ready``. No auth,
no validation beyond parsing, no middleware. It must never grow features: it is the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
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


def config(host: str, port: int, fd: int | None = None) -> Config:
    # As the service configures Hypercorn (server/_serve.py): no access log, same backlog.
    settings = Config()
    settings.bind = [f"{host}:{port}"] if fd is None else [f"fd://{fd}"]
    settings.accesslog = None
    settings.errorlog = logging.getLogger("hypercorn.error")
    settings.backlog = 1024
    return settings


def serve(host: str, port: int, loop: str, fd: int | None = None) -> None:
    app: Any = build_app()
    settings = config(host, port, fd)
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


def worker_command(*, fd: int, loop: str, parent: int) -> list[str]:
    return [sys.executable, "-m", "bench.echo", "--port", "0", "--loop", loop, "--fd", str(fd),
            "--parent", str(parent)]


def supervise(host: str, port: int, loop: str, workers: int) -> int:
    """Binds the port and runs ``workers`` processes on it until SIGTERM or SIGINT."""
    from server._supervisor import bind

    assert workers >= 1
    listener = bind(host, port)
    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [
        subprocess.Popen(worker_command(fd=listener.fileno(), loop=loop, parent=os.getpid()),
                         pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL)
        for _ in range(workers)
    ]
    status = 0
    while not stopping:
        if any(child.poll() is not None for child in children):
            status = 1  # a baseline with a worker missing is not the baseline: stop
            break
        time.sleep(0.05)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    listener.close()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["trio", "asyncio", "uvloop"], default="trio")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes on one port (default 0: serve in this process)")
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # a worker's inherited socket
    parser.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.workers < 0:
        parser.error("--workers must be at least 0")
    if arguments.parent is not None:
        from server._child import _die_with_parent

        _die_with_parent(arguments.parent)
    try:
        if arguments.workers > 0:
            return supervise(arguments.host, arguments.port, arguments.loop, arguments.workers)
        serve(arguments.host, arguments.port, arguments.loop, arguments.fd)
    except KeyboardInterrupt:
        pass
    except ImportError as error:
        print(f"bench.echo: --loop {arguments.loop} is not available: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
