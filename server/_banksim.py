"""A simulated bank gateway: the logic that ``SimulatedBank`` runs in process and that
``wallet bank-sim`` serves over HTTP, so tests and ``make run`` exercise the same rules.

It owns only its own record of what it paid (in memory; a restart forgets it). It must never
pay twice for one idempotency key: the check of the key and the record of the payment happen in
one synchronous step, after the simulated latency, so concurrent calls with the same key cannot
both pay. A call is judged in this order (one test per row in ``tests/server/test_bank.py``):

    | check                                          | answer                                        |
    | ---------------------------------------------- | --------------------------------------------- |
    | no ``Idempotency-Key`` (1-128 printable ASCII) | 400 ``idempotency_key_missing``               |
    | body not {withdrawal_id, wallet_id, amount > 0,| 400 ``invalid_request``                       |
    |   asset, destination: object}                  |                                               |
    | call number n <= ``fail_first`` for this key   | 503 ``unavailable`` (``Retry-After: 0``)      |
    | ``rng.random() < failure_rate``                | 503 ``unavailable`` (``Retry-After: 0``)      |
    | key already paid, same body                    | the original 201 and body again, not paid     |
    |                                                | again (``Idempotent-Replayed: true``)         |
    | key already paid, different body               | 422 ``idempotency_key_reused``                |
    | ``destination.account`` starts with ``refuse`` | 422 ``account_refused`` (detail names it)     |
    | otherwise                                      | pays: 201 ``{"id": "sim-N", "status": "paid"}``|

With ``drop_response_rate`` (probability), a call that has just paid loses its answer: the HTTP
server sends the status line and headers and closes the connection mid-body; in process the
caller gets a transient "response lost". The retry with the same key then gets the replay, so
the bank pays once. A refusal is recomputed on every call (it depends only on the body), so it
needs no record.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import trio

if TYPE_CHECKING:  # the standalone HTTP server's only: the ledger process embeds the simulator
    from starlette.applications import Starlette
    from starlette.responses import Response

log = logging.getLogger("server.banksim")

IDEMPOTENCY_KEY_CHARS_MAX = 128
BODY_BYTES_MAX = 64 * 1024
REFUSE_PREFIX = "refuse"
FIELDS = frozenset({"withdrawal_id", "wallet_id", "amount", "asset", "destination"})
AMOUNT_MAX = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _wall_us() -> int:
    return time.time_ns() // 1000


def timestamp(at_us: int) -> str:
    moment = EPOCH + timedelta(microseconds=at_us)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S.%f}Z"


@dataclass(frozen=True, slots=True, kw_only=True)
class SimAnswer:
    status: int
    body: dict[str, Any]
    drop: bool = False  # the bank paid, but the answer is lost on the way back
    replayed: bool = False  # the answer to an earlier call with this key
    retry_after_s: int | None = None


@dataclass(slots=True, kw_only=True)
class _Payment:
    key: str
    body: dict[str, Any]
    reference: str
    paid_at_us: int
    answer: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class SimStatistics:
    calls: int = 0
    paid: int = 0
    replayed: int = 0
    refused: int = 0
    unavailable: int = 0
    invalid: int = 0
    dropped: int = 0
    calls_by_key: dict[str, int] = field(default_factory=dict)


def _problem(status: int, code: str, detail: str) -> dict[str, Any]:
    titles = {400: "Bad request", 422: "Unprocessable", 503: "Unavailable"}
    return {"type": "about:blank", "title": titles.get(status, "Error"), "status": status, "code": code,
            "detail": detail}


def _shape_error(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    missing = sorted(FIELDS - set(body))
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    for name in ("withdrawal_id", "wallet_id", "asset"):
        if not isinstance(body[name], str) or not body[name]:
            return f"{name} must be a non-empty string"
    amount = body["amount"]
    if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= AMOUNT_MAX:
        return "amount must be an integer from 1 to 2^63-1"
    if not isinstance(body["destination"], dict):
        return "destination must be an object"
    return None


def _valid_key(key: str | None) -> bool:
    return key is not None and 0 < len(key) <= IDEMPOTENCY_KEY_CHARS_MAX and key.isascii() and key.isprintable()


class BankSimulator:
    """The rules above. ``rng`` decides outages and dropped answers (seed it to replay a run)."""

    def __init__(self, *, latency_ms: float = 0, failure_rate: float = 0.0, fail_first: int = 0,
                 drop_response_rate: float = 0.0, rng: random.Random | None = None,
                 clock: Any = None) -> None:
        assert latency_ms >= 0
        assert 0.0 <= failure_rate <= 1.0
        assert fail_first >= 0
        assert 0.0 <= drop_response_rate <= 1.0
        self.latency_ms = latency_ms
        self.failure_rate = failure_rate
        self.fail_first = fail_first
        self.drop_response_rate = drop_response_rate
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock if clock is not None else _wall_us
        self._payments: dict[str, _Payment] = {}  # by key, in the order paid
        self.stats = SimStatistics()

    async def handle(self, key: str | None, body: Any) -> SimAnswer:
        """One call: the latency, then the decision (synchronous, so atomic per key)."""
        if self.latency_ms:
            await anyio.sleep(self.latency_ms / 1000)
        return self.decide(key, body)

    def decide(self, key: str | None, body: Any) -> SimAnswer:
        stats = self.stats
        stats.calls += 1
        if key is None or not _valid_key(key):
            stats.invalid += 1
            return SimAnswer(status=400, body=_problem(400, "idempotency_key_missing",
                                                       "send Idempotency-Key: 1-128 printable ASCII characters"))
        calls = stats.calls_by_key.get(key, 0) + 1
        stats.calls_by_key[key] = calls
        shape = _shape_error(body)
        if shape is not None:
            stats.invalid += 1
            return SimAnswer(status=400, body=_problem(400, "invalid_request", shape))
        if calls <= self.fail_first:
            stats.unavailable += 1
            return SimAnswer(status=503, retry_after_s=0, body=_problem(
                503, "unavailable", f"call {calls} for this key: the first {self.fail_first} fail (--fail-first)"))
        if self.failure_rate and self._rng.random() < self.failure_rate:
            stats.unavailable += 1
            return SimAnswer(status=503, retry_after_s=0, body=_problem(503, "unavailable", "simulated outage"))
        payment = self._payments.get(key)
        if payment is not None:
            if payment.body != body:
                stats.refused += 1
                return SimAnswer(status=422, body=_problem(
                    422, "idempotency_key_reused", f"key {key} was used for a different payout"))
            stats.replayed += 1
            return SimAnswer(status=201, body=payment.answer, replayed=True)
        account = body["destination"].get("account")
        if isinstance(account, str) and account.startswith(REFUSE_PREFIX):
            stats.refused += 1
            return SimAnswer(status=422, body=_problem(
                422, "account_refused", f"the bank refuses payouts to account {account}"))
        # After this point the call pays.
        reference = f"sim-{len(self._payments) + 1:06d}"
        paid_at_us = self._clock()
        answer = {"id": reference, "status": "paid", "withdrawal_id": body["withdrawal_id"],
                  "amount": body["amount"], "asset": body["asset"], "paid_at": timestamp(paid_at_us)}
        self._payments[key] = _Payment(key=key, body=body, reference=reference, paid_at_us=paid_at_us,
                                       answer=answer)
        stats.paid += 1
        drop = bool(self.drop_response_rate) and self._rng.random() < self.drop_response_rate
        if drop:
            stats.dropped += 1
        return SimAnswer(status=201, body=answer, drop=drop)

    def report(self) -> dict[str, Any]:
        """What it paid: one item per key, in the order paid, and the total per asset."""
        items = []
        totals: dict[str, int] = {}
        for payment in self._payments.values():
            body = payment.body
            items.append({
                "id": payment.key, "reference": payment.reference, "withdrawal_id": body["withdrawal_id"],
                "wallet_id": body["wallet_id"], "amount": body["amount"], "asset": body["asset"],
                "destination": body["destination"], "paid_at": timestamp(payment.paid_at_us),
                "calls": self.stats.calls_by_key.get(payment.key, 0),
            })
            totals[body["asset"]] = totals.get(body["asset"], 0) + body["amount"]
        stats = self.stats
        return {
            "items": items,
            "total_paid": dict(sorted(totals.items())),
            "statistics": {"calls": stats.calls, "paid": stats.paid, "replayed": stats.replayed,
                           "refused": stats.refused, "unavailable": stats.unavailable,
                           "invalid": stats.invalid, "dropped": stats.dropped},
        }


# -- the standalone HTTP server (``wallet bank-sim``) --------------------------------------


def _json(body: Any, status: int = 200) -> Response:
    from starlette.responses import Response

    media = "application/problem+json" if status >= 400 else "application/json"
    return Response(json.dumps(body).encode(), status_code=status, media_type=media)


class _PayEndpoint:
    """``POST /payouts`` as a plain ASGI app, because dropping an answer means sending the
    headers and then closing the connection mid-body, which a Response object cannot do."""

    def __init__(self, simulator: BankSimulator) -> None:
        self._simulator = simulator

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.requests import Request

        request = Request(scope, receive)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > BODY_BYTES_MAX:
                await _json(_problem(413, "too_large", f"body over {BODY_BYTES_MAX} bytes"), 413)(scope, receive, send)
                return
        key = request.headers.get("idempotency-key")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        answer = await self._simulator.handle(key, body)
        payload = json.dumps(answer.body).encode()
        log.info("POST /payouts key=%s -> %d%s%s", key, answer.status, " (replayed)" if answer.replayed else "",
                 " (answer dropped)" if answer.drop else "",
                 extra={"fields": {"event": "bank_call", "key": key, "status": answer.status,
                                   "replayed": answer.replayed, "dropped": answer.drop}})
        media = b"application/problem+json" if answer.status >= 400 else b"application/json"
        headers = [(b"content-type", media), (b"content-length", str(len(payload)).encode())]
        if answer.replayed:
            headers.append((b"idempotent-replayed", b"true"))
        if answer.retry_after_s is not None:
            headers.append((b"retry-after", str(answer.retry_after_s).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        if answer.drop:
            # Half the body, then return: the server closes the connection (the response is
            # incomplete), so the client sees a protocol error, as after a network failure.
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            return
        await send({"type": "http.response.body", "body": payload})


def build_bank_app(simulator: BankSimulator) -> Starlette:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    async def report(request: Request) -> Response:
        return _json(simulator.report())

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    return Starlette(routes=[
        Route("/payouts", _PayEndpoint(simulator), methods=["POST"]),
        Route("/payouts", report, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])


async def serve_bank_sim(simulator: BankSimulator, *, host: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT (trio)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5.0
    stop = trio.Event()

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for _ in received:
                log.info("bank-sim: stopping")
                stop.set()
                return

    async def run_http(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        app: Any = build_bank_app(simulator)
        await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(signals)
        binds = await nursery.start(run_http)
        log.info("bank-sim listening on %s (latency %s ms, failure rate %s, fail first %d, drop rate %s)",
                 ", ".join(binds), simulator.latency_ms, simulator.failure_rate, simulator.fail_first,
                 simulator.drop_response_rate, extra={"fields": {"event": "bank_sim_listening", "binds": binds}})
    # Both tasks have ended: a signal set ``stop`` and Hypercorn finished its graceful shutdown.
