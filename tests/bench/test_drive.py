"""What a request is and what its answer means: rendering (unique keys, the batch contract of
API.md, MessagePack), reading answers and ledger decisions, and the flags the harness refuses."""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter

import msgpack
import pytest

from bench import add_arguments
from bench._drive import CoreTarget, HttpTarget, PrebuiltOps, Prepared, classify, interpret
from bench._run import Refused, make_plan
from bench._scenario import Read, Scenario, Transfers, Workload, wallet_ids
from ledger import Idempotency, Overloaded, Reason, Rejection

PAIRS = (("w1", "w2"), ("w3", "w4"), ("w5", "w6"))


def parse_request(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert int(headers.get("content-length", "0")) == len(body)
    return request_line, headers, body


def target(**options: bool) -> HttpTarget:
    return HttpTarget(url="http://127.0.0.1:9", token="tok", key_prefix="k-", amount=7,
                      batch_endpoint=options.get("batch", False), packed=options.get("packed", False))


def test_single_transfers_get_a_unique_idempotency_key_and_the_route_body() -> None:
    t = target()
    keys = set()
    for _ in range(100):
        line, headers, body = parse_request(t.render(Transfers((("w1", "w2"),))))
        assert line == "POST /v1/transfers HTTP/1.1"
        assert headers["authorization"] == "Bearer tok"
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"from_wallet_id": "w1", "to_wallet_id": "w2", "amount": 7}
        keys.add(headers["idempotency-key"])
    assert len(keys) == 100


def test_batches_follow_the_contract_in_json_and_msgpack() -> None:
    for packed in (False, True):
        t = target(batch=True, packed=packed)
        line, headers, body = parse_request(t.render(Transfers(PAIRS)))
        assert line == "POST /v1/transfers/batch HTTP/1.1"
        document = msgpack.unpackb(body) if packed else json.loads(body)
        assert document["atomic"] is False
        assert [(i["from_wallet_id"], i["to_wallet_id"], i["amount"]) for i in document["transfers"]] == [
            (a, b, 7) for a, b in PAIRS]
        assert len({item["idempotency_key"] for item in document["transfers"]}) == 3
        assert set(document["transfers"][0]) == {"idempotency_key", "from_wallet_id", "to_wallet_id", "amount"}
        kind = "application/msgpack" if packed else "application/json"
        assert headers["content-type"] == kind
        if packed:
            assert headers["accept"] == "application/msgpack"


def test_reads_are_balance_gets() -> None:
    line, _headers, body = parse_request(target().render(Read("w9")))
    assert line == "GET /v1/wallets/w9/balance HTTP/1.1"
    assert body == b""


def test_answers_are_read_into_figures() -> None:
    one = Transfers((("a", "b"),))
    ok = interpret(one, 201, "application/json", b"{}", batch_endpoint=False)
    assert (ok.transfers, ok.transfers_ok, ok.errors) == (1, 1, None)
    problem = json.dumps({"status": 422, "code": "insufficient_funds"}).encode()
    refused = interpret(one, 422, "application/problem+json", problem, batch_endpoint=False)
    assert refused.errors == Counter({"422 insufficient_funds": 1})
    assert interpret(Read("a"), 200, "application/json", b"{}", batch_endpoint=False).read
    missing = interpret(Read("a"), 404, "", b'{"code":"wallet_not_found"}', batch_endpoint=False)
    assert missing.errors == Counter({"read 404 wallet_not_found": 1})
    results = {"results": [
        {"status": 201, "transaction": {"id": "tx_1"}},
        {"status": 422, "error": {"code": "insufficient_funds"}},
        {"status": 201, "transaction": {"id": "tx_2"}},
    ]}
    for content_type, body in (("application/json", json.dumps(results).encode()),
                               ("application/msgpack", msgpack.packb(results))):
        batch = interpret(Transfers(PAIRS), 200, content_type, body, batch_endpoint=True)
        assert (batch.transfers, batch.transfers_ok) == (3, 2)
        assert batch.errors == Counter({"item 422 insufficient_funds": 1})
    absent = interpret(Transfers(PAIRS), 404, "application/problem+json", b'{"code":"not_found"}', batch_endpoint=True)
    assert (absent.transfers_ok, absent.errors) == (0, Counter({"404 not_found": 3}))
    short = interpret(Transfers(PAIRS), 200, "application/json", b'{"results": []}', batch_endpoint=True)
    assert short.errors == Counter({"batch answer with a wrong number of results": 1})


