"""The Python driver: what one request is (HTTP or an in-process ledger call), and one generator
process running C clients in a closed or open loop.

HTTP requests are single transfers (``POST /v1/transfers``, a unique ``Idempotency-Key`` each),
batches (``POST /v1/transfers/batch``, JSON or MessagePack, a unique ``idempotency_key`` per
item) or balance reads. Core requests go straight to ``Ledger.transfer`` or, per message,
``Ledger.transfer_batch(commands, atomic=False)``.

Several generator processes (``--processes``) each run this with their share of the clients
and of the rate; ``bench._worker`` is the child's entry point and the coordinator merges their
recorders. Every process measures its own CPU over the measured window.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import msgpack
import trio

from bench._http import Connection, HttpError, render, split_url
from bench._loop import Execute, Outcome, Recorder, Schedule, closed_loop, open_loop
from bench._scenario import Op, Read, Scenario, Transfers, Workload, wallet_ids
from ledger import (
    Committed,
    Duplicate,
    Idempotency,
    Ledger,
    Overloaded,
    Rejection,
    TransactionType,
    Transfer,
)

OVERLOADED_PAUSE_S = 0.001  # a core client told "overloaded" yields this long before its next try
MSGPACK = "application/msgpack"


def _problem_code(body: bytes) -> str:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return "-"
    return str(code) if code else "-"


class HttpTarget:
    """Renders and sends requests for one generator process; one ``executor`` per connection."""

    def __init__(self, *, url: str, token: str, key_prefix: str, amount: int, batch_endpoint: bool,
                 packed: bool) -> None:
        self.host, self.port = split_url(url)
        self.host_header = f"{self.host}:{self.port}"
        self.key_prefix = key_prefix
        self.amount = amount
        self.batch_endpoint = batch_endpoint
        self.packed = packed
        self.counter = itertools.count(1)
        self.auth = f"Bearer {token}"
        self.connections: list[Connection] = []

    def render(self, op: Op) -> bytes:
        if isinstance(op, Read):
            return render("GET", f"/v1/wallets/{op.wallet_id}/balance", self.host_header, {"Authorization": self.auth})
        assert isinstance(op, Transfers)
        if not self.batch_endpoint:
            assert len(op.pairs) == 1
            source, target = op.pairs[0]
            body = f'{{"from_wallet_id":"{source}","to_wallet_id":"{target}","amount":{self.amount}}}'.encode()
            headers = {
                "Authorization": self.auth, "Content-Type": "application/json",
                "Idempotency-Key": f"{self.key_prefix}{next(self.counter)}",
            }
            return render("POST", "/v1/transfers", self.host_header, headers, body)
        items = [
            {"idempotency_key": f"{self.key_prefix}{next(self.counter)}", "from_wallet_id": source,
             "to_wallet_id": target, "amount": self.amount}
            for source, target in op.pairs
        ]
        payload = {"atomic": False, "transfers": items}
        headers = {"Authorization": self.auth, "Idempotency-Key": f"{self.key_prefix}b{next(self.counter)}"}
        if self.packed:
            headers["Content-Type"] = MSGPACK
            headers["Accept"] = MSGPACK
            data = msgpack.packb(payload)
        else:
            headers["Content-Type"] = "application/json"
            data = json.dumps(payload, separators=(",", ":")).encode()
        return render("POST", "/v1/transfers/batch", self.host_header, headers, data)

    def executor(self) -> Execute:
        connection = Connection(self.host, self.port)
        self.connections.append(connection)

        async def execute(op: Op) -> Outcome:
            raw = self.render(op)
            carried = 0 if isinstance(op, Read) else len(op.pairs)
            try:
                response = await connection.request(raw)
            except HttpError:
                return Outcome(status="connection", transfers=carried, read=isinstance(op, Read),
                               errors=Counter({"connection error": max(carried, 1)}))
            return interpret(op, response.status, response.headers.get("content-type", ""), response.body,
                             batch_endpoint=self.batch_endpoint)

        return execute

    async def aclose(self) -> None:
        for connection in self.connections:
            await connection.close()


def interpret(op: Op, status: int, content_type: str, body: bytes, *, batch_endpoint: bool) -> Outcome:
    """What an HTTP answer means for the figures."""
    if isinstance(op, Read):
        if status == 200:
            return Outcome(status="200", read=True)
        return Outcome(status=str(status), read=True, errors=Counter({f"read {status} {_problem_code(body)}": 1}))
    carried = len(op.pairs)
    if not batch_endpoint and status == 201:
        return Outcome(status="201", transfers=1, transfers_ok=1)
    if not batch_endpoint or status != 200:
        return Outcome(status=str(status), transfers=carried,
                       errors=Counter({f"{status} {_problem_code(body)}": carried}))
    # A batch: one result per item, in request order.
    try:
        document = msgpack.unpackb(body) if content_type.startswith(MSGPACK) else json.loads(body)
        results = document["results"]
    except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return Outcome(status="200", transfers=carried, errors=Counter({"200 unreadable batch answer": carried}))
    errors: Counter[str] = Counter()
    ok = 0
    for result in results:
        item_status = result.get("status")
        if item_status == 201:
            ok += 1
        else:
            code = (result.get("error") or {}).get("code", "-")
            errors[f"item {item_status} {code}"] += 1
    if len(results) != carried:
        errors["batch answer with a wrong number of results"] += 1
    return Outcome(status="200", transfers=carried, transfers_ok=ok, errors=errors or None)


class CoreTarget:
    """Transfers straight into a running ``Ledger`` (no HTTP), like the route would submit them:
    a unique transaction id and an idempotency key with a fingerprint each."""

    def __init__(self, ledger: Any, *, key_prefix: str, amount: int, batch: bool) -> None:
        self.ledger = ledger
        self.key_prefix = key_prefix
        self.amount = amount
        self.batch = batch
        self.counter = itertools.count(1)

    def command(self, source: str, target: str) -> Transfer:
        number = next(self.counter)
        fingerprint = hashlib.blake2b(f"{source} {target} {self.amount}".encode(), digest_size=16).digest()
        return Transfer(
            transaction_id=f"tx_{self.key_prefix}{number}", type=TransactionType.TRANSFER,
            from_wallet_id=source, to_wallet_id=target, amount=self.amount, description=None, metadata=None,
            idempotency=Idempotency(scope="bench", key=f"{self.key_prefix}{number}", fingerprint=fingerprint),
        )

    async def execute(self, op: Op | Prepared) -> Outcome:
        if isinstance(op, Prepared):
            return await self._post(op.commands)
        if isinstance(op, Read):
            view = await self.ledger.wallet(op.wallet_id)
            if view is None:
                return Outcome(status="core", read=True, errors=Counter({"read wallet_not_found": 1}))
            return Outcome(status="core", read=True)
        return await self._post([self.command(source, target) for source, target in op.pairs])

    async def _post(self, commands: list[Transfer]) -> Outcome:
        try:
            if self.batch:
                decisions = list(await self.ledger.transfer_batch(commands, atomic=False))
            else:
                decisions = [await self.ledger.transfer(commands[0])]
        except Overloaded:
            await trio.sleep(OVERLOADED_PAUSE_S)
            return Outcome(status="overloaded", transfers=len(commands), errors=Counter({"overloaded": len(commands)}))
        return classify(decisions, len(commands))


@dataclass(frozen=True, slots=True)
class Prepared:
    """Transfers built before the run (``--prebuilt``): the commands themselves, ids and keys
    included, so the measured window holds the ledger's work and not the generator's."""

    commands: list[Transfer]


class PrebuiltOps:
    """The next operation for core mode: a pre-built one while they last, then one built on
    the spot (counted in ``built_inline``, so the report can say the input ran out)."""

    def __init__(self, target: CoreTarget, workload: Workload, transfers: int) -> None:
        started = time.perf_counter()
        self._workload = workload
        self._ready: list[Op | Prepared] = []
        self.prebuilt = 0
        while self.prebuilt < transfers:
            op = workload.op()
            if isinstance(op, Transfers):
                self._ready.append(Prepared([target.command(source, to) for source, to in op.pairs]))
                self.prebuilt += len(op.pairs)
            else:
                self._ready.append(op)
        self._ready.reverse()  # popped from the end, in the order drawn
        # Millions of long-lived objects: out of the collector's sight, or every full
        # collection during the run would walk them and be measured as the ledger's time.
        gc.freeze()
        self.build_s = time.perf_counter() - started
        self.built_inline = 0

    def __call__(self) -> Op | Prepared:
        if self._ready:
            return self._ready.pop()
        op = self._workload.op()
        if isinstance(op, Transfers):
            self.built_inline += len(op.pairs)
        return op

    def to_json(self) -> dict[str, Any]:
        return {"prebuilt_transfers": self.prebuilt, "built_inline_transfers": self.built_inline,
                "build_s": round(self.build_s, 3), "left_unused": sum(
                    len(op.commands) for op in self._ready if isinstance(op, Prepared))}


def prebuilt_default(*, batch: bool, warmup_s: float, duration_s: float) -> int:
    """Enough transfers for the run at a generous rate, bounded in memory (~0.5 KB each)."""
    rate = 150_000 if batch else 40_000
    return min(3_000_000, int(rate * (warmup_s + duration_s)))


def classify(decisions: list[Any], carried: int) -> Outcome:
    errors: Counter[str] = Counter()
    ok = 0
    for decision in decisions:
        if isinstance(decision, Committed):
            ok += 1
        elif isinstance(decision, Rejection):
            errors[f"rejected {decision.reason.code}"] += 1
        elif isinstance(decision, Duplicate):
            errors["duplicate"] += 1
        elif isinstance(decision, BaseException):
            errors[type(decision).__name__.lower()] += 1
        else:
            errors[f"unexpected {type(decision).__name__}"] += 1
    if len(decisions) != carried:
        errors["wrong number of decisions"] += 1
    return Outcome(status="core", transfers=carried, transfers_ok=ok, errors=errors or None)


def has_transfer_batch(ledger: Ledger) -> bool:
    return callable(getattr(ledger, "transfer_batch", None))


# -- one generator process --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """What a generator process needs; JSON-able, so it can be sent to a child process."""

    url: str
    token: str
    scenario: dict[str, Any]
    wallet_prefix: str
    key_prefix: str
    seed: int
    process: int
    processes: int
    connections: int  # this process's share
    rate: float | None  # the whole run's rate (this process takes 1/processes of it)
    warmup_s: float
    duration_s: float
    batch_endpoint: bool
    packed: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


def connections_share(connections: int, processes: int, process: int) -> int:
    return connections // processes + (1 if process < connections % processes else 0)


def workload_rng(seed: int, process: int) -> random.Random:
    return random.Random(f"wallet-bench:{seed}:{process}")


class CpuWindow:
    """This process's CPU time and the wall time between ``window_start`` and ``window_end``."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.wall_s = 0.0

    async def run(self, window_start: float, window_end: float) -> None:
        await trio.sleep(max(0.0, window_start - time.monotonic()))
        cpu, wall = time.process_time(), time.monotonic()
        await trio.sleep(max(0.0, window_end - time.monotonic()))
        self.cpu_s = time.process_time() - cpu
        self.wall_s = time.monotonic() - wall

    def to_json(self, process: int) -> dict[str, Any]:
        share = self.cpu_s / self.wall_s if self.wall_s > 0 else None
        return {"process": process, "cpu_s": self.cpu_s, "wall_s": self.wall_s, "share_of_one_core": share}


