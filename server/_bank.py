"""The bank gateways the payout workers call: ``HttpBank`` (a real gateway at ``--bank-url``) and
``SimulatedBank`` (the built-in one, the same rules as ``wallet bank-sim``, without HTTP).

A bank call is ``POST <url>`` with ``Idempotency-Key: <withdrawal id>`` and the JSON body
``{"withdrawal_id", "wallet_id", "amount", "asset", "destination"}``. This module only turns
answers into ``BankResult`` values; it never touches the ledger and never retries by itself (the
workers own retries and their durable count). It must never call an answer ``refused`` unless
the bank said so with a 4xx that means "no": a refusal voids the hold, so a wrong "refused" for a
payout the bank did make would hand the money out twice. When in doubt the answer is
``transient``: the withdrawal is retried under the same key and, at worst, ends ``dead`` for an
operator to look at, with the hold still in place.

    | answer                                        | result                                         |
    | --------------------------------------------- | ---------------------------------------------- |
    | 2xx with a JSON object body                   | paid; reference = body ``id`` or ``reference`` |
    | 2xx with any other body (not JSON, not object,| transient: a proxy or a wrong URL answering    |
    |   over RESPONSE_BYTES_MAX)                    | 200 must not capture holds unpaid              |
    | 408, 409, 425, 429                            | transient (``Retry-After`` seconds honoured)   |
    | any other 4xx                                 | refused: ``"<status> <code>: <detail>"`` from a|
    |                                               | (problem+)JSON body, else the status line      |
    | 5xx, 1xx, 3xx (redirects are not followed)    | transient                                      |
    | connect error, timeout, broken/truncated reply| transient                                      |

Why 408/409/425/429 are transient: 408 (request timeout), 425 (too early) and 429 (rate limited)
say the request was not processed and may be sent again later. 409 is what an idempotency layer
answers while a request with the same key is still being processed (IETF draft
``httpapi-idempotency-key-header``, Stripe): after a lost answer our retry can meet the original
still in flight, and treating that as a refusal would void a hold the bank is about to pay.
"""

from __future__ import annotations

import json
import random
from http import HTTPStatus
from typing import Any

import anyio
import httpx

from server._banksim import BankSimulator
from server._payouts import BankResult, PayoutOrder, now_us

TIMEOUT_S = 10.0
RESPONSE_BYTES_MAX = 64 * 1024
REFERENCE_CHARS_MAX = 128
TRANSIENT_4XX = frozenset({408, 409, 425, 429})


def request_body(order: PayoutOrder) -> dict[str, Any]:
    return {"withdrawal_id": order.withdrawal_id, "wallet_id": order.wallet_id, "amount": order.amount,
            "asset": order.asset, "destination": order.destination}


def _retry_after_s(value: str | None) -> float | None:
    """Only the delta-seconds form; an HTTP date is ignored (our own backoff applies)."""
    if value is None or not value.strip().isdigit():
        return None
    return float(int(value.strip()))


def classify(status: int, body: Any, *, reason_phrase: str = "", retry_after: str | None = None) -> BankResult:
    """The table above. ``body`` is the parsed JSON (``None`` if there was none or it was not
    JSON or too large)."""
    if 200 <= status <= 299:
        if not isinstance(body, dict):
            return BankResult(outcome="transient", detail=f"{status} from the bank with a body that is not a "
                                                          "JSON object: not taken as paid")
        return BankResult(outcome="paid", detail="", reference=_reference(body))
    if not reason_phrase:
        try:
            reason_phrase = HTTPStatus(status).phrase
        except ValueError:
            reason_phrase = ""
    status_line = f"{status} {reason_phrase}".strip()
    if 400 <= status <= 499 and status not in TRANSIENT_4XX:
        return BankResult(outcome="refused", detail=_reason(status, body) or status_line)
    detail = status_line
    if isinstance(body, dict):
        detail = _reason(status, body) or status_line
    return BankResult(outcome="transient", detail=detail, retry_after_s=_retry_after_s(retry_after))


