"""The bank side of payouts: the classification table of ``server/_bank.py`` (one test per row),
the simulator's rule table of ``server/_banksim.py`` (one test per row), the in-process
``SimulatedBank``, and ``HttpBank`` against a real local HTTP gateway (Starlette on Hypercorn in
the test's nursery) for every kind of answer and failure."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server._bank import RESPONSE_BYTES_MAX, HttpBank, SimulatedBank, classify, request_body
from server._banksim import BankSimulator
from server.testing import order

BODY = {"withdrawal_id": "w-1", "wallet_id": "alice", "amount": 250, "asset": "USD",
        "destination": {"account": "acct-1"}}


# -- classification: one test per row -----------------------------------------------------------


def test_2xx_with_a_json_object_is_paid_with_the_banks_reference() -> None:
    assert classify(201, {"id": "b-7"}).outcome == "paid"
    assert classify(201, {"id": "b-7"}).reference == "b-7"
    assert classify(200, {"reference": "r-1"}).reference == "r-1"
    assert classify(200, {"id": 42}).reference == "42"
    assert classify(200, {}).reference is None
    assert classify(200, {"id": None, "reference": "r-2"}).reference == "r-2"
    assert classify(200, {"id": True}).reference is None
    assert classify(200, {"id": "x" * 1000}).reference == "x" * 128


@pytest.mark.parametrize("body", [None, [1, 2], "paid", 3])
def test_2xx_without_a_json_object_is_transient_not_paid(body: Any) -> None:
    result = classify(200, body, reason_phrase="OK")
    assert result.outcome == "transient"
    assert "not a JSON object" in result.detail


@pytest.mark.parametrize("status", [408, 409, 425, 429])
def test_408_409_425_429_are_transient_with_retry_after(status: int) -> None:
    result = classify(status, {"code": "slow_down"}, retry_after="7")
    assert result.outcome == "transient"
    assert result.retry_after_s == 7.0
    assert classify(status, None, retry_after="Wed, 21 Oct 2026 07:28:00 GMT").retry_after_s is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 451, 499])
def test_other_4xx_are_refused_with_the_reason(status: int) -> None:
    result = classify(status, {"code": "account_closed", "detail": "account 9 is closed"})
    assert result.outcome == "refused"
    assert result.detail == f"{status} account_closed: account 9 is closed"
    plain = classify(status, None, reason_phrase="Nope")
    assert (plain.outcome, plain.detail) == ("refused", f"{status} Nope")
    assert classify(status, {"detail": "only a detail"}).detail == f"{status} only a detail"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 101, 301, 302, 307])
def test_5xx_1xx_3xx_are_transient(status: int) -> None:
    result = classify(status, {"code": "unavailable"}, reason_phrase="Whatever", retry_after="2")
    assert result.outcome == "transient"
    assert result.retry_after_s == 2.0
    assert classify(status, None, reason_phrase="Bad Gateway").detail == f"{status} Bad Gateway"


# -- the simulator's rules: one test per row -------------------------------------------------------


def simulator(**options: Any) -> BankSimulator:
    return BankSimulator(rng=random.Random(1), clock=lambda: 1_700_000_000_000_000, **options)


@pytest.mark.parametrize("key", [None, "", "x" * 129, "caf\u00e9", "tab\there"])
def test_sim_without_a_usable_key_is_400(key: str | None) -> None:
    answer = simulator().decide(key, BODY)
    assert (answer.status, answer.body["code"]) == (400, "idempotency_key_missing")


@pytest.mark.parametrize("change", [
    {"amount": 0}, {"amount": -1}, {"amount": True}, {"amount": 1.5}, {"amount": 2**63}, {"asset": ""},
    {"destination": "acct"}, {"extra": 1}, {"wallet_id": None},
])
def test_sim_with_a_bad_body_is_400(change: dict[str, Any]) -> None:
    sim = simulator()
    answer = sim.decide("k", {**BODY, **change})
    assert (answer.status, answer.body["code"]) == (400, "invalid_request")
    assert sim.decide("k", {key: value for key, value in BODY.items() if key != "asset"}).status == 400
    assert sim.decide("k", None).status == 400
    assert sim.report()["items"] == []


def test_sim_fails_the_first_calls_per_key() -> None:
    sim = simulator(fail_first=2)
    assert [sim.decide("a", BODY).status for _ in range(3)] == [503, 503, 201]
    assert sim.decide("b", {**BODY, "withdrawal_id": "w-2"}).status == 503  # counted per key
    assert sim.decide("a", BODY).retry_after_s is None  # the replay
    assert sim.report()["items"][0]["calls"] == 4


def test_sim_fails_at_the_failure_rate() -> None:
    sim = simulator(failure_rate=0.5)
    statuses = [sim.decide(f"k{index}", BODY).status for index in range(400)]
    assert set(statuses) == {201, 503}
    assert 120 < statuses.count(503) < 280
    again = simulator(failure_rate=0.5)
    assert [again.decide(f"k{index}", BODY).status for index in range(400)] == statuses  # seeded


def test_sim_pays_once_per_key_and_replays_the_original_answer() -> None:
    sim = simulator()
    first = sim.decide("w-1", BODY)
    second = sim.decide("w-1", json.loads(json.dumps(BODY)))
    assert (first.status, first.replayed, second.status, second.replayed) == (201, False, 201, True)
    assert second.body == first.body
    report = sim.report()
    assert len(report["items"]) == 1
    assert report["total_paid"] == {"USD": 250}
    assert report["items"][0]["calls"] == 2


def test_sim_same_key_different_body_is_422() -> None:
    sim = simulator()
    sim.decide("w-1", BODY)
    answer = sim.decide("w-1", {**BODY, "amount": 251})
    assert (answer.status, answer.body["code"]) == (422, "idempotency_key_reused")
    assert sim.report()["total_paid"] == {"USD": 250}


def test_sim_refuses_accounts_starting_with_refuse() -> None:
    sim = simulator()
    answer = sim.decide("w-9", {**BODY, "destination": {"account": "refuse-closed"}})
    assert (answer.status, answer.body["code"]) == (422, "account_refused")
    assert "refuse-closed" in answer.body["detail"]
    assert sim.decide("w-9", {**BODY, "destination": {"account": "refuse-closed"}}).status == 422  # every time
    assert sim.decide("w-8", {**BODY, "destination": {"iban": "refuse"}}).status == 201  # only "account"
    assert [item["id"] for item in sim.report()["items"]] == ["w-8"]


def test_sim_otherwise_pays_and_reports() -> None:
    sim = simulator()
    sim.decide("w-1", BODY)
    sim.decide("w-2", {**BODY, "withdrawal_id": "w-2", "amount": 5, "asset": "EUR"})
    sim.decide("w-3", {**BODY, "withdrawal_id": "w-3", "amount": 7})
    report = sim.report()
    assert report["total_paid"] == {"EUR": 5, "USD": 257}
    assert report["items"][0] == {
        "id": "w-1", "reference": "sim-000001", "withdrawal_id": "w-1", "wallet_id": "alice", "amount": 250,
        "asset": "USD", "destination": {"account": "acct-1"}, "paid_at": "2023-11-14T22:13:20.000000Z",
        "calls": 1,
    }
    assert [item["reference"] for item in report["items"]] == ["sim-000001", "sim-000002", "sim-000003"]


def test_sim_drop_pays_then_loses_the_answer_and_the_retry_gets_the_replay() -> None:
    sim = simulator(drop_response_rate=1.0)
    first = sim.decide("w-1", BODY)
    assert (first.status, first.drop) == (201, True)
    second = sim.decide("w-1", BODY)
    assert (second.status, second.drop, second.replayed) == (201, False, True)
    assert len(sim.report()["items"]) == 1
    assert sim.report()["statistics"]["dropped"] == 1


async def test_concurrent_calls_with_one_key_pay_once() -> None:
    sim = simulator(latency_ms=5)
    answers = []

    async def call() -> None:
        answers.append(await sim.handle("w-1", BODY))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(call)
    assert sorted(answer.replayed for answer in answers) == [False] + [True] * 9
    assert sim.report()["total_paid"] == {"USD": 250}


# -- the in-process simulated bank ------------------------------------------------------------


async def test_simulated_bank_pays_refuses_and_fails_like_the_simulator() -> None:
    bank = SimulatedBank(latency_ms=0, fail_first=1, rng=random.Random(3))
    first = await bank.pay(order("s-1"))
    assert (first.outcome, first.retry_after_s) == ("transient", 0.0)
    paid = await bank.pay(order("s-1"))
    again = await bank.pay(order("s-1"))
    assert (paid.outcome, again.outcome) == ("paid", "paid")
    assert paid.reference == again.reference == "sim-000001"
    await bank.pay(order("s-2", account="refuse-frozen"))
    refused = await bank.pay(order("s-2", account="refuse-frozen"))
    assert (refused.outcome, refused.detail) == (
        "refused", "422 account_refused: the bank refuses payouts to account refuse-frozen")
    assert bank.simulator.report()["total_paid"] == {"USD": 100}


async def test_simulated_bank_drop_is_transient_and_the_retry_pays_once() -> None:
    bank = SimulatedBank(latency_ms=0, drop_response_rate=1.0, rng=random.Random(3))
    lost = await bank.pay(order("s-3"))
    assert lost.outcome == "transient"
    assert "lost" in lost.detail
    assert (await bank.pay(order("s-3"))).outcome == "paid"
    report = bank.simulator.report()
    assert len(report["items"]) == 1
    assert report["items"][0]["calls"] == 2


# -- HttpBank against a real local gateway -------------------------------------------------------


class Gateway:
    """Each path answers one way; every request's key and body are recorded."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None, str | None, Any]] = []  # (path, key, content type, body)
        self.recorded = trio.Event()  # set by the first request recorded

    async def record(self, request: Request) -> None:
        raw = await request.body()
        self.requests.append((request.url.path, request.headers.get("idempotency-key"),
                              request.headers.get("content-type"), json.loads(raw)))
        self.recorded.set()

    def app(self) -> Starlette:
        async def paid(request: Request) -> Response:
            await self.record(request)
            return Response(json.dumps({"id": "bank-77", "status": "paid"}), 201, media_type="application/json")

        async def status(request: Request) -> Response:
            await self.record(request)
            code = int(request.path_params["code"])
            headers = {"Retry-After": "3"} if code in (429, 503) else {}
            if request.query_params.get("plain"):
                return Response("no", code, headers=headers, media_type="text/plain")
            body = {"type": "about:blank", "status": code, "code": "account_closed", "detail": "closed in 2020"}
            return Response(json.dumps(body), code, headers=headers, media_type="application/problem+json")

        async def garbage(request: Request) -> Response:
            await self.record(request)
            return Response("<html>welcome to the proxy</html>", 200, media_type="text/html")

        async def huge(request: Request) -> Response:
            await self.record(request)
            return Response(json.dumps({"id": "h", "pad": "x" * RESPONSE_BYTES_MAX}), 200,
                            media_type="application/json")

        async def slow(request: Request) -> Response:
            await self.record(request)
            await trio.sleep(60)
            return Response("{}", 200)

        gateway = self

        class Truncated:
            """A 201 whose body stops after 10 of its 100 bytes: the connection is closed."""

            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                await gateway.record(Request(scope, receive))
                await send({"type": "http.response.start", "status": 201,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")]})
                await send({"type": "http.response.body", "body": b'{"id": "tr', "more_body": True})

        return Starlette(routes=[
            Route("/paid", paid, methods=["POST"]),
            Route("/status/{code:int}", status, methods=["POST"]),
            Route("/garbage", garbage, methods=["POST"]),
            Route("/huge", huge, methods=["POST"]),
            Route("/slow", slow, methods=["POST"]),
            Route("/truncated", Truncated(), methods=["POST"]),
        ])


@pytest.fixture
async def gateway(nursery: trio.Nursery) -> AsyncIterator[tuple[str, Gateway]]:
    server = Gateway()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    app: Any = server.app()
    binds = await nursery.start(serve, app, config)
    yield binds[0], server


async def test_http_bank_sends_the_key_and_the_body(gateway: tuple[str, Gateway]) -> None:
    url, server = gateway
    async with HttpBank(url + "/paid") as bank:
        result = await bank.pay(order("w-5", amount=250))
    assert (result.outcome, result.reference) == ("paid", "bank-77")
    assert server.requests == [("/paid", "w-5", "application/json", request_body(order("w-5", amount=250)))]
    assert server.requests[0][3] == {"withdrawal_id": "w-5", "wallet_id": "wallet-w-5", "amount": 250,
                                     "asset": "USD", "destination": {"account": "acct-1"}}


@pytest.mark.parametrize(("path", "outcome", "detail"), [
    ("/status/422", "refused", "422 account_closed: closed in 2020"),
    ("/status/400?plain=1", "refused", "400 Bad Request"),
    ("/status/404?plain=1", "refused", "404 Not Found"),
    ("/status/408", "transient", "408 account_closed: closed in 2020"),
    ("/status/409", "transient", "409 account_closed: closed in 2020"),
    ("/status/429", "transient", "429 account_closed: closed in 2020"),
    ("/status/500?plain=1", "transient", "500 Internal Server Error"),
    ("/status/503", "transient", "503 account_closed: closed in 2020"),
    ("/status/302?plain=1", "transient", "302 Found"),
    ("/garbage", "transient", "not a JSON object"),
    ("/huge", "transient", "not a JSON object"),
    ("/truncated", "transient", "RemoteProtocolError"),
])
async def test_http_bank_classifies_real_answers(gateway: tuple[str, Gateway], path: str, outcome: str,
                                                 detail: str) -> None:
    url, _ = gateway
    async with HttpBank(url + path) as bank:
        result = await bank.pay(order("w-6"))
    assert result.outcome == outcome
    assert detail in result.detail
    if path in ("/status/429", "/status/503"):
        assert result.retry_after_s == 3.0


async def test_http_bank_timeout_is_transient(gateway: tuple[str, Gateway]) -> None:
    url, server = gateway
    async with HttpBank(url + "/slow", timeout_s=0.2) as bank:
        result = await bank.pay(order("w-7"))
    assert result.outcome == "transient"
    assert "timeout" in result.detail
    # The client may give up before the server's task has read the request (a loaded machine:
    # the fresh-clone suite once saw none recorded yet); it was sent, so it arrives.
    with trio.fail_after(10):
        await server.recorded.wait()
    assert [request[0] for request in server.requests] == ["/slow"]


async def test_http_bank_connect_error_is_transient() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with HttpBank(f"http://127.0.0.1:{port}/payouts", timeout_s=5) as bank:
        result = await bank.pay(order("w-8"))
    assert result.outcome == "transient"
    assert "cannot connect" in result.detail