def test_ledger_decisions_are_classified() -> None:
    decisions = [Rejection(reason=Reason.INSUFFICIENT_FUNDS, detail="x"), Overloaded("full")]
    outcome = classify(decisions, 2)
    assert outcome.transfers_ok == 0
    assert outcome.errors == Counter({"rejected insufficient_funds": 1, "overloaded": 1})


async def test_core_target_sends_batches_through_transfer_batch() -> None:
    class FakeLedger:
        def __init__(self) -> None:
            self.calls: list[tuple[int, bool]] = []

        async def transfer_batch(self, commands: list, *, atomic: bool) -> list:
            self.calls.append((len(commands), atomic))
            assert len({c.transaction_id for c in commands}) == len(commands)
            assert all(isinstance(c.idempotency, Idempotency) for c in commands)
            return [Rejection(reason=Reason.SAME_WALLET, detail="-") for _ in commands]

    fake = FakeLedger()
    core = CoreTarget(fake, key_prefix="k-", amount=3, batch=True)
    outcome = await core.execute(Transfers(PAIRS))
    assert fake.calls == [(3, False)]
    assert outcome.errors == Counter({"rejected same_wallet": 3})


async def test_prebuilt_input_is_the_workload_built_ahead_then_inline() -> None:
    class FakeLedger:
        def __init__(self) -> None:
            self.seen: list[tuple[str, str | None, str]] = []

        async def transfer_batch(self, commands: list, *, atomic: bool) -> list:
            self.seen.extend((c.transaction_id, c.from_wallet_id, c.to_wallet_id) for c in commands)
            return [Rejection(reason=Reason.SAME_WALLET, detail="-") for _ in commands]

    def workload() -> Workload:
        return Workload(Scenario(wallets=50, shards=2, batch=4), wallet_ids("w", 50), random.Random(7))

    fake, plain = FakeLedger(), FakeLedger()
    core = CoreTarget(fake, key_prefix="k-", amount=3, batch=True)
    ops = PrebuiltOps(core, workload(), transfers=10)  # three batches of 4 cover 10
    assert ops.prebuilt == 12
    first = ops()
    assert isinstance(first, Prepared) and len(first.commands) == 4
    await core.execute(first)
    for _ in range(3):
        await core.execute(ops())
    assert ops.built_inline == 4 and ops.to_json()["left_unused"] == 0
    # The same draws, in the same order, as building every one inline.
    reference = workload()
    inline = CoreTarget(plain, key_prefix="k-", amount=3, batch=True)
    for _ in range(4):
        await inline.execute(reference.op())
    assert fake.seen == plain.seen and len(fake.seen) == 16


def arguments(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(flags))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mode", "core", "--url", "http://x:1"], "--url is for --mode http"),
        (["--msgpack"], "--msgpack needs --batch"),
        (["--driver", "wrk", "--batch", "10"], "--driver wrk sends single transfers"),
        (["--driver", "wrk", "--rate", "10"], "--driver wrk is a closed loop"),
        (["--url", "https://x:1", "--token", "t"], "only http://"),
        (["--hot-share", "0.5", "--hot-wallets", "1"], "--hot-wallets"),
        (["--shards", "1", "--cross-shard", "0.5"], "2 shards"),
        (["--driver", "python", "--processes", "3", "--connections", "2"], "--processes may not exceed"),
        (["--mode", "core", "--processes", "2"], "--processes is for --mode http"),
        (["--mode", "core", "--workers", "2"], "--workers is for --mode http"),
        (["--prebuilt", "10"], "--prebuilt is for --mode core"),
        (["--mode", "core", "--prebuilt", "-1"], "--prebuilt must be 0 or more"),
        (["--mode", "core", "--baseline-one-process"], "--baseline-one-process is for --mode http"),
        (["--url", "http://x:1", "--token", "t", "--workers", "2"], "--workers is for a server the harness starts"),
        (["--url", "http://x:1", "--token", "t", "--baseline-one-process"], "--baseline-one-process is for a server"),
    ],
)
def test_contradictory_flags_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(Refused, match=message):
        make_plan(arguments(*flags))


def test_the_default_driver_is_wrk_for_single_closed_loops_when_installed() -> None:
    from bench import _wrk

    plan = make_plan(arguments("--wallets", "100"))
    assert plan.driver == ("wrk" if _wrk.available() else "python")
    assert make_plan(arguments("--wallets", "100", "--batch", "10")).driver == "python"
    assert make_plan(arguments("--wallets", "100", "--rate", "10")).driver == "python"
