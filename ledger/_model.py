"""The ledger's vocabulary: limits, rejection reasons, commands, events and entities.

Plain values only: no I/O, no clock, no randomness (ids and times arrive inside commands or as
arguments). Money is ``int`` minor units and never leaves int64. Commands are imperative
(``Transfer``), events are past tense (``Transferred``); events are the facts stored in the log.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
AMOUNT_MAX = INT64_MAX
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TREASURY_PREFIX = "treasury:"
SYSTEM_OWNER = "system"
# Idempotency records are kept at least this long after the request that made them.
IDEMPOTENCY_RETENTION_US = 24 * 3600 * 1_000_000
DESCRIPTION_CHARS_MAX = 1024
METADATA_BYTES_MAX = 4096
SCALE_MAX = 18
# Transfers in one batch request (POST /v1/transfers/batch) and so in one batch record: a record
# position (lsn, index) fits in lsn * 2**13 + index (the history read model keys entries so).
BATCH_ITEMS_MAX = 8190
# Balance alerts per wallet (POST /v1/wallets/{id}/alerts refuses more: 409 alert_limit_reached).
# Every change of a watched wallet evaluates each of its alerts, so this bounds that work too.
ALERTS_PER_WALLET_MAX = 100
# Firings in one ``AlertsTriggered`` record: a batch that crosses more in one step writes
# several records (in the same step), so a record stays far below the frame limit.
FIRINGS_PER_RECORD_MAX = 4096

assert AMOUNT_MAX == 9223372036854775807
assert INT64_MIN == -AMOUNT_MAX - 1


def treasury_id(asset: str) -> str:
    return TREASURY_PREFIX + asset


def is_treasury(wallet_id: str) -> bool:
    return wallet_id.startswith(TREASURY_PREFIX)


class Reason(enum.Enum):
    """Why a command was rejected. Mapped to HTTP status and ``code`` in one table in server/.

    The members are listed in the order ``decide`` checks them.
    """

    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    ASSET_NOT_FOUND = "asset_not_found"
    ASSET_EXISTS = "asset_exists"
    WALLET_EXISTS = "wallet_exists"
    RESERVED_ID = "invalid_request:reserved_id"  # treasury ids belong to the system
    SENDER_NOT_FOUND = "wallet_not_found"  # the debited wallet does not exist
    FORBIDDEN = "forbidden"  # the caller does not own the debited wallet
    RECEIVER_NOT_FOUND = "wallet_not_found:receiver"  # the credited wallet does not exist
    SAME_WALLET = "same_wallet"
    ASSET_MISMATCH = "asset_mismatch"
    SENDER_FROZEN = "wallet_frozen"
    SENDER_CLOSED = "wallet_closed"
    RECEIVER_CLOSED = "wallet_closed:receiver"
    WALLET_CLOSED = "wallet_closed:status"
    WALLET_NOT_EMPTY = "wallet_not_empty"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    BALANCE_OVERFLOW = "balance_overflow"
    TOKEN_NOT_FOUND = "token_not_found"
    TOKEN_EXISTS = "token_exists"
    # Holds and withdrawals (checked in the order listed in ``HOLD_CHECK_ORDER``).
    NOT_PENDING = "transfer_not_pending"  # no pending hold with that id (the shell tells 404 apart)
    AMOUNT_EXCEEDS_HOLD = "amount_exceeds_hold"
    WITHDRAWAL_NOT_FOUND = "withdrawal_not_found"
    WITHDRAWAL_NOT_DEAD = "withdrawal_not_dead"  # only a dead withdrawal can be retried
    WITHDRAWAL_NOT_PAYABLE = "withdrawal_not_payable"  # internal: a payout step out of order
    RECORD_TOO_LARGE = "payload_too_large:record"  # an atomic batch must fit in one log record
    # Balance alerts (checked in this order after SENDER_NOT_FOUND and FORBIDDEN).
    ALERT_LIMIT_REACHED = "alert_limit_reached"
    ALERT_NOT_FOUND = "alert_not_found"
    # Wallet limits: outgoing money over a daily or monthly spend limit (row 7b of a transfer).
    SPEND_LIMIT_EXCEEDED = "spend_limit_exceeded"
    # Refunds (checked in the order of the refund table in ``ledger._decide``).
    NOT_REFUNDABLE = "not_refundable"  # a withdrawal, a refund, a pending or voided hold
    REFUND_EXCEEDS_REMAINING = "refund_exceeds_remaining"
    # An atomic batch whose senders are in several ledger groups (ADR 0013): an item's key
    # belongs to such a batch that is prepared and not yet posted or released (never recorded).
    REQUEST_IN_PROGRESS = "request_in_progress"

    @property
    def code(self) -> str:
        """The stable machine-readable code (several reasons share one)."""
        return self.value.split(":", 1)[0]


# The order in which a transfer's checks run; a transfer split across two shards combines the
# failures of both sides by this order, so the answer never depends on the shard layout.
TRANSFER_CHECK_ORDER = {
    reason: index
    for index, reason in enumerate(
        [
            Reason.SENDER_NOT_FOUND,
            Reason.FORBIDDEN,
            Reason.RECEIVER_NOT_FOUND,
            Reason.SAME_WALLET,
            Reason.ASSET_MISMATCH,
            Reason.SENDER_FROZEN,
            Reason.SENDER_CLOSED,
            Reason.RECEIVER_CLOSED,
            Reason.INSUFFICIENT_FUNDS,
            Reason.SPEND_LIMIT_EXCEEDED,
            Reason.BALANCE_OVERFLOW,
        ]
    )
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    reason: Reason
    detail: str


# Rejections that are NOT recorded under the request's idempotency key (API.md, *Idempotency*:
# a key's outcome is final, except for what is decided "before the ledger", so that fixing the
# request and retrying with the same key works). Every other reason a ``decide_*`` returns for
# a keyed request is recorded (``RequestsRefused``) and answers that key from then on, so a
# reason added later is final unless it is listed here. The statuses these map to (server/
# ``REASONS``): 409 idempotency_key_reused (the key's own answer, never a new outcome), 403
# forbidden (the contract lists 403 as not recorded), 400 (a reserved id; an atomic batch whose
# senders are in several ledger groups), 413 (an atomic batch too large for one record). ``tests/server/test_final_outcomes.py`` checks this set against
# the status table.
UNRECORDED_REASONS = frozenset({
    Reason.IDEMPOTENCY_KEY_REUSED,
    Reason.FORBIDDEN,
    Reason.RESERVED_ID,
    Reason.RECORD_TOO_LARGE,
    Reason.REQUEST_IN_PROGRESS,
})


class Labelled(enum.IntEnum):
    """An int enum whose ``label`` (its lower-case name) is what the API shows."""

    @property
    def label(self) -> str:
        return self.name.lower()


class WalletStatus(Labelled):
    ACTIVE = 0
    FROZEN = 1
    CLOSED = 2


class TransactionType(Labelled):
    DEPOSIT = 0
    TRANSFER = 1
    WITHDRAWAL = 2
    REFUND = 3  # money sent back against a posted deposit or transfer (``Refunded``)


# Debits that count as a wallet's spending (its spend limits and ``spent``): transfers (holds
# included, when created) and withdrawals. Deposits debit only the treasury, which has no limits.
# Any other type (refunds) does not count. This set is the one place that decides it:
# ``counts_as_spend`` reads it, and ``apply_debit`` reads it inline (the hot path).
# A tuple, not a set: ``in`` compares by identity first, where a set would hash the enum member
# (a Python-level ``__hash__``, 0.1 us per transfer).
SPENDING_TYPES = (TransactionType.TRANSFER, TransactionType.WITHDRAWAL)


def counts_as_spend(type_: TransactionType) -> bool:
    """Whether a debit of this type counts against the debited wallet's spend limits: the one
    place that decides it (``decide`` and ``apply`` both ask here)."""
    return type_ in SPENDING_TYPES


# -- spend windows ---------------------------------------------------------------------------

DAY_US = 86_400 * 1_000_000


def month_of_day(day: int) -> int:
    """The UTC month (``year * 12 + month - 1``) of a day number (days since 1970-01-01), by
    the proleptic Gregorian calendar (leap years included), in integer arithmetic: the state
    machine imports no clock module (Howard Hinnant's ``civil_from_days``)."""
    shifted = day + 719_468  # days since 0000-03-01
    era = shifted // 146_097
    day_of_era = shifted - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153  # 0 = March
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return year * 12 + month - 1


class SpendWindow:
    """The UTC calendar day (days since the epoch) and month (``year * 12 + month - 1``) that
    a moment falls in. One object per day, shared by every wallet that spent in it
    (``spend_window``), so a wallet pays one reference for both window numbers."""

    __slots__ = ("day", "month")

    def __init__(self, day: int, month: int) -> None:
        self.day = day
        self.month = month

    def __repr__(self) -> str:
        return f"SpendWindow(day={self.day}, month={self.month})"


_WINDOWS: dict[int, SpendWindow] = {}


def spend_window(at_us: int) -> SpendWindow:
    """The window of ``at_us`` (microseconds since the epoch, UTC). Pure: the cache only
    shares equal objects (a few hundred bytes per day the ledger ever saw)."""
    day = at_us // DAY_US
    window = _WINDOWS.get(day)
    if window is None:
        window = _WINDOWS[day] = SpendWindow(day, month_of_day(day))
    return window


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """A wallet's limits (``None`` on a wallet with none: the hot path checks one attribute).

    ``overdraft``: ``available`` may go down to ``-overdraft`` through a debit. ``daily`` /
    ``monthly``: spend limits (None: no limit). ``floor`` is how low ``available`` may be
    now, for the invariants: ``min(-overdraft, available when the limits were last set)``,
    because lowering the overdraft below a current deficit is allowed (the wallet then cannot
    send until it is above the new limit, and nothing but a debit can lower ``available``)."""

    overdraft: int
    daily: int | None
    monthly: int | None
    floor: int

    @property
    def spending(self) -> bool:
        return self.daily is not None or self.monthly is not None


class TransactionStatus(Labelled):
    POSTED = 0
    PENDING = 1
    VOIDED = 2
    FAILED = 3  # a withdrawal the bank refused


class WithdrawalStatus(Labelled):
    """``PENDING -> PROCESSING -> COMPLETED | FAILED | DEAD``; ``DEAD -> PENDING`` on retry."""

    PENDING = 0
    PROCESSING = 1
    COMPLETED = 2
    FAILED = 3
    DEAD = 4


class VoidReason(Labelled):
    """Why a hold was released without posting."""

    VOIDED = 0  # its owner asked
    EXPIRED = 1  # its deadline passed
    REFUSED = 2  # the bank refused the withdrawal it held


class PayoutStep(enum.IntEnum):
    """What a payout worker reports about a withdrawal (``AdvanceWithdrawal``)."""

    BEGIN = 0  # an attempt starts: pending/processing -> processing, attempts + 1
    TRANSIENT = 1  # the attempt failed and will be retried at ``retry_at_us``
    DEAD = 2  # retries exhausted: dead, the hold stays
    REFUSED = 3  # the bank refused: failed, the hold is voided
    RETRY = 4  # an operator re-queues a dead withdrawal: pending, attempts back to 0


class AlertField(Labelled):
    """Which amount of a wallet an alert watches."""

    AVAILABLE = 0
    BALANCE = 1


class AlertDirection(Labelled):
    """``BELOW``: the condition is ``value < threshold``; ``ABOVE``: ``value > threshold``."""

    BELOW = 0
    ABOVE = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Idempotency:
    """Who asked (``scope``), with which key, and a fingerprint of what they asked."""

    scope: str
    key: str
    fingerprint: bytes


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAsset:
    code: str
    scale: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateWallet:
    """With limits other than the defaults (no overdraft, no spend limits), the wallet is
    created by two records in one step: ``WalletCreated`` and ``WalletUpdated``."""

    wallet_id: str
    owner_id: str
    asset: str
    metadata: dict[str, Any] | None
    idempotency: Idempotency | None
    overdraft_limit: int = 0
    daily_limit: int | None = None
    monthly_limit: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateWallet:
    """``PATCH /v1/wallets/{id}``: None leaves a field as it is; a spend limit of 0 removes it
    (limits are >= 1, so 0 is free to mean "no limit" without a sentinel that must cross the
    wire)."""

    wallet_id: str
    overdraft_limit: int | None = None
    daily_limit: int | None = None
    monthly_limit: int | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeWalletStatus:
    wallet_id: str
    status: WalletStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """Moves ``amount`` from ``from_wallet_id`` to ``to_wallet_id``. For a deposit the sender
    is the treasury of the receiver's asset and ``from_wallet_id`` is None until the receiving
    side resolved it. ``owner_id`` is who asks: the sender must belong to them (None: admin)."""

    transaction_id: str
    type: TransactionType
    from_wallet_id: str | None
    to_wallet_id: str
    amount: int
    description: str | None
    metadata: dict[str, Any] | None
    idempotency: Idempotency | None
    owner_id: str | None = None
    # A pending transfer (hold) when set: the deadline is the stamped time plus this.
    hold_timeout_s: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveHold:
    """Capture (all, or ``amount`` of it) or void a pending transfer. ``from_wallet_id`` and
    ``to_wallet_id`` are the router's view of the hold (``Directory.hold_routes``); ``decide``
    checks the hold itself."""

    transaction_id: str
    capture: bool
    amount: int | None
    from_wallet_id: str
    to_wallet_id: str
    owner_id: str | None
    idempotency: Idempotency | None
    reservation: str | None = None  # a capture to another group: its receiver's reservation id


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireHolds:
    """Void the listed holds whose deadline has passed (the shell's timer sends it)."""

    transaction_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestWithdrawal:
    withdrawal_id: str
    wallet_id: str
    amount: int
    destination: dict[str, Any]
    owner_id: str | None
    idempotency: Idempotency | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvanceWithdrawal:
    withdrawal_id: str
    step: PayoutStep
    detail: str | None = None
    retry_at_us: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CompleteWithdrawal:
    """The bank paid: capture the hold into the treasury."""

    withdrawal_id: str
    wallet_id: str
    asset: str
    amount: int
    reference: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateToken:
    token_hash: bytes
    prefix: str
    owner_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeToken:
    prefix: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAlert:
    """Watch ``field`` of ``wallet_id`` against ``threshold``. ``owner_id`` is who asks (None:
    admin): the wallet must belong to them."""

    alert_id: str
    wallet_id: str
    field: AlertField
    direction: AlertDirection
    threshold: int
    owner_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteAlert:
    alert_id: str
    owner_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Refund:
    """Send back ``amount`` (None: what is left) of the posted transaction ``refund_of``, from
    its receiver (``from_wallet_id``) to its sender (``to_wallet_id``; a deposit's treasury).

    The ``original_*`` fields are the original's facts as the history read model shows them
    (type, status, and its posted amount: a captured hold's captured amount). They come from
    the log and never change once the original is posted, so the shell may read them there;
    the ledger keeps what was refunded so far (``State.refunded``) and decides the cap.
    ``owner_id`` is who asks: the refunding wallet must belong to them (None: admin)."""

    transaction_id: str
    refund_of: str
    from_wallet_id: str
    to_wallet_id: str
    amount: int | None
    original_type: TransactionType
    original_status: TransactionStatus
    original_amount: int
    description: str | None
    metadata: dict[str, Any] | None
    idempotency: Idempotency | None
    owner_id: str | None = None



# -- transfers between ledger groups (ADR 0013, "a two-phase commit decided by the sender's
# group"): every command below touches one shard of one group, and its event one wallet at most.


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveCredit:
    """Prepare, at the receiver's group: check that ``to_wallet_id`` may receive ``amount``
    and reserve it for ``transaction_id``, a transfer from ``from_wallet_id`` decided by group
    ``from_group``. Asked again for a transaction already reserved, it answers the same."""

    transaction_id: str
    to_wallet_id: str
    amount: int
    from_wallet_id: str
    from_group: int
    description: str | None
    metadata: dict[str, Any] | None
    refund_of: str | None = None  # a refund between groups: the transaction it refunds
    capture_of: str | None = None  # a hold's capture between groups: the hold (the id is the attempt's)


@dataclass(frozen=True, slots=True, kw_only=True)
class SettleReservation:
    """The sender's group decided ``transaction_id``: credit its reservation (``credit``) or
    release it. Nothing to do once the reservation is gone (settled before)."""

    transaction_id: str
    wallet_id: str
    credit: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SettleTransit:
    """At the sender's group: the receivers credited these transfers; stop owing them."""

    transaction_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortTransfers:
    """At the sender's group: a receiver asks what became of these reserved transfers; the
    ones not committed here are aborted for good (presumed abort)."""

    transaction_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DecideBatch:
    """At the coordinating group of an atomic batch of several sending groups: decide it
    ``committed`` (the worker, once every group prepared its part) or not (a group that holds
    its part and asks what became of it: presumed abort), unless it is decided already."""

    batch: str
    committed: bool


Command = (
    CreateAsset | CreateWallet | ChangeWalletStatus | Transfer | CreateToken | RevokeToken
    | ResolveHold | ExpireHolds | RequestWithdrawal | AdvanceWithdrawal | CompleteWithdrawal
    | CreateAlert | DeleteAlert | UpdateWallet | Refund | ReserveCredit | SettleReservation | SettleTransit
    | AbortTransfers | DecideBatch
)


# -- events (the facts in the log) ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetCreated:
    code: str
    scale: int
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WalletCreated:
    wallet_id: str
    owner_id: str
    asset: str
    metadata: dict[str, Any] | None
    at_us: int
    idempotency: Idempotency | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WalletUpdated:
    """A wallet's limits and metadata as they are from now on (all of them: the record is
    self-contained). ``daily_limit`` / ``monthly_limit`` None: no limit."""

    wallet_id: str
    overdraft_limit: int
    daily_limit: int | None
    monthly_limit: int | None
    metadata: dict[str, Any] | None
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WalletStatusChanged:
    wallet_id: str
    status: WalletStatus
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Transferred:
    transaction_id: str
    type: TransactionType
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any] | None
    at_us: int
    idempotency: Idempotency | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenCreated:
    token_hash: bytes
    prefix: str
    owner_id: str
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRevoked:
    prefix: str
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldCreated:
    """A pending transfer or a withdrawal: ``amount`` moves from the sender's available into
    its held; nothing reaches ``to_wallet_id`` (the treasury for a withdrawal) yet.
    ``deadline_us`` is 0 when the hold never expires (withdrawals)."""

    transaction_id: str
    type: TransactionType
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any] | None
    at_us: int
    deadline_us: int
    destination: dict[str, Any] | None  # withdrawals only
    idempotency: Idempotency | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldCaptured:
    """The hold is posted: ``amount`` (at most ``held_amount``) leaves the sender and reaches
    the receiver; the rest of the hold is released. Self-contained, like every event."""

    transaction_id: str
    type: TransactionType
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    held_amount: int
    description: str | None
    metadata: dict[str, Any] | None
    created_at_us: int
    created_lsn: int  # the HoldCreated record's (the read model finds the pending entry by it)
    at_us: int
    reference: str | None  # the bank's reference, for withdrawals
    idempotency: Idempotency | None
    # A capture to another ledger group (ADR 0013): the id its receiver's group reserved the
    # captured amount under, one per capture attempt, which this group owes.
    reservation: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldVoided:
    """The hold is released in full; nothing moves."""

    transaction_id: str
    type: TransactionType
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any] | None
    created_at_us: int
    created_lsn: int
    at_us: int
    reason: VoidReason
    detail: str | None
    idempotency: Idempotency | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WithdrawalUpdated:
    """A payout step that moves no money (an attempt began or failed, dead, re-queued)."""

    withdrawal_id: str
    wallet_id: str
    status: WithdrawalStatus
    attempts: int
    last_error: str | None
    next_attempt_at_us: int
    at_us: int


