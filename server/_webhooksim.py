"""A simulated webhook receiver: the app that ``wallet webhook-sim`` serves over HTTP and that
tests mount in process, so both exercise the same rules. It is a test double, not part of the
server: it keeps what it received in memory (and, with ``record``, appends it to a JSON lines
file).

``POST`` to any path but ``/control`` is a delivery. Each one is verified (Standard Webhooks:
``webhook-id``, ``webhook-timestamp`` within 5 minutes, ``webhook-signature`` over
``id.timestamp.body`` with one of the known secrets), recorded, and answered in this order:

    | condition                                        | answer                                |
    |--------------------------------------------------|---------------------------------------|
    | now < ``down_until`` (epoch seconds)             | 503 (recorded with ``answered: 503``) |
    | ``status`` set (e.g. 500)                        | that status                           |
    | call n <= ``fail_first`` for this webhook-id     | 500                                   |
    | ``rng.random() < fail_rate``                     | 500                                   |
    | otherwise                                        | 200 ``{"ok": true}``                  |

Each answer waits ``delay_ms`` first (a slow receiver). ``GET /received`` lists what came in,
``POST /control`` changes ``secrets`` (added), ``status``, ``delay_ms``, ``fail_first``,
``fail_rate`` and ``down_until`` at run time (a secret is known only once the endpoint has
been created), ``GET /health`` answers 200.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from hypercorn.config import Config
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("server.webhooksim")

BODY_BYTES_MAX = 1024 * 1024
CONTROLS = {"secret", "status", "delay_ms", "fail_first", "fail_rate", "down_until"}


@dataclass(slots=True, kw_only=True)
class WebhookSimulator:
    secrets: list[str] = field(default_factory=list)
    status: int | None = None
    delay_ms: float = 0.0
    fail_first: int = 0
    fail_rate: float = 0.0
    down_until: float = 0.0  # epoch seconds
    rng: random.Random = field(default_factory=random.Random)
    record: Path | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    calls_by_id: dict[str, int] = field(default_factory=dict)

    def verified(self, body: bytes, headers: dict[str, str]) -> bool:
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers, json_parse=False)
            except WebhookVerificationError:
                continue
            return True
        return False

    def answer(self, webhook_id: str) -> int:
        """The table in the module docstring."""
        calls = self.calls_by_id[webhook_id] = self.calls_by_id.get(webhook_id, 0) + 1
        if time.time() < self.down_until:
            return 503
        if self.status is not None:
            return self.status
        if calls <= self.fail_first:
            return 500
        if self.rng.random() < self.fail_rate:
            return 500
        return 200

    async def deliver(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.delay_ms:
            await anyio.sleep(self.delay_ms / 1000)
        webhook_id = headers.get("webhook-id", "")
        status = self.answer(webhook_id)
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        entry = {
            "path": path, "webhook_id": webhook_id, "timestamp": headers.get("webhook-timestamp"),
            "signature": headers.get("webhook-signature"), "verified": self.verified(body, headers),
            "body": parsed, "answered": status, "received_at": time.time(),
        }
        self.received.append(entry)
        if self.record is not None:
            with self.record.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        log.info("webhook %s %s -> %d%s", path, webhook_id, status, "" if entry["verified"] else " (not verified)")
        return status

    def control(self, changes: dict[str, Any]) -> None:
        unknown = set(changes) - CONTROLS
        if unknown:
            raise ValueError(f"unknown controls: {', '.join(sorted(unknown))}")
        if "secret" in changes:
            self.secrets.append(str(changes["secret"]))
        if "status" in changes:
            self.status = None if changes["status"] is None else int(changes["status"])
        for name in ("delay_ms", "fail_rate", "down_until"):
            if name in changes:
                setattr(self, name, float(changes[name]))
        if "fail_first" in changes:
            self.fail_first = int(changes["fail_first"])


def build_webhook_app(simulator: WebhookSimulator) -> Starlette:
    async def receive(request: Request) -> Response:
        body = await request.body()
        if len(body) > BODY_BYTES_MAX:
            return JSONResponse({"error": "too large"}, 413)
        headers = {name.lower(): value for name, value in request.headers.items()}
        status = await simulator.deliver(request.url.path, body, headers)
        return JSONResponse({"ok": status < 300}, status)

    async def received(request: Request) -> Response:
        return JSONResponse({"items": simulator.received})

    async def control(request: Request) -> Response:
        try:
            simulator.control(json.loads(await request.body()))
        except (ValueError, TypeError, AttributeError) as error:
            return JSONResponse({"error": str(error)}, 400)
        return JSONResponse({"ok": True})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/received", received, methods=["GET"]),
        Route("/control", control, methods=["POST"]),
        Route("/{path:path}", receive, methods=["POST"]),
    ])


async def serve_webhook_sim(simulator: WebhookSimulator, *, host: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT (on trio: Hypercorn's trio worker)."""
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    stop = anyio.Event()

    async def signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for _ in received:
                stop.set()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(signals)
        app: Any = build_webhook_app(simulator)
        log.info("webhook-sim listening on %s:%d", host, port)
        await serve(app, config, shutdown_trigger=stop.wait)
        group.cancel_scope.cancel()


def run_webhook_sim(simulator: WebhookSimulator, *, host: str, port: int) -> None:
    anyio.run(partial(serve_webhook_sim, simulator, host=host, port=port), backend="trio")