async def drive(executors: list[Execute], next_op: Callable[[], Any], recorder: Recorder, *, start: float,
                warmup_s: float, duration_s: float, rate: float | None, processes: int, process: int) -> None:
    end = start + warmup_s + duration_s
    if rate is None:
        await closed_loop(executors, next_op, recorder, start=start, end=end, now=time.monotonic, sleep=trio.sleep)
    else:
        schedule = Schedule(start=start, rate=rate, processes=processes, phase=process)
        await open_loop(executors, next_op, recorder, schedule, end=end, now=time.monotonic, sleep=trio.sleep)


async def run_http_worker(spec: WorkerSpec, start: float) -> dict[str, Any]:
    """One generator process's whole run against ``spec.url``; returns its JSON result."""
    scenario = Scenario(**spec.scenario)
    workload = Workload(scenario, wallet_ids(spec.wallet_prefix, scenario.wallets), workload_rng(spec.seed, spec.process))
    target = HttpTarget(
        url=spec.url, token=spec.token, key_prefix=f"{spec.key_prefix}p{spec.process}-", amount=scenario.amount,
        batch_endpoint=spec.batch_endpoint, packed=spec.packed,
    )
    executors = [target.executor() for _ in range(spec.connections)]
    window_start = start + spec.warmup_s
    recorder = Recorder(window_start, window_start + spec.duration_s)
    cpu = CpuWindow()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cpu.run, window_start, window_start + spec.duration_s)
            await drive(executors, workload.op, recorder, start=start, warmup_s=spec.warmup_s,
                        duration_s=spec.duration_s, rate=spec.rate, processes=spec.processes, process=spec.process)
    finally:
        await target.aclose()
    return {"recorder": recorder.to_json(), "cpu": cpu.to_json(spec.process)}
