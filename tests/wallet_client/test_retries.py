"""The retry decisions (``wallet_client._retry``'s table, a test per row) and what the clients
do with them: the same request (same ``Idempotency-Key``) on every attempt, ``Retry-After``
honoured, attempts and total time bounded, nothing but 429/503 and transport errors retried,
and a call that is not repeatable never sent twice."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import httpx
import pytest

from tests.wallet_client._fake import (
    TRANSACTION,
    WALLET,
    FakeServer,
    Sleeps,
    async_client,
    problem,
    reply,
    sync_client,
)
from wallet_client import (
    ConnectionFailed,
    InsufficientFunds,
    InvalidRequest,
    Overloaded,
    RateLimited,
    RetryPolicy,
    ServerError,
)
from wallet_client._retry import parse_retry_after

RNG = random.Random(1)


def decide_status(status: int, *, retry_after: str | None = None, attempt: int = 1, elapsed_s: float = 0.0,
                  repeatable: bool = True, policy: RetryPolicy | None = None) -> float | None:
    return (policy or RetryPolicy()).delay_after_status(
        status=status, retry_after=retry_after, attempt=attempt, elapsed_s=elapsed_s, repeatable=repeatable, rng=RNG)


def decide_error(error: Exception, *, repeatable: bool = True, attempt: int = 1) -> float | None:
    return RetryPolicy().delay_after_error(error=error, attempt=attempt, elapsed_s=0.0, repeatable=repeatable, rng=RNG)


# -- the table, one test per row --------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201, 400, 401, 403, 404, 409, 413, 422, 500, 502])
def test_row_an_answer_not_in_statuses_is_final(status: int) -> None:
    assert decide_status(status) is None
    assert decide_status(status, retry_after="1") is None


@pytest.mark.parametrize("status", [429, 503])
def test_row_retry_after_is_waited_for_with_a_little_jitter(status: int) -> None:
    delay = decide_status(status, retry_after="2")
    assert delay is not None and 2.0 <= delay <= 2.2


@pytest.mark.parametrize("status", [429, 503])
def test_row_without_retry_after_full_jitter_backoff(status: int) -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=3.0, total_s=100, attempts_max=10)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        delays = [decide_status(status, attempt=attempt, policy=policy) for _ in range(200)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        assert max(d for d in delays if d is not None) > ceiling * 0.8  # jitter spans the range


@pytest.mark.parametrize("status", [429, 503])
def test_row_not_repeatable_calls_are_not_retried_on_429_or_503(status: int) -> None:
    assert decide_status(status, retry_after="1", repeatable=False) is None


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"),
                                   httpx.PoolTimeout("pool")])
def test_row_a_connect_failure_is_retried_even_when_not_repeatable(error: Exception) -> None:
    assert decide_error(error, repeatable=False) is not None
    assert decide_error(error, repeatable=True) is not None


@pytest.mark.parametrize("error", [httpx.ReadError("cut"), httpx.ReadTimeout("slow"), httpx.WriteError("cut"),
                                   httpx.RemoteProtocolError("closed")])
def test_row_a_sent_request_without_answer_is_retried_only_when_repeatable(error: Exception) -> None:
    assert decide_error(error, repeatable=True) is not None
    assert decide_error(error, repeatable=False) is None


@pytest.mark.parametrize("error", [httpx.UnsupportedProtocol("ftp"), httpx.LocalProtocolError("bad header")])
def test_row_errors_a_retry_cannot_fix_are_raised(error: Exception) -> None:
    assert decide_error(error) is None


def test_row_bounds_attempts_total_time_and_retry_after() -> None:
    policy = RetryPolicy(attempts_max=3, total_s=10, retry_after_max_s=5)
    assert decide_status(503, attempt=2, policy=policy) is not None
    assert decide_status(503, attempt=3, policy=policy) is None  # the third was the last
    assert decide_error(httpx.ConnectError("x"), attempt=5) is None  # default attempts_max 5
    assert decide_status(503, retry_after="4", elapsed_s=5, policy=policy) is not None
    assert decide_status(503, retry_after="4", elapsed_s=7, policy=policy) is None  # would end past total_s
    assert decide_status(503, retry_after="6", policy=policy) is None  # asks for more than retry_after_max_s
    assert decide_status(503, policy=RetryPolicy.never()) is None


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:07 GMT", now=now) == 7.0
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now=now) == 0.0  # in the past: now
    for bad in (None, "", "soon", "-1", "nan", "inf"):
        assert parse_retry_after(bad) is None, bad


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts_max=0)
    with pytest.raises(ValueError):
        RetryPolicy(total_s=-1)


# -- the clients -------------------------------------------------------------------------------

def test_a_money_call_retried_after_503_sends_the_same_key_and_body() -> None:
    server = FakeServer([problem(503, "overloaded", retry_after=1), problem(429, "rate_limited", retry_after=0),
                         reply(201, TRANSACTION)])
    sleeps = Sleeps()
    with sync_client(server, sleeps=sleeps) as client:
        transaction = client.transfer("w-1", "w-2", 100, metadata={"o": 1})
    assert transaction.id == "tx_1"
    keys = server.keys()
    assert len(keys) == 3 and keys[0] is not None and len(set(keys)) == 1
    assert len({request.content for request in server.requests}) == 1
    assert 1.0 <= sleeps.slept[0] <= 1.1 and sleeps.slept[1] == 0.0


async def test_the_async_client_retries_the_same_way() -> None:
    server = FakeServer([httpx.ReadError("response lost"), problem(503, "overloaded", retry_after=2),
                         reply(201, TRANSACTION)])
    sleeps = Sleeps()
    async with async_client(server, sleeps=sleeps) as client:
        transaction = await client.deposit("w-1", 100)
    assert transaction.id == "tx_1"
    keys = server.keys()
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0] is not None
    assert len(sleeps.slept) == 2 and 2.0 <= sleeps.slept[1] <= 2.2


def test_a_response_lost_after_sending_is_retried_for_a_keyed_call_with_the_same_key() -> None:
    server = FakeServer([httpx.ReadTimeout("no answer"), reply(201, TRANSACTION)])
    with sync_client(server) as client:
        client.transfer("w-1", "w-2", 100, idempotency_key="given")
    assert server.keys() == ["given", "given"]


def test_a_call_that_is_not_repeatable_is_not_sent_twice() -> None:
    server = FakeServer([httpx.ReadError("cut"), reply(201, {"token": "t", "owner_id": "a"})])
    with sync_client(server) as client, pytest.raises(ConnectionFailed) as caught:
        client.create_token("alice")
    assert len(server.requests) == 1
    assert caught.value.attempts == 1 and caught.value.idempotency_key is None
    assert isinstance(caught.value.__cause__, httpx.ReadError)


def test_a_call_that_is_not_repeatable_raises_its_503_with_retry_after() -> None:
    server = FakeServer([problem(503, "overloaded", retry_after=3)])
    with sync_client(server) as client, pytest.raises(Overloaded) as caught:
        client.create_webhook("https://example.com/x")
    assert len(server.requests) == 1 and caught.value.retry_after_s == 3.0


def test_a_connect_failure_is_retried_even_for_a_call_that_is_not_repeatable() -> None:
    server = FakeServer([httpx.ConnectError("refused"), reply(201, {"token": "t", "owner_id": "a"})])
    with sync_client(server) as client:
        assert client.create_token("alice").token == "t"
    assert len(server.requests) == 2


def test_4xx_and_5xx_other_than_429_and_503_are_not_retried() -> None:
    for answer, error in [(problem(422, "insufficient_funds", "no money"), InsufficientFunds),
                          (problem(400, "invalid_request", errors=[{"field": "amount", "message": "bad"}]),
                           InvalidRequest),
                          (problem(500, "internal_error"), ServerError)]:
        server = FakeServer([answer, reply(201, TRANSACTION)])
        with sync_client(server) as client, pytest.raises(error) as caught:
            client.transfer("w-1", "w-2", 100)
        assert len(server.requests) == 1
        assert caught.value.idempotency_key == server.keys()[0]


def test_attempts_are_bounded_and_the_last_answer_is_raised() -> None:
    server = FakeServer([problem(429, "rate_limited", retry_after=0)])
    with sync_client(server, retry=RetryPolicy(attempts_max=4)) as client, pytest.raises(RateLimited) as caught:
        client.get_wallet("w-1")
    assert len(server.requests) == 4 and caught.value.retry_after_s == 0.0


def test_total_time_is_bounded() -> None:
    server = FakeServer([problem(503, "overloaded", retry_after=4)])
    sleeps = Sleeps()
    with sync_client(server, sleeps=sleeps, retry=RetryPolicy(attempts_max=100, total_s=10)) as client, \
            pytest.raises(Overloaded):
        client.get_wallet("w-1")
    assert len(server.requests) == 3  # at 0 s, ~4 s, ~8 s; a fourth would start past 10 s
    assert sum(sleeps.slept) <= 10


def test_transport_errors_end_in_connection_failed_with_the_key() -> None:
    server = FakeServer([httpx.ConnectError("refused")])
    sleeps = Sleeps()
    with sync_client(server, sleeps=sleeps, retry=RetryPolicy(attempts_max=3)) as client, \
            pytest.raises(ConnectionFailed) as caught:
        client.deposit("w-1", 5, idempotency_key="dep-1")
    assert caught.value.idempotency_key == "dep-1" and caught.value.attempts == 3
    assert len(server.requests) == 3 and len(sleeps.slept) == 2


def test_the_batch_is_retried_as_the_same_bytes() -> None:
    results = {"results": [{"status": 201, "transaction": TRANSACTION}]}
    server = FakeServer([httpx.ReadError("cut"), reply(200, results)])
    with sync_client(server) as client:
        client.transfer_batch([{"from_wallet_id": "w-1", "to_wallet_id": "w-2", "amount": 1}])
    assert len(server.requests) == 2 and server.requests[0].content == server.requests[1].content


def test_wallet_creation_is_keyed_so_it_is_retried() -> None:
    server = FakeServer([httpx.ReadError("cut"), reply(201, WALLET)])
    with sync_client(server) as client:
        client.create_wallet("alice", "USD")
    keys = server.keys()
    assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1]