def _reference(body: dict[str, Any]) -> str | None:
    """The first of ``id``, ``reference`` that is a non-empty string or an integer."""
    for name in ("id", "reference"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value:
            return value[:REFERENCE_CHARS_MAX]
    return None


def _reason(status: int, body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    detail = body.get("detail")
    parts = [str(part) for part in (code, detail) if isinstance(part, str | int) and str(part)]
    return f"{status} {': '.join(parts)}" if parts else None


class HttpBank:
    """A bank gateway over HTTP(S). Use as ``async with HttpBank(url) as bank`` (or call
    ``aclose``) so its connections are closed. Works on trio and asyncio (httpx runs on anyio).

    ``timeout_s`` bounds the whole call (connect, send, answer); each phase is bounded by it too."""

    def __init__(self, url: str, *, timeout_s: float = TIMEOUT_S, connections_max: int = 16,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        assert timeout_s > 0
        assert connections_max >= 1
        self.url = url
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=connections_max, max_keepalive_connections=connections_max),
            follow_redirects=False,
            transport=transport,
        )

    async def __aenter__(self) -> HttpBank:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def pay(self, order: PayoutOrder) -> BankResult:
        content = json.dumps(request_body(order)).encode()
        headers = {"Idempotency-Key": order.withdrawal_id, "Content-Type": "application/json",
                   "Accept": "application/json"}
        try:
            with anyio.fail_after(self._timeout_s):
                async with self._client.stream("POST", self.url, content=content, headers=headers) as response:
                    raw = bytearray()
                    too_large = False
                    # Read to the end (bounded in time by the timeout) but keep only the first
                    # RESPONSE_BYTES_MAX: leaving the stream half read would waste the connection.
                    async for chunk in response.aiter_bytes():
                        if not too_large:
                            raw += chunk
                            too_large = len(raw) > RESPONSE_BYTES_MAX
        except (TimeoutError, httpx.TimeoutException) as error:
            return BankResult(outcome="transient", detail=f"timeout after {self._timeout_s:g} s calling the bank"
                                                          f" ({type(error).__name__})")
        except httpx.ConnectError as error:
            return BankResult(outcome="transient", detail=f"cannot connect to the bank: {error}")
        except (httpx.HTTPError, OSError) as error:
            return BankResult(outcome="transient", detail=f"bank call failed: {type(error).__name__}: {error}")
        body: Any = None
        if not too_large:
            try:
                body = json.loads(bytes(raw)) if raw else None
            except ValueError:
                body = None
        return classify(response.status_code, body, reason_phrase=response.reason_phrase,
                        retry_after=response.headers.get("retry-after"))


class SimulatedBank:
    """The simulator in process (``--bank-url`` not given): latency, failures and idempotency as
    ``wallet bank-sim``, with no HTTP. A dropped answer is a transient "response lost"."""

    def __init__(self, *, latency_ms: float = 50, failure_rate: float = 0.0, fail_first: int = 0,
                 drop_response_rate: float = 0.0, rng: random.Random | None = None, clock: Any = now_us) -> None:
        self.simulator = BankSimulator(latency_ms=latency_ms, failure_rate=failure_rate, fail_first=fail_first,
                                       drop_response_rate=drop_response_rate, rng=rng, clock=clock)

    async def pay(self, order: PayoutOrder) -> BankResult:
        # Through JSON, as over HTTP: the simulator keeps a copy, not the order's own dict.
        body = json.loads(json.dumps(request_body(order)))
        answer = await self.simulator.handle(order.withdrawal_id, body)
        if answer.drop:
            return BankResult(outcome="transient", detail="the bank's answer was lost (simulated)")
        retry_after = None if answer.retry_after_s is None else str(answer.retry_after_s)
        return classify(answer.status, answer.body, retry_after=retry_after)
