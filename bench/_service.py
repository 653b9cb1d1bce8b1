"""The harness's side of the server: starting ``wallet serve`` (or the echo server) on a
temporary data directory, reading ``/metrics`` and ``/proc/<pid>/stat``, creating and funding
the benchmark's wallets before the measured window, and checking at the end that money was
conserved.

Setup and checks outside the measured window go through ``wallet_client`` (the project's
Python client: typed answers, retries with the same idempotency keys); the measured load and
the metric samples taken during it use the harness's own lean client (``bench._http``), which
costs far less CPU per request than httpx (see its docstring). For a server the
harness starts itself, the wallets are created and funded in process through the ledger before
the server starts on that data directory (tens of thousands of wallets in seconds instead of a
minute of HTTP requests); against ``--url`` they are made through the API. Either way they are
in the log before the first measured request.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from bench._http import Client, HttpError
from ledger import (
    Committed,
    CreateAsset,
    CreateWallet,
    Ledger,
    Overloaded,
    TransactionType,
    Transfer,
    open_ledger,
    treasury_id,
)
from wallet_client import AsyncWalletClient, RetryPolicy, WalletClientError

DEPOSIT = 10**12  # per wallet: far more than any run moves, so no transfer fails for funds
SETUP_CONNECTIONS = 16
LIST_PAGE = 1000  # the API's largest page
READY_TIMEOUT_S = 60.0
QUIET_TIMEOUT_S = 30.0
SETUP_RETRY_S = 60.0  # how long setup calls may keep retrying a busy server (503, 429, no answer)
HISTORY_CATCH_UP_S = 300  # how long the conservation check waits for the history read model
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class SetupError(Exception):
    """The benchmark could not be set up (server did not start, seeding failed...)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_stat(text: str) -> tuple[int, int]:
    """The parent pid and the user + system CPU ticks in the text of ``/proc/<pid>/stat``.
    The command name (field 2) is in parentheses and may hold spaces or ``)``: split after the
    last one."""
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); ppid is field 4, utime 14, stime 15.
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from ``/proc/<pid>/stat``."""
    return parse_stat(Path(f"/proc/{pid}/stat").read_text())[1] / os.sysconf("SC_CLK_TCK")


def descendants(root: int, parents: dict[int, int]) -> list[int]:
    """``root`` and every process below it, root first, from a ``{pid: parent pid}`` map."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found = [root]
    index = 0
    while index < len(found):
        found.extend(sorted(children.get(found[index], [])))
        index += 1
    return found


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds so far of ``root`` and of every process below it (``wallet serve --workers N``:
    the supervisor, the ledger process, the HTTP workers, and whatever they run, such as a
    snapshot child), by pid. Found by parent pid in ``/proc/*/stat``, which needs no kernel
    option (``/proc/<pid>/task/<tid>/children`` does). Raises ``OSError`` when ``root`` is
    gone; a child that exits during the scan is left out."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent, used = parse_stat(Path(entry.path, "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue
        parents[int(entry.name)] = parent
        ticks[int(entry.name)] = used
    if root not in ticks:
        raise OSError(f"no process {root}")
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: ticks[pid] / tick for pid in descendants(root, parents) if pid in ticks}


@dataclass(slots=True, kw_only=True)
class ServerProcess:
    """A server subprocess the harness started (``wallet serve`` or ``bench.echo``)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def start_process(command: list[str], *, log_path: Path, url: str, env: dict[str, str] | None = None) -> ServerProcess:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )
    return ServerProcess(process=process, url=url, log_path=log_path)


def serve_command(*, data_dir: Path, port: int, shards: int, loop: str | None, workers: int | None = None,
                  memory_keys: int | None = None) -> list[str]:
    command = [
        sys.executable, "-m", "server.cli", "serve", "--data", str(data_dir), "--host", "127.0.0.1",
        "--port", str(port), "--shards", str(shards),
    ]
    if loop is not None:
        command += ["--loop", loop]  # the service's own flag; passed through as given
    if workers is not None:
        command += ["--workers", str(workers)]  # absent: the server's own default
    if memory_keys is not None:
        command += ["--idempotency-memory-keys", str(memory_keys)]
    return command


def echo_command(*, port: int, loop: str | None, workers: int = 0) -> list[str]:
    command = [sys.executable, "-m", "bench.echo", "--port", str(port), "--loop", loop or "trio"]
    if workers > 0:
        command += ["--workers", str(workers)]
    return command


async def wait_ready(server: ServerProcess, path: str = "/ready", timeout_s: float = READY_TIMEOUT_S) -> None:
    client = Client(server.url, None)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise SetupError(f"the server exited with status {server.process.returncode}:\n{server.log_tail()}")
            try:
                if (await client.call("GET", path)).status == 200:
                    return
            except HttpError:
                pass
            await trio.sleep(0.05)
    finally:
        await client.aclose()
    raise SetupError(f"the server was not ready after {timeout_s:.0f} s:\n{server.log_tail()}")


# -- /metrics ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSample:
    wal_records: float | None
    wal_group_commits: float | None
    durable_lsn: float | None
    mailbox_depth: float
    shards: int
    # ``wallet_event_loop_lag_seconds`` by role: {role: {bucket upper bound in s: cumulative count}}
    loop_lag: dict[str, dict[float, float]] = field(default_factory=dict)


LOOP_LAG_BUCKET = "wallet_event_loop_lag_seconds_bucket"


def _labels(raw: str) -> dict[str, str]:
    pairs = (label.partition("=") for label in raw.rstrip("}").split(",") if label)
    return {key.strip(): value.strip().strip('"') for key, _, value in pairs}


def parse_metrics(text: str) -> MetricsSample:
    """The few figures the harness reads from the Prometheus text of ``/metrics``."""
    values: dict[str, float] = {}
    depth = 0.0
    shards: set[str] = set()
    loop_lag: dict[str, dict[float, float]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name, _, labels = name_part.partition("{")
        if name == "wallet_shard_mailbox_depth":
            depth += float(value)
            for label in labels.rstrip("}").split(","):
                key, _, raw = label.partition("=")
                if key == "shard":
                    shards.add(raw.strip('"'))
        elif name == LOOP_LAG_BUCKET:
            tags = _labels(labels)
            role = loop_lag.setdefault(tags.get("role", "?"), {})
            le = float(tags["le"])  # "+Inf" included
            role[le] = role.get(le, 0.0) + float(value)
        elif not labels:
            values[name] = float(value)

    def first(*names: str) -> float | None:
        return next((values[n] for n in names if n in values), None)

    return MetricsSample(
        wal_records=first("wallet_wal_records_total", "wallet_wal_records"),
        wal_group_commits=first("wallet_wal_group_commits_total", "wallet_wal_group_commits"),
        durable_lsn=first("wallet_wal_durable_lsn"),
        mailbox_depth=depth,
        shards=len(shards),
        loop_lag=loop_lag,
    )


async def scrape(client: Client) -> MetricsSample | None:
    try:
        response = await client.call("GET", "/metrics")
    except HttpError:
        return None
    if response.status != 200:
        return None
    return parse_metrics(response.body.decode(errors="replace"))


async def wait_quiet(client: Client, timeout_s: float = QUIET_TIMEOUT_S) -> bool:
    """Until the durable LSN stops moving and every mailbox is empty (twice in a row), so the
    conservation check reads a ledger at rest (a cross-shard transfer credits its receiver just
    after its commit record). False when that did not happen in time."""
    deadline = time.monotonic() + timeout_s
    previous: MetricsSample | None = None
    calm = 0
    while time.monotonic() < deadline:
        sample = await scrape(client)
        if sample is None:
            return False
        if sample.durable_lsn is None:
            # An HTTP worker of ``--workers N`` shows no ledger series on /metrics; its /ready
            # carries the durable LSN (the mailboxes are not visible from there).
            sample = replace(sample, durable_lsn=await _ready_lsn(client))
        if previous is not None and sample.durable_lsn == previous.durable_lsn and sample.mailbox_depth == 0:
            calm += 1
            if calm >= 2:
                return True
        else:
            calm = 0
        previous = sample
        await trio.sleep(0.2)
    return False


async def _ready_lsn(client: Client) -> float | None:
    try:
        response = await client.call("GET", "/ready")
        if response.status != 200:
            return None
        lsn = response.json().get("durable_lsn")
    except (HttpError, ValueError, AttributeError):
        return None
    return float(lsn) if isinstance(lsn, int) else None


# -- seeding and conservation -----------------------------------------------------------


def setup_client(url: str, token: str, *, connections: int = SETUP_CONNECTIONS,
                 catch_up_s: float = SETUP_RETRY_S) -> AsyncWalletClient:
    """The project's client for setup and checks, outside the measured window: its retries ride
    out a server that answers 503 while it catches up (``Retry-After`` honoured, up to
    ``catch_up_s`` in all), and its keys make a retried deposit move money once."""
    retry = RetryPolicy(attempts_max=10_000, total_s=catch_up_s, backoff_max_s=1.0, retry_after_max_s=catch_up_s)
    return AsyncWalletClient(url, token=token, retry=retry, timeout_s=60.0,
                             limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))


async def seed_http(url: str, token: str, asset: str, ids: list[str], deposit: int = DEPOSIT) -> None:
    """Creates the asset and the wallets and funds each through the API, with ``wallet_client``
    (idempotent: fixed deposit keys)."""
    async with setup_client(url, token) as client:
        try:
            await client.create_asset(asset, 2)
        except WalletClientError as error:
            raise SetupError(f"create asset {asset}: {error}") from None

        async def worker(start: int) -> None:
            for wallet_id in ids[start::SETUP_CONNECTIONS]:
                try:
                    await client.create_wallet("bench", asset, id=wallet_id)
                    await client.deposit(wallet_id, deposit, idempotency_key=f"bench-seed-{wallet_id}")
                except WalletClientError as error:
                    raise SetupError(f"wallet {wallet_id}: {error}") from None

        async with trio.open_nursery() as nursery:
            for start in range(SETUP_CONNECTIONS):
                nursery.start_soon(worker, start)


async def seed_ledger(ledger: Ledger, asset: str, ids: list[str], deposit: int = DEPOSIT) -> None:
    """The same, in process, through a running ``Ledger``."""
    decision = await ledger.create_asset(CreateAsset(code=asset, scale=2))
    if not isinstance(decision, list):
        raise SetupError(f"create asset {asset}: {decision}")
    chunk = 1000

    async def create(wallet_id: str) -> None:
        result = await ledger.create_wallet(
            CreateWallet(wallet_id=wallet_id, owner_id="bench", asset=asset, metadata=None, idempotency=None)
        )
        if not isinstance(result, list):
            raise SetupError(f"create wallet {wallet_id}: {result}")

    async def fund(wallet_id: str) -> None:
        command = Transfer(
            transaction_id=f"seed-{wallet_id}", type=TransactionType.DEPOSIT, from_wallet_id=None,
            to_wallet_id=wallet_id, amount=deposit, description=None, metadata=None, idempotency=None,
        )
        while True:
            try:
                result = await ledger.transfer(command)
                break
            except Overloaded:  # the history projector is behind: back off as a client would
                await trio.sleep(0.05)
        if not isinstance(result, Committed):
            raise SetupError(f"deposit to {wallet_id}: {result}")

    for step in (create, fund):
        for start in range(0, len(ids), chunk):
            async with trio.open_nursery() as nursery:
                for wallet_id in ids[start:start + chunk]:
                    nursery.start_soon(step, wallet_id)


def seed_data_dir(data_dir: Path, shards: int, asset: str, ids: list[str], deposit: int = DEPOSIT) -> None:
    """Seeds a fresh data directory in process, before ``wallet serve`` starts on it."""

    async def main() -> None:
        ledger = open_ledger(data_dir, shards=shards)
        async with trio.open_nursery() as nursery:
            await nursery.start(ledger.run)
            await seed_ledger(ledger, asset, ids, deposit)
            await ledger.stop()

    trio.run(main)


def verdict(*, balances: dict[str, int], treasury: int, deposited: int) -> dict[str, Any]:
    wallets_sum = sum(balances.values())
    conserved = wallets_sum + treasury == 0 and wallets_sum == deposited
    return {
        "checked": True, "conserved": conserved, "wallets": len(balances), "wallets_sum": wallets_sum,
        "treasury": treasury, "deposited": deposited,
        "negative_wallets": sum(1 for value in balances.values() if value < 0),
    }


async def conservation_http(url: str, token: str, asset: str, ids: list[str], deposit: int = DEPOSIT) -> dict[str, Any]:
    """Reads every benchmark wallet and the asset's treasury through the API (``wallet_client``):
    the wallet listing of the run's asset, 1000 a page (the ids come from the history read
    model, the balances from the live ledger), then ``GET /v1/wallets/{id}`` for any wallet the
    listing lacks (a read model still catching up) and for the treasury. After a heavy batch
    load the read model may answer ``503 history_lagging`` for a while: the client waits for it
    (``Retry-After``), as any client would, up to ``HISTORY_CATCH_UP_S``."""
    wanted = set(ids)
    balances: dict[str, int] = {}
    async with setup_client(url, token, connections=1, catch_up_s=HISTORY_CATCH_UP_S) as client:
        try:
            async for wallet in client.iter_wallets(asset=asset, limit=LIST_PAGE):
                if wallet.id in wanted:
                    balances[wallet.id] = wallet.balance
            for wallet_id in sorted(wanted - set(balances)):
                balances[wallet_id] = (await client.get_wallet(wallet_id)).balance
            treasury = (await client.get_wallet(treasury_id(asset))).balance
        except WalletClientError as error:
            raise SetupError(f"conservation check: {error}") from None
    return verdict(balances=balances, treasury=treasury, deposited=deposit * len(ids))


async def conservation_ledger(ledger: Ledger, asset: str, ids: list[str], deposit: int = DEPOSIT) -> dict[str, Any]:
    views = await ledger.wallets([*ids, treasury_id(asset)])
    balances = {view.id: view.balance for view in views[:-1]}
    return verdict(balances=balances, treasury=views[-1].balance, deposited=deposit * len(ids))
