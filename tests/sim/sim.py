"""A deterministic simulation of the ledger on a faulty disk (in the spirit of TigerBeetle's VOPR).

One seed drives everything: the workload (every command type, retries with idempotency keys,
bad ids, edge amounts), the interleaving (which shard drains how much, when the log commits),
the clock, snapshots with log compaction, and the faults:

- torn last write: after a crash, a random prefix of the bytes written since the last fsync
  survives;
- lost unsynced suffix: everything after the last fsync is gone;
- bit flips in the unsynced bytes that survive;
- fsync errors and a full disk (ENOSPC) on write: the log must fail, never acknowledge, and
  the server must refuse writes until restart.

No trio task runs: the actors' steps (``Shard.drain``) and the group commit
(``WriteAheadLog.commit_pending``) are called directly in an order the seed chooses, so a run
is exactly reproducible (``SIM_SEED=n make sim``). After every crash the real recovery
(``ledger.recover``) rebuilds the ledger, and the oracle checks:

1. every acknowledged command is in the log, at the LSN it was acknowledged with (a batch item
   inside the batch record at that LSN);
2. no transaction id and no idempotency key appears twice in the log, and the transfers of an
   atomic batch are all in one record, alone, or nowhere;
3. the recovered state (snapshot + suffix) equals a fresh replay of the whole log from LSN 1
   (compacted segments are archived so the whole log stays readable), and the invariants hold;
4. if recovery refuses a damaged log, the damage lies in bytes that were never fsynced, and
   cutting the log there (what ``wallet wal repair --truncate-at-lsn`` does) loses nothing
   that was acknowledged;
6. wallet limits hold in the log: right after every debit a wallet asked for (a transfer, a
   hold, a withdrawal), its spending in the record's UTC day and month is within the spend
   limits in force and its available within its overdraft limit; the recovered limits and
   spending equal the replay's for every wallet;
5. balance alerts fire once per crossing through every crash: a reference model walks the
   whole log (balances and holds by plain arithmetic, each alert's condition before each change
   of its wallet) and the firings in the log, plus those recovery found owed (a crash cut the
   firing record off after the change's), are exactly the crossings, none twice;
6. refunds never sum past what they refund: walking the whole log, each refund names a posted
   deposit or transfer (a captured hold counts with its captured amount) that is in the log
   before it, carries its posted amount, and the refunds of one transaction add up to at most
   that (the workload refunds acknowledged transactions, some of them over and over).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import (
    AMOUNT_MAX,
    IDEMPOTENCY_RETENTION_US,
    AdvanceWithdrawal,
    AlertCreated,
    AlertDeleted,
    AlertDirection,
    AlertField,
    AlertsTriggered,
    BatchReply,
    ChangeWalletStatus,
    Clock,
    Committed,
    CompleteWithdrawal,
    CreateAlert,
    CreateAsset,
    CreateToken,
    CreateWallet,
    DeleteAlert,
    Duplicate,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    Ledger,
    Overloaded,
    PayoutStep,
    Refund,
    Refunded,
    Rejection,
    RequestsRefused,
    RequestWithdrawal,
    ResolveHold,
    TransactionStatus,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    UpdateWallet,
    WalletCreated,
    WalletStatus,
    build_snapshot,
    counts_as_spend,
    decode_event,
    digest_state,
    new_state,
    recover,
    remove_covered,
    shard_of,
    treasury_id,
)
from ledger import apply as apply_event
from wal import (
    SEGMENT_HEADER_BYTES,
    LogCorrupt,
    ScanResult,
    StorageFailed,
    apply_repair,
    plan_repair,
    scan,
)

# The id field a retried command gets anew (the server would make a new one), and its prefix.
_NEW_ID_ON_RETRY = ((Transfer, "transaction_id", "tx"), (RequestWithdrawal, "withdrawal_id", "wd"),
                    (CreateAlert, "alert_id", "al"))


class SimulationFailed(AssertionError):
    pass


@dataclass
class Faults:
    crash: float = 0.01
    torn: float = 0.5
    flip: float = 0.3
    sync_error: float = 0.002
    disk_full: float = 0.002
    partial_write: float = 0.05


class Storage:
    """Wraps the WAL's write and sync: remembers how much of each file is durable, injects
    errors, and at a crash throws away (or tears, or flips bits in) what was not synced."""

    def __init__(self, rng: random.Random, faults: Faults) -> None:
        self.rng = rng
        self.faults = faults
        self.durable: dict[int, int] = {}  # inode -> bytes known durable

    def adopt(self, wal_dir: Path) -> None:
        """After recovery, everything on disk is durable (it survived)."""
        self.durable = {}
        for path in wal_dir.glob("*.wal"):
            self.durable[path.stat().st_ino] = path.stat().st_size

    def write(self, fd: int, data: memoryview) -> int:
        if self.rng.random() < self.faults.disk_full:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        if len(data) > 1 and self.rng.random() < self.faults.partial_write:
            data = data[: self.rng.randint(1, len(data) - 1)]
        return os.write(fd, data)

    def sync(self, fd: int) -> None:
        if self.rng.random() < self.faults.sync_error:
            raise OSError(errno.EIO, "Input/output error (simulated fsync failure)")
        os.fdatasync(fd)
        info = os.fstat(fd)
        self.durable[info.st_ino] = info.st_size

    def crash(self, wal_dir: Path) -> list[tuple[Path, int]]:
        """Returns (segment, durable size) for each segment, after mangling what was not."""
        kept = []
        for path in sorted(wal_dir.glob("*.wal")):
            data = path.read_bytes()
            durable = self.durable.get(path.stat().st_ino, SEGMENT_HEADER_BYTES)
            lost = bytearray(data[durable:])
            survived = b""
            if lost and self.rng.random() < self.faults.torn:
                survived_bytes = lost[: self.rng.randint(0, len(lost))]
                if survived_bytes and self.rng.random() < self.faults.flip:
                    bit = self.rng.randrange(len(survived_bytes) * 8)
                    survived_bytes[bit // 8] ^= 1 << (bit % 8)
                survived = bytes(survived_bytes)
            path.write_bytes(data[:durable] + survived)
            kept.append((path, durable))
        return kept


@dataclass
class Ack:
    lsn: int
    transaction_id: str | None  # None for a wallet creation
    key: tuple[str, str] | None


@dataclass
class Batch:
    """A batch of transfers as a client sends it (``Ledger.transfer_batch``)."""

    commands: list[Transfer]
    atomic: bool


def transfers_of(event: Any) -> tuple[Transferred | Refunded, ...]:
    """The posted transfers a record makes (a refund is one: from its original's receiver)."""
    if isinstance(event, Transferred | Refunded):
        return (event,)
    if isinstance(event, TransfersPosted):
        return event.transfers
    return ()


@dataclass
class Pending:
    reply: Any
    command: Any
    retry: bool = False
    arrived: float = 0.0  # cluster mode: when the owner got it (``cluster_sim``, ``Replica.confirmed``)


@dataclass
class Stats:
    steps: int = 0
    crashes: int = 0
    refused_and_repaired: int = 0
    storage_failures: int = 0
    snapshots: int = 0
    acknowledged: int = 0
    rejected: int = 0
    overloaded: int = 0
    records: int = 0
    batches: int = 0
    atomic_failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # records in the whole log, by kind
    firings: int = 0  # alert firings in the whole log at the last check
    owed_firings: int = 0  # firings recovery found owed and recorded before serving
    limited_debits: int = 0  # debits of wallets with limits checked against them (oracle 6)


EDGE_AMOUNTS = [1, 2, 3, 7, 255, 256, 1000, 2**31, 2**32 + 1, AMOUNT_MAX - 1, AMOUNT_MAX]
THRESHOLDS = [0, 1, 100, 1000, 2500, 5000, 10_000, 2**31, -1, -5000, -(2**31), AMOUNT_MAX - 1]


class AlertOracle:
    """The crossing rule by hand over a whole log: which firings it must hold."""

    def __init__(self) -> None:
        self.balance: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.alerts: dict[str, tuple[str, AlertField, AlertDirection, int]] = {}
        self.was: dict[str, bool] = {}
        self.expected: Counter[tuple[str, int, str]] = Counter()
        self.recorded: Counter[tuple[str, int, str]] = Counter()
        self.mismatches: list[str] = []

    def condition(self, alert_id: str) -> bool:
        wallet_id, field, direction, threshold = self.alerts[alert_id]
        value = self.value(wallet_id, field)
        return value < threshold if direction == AlertDirection.BELOW else value > threshold

    def value(self, wallet_id: str, field: AlertField) -> int:
        balance = self.balance.get(wallet_id, 0)
        return balance if field == AlertField.BALANCE else balance - self.held.get(wallet_id, 0)

    def change(self, wallet_id: str, transaction_id: str, balance: int = 0, held: int = 0) -> None:
        self.balance[wallet_id] = self.balance.get(wallet_id, 0) + balance
        self.held[wallet_id] = self.held.get(wallet_id, 0) + held
        for alert_id, (owner, watched, _, _) in self.alerts.items():
            if owner == wallet_id:
                now = self.condition(alert_id)
                if now and not self.was[alert_id]:
                    self.expected[(alert_id, self.value(wallet_id, watched), transaction_id)] += 1
                self.was[alert_id] = now

    def see(self, event: Any) -> None:
        for transfer in transfers_of(event):
            self.change(transfer.from_wallet_id, transfer.transaction_id, balance=-transfer.amount)
            self.change(transfer.to_wallet_id, transfer.transaction_id, balance=transfer.amount)
        if isinstance(event, HoldCreated):
            self.change(event.from_wallet_id, event.transaction_id, held=event.amount)
        elif isinstance(event, HoldCaptured):
            self.change(event.from_wallet_id, event.transaction_id, balance=-event.amount, held=-event.held_amount)
            self.change(event.to_wallet_id, event.transaction_id, balance=event.amount)
        elif isinstance(event, HoldVoided):
            self.change(event.from_wallet_id, event.transaction_id, held=-event.amount)
        elif isinstance(event, AlertCreated):
            self.alerts[event.alert_id] = (event.wallet_id, event.field, event.direction, event.threshold)
            self.was[event.alert_id] = self.condition(event.alert_id)
            if self.was[event.alert_id] != event.triggered:
                self.mismatches.append(f"alert {event.alert_id} created triggered={event.triggered}")
        elif isinstance(event, AlertDeleted):
            del self.alerts[event.alert_id]
            del self.was[event.alert_id]
        elif isinstance(event, AlertsTriggered):
            for firing in event.firings:
                self.recorded[(firing.alert_id, firing.value, firing.transaction_id)] += 1


class Simulation:
    def __init__(self, seed: int, *, steps: int, faults: Faults | None = None, shards: int | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.faults = faults or Faults()
        self.shards = shards or self.rng.choice([1, 2, 3, 4])
        self.storage = Storage(self.rng, self.faults)
        self.root = Path(tempfile.mkdtemp(prefix=f"sim-{seed}-"))
        self.data = self.root / "data"
        self.now_ns = 1_790_000_000 * 10**9
        self.acks: dict[tuple[int, str | None], Ack] = {}  # by LSN and transaction id
        self.atomic_batches: list[set[str]] = []  # the transaction ids of every atomic batch sent
        self.first_ack_by_key: dict[tuple[str, str], str] = {}
        self.pending: list[Pending] = []
        self.unanswered: list[Any] = []  # commands whose reply was lost in a crash
        self.stats = Stats()
        self.wallets = [f"w{index}" for index in range(12)]
        self.assets = ["USD", "EUR"]
        self.counter = 0
        # Acknowledged posted transactions (id -> type, sender, receiver, posted amount): what the
        # refund route reads from the history read model.
        self.posted: dict[str, tuple[TransactionType, str, str, int]] = {}
        self.refund_rng = random.Random(seed * 7919 + 15)
        self.refunds = 0
        self.ledger: Ledger | None = None
        self.recovered: Any = None

    # -- lifecycle ---------------------------------------------------------------------------

    def fail(self, message: str) -> SimulationFailed:
        return SimulationFailed(f"seed {self.seed}: {message} (replay with SIM_SEED={self.seed} make sim)")

    def start(self) -> None:
        try:
            self.recovered = recover(self.data)
        except LogCorrupt as error:
            self.repair_after_refusal(error)
            self.recovered = recover(self.data)
        ledger = self.new_ledger(self.recovered, self.data)
        ledger.wal._sync = self.storage.sync
        ledger.wal._write = self.storage.write
        self.ledger = ledger
        self.storage.adopt(self.data / "wal")
        self.serve()

    def new_ledger(self, recovered: Any, data_dir: Path, **options: Any) -> Ledger:
        """The ledger over what recovery found, with the seed's segment size and mailboxes."""
        ledger = Ledger(recovered, data_dir, shards=self.shards,
                        clock=Clock(lambda: self.now_ns, start_us=recovered.state.directory.at_us),
                        segment_bytes_max=self.rng.choice([2048, 8192, 1 << 20]),
                        mailbox_capacity=self.rng.choice([4, 64, 8192]), **options)
        ledger.wal._on_durable = None  # the history projector is not part of the simulation
        return ledger

    def serve(self) -> None:
        """The oracle over the recovered ledger, then what the server does before serving:
        record the firings a crash cut off the log."""
        assert self.ledger is not None
        self.check_recovered()
        self.stats.owed_firings += sum(len(shard.state.crossings) for shard in self.ledger.shards)
        self.ledger.fire_owed_alerts()

    def stop_process(self) -> None:
        if self.recovered is not None:
            self.recovered.close()
            self.recovered = None
        if self.ledger is not None:
            self.ledger.wal.release()
            self.ledger = None

    def crash(self) -> None:
        self.stats.crashes += 1
        assert self.ledger is not None
        # Replies not yet durable are lost with the process; their clients retry later.
        self.unanswered.extend(p.command for p in self.pending if p.reply.error is None and not p.reply._done.is_set())
        self.pending = []
        self.stop_process()
        self.storage.crash(self.data / "wal")
        self.start()

    def repair_after_refusal(self, error: LogCorrupt) -> None:
        """Recovery refused: the damage must be in bytes that were never acknowledged."""
        acknowledged_max = max((lsn for lsn, _ in self.acks), default=0)
        if error.lsn <= acknowledged_max:
            raise self.fail(f"recovery refused at LSN {error.lsn} but LSN {acknowledged_max} was acknowledged: {error}")
        plan = plan_repair(self.data / "wal", truncate_at_lsn=error.lsn)
        aside = apply_repair(self.data / "wal", plan)
        if aside is not None:
            shutil.rmtree(aside)
        self.stats.refused_and_repaired += 1

    # -- the oracle ------------------------------------------------------------------------

    def whole_log(self) -> list[tuple[int, Any, bytes]]:
        """Every record from LSN 1: archived segments plus the live ones."""
        merged = self.root / "merged"
        shutil.rmtree(merged, ignore_errors=True)
        merged.mkdir()
        for folder in (self.data / "archive", self.data / "wal"):
            for path in folder.glob("*.wal") if folder.exists() else []:
                shutil.copy(path, merged / path.name)
        result = ScanResult()
        return [(frame.lsn, decode_event(frame.payload), frame.checksum) for frame in scan(merged, result)]

    def check_recovered(self) -> None:
        assert self.ledger is not None
        records = self.whole_log()
        self.stats.records = len(records)
        by_lsn = {lsn: event for lsn, event, _ in records}
        self.check_acks(by_lsn, "after recovery")
        seen_ids: dict[str, int] = {}
        seen_keys: dict[tuple[str, str], int] = {}
        fresh = new_state()
        oracle = AlertOracle()
        resolved: set[str] = set()
        kinds: dict[str, int] = {}
        posted_amounts: dict[str, int] = {}  # refundable transactions in the log: their posted amount
        refunded: Counter[str] = Counter()
        for lsn, event, _ in records:
            kind = type(event).__name__
            if isinstance(event, HoldVoided):
                kind += "." + event.reason.label
            kinds[kind] = kinds.get(kind, 0) + 1
            created = [*transfers_of(event), *((event,) if isinstance(event, HoldCreated) else ())]
            for transfer in created:
                if transfer.transaction_id in seen_ids:
                    raise self.fail(f"transaction {transfer.transaction_id} appears twice")
                seen_ids[transfer.transaction_id] = lsn
            if isinstance(event, HoldCaptured | HoldVoided):
                if event.transaction_id in resolved or event.transaction_id not in seen_ids:
                    raise self.fail(f"hold {event.transaction_id} resolved twice or never created")
                resolved.add(event.transaction_id)
            # Final outcomes: a refused key counts as used, like an executed one, so a refusal
            # recorded under a key never posts later (nor is refused again) within retention.
            used = ([(idempotency, event.at_us) for idempotency, _ in event.refusals]
                    if isinstance(event, RequestsRefused)
                    else [(getattr(item, "idempotency", None), item.at_us) for item in transfers_of(event) or (event,)])
            for idempotency, at_us in used:
                if idempotency is not None:
                    key = (idempotency.scope, idempotency.key)
                    previous = seen_keys.get(key)
                    # A key may execute again only once its record expired (24 h of simulated time).
                    if previous is not None and at_us - previous < IDEMPOTENCY_RETENTION_US:
                        raise self.fail(f"idempotency key {key} executed or refused twice within its retention")
                    seen_keys[key] = at_us
            for item in transfers_of(event):
                if isinstance(item, Refunded):
                    if posted_amounts.get(item.refund_of) != item.original_amount:
                        raise self.fail(f"refund {item.transaction_id} of {item.refund_of}: no posted transaction "
                                        f"of {item.original_amount} before it")
                    refunded[item.refund_of] += item.amount
                    if refunded[item.refund_of] > item.original_amount:
                        raise self.fail(f"{item.refund_of} refunded {refunded[item.refund_of]} of {item.original_amount}")
                elif item.type in (TransactionType.DEPOSIT, TransactionType.TRANSFER):
                    posted_amounts[item.transaction_id] = item.amount
            if isinstance(event, HoldCaptured) and event.type == TransactionType.TRANSFER:
                posted_amounts[event.transaction_id] = event.amount
            apply_event(fresh, event, lsn)
            oracle.see(event)
            self.check_limits(fresh, event)
        self.stats.kinds = kinds
        owed = Counter((f.alert_id, f.value, f.transaction_id) for shard in self.ledger.shards for f in shard.state.crossings)
        if oracle.mismatches:
            raise self.fail(oracle.mismatches[0])
        if oracle.recorded + owed != oracle.expected or max(oracle.recorded.values(), default=1) > 1:
            missing = oracle.expected - oracle.recorded - owed
            extra = oracle.recorded + owed - oracle.expected
            raise self.fail(f"alert firings differ from the crossings: missing {dict(missing)}, extra {dict(extra)}")
        self.stats.firings = sum(oracle.recorded.values())
        live = {alert.id: alert.triggered for alert in self.ledger.all_alerts()}
        if live != oracle.was:
            raise self.fail(f"alert states differ from the crossing rule: {live} != {oracle.was}")
        for batch in self.atomic_batches:
            places = {seen_ids[transaction_id] for transaction_id in batch if transaction_id in seen_ids}
            if len(places) > 1:
                raise self.fail(f"an atomic batch is spread over records {sorted(places)}")
            for lsn in places:
                alone = {t.transaction_id for t in transfers_of(by_lsn[lsn])}
                if not alone <= batch:
                    raise self.fail(f"the record at LSN {lsn} mixes an atomic batch with other transfers")
        self.ledger.check_invariants()
        for wallet in self.ledger.all_wallets():
            twin = fresh.wallets[wallet.id]
            if (wallet.limits, wallet.window, wallet.spent_day, wallet.spent_month) != (
                    twin.limits, twin.window, twin.spent_day, twin.spent_month):
                raise self.fail(f"recovered limits or spending of {wallet.id} differ from a fresh replay")
        if digest_state(fresh) != self.ledger.digest():
            raise self.fail("recovered state differs from a fresh replay of the whole log")

    def check_acks(self, by_lsn: dict[int, Any], where: str) -> None:
        """Oracle 1: every acknowledged command is in the log at the LSN it was acknowledged with."""
        for (lsn, transaction_id), _ack in self.acks.items():
            event = by_lsn.get(lsn)
            if event is None:
                raise self.fail(f"acknowledged LSN {lsn} is missing {where}")
            if transaction_id is not None and transaction_id not in {t.transaction_id for t in transfers_of(event)} | (
                {event.transaction_id} if isinstance(event, HoldCreated | HoldCaptured | HoldVoided) else set()
            ):
                raise self.fail(f"LSN {lsn} holds {event!r}, acknowledged as {transaction_id}")

    def check_limits(self, state: Any, event: Any) -> None:
        """Oracle 6 for one applied record: every counted debit in it left its wallet within
        the limits in force (a batch's items are checked after the whole record, which is
        stricter: the spending only grows within a record)."""
        debits = [t for t in transfers_of(event) if counts_as_spend(t.type)]
        if isinstance(event, HoldCreated):
            debits.append(event)
        for debit in debits:
            wallet = state.wallets[debit.from_wallet_id]
            limits = wallet.limits
            if limits is None:
                continue
            self.stats.limited_debits += 1
            daily, monthly = wallet.spent_at(debit.at_us)
            if (limits.daily is not None and daily > limits.daily) or (
                    limits.monthly is not None and monthly > limits.monthly):
                raise self.fail(f"{wallet.id} spent {daily}/{monthly} over its limits {limits}")
            if wallet.available < -limits.overdraft:
                raise self.fail(f"{wallet.id} has {wallet.available} available past its overdraft {limits}")

    # -- the workload ----------------------------------------------------------------------

    def amount(self) -> int:
        if self.rng.random() < 0.2:
            return self.rng.choice(EDGE_AMOUNTS)
        return self.rng.randint(1, 5000)

    def key(self) -> Idempotency:
        self.counter += 1
        scope = self.rng.choice(["admin", "owner:o1", "owner:o2"])
        key = f"k{self.rng.randint(0, self.counter)}" if self.rng.random() < 0.1 else f"k{self.counter}"
        return Idempotency(scope=scope, key=key, fingerprint=self.rng.choice([b"a", b"b"]) + key.encode())

    def transfer(self) -> Transfer:
        self.counter += 1
        return Transfer(
            transaction_id=f"tx{self.counter}", type=TransactionType.TRANSFER,
            from_wallet_id=self.rng.choice(self.wallets), to_wallet_id=self.rng.choice(self.wallets),
            amount=self.amount(), description=None, metadata=None, idempotency=self.key(),
            owner_id=None if self.rng.random() < 0.7 else self.rng.choice(["o1", "o2"]),
        )

    def batch(self) -> Batch:
        commands: list[Transfer] = []
        keys: set[tuple[str, str]] = set()
        for _ in range(self.rng.choice([1, 2, 3, 5, 8, 20])):
            command = self.transfer()
            assert command.idempotency is not None
            key = (command.idempotency.scope, command.idempotency.key)
            if key not in keys:  # every item of a batch has its own key
                keys.add(key)
                commands.append(command)
        return Batch(commands=commands, atomic=self.rng.random() < 0.5)

    def alert_command(self) -> Any:
        """Balance alerts on the wallets and the treasuries (whose balance is negative)."""
        assert self.ledger is not None
        known = self.ledger.directory.alert_wallets
        self.counter += 1
        if known and self.rng.random() < 0.2:
            return DeleteAlert(alert_id=self.rng.choice(sorted(known)), owner_id=None)
        wallets = self.wallets + [treasury_id(asset) for asset in self.assets]
        return CreateAlert(
            alert_id=f"al{self.counter}", wallet_id=self.rng.choice(wallets),
            field=self.rng.choice(list(AlertField)), direction=self.rng.choice(list(AlertDirection)),
            threshold=self.rng.choice(THRESHOLDS), owner_id=None if self.rng.random() < 0.8 else "o1",
        )

    def command(self) -> Any:
        if self.rng.random() < 0.08:
            return self.batch()
        if self.rng.random() < 0.04:
            return self.alert_command()
        roll = self.rng.random()
        wallet = self.rng.choice(self.wallets)
        if roll < 0.05:
            return CreateAsset(code=self.rng.choice(self.assets), scale=self.rng.choice([2, 2, 3]))
        if roll < 0.15:
            return CreateWallet(wallet_id=wallet, owner_id=self.rng.choice(["o1", "o2"]),
                                asset=self.rng.choice(self.assets), metadata=None,
                                idempotency=self.key() if self.rng.random() < 0.3 else None)
        if roll < 0.17:
            return UpdateWallet(
                wallet_id=wallet, overdraft_limit=self.rng.choice([None, 0, 500, 5000]),
                daily_limit=self.rng.choice([None, None, 0, 2000, 10_000]),
                monthly_limit=self.rng.choice([None, None, 0, 5000, 50_000]),
            )
        if roll < 0.20:
            status = self.rng.choice([WalletStatus.FROZEN, WalletStatus.ACTIVE, WalletStatus.ACTIVE, WalletStatus.CLOSED])
            return ChangeWalletStatus(wallet_id=wallet, status=status)
        if roll < 0.22:
            self.counter += 1
            return CreateToken(token_hash=self.rng.randbytes(32), prefix=f"p{self.counter}", owner_id="o1")
        if roll < 0.30:
            return self.hold_command()
        self.counter += 1
        deposit = roll < 0.4
        return Transfer(
            transaction_id=f"tx{self.counter}",
            type=TransactionType.DEPOSIT if deposit else TransactionType.TRANSFER,
            from_wallet_id=None if deposit else self.rng.choice(self.wallets),
            to_wallet_id=wallet, amount=self.amount(), description=None, metadata=None,
            idempotency=self.key(), owner_id=None if deposit or self.rng.random() < 0.7 else self.rng.choice(["o1", "o2"]),
        )

    def hold_command(self) -> Any:
        """Holds, their resolution and the payout steps of withdrawals (no bank: the steps
        are what the payout workers would send, in any order the seed picks)."""
        assert self.ledger is not None
        directory = self.ledger.directory
        roll = self.rng.random()
        self.counter += 1
        if roll < 0.35:
            return Transfer(
                transaction_id=f"h{self.counter}", type=TransactionType.TRANSFER,
                from_wallet_id=self.rng.choice(self.wallets), to_wallet_id=self.rng.choice(self.wallets),
                amount=self.amount(), description=None, metadata=None, idempotency=self.key(),
                hold_timeout_s=self.rng.choice([1, 2, 3600]),
            )
        if roll < 0.55 and directory.hold_routes:
            transaction_id = self.rng.choice(sorted(directory.hold_routes))
            source, target, held = directory.hold_routes[transaction_id]
            return ResolveHold(
                transaction_id=transaction_id, capture=self.rng.random() < 0.6,
                amount=self.rng.choice([None, self.rng.randint(1, held)]), from_wallet_id=source,
                to_wallet_id=target, owner_id=None, idempotency=self.key(),
            )
        if roll < 0.70:
            return RequestWithdrawal(
                withdrawal_id=f"wd{self.counter}", wallet_id=self.rng.choice(self.wallets), amount=self.amount(),
                destination={"n": self.counter}, owner_id=None, idempotency=self.key(),
            )
        if directory.withdrawal_wallets:
            withdrawal_id = self.rng.choice(sorted(directory.withdrawal_wallets))
            route = directory.hold_routes.get(withdrawal_id)
            if route is not None and self.rng.random() < 0.3:
                return CompleteWithdrawal(
                    withdrawal_id=withdrawal_id, wallet_id=route[0], asset=route[1].removeprefix("treasury:"),
                    amount=route[2], reference=f"r{self.counter}",
                )
            return AdvanceWithdrawal(withdrawal_id=withdrawal_id, step=self.rng.choice(list(PayoutStep)),
                                     detail="sim", retry_at_us=self.now_ns // 1000)
        return ChangeWalletStatus(wallet_id=self.rng.choice(self.wallets), status=WalletStatus.ACTIVE)

    def refund_command(self) -> Refund:
        """A refund of an acknowledged transaction (all of what is left, part, or too much), by
        the admin or an owner; some originals are refunds themselves (not refundable). Drawn
        from a random stream of its own, so the rest of the workload (and the faults each CI
        seed reaches) is what it was before refunds joined."""
        rng = self.refund_rng
        self.refunds += 1
        refund_of = rng.choice(sorted(self.posted))
        type_, source, target, amount = self.posted[refund_of]
        key = f"rk{rng.randint(1, self.refunds)}" if rng.random() < 0.1 else f"rk{self.refunds}"
        return Refund(
            transaction_id=f"rf{self.refunds}", refund_of=refund_of, from_wallet_id=target, to_wallet_id=source,
            amount=rng.choice([None, 1, rng.randint(1, amount), amount, amount + 1]),
            original_type=type_, original_status=TransactionStatus.POSTED, original_amount=amount,
            description=None, metadata=None,
            idempotency=Idempotency(scope=rng.choice(["admin", "owner:o1"]), key=key,
                                    fingerprint=rng.choice([b"a", b"b"]) + key.encode()),
            owner_id=None if rng.random() < 0.8 else rng.choice(["o1", "o2"]),
        )

    def submit(self, command: Any) -> None:
        assert self.ledger is not None
        ledger = self.ledger
        shards = len(ledger.shards)
        try:
            if isinstance(command, Batch):
                self.stats.batches += 1
                if command.atomic:
                    # No shard is in the middle of a step between two simulation steps: exactly
                    # what the pause gives the lead shard in the real server.
                    ledger.wal.check_writable()
                    reply = ledger.commit_atomic_now(command.commands)
                    self.atomic_batches.append({c.transaction_id for c in command.commands})
                else:
                    reply = ledger.submit_batch(command.commands)
            elif isinstance(command, Transfer | Refund):
                reply = ledger.shards[shard_of(command.to_wallet_id, len(ledger.shards))].submit_transfer(command)
            elif isinstance(command, ResolveHold):
                route = ledger.directory.hold_routes.get(command.transaction_id)
                if route is None:
                    self.stats.rejected += 1  # resolved meanwhile: the router answers, no actor
                    return
                if command.capture:
                    reply = ledger.shards[shard_of(command.to_wallet_id, shards)].submit_transfer(
                        command, route_amount=route[2]
                    )
                else:
                    reply = ledger.shards[shard_of(command.from_wallet_id, shards)].submit_command(command)
            elif isinstance(command, CompleteWithdrawal):
                reply = ledger.shards[shard_of(treasury_id(command.asset), shards)].submit_transfer(command)
            elif isinstance(command, RequestWithdrawal):
                reply = ledger.shards[shard_of(command.wallet_id, shards)].submit_command(command)
            elif isinstance(command, AdvanceWithdrawal):
                wallet_id = ledger.directory.withdrawal_wallets[command.withdrawal_id]
                reply = ledger.shards[shard_of(wallet_id, shards)].submit_command(command)
            elif isinstance(command, CreateAlert):
                reply = ledger.shards[shard_of(command.wallet_id, shards)].submit_command(command)
            elif isinstance(command, DeleteAlert):
                wallet_id = ledger.directory.alert_wallets.get(command.alert_id)
                if wallet_id is None:
                    self.stats.rejected += 1  # deleted meanwhile: the router answers, no actor
                    return
                reply = ledger.shards[shard_of(wallet_id, shards)].submit_command(command)
            elif isinstance(command, CreateWallet | ChangeWalletStatus | UpdateWallet):
                reply = ledger.shards[shard_of(command.wallet_id, len(ledger.shards))].submit_command(command)
            elif isinstance(command, CreateAsset):
                reply = ledger.shards[shard_of("treasury:" + command.code, len(ledger.shards))].submit_command(command)
            else:
                reply = ledger.shards[0].submit_command(command)
        except Overloaded:
            self.stats.overloaded += 1
            self.unanswered.append(command)
            return
        except StorageFailed:
            self.unanswered.append(command)
            return
        self.pending.append(Pending(reply=reply, command=command))

    def settle(self) -> None:
        """Collects every reply that is now answered."""
        still = []
        for item in self.pending:
            reply = item.reply
            if not reply._done.is_set():
                still.append(item)
                continue
            if reply.error is not None:
                self.unanswered.append(item.command)  # never acknowledged
                continue
            if isinstance(reply, BatchReply):
                self.settle_batch(item.command, reply)
                continue
            value = reply.value
            idem = getattr(item.command, "idempotency", None)
            if isinstance(value, Committed):
                self.record_ack(value.lsn, value.event.transaction_id, idem)
                self.note_posted(value.event)
            elif isinstance(value, Duplicate):
                event = value.record.event
                expected = self.first_ack_by_key.get((idem.scope, idem.key)) if idem else None
                transaction = (event.transaction_id if isinstance(
                    event, Transferred | HoldCreated | HoldCaptured | HoldVoided | Refunded) else None)
                if expected is not None and transaction is not None and expected != transaction:
                    raise self.fail(f"key {idem} replayed {transaction}, first answered {expected}")
                self.stats.acknowledged += 1
            elif isinstance(value, list):
                for event in value:
                    if isinstance(event, WalletCreated):
                        self.record_ack(reply.lsn, None, idem)
                    else:
                        self.record_ack(reply.lsn, None, None)
            else:
                assert isinstance(value, Rejection)
                self.stats.rejected += 1
                self.stats.reasons[value.reason.code] = self.stats.reasons.get(value.reason.code, 0) + 1
        self.pending = still

    def settle_batch(self, batch: Batch, reply: BatchReply) -> None:
        if reply.failed is not None:
            assert batch.atomic
            self.stats.atomic_failed += 1
            self.stats.rejected += 1
            return
        lsns = set()
        for command, value in zip(batch.commands, reply.results, strict=True):
            idem = command.idempotency
            assert idem is not None
            if isinstance(value, Committed):
                assert value.event.transaction_id == command.transaction_id
                self.record_ack(value.lsn, value.event.transaction_id, idem)
                self.note_posted(value.event)
                lsns.add(value.lsn)
            elif isinstance(value, Duplicate):
                event = value.record.event
                expected = self.first_ack_by_key.get((idem.scope, idem.key))
                transaction = event.transaction_id if isinstance(event, Transferred) else None
                if expected is not None and transaction is not None and expected != transaction:
                    raise self.fail(f"key {idem} replayed {transaction}, first answered {expected}")
                self.stats.acknowledged += 1
            else:
                assert isinstance(value, Rejection)
                if batch.atomic:
                    raise self.fail(f"an atomic batch was answered with a rejected item: {value}")
                self.stats.rejected += 1
                self.stats.reasons[value.reason.code] = self.stats.reasons.get(value.reason.code, 0) + 1
        if batch.atomic and len(lsns) > 1:
            raise self.fail(f"an atomic batch was committed at LSNs {sorted(lsns)}")

    def note_posted(self, event: Any) -> None:
        """Remembers an acknowledged posted transaction (what the read model would show)."""
        if isinstance(event, Transferred | Refunded) or (
            isinstance(event, HoldCaptured) and event.type == TransactionType.TRANSFER
        ):
            self.posted[event.transaction_id] = (event.type, event.from_wallet_id, event.to_wallet_id, event.amount)

    def record_ack(self, lsn: int, transaction_id: str | None, idem: Idempotency | None) -> None:
        self.stats.acknowledged += 1
        key = (idem.scope, idem.key) if idem is not None else None
        if key is not None and transaction_id is not None:
            self.first_ack_by_key.setdefault(key, transaction_id)
        self.acks[(lsn, transaction_id)] = Ack(lsn=lsn, transaction_id=transaction_id, key=key)

    def snapshot(self) -> None:
        assert self.ledger is not None
        durable = self.ledger.wal.durable_lsn
        if durable and build_snapshot(self.data, until_lsn=durable, created_at_us=self.now_ns // 1000):
            self.stats.snapshots += 1
            remove_covered(self.data, history_lsn=durable, archive=True)

    def step(self) -> None:
        assert self.ledger is not None
        ledger = self.ledger
        self.act(ledger, self.rng.random())
        self.now_ns += self.rng.randint(0, 10**6)
        self.settle()
        if ledger.wal.failed is not None and self.rng.random() < 0.2:
            self.crash()  # an operator restarts a server that stopped accepting writes
        elif self.rng.random() < self.faults.crash:
            self.crash()

    def act(self, ledger: Ledger, roll: float) -> None:
        """One step of the clients and the server, chosen by ``roll``: commands, a client's
        retry, a shard's drain, a group commit, the clock, a snapshot, the hold timer."""
        if roll < 0.45:
            for _ in range(self.rng.randint(1, 8)):
                self.submit(self.command())
            if self.posted and self.refund_rng.random() < 0.3:
                self.submit(self.refund_command())
        elif roll < 0.50 and self.unanswered:
            self.retry()
        elif roll < 0.75:
            ledger.shards[self.rng.randrange(len(ledger.shards))].drain(self.rng.choice([1, 3, 100]))
        elif roll < 0.93:
            before = ledger.wal.failed
            ledger.wal.commit_pending()
            if before is None and ledger.wal.failed is not None:
                self.stats.storage_failures += 1
        elif roll < 0.95:
            # 25 h and 31 days: spend windows roll over (day and month).
            self.now_ns += self.rng.choice([10**6, 10**9, 25 * 3600 * 10**9, 31 * 24 * 3600 * 10**9])
        elif roll < 0.96:
            self.snapshot()
        elif roll < 0.97:
            # The ledger's hold timer: wake the shards whose earliest deadline passed.
            now_us = ledger.clock()
            for shard in ledger.shards:
                deadline = shard.next_deadline_us()
                if deadline is not None and deadline <= now_us:
                    shard.tick()

    def retry(self) -> None:
        """A client retry of a command never answered: the same body and key; the server makes
        a new transaction id."""
        command = self.unanswered.pop(self.rng.randrange(len(self.unanswered)))
        renamed_id = next(((name, prefix) for kind, name, prefix in _NEW_ID_ON_RETRY if isinstance(command, kind)),
                          None)
        if isinstance(command, Refund):
            self.refunds += 1
            command = dataclasses.replace(command, transaction_id=f"rf{self.refunds}")
        elif renamed_id is not None:
            self.counter += 1
            name, prefix = renamed_id
            command = dataclasses.replace(command, **{name: f"{prefix}{self.counter}"})
        elif isinstance(command, Batch):
            renamed = []
            for item in command.commands:
                self.counter += 1
                renamed.append(dataclasses.replace(item, transaction_id=f"tx{self.counter}"))
            command = Batch(commands=renamed, atomic=command.atomic)
        self.submit(command)

    def run(self) -> Stats:
        try:
            self.start()
            for _ in range(self.steps):
                self.stats.steps += 1
                self.step()
            self.crash()
            return self.stats
        finally:
            self.stop_process()
            shutil.rmtree(self.root, ignore_errors=True)