HoldEvent = HoldCreated | HoldCaptured | HoldVoided


# One transfer of a ``TransfersPosted`` record as the log stores it (codec kind 7), a plain
# tuple: (transaction_id, type, from_wallet_id, to_wallet_id, asset, amount, description,
# metadata, idempotency as (scope, key, fingerprint) or None). The record's ``at_us`` is each
# transfer's time. The hot path decides, encodes and applies these rows without building a
# ``Transferred`` per item; ``transferred_of`` builds one for a reader that wants it.
TransferRow = tuple[
    str, TransactionType, str, str, str, int, str | None, dict[str, Any] | None, tuple[str, str, bytes] | None
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TransfersPosted:
    """Several transfers made durable by one record: the accepted items of a batch group on one
    shard, or a whole atomic batch, as ``rows`` (``TransferRow``), each stamped with the
    record's ``at_us``; they take effect in order, all at the record's LSN (so a torn tail drops
    all of them or none). ``transfers`` (each a complete ``Transferred``) is built on demand, for
    the readers off the hot path (the feed, the history, rendering); ``transfers_posted`` makes
    the record from ``Transferred`` values."""

    rows: tuple[TransferRow, ...]
    at_us: int
    # The record's encoding (``ledger._codec``), when it was made from one or encoded: what an
    # idempotency record keeps of it (``IdempotencyRecord``). Not part of the value.
    payload: bytes | None = field(default=None, compare=False, repr=False)
    # A group's part of an atomic batch of several sending groups, posted after its
    # coordinator decided it (ADR 0013): the batch whose ``BatchPrepared`` these rows end.
    settles: str | None = None

    @property
    def transfers(self) -> tuple[Transferred, ...]:
        at_us = self.at_us
        return tuple([transferred_of(row, at_us) for row in self.rows])

    def transfer(self, position: int) -> Transferred:
        return transferred_of(self.rows[position], self.at_us)


def transfer_row(transfer: Transferred) -> TransferRow:
    idempotency = transfer.idempotency
    return (
        transfer.transaction_id, transfer.type, transfer.from_wallet_id, transfer.to_wallet_id, transfer.asset,
        transfer.amount, transfer.description, transfer.metadata,
        None if idempotency is None else (idempotency.scope, idempotency.key, idempotency.fingerprint),
    )


def transferred_of(row: TransferRow, at_us: int) -> Transferred:
    """The ``Transferred`` that ``row`` of a record stamped ``at_us`` stands for."""
    (transaction_id, type_, from_wallet_id, to_wallet_id, asset, amount, description, metadata, idempotency) = row
    return new_transferred(
        transaction_id, type_, from_wallet_id, to_wallet_id, asset, amount, description, metadata, at_us,
        None if idempotency is None else new_idempotency(idempotency[0], idempotency[1], idempotency[2]),
    )


def transfers_posted(transfers: Iterable[Transferred], at_us: int) -> TransfersPosted:
    """The record of ``transfers``, each of which must be stamped ``at_us``."""
    rows = []
    for transfer in transfers:
        assert transfer.at_us == at_us, (transfer.at_us, at_us)
        rows.append(transfer_row(transfer))
    return TransfersPosted(rows=tuple(rows), at_us=at_us)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertCreated:
    """``triggered``: the condition already held when the alert was made (it then waits until
    the condition is false again before it can fire)."""

    alert_id: str
    wallet_id: str
    field: AlertField
    direction: AlertDirection
    threshold: int
    triggered: bool
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertDeleted:
    alert_id: str
    wallet_id: str
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertFired:
    """One crossing: the change made by ``transaction_id`` took ``field`` of the wallet to
    ``value``, and the alert's condition (false before it) became true."""

    alert_id: str
    wallet_id: str
    field: AlertField
    direction: AlertDirection
    threshold: int
    value: int
    transaction_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsTriggered:
    """The firings owed by the changes a shard applied in one step, appended in that step
    (``ledger._apply`` has the rule and why this is exactly once)."""

    firings: tuple[AlertFired, ...]
    at_us: int


AlertEvent = AlertCreated | AlertDeleted | AlertsTriggered


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestsRefused:
    """Business rejections of keyed requests decided in one step, recorded so that each key's
    outcome is final (API.md, *Idempotency*): the key, the fingerprint of what it asked, and
    the rejection (reason and detail), all at the record's ``at_us``. Not a copy of the
    requests, and not a money event: nothing moves, the feed and the read model skip it. One
    record per step holds every refusal of that step (a batch part's, up to
    ``BATCH_ITEMS_MAX``)."""

    refusals: tuple[tuple[Idempotency, Rejection], ...]
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Refunded:
    """A posted refund: ``amount`` moved from ``from_wallet_id`` (the original's receiver) to
    ``to_wallet_id`` (the original's sender). Self-contained like every event: it carries the
    original's id and posted amount, so replay rebuilds the refunded-so-far tally
    (``State.refunded``) from the log alone. Its ``type`` is always ``REFUND``."""

    transaction_id: str
    refund_of: str
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    original_amount: int
    description: str | None
    metadata: dict[str, Any] | None
    at_us: int
    idempotency: Idempotency | None

    @property
    def type(self) -> TransactionType:
        return TransactionType.REFUND



@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfigured:
    """This ledger is group ``group`` of a cluster of ``groups`` (ADR 0013): its first record in
    cluster mode, so that every replay of its log knows which transfers leave the group (their
    receiver is not one of its wallets). It never changes afterwards."""

    group: int
    groups: int
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditReserved:
    """``amount`` is reserved on ``wallet_id`` for a transfer between groups that group
    ``from_group`` decides; the wallet cannot be closed while it has reservations, and its
    overflow check counts them. The display fields come back in the credit; ``refund_of`` names
    the transaction a refund between groups refunds (None for a transfer), ``capture_of`` the
    hold whose capture this is (then ``transaction_id`` is the capture attempt's own id)."""

    transaction_id: str
    wallet_id: str
    asset: str
    amount: int
    from_wallet_id: str
    from_group: int
    description: str | None
    metadata: dict[str, Any] | None
    at_us: int
    refund_of: str | None = None
    capture_of: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationSettled:
    """The reservation of ``transaction_id`` ends: credited to its wallet from this group's
    transit account (``credited``), or released. Self-contained: it repeats the reservation."""

    transaction_id: str
    wallet_id: str
    asset: str
    amount: int
    from_wallet_id: str
    from_group: int
    description: str | None
    metadata: dict[str, Any] | None
    reserved_at_us: int
    credited: bool
    at_us: int
    refund_of: str | None = None
    capture_of: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransitSettled:
    """The sender's group no longer owes these transfers: their receivers credited them."""

    transaction_ids: tuple[str, ...]
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPrepared:
    """This group's part of an atomic batch whose senders are in several groups (ADR 0013,
    *Atomic batches of several sending groups*), decided and held: every item passed in request
    order, and ``rows`` are the transfers as they will be posted. Until the group posts them
    (``TransfersPosted`` with ``settles``) or releases them (``BatchReleased``), each sender's
    amount is held (its ``held``), each receiver of this group has the amount reserved (its
    shard's ``reserved_in``), and the items' keys are in progress. The group of
    ``coordinator`` decides the batch (``BatchDecided``)."""

    batch: str
    coordinator: int
    rows: tuple[TransferRow, ...]
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchDecided:
    """The coordinating group's decision on an atomic batch of several sending groups:
    ``committed`` (each group posts its part) or not (each releases it). The first decision
    stands; the question is never asked again of a decided batch."""

    batch: str
    committed: bool
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchReleased:
    """This group's part of a batch (``BatchPrepared``) is released: the batch was not
    committed. Its transaction ids are aborted here for good (a receiving group that asks
    about one releases its reservation)."""

    batch: str
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransfersAborted:
    """The sender's group will never commit these reserved transfers (presumed abort)."""

    transaction_ids: tuple[str, ...]
    at_us: int


Event = (
    AssetCreated | WalletCreated | WalletStatusChanged | Transferred | TransfersPosted | TokenCreated
    | TokenRevoked | HoldCreated | HoldCaptured | HoldVoided | WithdrawalUpdated
    | AlertCreated | AlertDeleted | AlertsTriggered | RequestsRefused | Refunded | WalletUpdated
    | GroupConfigured | CreditReserved | ReservationSettled | TransitSettled | TransfersAborted
    | BatchPrepared | BatchDecided | BatchReleased
)


# -- entities (owned and mutated only by ``apply``) -----------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Asset:
    code: str
    scale: int
    created_at_us: int


class Wallet:
    """One wallet. Mutable, but only ``apply`` mutates it. ``lsn`` is the last record that
    changed it: a read must not answer before that LSN is durable."""

    __slots__ = (
        "asset",
        "balance",
        "created_at_us",
        "held",
        "id",
        "limits",
        "lsn",
        "metadata",
        "owner_id",
        "spent_day",
        "spent_month",
        "status",
        "updated_at_us",
        "window",
    )

    def __init__(
        self,
        *,
        id: str,
        owner_id: str,
        asset: str,
        metadata: dict[str, Any] | None,
        created_at_us: int,
        lsn: int,
        balance: int = 0,
        held: int = 0,
        status: WalletStatus = WalletStatus.ACTIVE,
        updated_at_us: int | None = None,
    ) -> None:
        self.id = id
        self.owner_id = owner_id
        self.asset = asset
        self.metadata = metadata
        self.balance = balance
        self.held = held
        self.status = status
        self.created_at_us = created_at_us
        self.updated_at_us = created_at_us if updated_at_us is None else updated_at_us
        self.lsn = lsn
        # Limits (None: none) and spending: ``spent_day`` / ``spent_month`` are what the wallet
        # spent in ``window``'s day and month, the latest window it spent in (None: never).
        self.limits: Limits | None = None
        self.window: SpendWindow | None = None
        self.spent_day = 0
        self.spent_month = 0

    @property
    def available(self) -> int:
        return self.balance - self.held

    def spent_at(self, now_us: int) -> tuple[int, int]:
        """(daily, monthly) spending in the windows of ``now_us``: 0 in a window the wallet has
        not spent in (a moment before its latest window counts as in it, like ``apply``)."""
        window = self.window
        if window is None:
            return 0, 0
        now = spend_window(now_us)
        return (self.spent_day if window.day >= now.day else 0,
                self.spent_month if window.month >= now.month else 0)

    def __repr__(self) -> str:
        return (
            f"Wallet(id={self.id!r}, owner={self.owner_id!r}, asset={self.asset!r}, "
            f"balance={self.balance}, held={self.held}, status={self.status.label})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    """A pending transfer or withdrawal, owned by the sender's shard until resolved."""

    transaction_id: str
    type: TransactionType
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any] | None
    created_at_us: int
    deadline_us: int  # 0: never expires
    lsn: int



@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """An incoming transfer from another group, reserved on one of this group's wallets
    (``CreditReserved``) and owned by that wallet's shard until settled."""

    transaction_id: str
    wallet_id: str
    asset: str
    amount: int
    from_wallet_id: str
    from_group: int
    description: str | None
    metadata: dict[str, Any] | None
    at_us: int
    lsn: int
    refund_of: str | None = None
    capture_of: str | None = None

class Withdrawal:
    """A withdrawal and its payout state, owned by its wallet's shard. Kept after it ends
    (completed or failed) so that it can still be read. Only ``apply`` mutates it."""

    __slots__ = (
        "amount",
        "asset",
        "attempts",
        "created_at_us",
        "destination",
        "id",
        "last_error",
        "lsn",
        "next_attempt_at_us",
        "reference",
        "status",
        "updated_at_us",
        "wallet_id",
    )

    def __init__(
        self,
        *,
        id: str,
        wallet_id: str,
        asset: str,
        amount: int,
        destination: dict[str, Any],
        created_at_us: int,
        lsn: int,
        status: WithdrawalStatus = WithdrawalStatus.PENDING,
        attempts: int = 0,
        last_error: str | None = None,
        next_attempt_at_us: int = 0,
        reference: str | None = None,
        updated_at_us: int | None = None,
    ) -> None:
        self.id = id
        self.wallet_id = wallet_id
        self.asset = asset
        self.amount = amount
        self.destination = destination
        self.status = status
        self.attempts = attempts
        self.last_error = last_error
        self.next_attempt_at_us = next_attempt_at_us
        self.reference = reference
        self.created_at_us = created_at_us
        self.updated_at_us = created_at_us if updated_at_us is None else updated_at_us
        self.lsn = lsn

    def key(self) -> tuple[Any, ...]:
        """Every field, for digests and equality in tests (in ``__slots__`` order, spelled out:
        a class compiled by mypyc, ADR 0012, has no ``__slots__`` attribute at run time)."""
        return (self.amount, self.asset, self.attempts, self.created_at_us, self.destination, self.id,
                self.last_error, self.lsn, self.next_attempt_at_us, self.reference, self.status,
                self.updated_at_us, self.wallet_id)

    def __repr__(self) -> str:
        return (
            f"Withdrawal(id={self.id!r}, wallet={self.wallet_id!r}, amount={self.amount}, "
            f"status={self.status.label}, attempts={self.attempts})"
        )


class Alert:
    """A balance alert, owned by its wallet's shard. ``triggered`` is whether its condition
    held after the last change of the wallet (or at creation); only ``apply`` mutates it."""

    __slots__ = ("created_at_us", "direction", "field", "id", "lsn", "threshold", "triggered", "wallet_id")

    def __init__(
        self, *, id: str, wallet_id: str, field: AlertField, direction: AlertDirection, threshold: int,
        triggered: bool, created_at_us: int, lsn: int,
    ) -> None:
        self.id = id
        self.wallet_id = wallet_id
        self.field = field
        self.direction = direction
        self.threshold = threshold
        self.triggered = triggered
        self.created_at_us = created_at_us
        self.lsn = lsn

    def holds(self, wallet: Wallet) -> bool:
        """The condition, for the wallet as it is now."""
        value = wallet.balance if self.field == AlertField.BALANCE else wallet.balance - wallet.held
        return value < self.threshold if self.direction == AlertDirection.BELOW else value > self.threshold

    def key(self) -> tuple[Any, ...]:
        """Every field, for digests and equality in tests."""
        return (self.id, self.wallet_id, int(self.field), int(self.direction), self.threshold, self.triggered,
                self.created_at_us, self.lsn)

    def __repr__(self) -> str:
        return (
            f"Alert(id={self.id!r}, wallet={self.wallet_id!r}, {self.field.label} "
            f"{self.direction.label} {self.threshold}, triggered={self.triggered})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertView:
    """A copy of an alert taken inside its actor (what the routes render)."""

    id: str
    wallet_id: str
    owner_id: str
    field: AlertField
    direction: AlertDirection
    threshold: int
    triggered: bool
    created_at_us: int
    lsn: int

    @classmethod
    def of(cls, alert: Alert, owner_id: str) -> AlertView:
        return cls(
            id=alert.id, wallet_id=alert.wallet_id, owner_id=owner_id, field=alert.field,
            direction=alert.direction, threshold=alert.threshold, triggered=alert.triggered,
            created_at_us=alert.created_at_us, lsn=alert.lsn,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundTally:
    """What was refunded so far of one original transaction, kept by the shard that owns the
    original's receiver (the wallet every refund of it debits): ``refunded`` never exceeds
    ``original_amount``."""

    wallet_id: str
    original_amount: int
    refunded: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    token_hash: bytes
    prefix: str
    owner_id: str
    created_at_us: int


# The batch records decoded most recently from an idempotency record's bytes (FIFO): a batch
# retried whole, a snapshot or a spill walks the keys of one record after another, so each
# record is decoded once, not once per key.
# Snapshots are encoded in worker threads, hence the lock (held for the dict, not the decoding).
_DECODED_MAX = 16
_decoded: dict[bytes, TransfersPosted] = {}
_decoded_lock = threading.Lock()


def posted_record(source: TransfersPosted | bytes) -> TransfersPosted:
    """The ``TransfersPosted`` record itself, or the one ``source`` (its payload) encodes."""
    if type(source) is TransfersPosted:
        return source
    assert type(source) is bytes
    with _decoded_lock:
        record = _decoded.get(source)
    if record is None:
        from ledger._codec import decode_event  # the codec is built on this module

        decoded = decode_event(source)
        assert type(decoded) is TransfersPosted
        with _decoded_lock:
            while len(_decoded) >= _DECODED_MAX:
                del _decoded[next(iter(_decoded))]
            _decoded[source] = decoded
        record = decoded
    return record


def outcome_of(source: Any, position: int) -> Any:
    """What an ``IdempotencyRecord`` or a ``Committed`` of ``source`` and ``position`` stands
    for (their ``event``)."""
    if position < 0:
        if type(source) is bytes:  # the event's own encoding (a record loaded from a snapshot)
            from ledger._codec import decode_event

            return decode_event(source)
        return source
    return posted_record(source).transfer(position)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class IdempotencyRecord:
    """What a key produced: the fingerprint of the request and the event it made, at ``lsn``;
    or, for a request the ledger refused, the ``Rejection`` itself (recorded by a
    ``RequestsRefused`` record at ``lsn``): the same key and request get it again.

    The outcome is ``source`` itself when ``position`` is -1 (or the event ``source`` encodes,
    when it is bytes: a record loaded from a snapshot keeps its event's encoding), else the
    transfer at ``position`` of a ``TransfersPosted`` record: ``source`` is then the record's
    payload (its log encoding, about a fifth of the memory of its decoded rows), or the record
    itself when it has no payload. A batch's thousand keys share their record instead of
    holding a ``Transferred`` each, and ``event`` builds the transfer when a retry asks
    (decoding the payload: once per record for a whole batch retried). Equal when the
    fingerprints, LSNs, times and outcomes are."""

    fingerprint: bytes
    lsn: int
    at_us: int
    source: Event | Rejection | bytes
    position: int = -1

    @property
    def event(self) -> Event | Rejection:
        outcome: Event | Rejection = outcome_of(self.source, self.position)
        return outcome

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdempotencyRecord):
            return NotImplemented
        return (self.fingerprint, self.lsn, self.at_us, self.event) == (
            other.fingerprint, other.lsn, other.at_us, other.event
        )


# What ``Committed`` carries: the money movements.
Movement = Transferred | HoldCreated | HoldCaptured | HoldVoided | Refunded


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Committed:
    """A money movement that was accepted and appended at ``lsn`` (durable once the caller
    sees it): ``source`` itself, or when ``position`` is not -1 the transfer at ``position`` of
    the ``TransfersPosted`` record ``source`` (built by ``event`` on demand, as in
    ``IdempotencyRecord``)."""

    source: Movement | TransfersPosted
    lsn: int
    position: int = -1

    @property
    def event(self) -> Movement:
        outcome: Movement = outcome_of(self.source, self.position)
        return outcome

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Committed):
            return NotImplemented
        return (self.lsn, self.event) == (other.lsn, other.event)


@dataclass(frozen=True, slots=True, kw_only=True)
class Duplicate:
    """``decide``'s answer to a key it has seen with the same request: the original outcome."""

    record: IdempotencyRecord


# What a batch answers per item, in request order (``Ledger.transfer_batch``): ``Committed``
# (posted by this batch, at the LSN of its record), ``Duplicate`` (the key was used before
# with the same item: the original outcome) or ``Rejection`` (nothing posted; recorded under
# the item's key unless its reason is in ``UNRECORDED_REASONS``, or the rejection recorded
# the first time the key was used).
ItemOutcome = Committed | Duplicate | Rejection


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFailed:
    """An atomic batch that posted nothing. ``index`` is the first item that failed (judged
    after the effects of the items before it) and ``rejection`` why; ``index`` is None when the
    batch as a whole was refused (``RECORD_TOO_LARGE``)."""

    index: int | None
    rejection: Rejection


# -- fast construction on the hot paths ------------------------------------------------------

_T = TypeVar("_T")


def frozen_builder(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor (fields in declaration order, none optional) for a frozen,
    slotted dataclass that builds the same object as ``cls(**fields)``.

    Why: the generated ``__init__`` of a frozen dataclass sets each field through
    ``object.__setattr__`` (measured here: 4.5 us for a ``Transferred``), and setting the slots
    through their member descriptors called as functions still costs about 100 ns a field
    (1.05 us for a ``Transferred``, 0.66 us for a ``Committed``). Batches build several such
    objects per item. So, for a plain class, the builder is a twin class with the same slots
    (the same object layout) whose ``__init__`` stores the fields as ordinary attributes, which
    CPython does at a fraction of that cost, and then moves the new object into ``cls`` (an
    assignment to ``__class__``, allowed between classes of the same layout): 0.56 us and
    0.38 us. The object is then exactly what ``cls(**fields)`` makes, frozen like it.

    Only for classes without ``__post_init__`` or validation in ``__init__`` (none of the value
    objects here has any); ``tests/ledger/test_model.py`` checks every builder against its
    class. When mypyc compiled the class (ADR 0012) its objects are native and cannot change
    class: the builder then makes the object with ``cls.__new__`` (never ``object.__new__``,
    which raises TypeError "is not safe" for a native class) and sets the fields through the
    compiled class's setters."""
    assert dataclasses.is_dataclass(cls)
    assert "__post_init__" not in cls.__dict__
    names = [field.name for field in dataclasses.fields(cls)]
    assert all(name.isidentifier() and not name.startswith("_") for name in names)
    namespace: dict[str, Any] = {"_new": cls.__new__, "_cls": cls, "_set_class": object.__setattr__}
    if cls.__new__ is object.__new__ and tuple(cls.__dict__.get("__slots__", ())) == tuple(names):
        body = "".join(f"    self.{name} = {name}\n" for name in names)
        exec(f"def __init__(self, {', '.join(names)}):\n{body}    _set_class(self, '__class__', _cls)\n", namespace)
        twin: Callable[..., _T] = type(
            f"build_{cls.__name__}", (), {"__slots__": tuple(names), "__init__": namespace["__init__"],
                                          "__module__": cls.__module__},
        )
        return twin
    for name in names:
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__  # the slot's member descriptor
    defaults = "".join(f", _set_{name}=_set_{name}" for name in names)
    body = "".join(f"    _set_{name}(self, {name})\n" for name in names)
    source = (
        f"def build_{cls.__name__}({', '.join(names)}, *, _new=_new, _cls=_cls{defaults}):\n"
        f"    self = _new(_cls)\n{body}    return self\n"
    )
    exec(source, namespace)
    build: Callable[..., _T] = namespace[f"build_{cls.__name__}"]
    return build


new_transferred = frozen_builder(Transferred)
new_committed = frozen_builder(Committed)
new_idempotency_record = frozen_builder(IdempotencyRecord)
new_transfer = frozen_builder(Transfer)
new_idempotency = frozen_builder(Idempotency)
new_alert_fired = frozen_builder(AlertFired)
