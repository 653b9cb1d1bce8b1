"""The ledger state machine's decisions: ``decide`` and the per-command ``decide_*`` (pure, total).

Stdlib only: no trio, no I/O, no clock, no randomness. Time arrives as ``now_us``; ids arrive
inside commands. Nothing here mutates the state: the accepted events are applied by
``ledger._apply`` (``apply``, the only mutator). Replay calls ``apply`` alone, so history never
depends on today's rules.

Rejection order for a transfer (``TRANSFER_CHECK_ORDER``), each row a test in
``tests/ledger/test_decide.py``:

    | # | check                                   | reason                 | side     |
    |---|-----------------------------------------|------------------------|----------|
    | 0 | key seen with the same request          | (replay the original)  | debit    |
    | 0 | key seen with another request           | IDEMPOTENCY_KEY_REUSED | debit    |
    | 1 | debited wallet exists                   | SENDER_NOT_FOUND       | debit    |
    | 1b| the caller owns the debited wallet       | FORBIDDEN              | debit    |
    | 2 | credited wallet exists                  | RECEIVER_NOT_FOUND     | credit   |
    | 3 | the two differ                          | SAME_WALLET            | either   |
    | 4 | same asset                              | ASSET_MISMATCH         | debit    |
    | 5 | debited wallet not frozen / not closed  | SENDER_FROZEN/_CLOSED  | debit    |
    | 6 | credited wallet not closed              | RECEIVER_CLOSED        | credit   |
    | 7 | enough available, down to -overdraft    | INSUFFICIENT_FUNDS     | debit    |
    |   | limit (treasury exempt)                 |                        |          |
    | 7b| within the daily, then monthly spend    | SPEND_LIMIT_EXCEEDED   | debit    |
    |   | limit (counted debits only)             |                        |          |
    | 8 | no balance leaves int64                 | BALANCE_OVERFLOW       | both     |

**Final outcomes** (API.md, *Idempotency*). A rejection ``decide_*`` returns for a request that
carries an ``Idempotency`` is recorded under its key (a ``RequestsRefused`` record, appended by
the shard in the same step: ``refusal_recorded`` says which) unless its reason is in
``UNRECORDED_REASONS``; from then on ``check_idempotency`` answers the key with that rejection
(row 0), whatever the state says now. So row 0 turns a later retry of a refused request into the
same refusal, never into a posting.

Funds are checked before overflow so that a sender cannot learn a stranger's balance by
probing with amounts it does not have (overflow would reveal the receiver's balance).

Rows 7 and 7b are ``check_debit``: the one funds check of every debit a wallet asks for
(transfers, holds, withdrawals). A wallet without limits (``Wallet.limits`` None) that has
the money pays one attribute test for both rows. Spend limits count the debits
``counts_as_spend`` names, in the UTC day and month of ``now_us`` (``spend_window``): what the
wallet spent there (``Wallet.spent_at``) plus what earlier items of the same step spent
(``spent``, the way ``moved`` carries balances) plus the amount must not exceed the limit.

A transfer between two shards runs the credit side first (``check_credit``, on the receiver's
shard, which then reserves the incoming amount so the answer stays true), then the debit side
(``decide_transfer`` on the sender's shard, which appends the record and debits in one step),
then the receiver applies the credit (``apply_credit``). When both sides fail, the earlier row
wins, so the answer does not depend on where the wallets live.

Batches (``decide_transfers``) decide their items in order, each exactly as ``decide_transfer``
would after the accepted items before it were applied (their balance effects are carried in a
``moved`` map, so nothing is mutated), and the accepted ones become one ``TransfersPosted``
record: ``apply`` posts its transfers in order, all at the record's LSN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ledger._model import (
    ALERTS_PER_WALLET_MAX,
    FIRINGS_PER_RECORD_MAX,
    INT64_MAX,
    INT64_MIN,
    SYSTEM_OWNER,
    TRANSFER_CHECK_ORDER,
    TREASURY_PREFIX,
    UNRECORDED_REASONS,
    AbortTransfers,
    AdvanceWithdrawal,
    AlertCreated,
    AlertDeleted,
    AlertDirection,
    AlertField,
    AlertsTriggered,
    AssetCreated,
    BatchDecided,
    ChangeWalletStatus,
    CompleteWithdrawal,
    CreateAlert,
    CreateAsset,
    CreateToken,
    CreateWallet,
    CreditReserved,
    DecideBatch,
    DeleteAlert,
    Duplicate,
    Event,
    ExpireHolds,
    Hold,
    HoldCaptured,
    HoldCreated,
    HoldVoided,
    Idempotency,
    PayoutStep,
    Reason,
    Refund,
    Refunded,
    Rejection,
    RequestWithdrawal,
    ReservationSettled,
    ReserveCredit,
    ResolveHold,
    RevokeToken,
    SettleReservation,
    SettleTransit,
    TokenCreated,
    TokenRevoked,
    TransactionStatus,
    TransactionType,
    Transfer,
    Transferred,
    TransfersAborted,
    TransitSettled,
    UpdateWallet,
    VoidReason,
    Wallet,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    WalletUpdated,
    WithdrawalStatus,
    WithdrawalUpdated,
    counts_as_spend,
    frozen_builder,
    is_treasury,
    new_transfer,
    new_transferred,
    treasury_id,
)
from ledger._state import Directory, State

Decision = list[Event] | Rejection | Duplicate


def check_idempotency(directory: Directory, idempotency: Idempotency | None) -> Decision | None:
    """Returns the replay or the rejection for a key already used, None for a fresh key. A key
    whose request was refused (its record holds the ``Rejection``) answers that rejection
    again: the very object recorded, so the same status and body."""
    if idempotency is None:
        return None
    key = (idempotency.scope, idempotency.key)
    record = directory.idempotency.get(key)
    if record is None:
        # An older record the on-disk index holds, brought back before the command was sent.
        record = directory.recalled.get(key)
        if record is None:
            if directory.prepared_keys and key in directory.prepared_keys:
                # An item of a batch of several sending groups, prepared and not yet ended:
                # its outcome is not known yet (ADR 0013). Never recorded.
                return Rejection(
                    reason=Reason.REQUEST_IN_PROGRESS,
                    detail=f"idempotency key {idempotency.key!r} belongs to an atomic batch still in progress; "
                           f"retry shortly",
                )
            return None
    if record.fingerprint != idempotency.fingerprint:
        return Rejection(
            reason=Reason.IDEMPOTENCY_KEY_REUSED,
            detail=f"idempotency key {idempotency.key!r} was used for a different request",
        )
    outcome = record.source  # a refusal is its own record; anything else is an event's
    if type(outcome) is Rejection:
        return outcome
    return Duplicate(record=record)


def refusal_recorded(directory: Directory, idempotency: Idempotency | None, rejection: Rejection) -> bool:
    """Whether ``rejection``, just decided for a request with ``idempotency``, must be recorded
    under its key: a keyed request, a reason not in ``UNRECORDED_REASONS``, and a key with no
    record yet (a recorded refusal answered again, or a key reused, records nothing new)."""
    if idempotency is None or rejection.reason in UNRECORDED_REASONS:
        return False
    key = (idempotency.scope, idempotency.key)
    return key not in directory.idempotency and key not in directory.recalled


def decide_create_asset(state: State, command: CreateAsset, now_us: int) -> Decision:
    existing = state.directory.assets.get(command.code)
    if existing is not None:
        if existing.scale == command.scale:
            return []  # already there: nothing to record
        return Rejection(
            reason=Reason.ASSET_EXISTS,
            detail=f"asset {command.code} exists with scale {existing.scale}",
        )
    # After this point the command must be accepted.
    return [AssetCreated(code=command.code, scale=command.scale, at_us=now_us)]


def decide_create_wallet(state: State, command: CreateWallet, now_us: int) -> Decision:
    replay = check_idempotency(state.directory, command.idempotency)
    if replay is not None:
        return replay
    if is_treasury(command.wallet_id) or command.owner_id == SYSTEM_OWNER:
        return Rejection(
            reason=Reason.RESERVED_ID,
            detail=f"ids starting with {TREASURY_PREFIX!r} and owner {SYSTEM_OWNER!r} belong to the system",
        )
    if command.asset not in state.directory.assets:
        return Rejection(reason=Reason.ASSET_NOT_FOUND, detail=f"asset {command.asset} does not exist")
    existing = state.wallets.get(command.wallet_id)
    if existing is not None:
        if existing.owner_id == command.owner_id and existing.asset == command.asset:
            return []  # the same wallet again: the caller gets the existing one
        return Rejection(
            reason=Reason.WALLET_EXISTS,
            detail=f"wallet {command.wallet_id} exists with another owner or asset",
        )
    # After this point the command must be accepted.
    created: list[Event] = [
        WalletCreated(
            wallet_id=command.wallet_id,
            owner_id=command.owner_id,
            asset=command.asset,
            metadata=command.metadata,
            at_us=now_us,
            idempotency=command.idempotency,
        )
    ]
    if command.overdraft_limit or command.daily_limit is not None or command.monthly_limit is not None:
        # A second record in the same step keeps WalletCreated's codec as it was.
        created.append(WalletUpdated(
            wallet_id=command.wallet_id, overdraft_limit=command.overdraft_limit,
            daily_limit=command.daily_limit, monthly_limit=command.monthly_limit,
            metadata=command.metadata, at_us=now_us,
        ))
    return created


def decide_update_wallet(state: State, command: UpdateWallet, now_us: int) -> Decision:
    """``PATCH /v1/wallets/{id}``. A closed wallet cannot be changed (``WALLET_CLOSED``);
    a frozen one can. Treasuries have no limits (the shell refuses them before the ledger).
    Nothing to change: no record."""
    wallet = state.wallets.get(command.wallet_id)
    if wallet is None or is_treasury(command.wallet_id):
        return Rejection(reason=Reason.SENDER_NOT_FOUND, detail=f"wallet {command.wallet_id} does not exist")
    if wallet.status == WalletStatus.CLOSED:
        return Rejection(reason=Reason.WALLET_CLOSED, detail=f"wallet {wallet.id} is closed")
    limits = wallet.limits
    overdraft = 0 if limits is None else limits.overdraft
    daily = None if limits is None else limits.daily
    monthly = None if limits is None else limits.monthly
    new_overdraft = overdraft if command.overdraft_limit is None else command.overdraft_limit
    new_daily = daily if command.daily_limit is None else (command.daily_limit or None)
    new_monthly = monthly if command.monthly_limit is None else (command.monthly_limit or None)
    metadata = wallet.metadata if command.metadata is None else command.metadata
    assert 0 <= new_overdraft <= INT64_MAX
    if (new_overdraft, new_daily, new_monthly, metadata) == (overdraft, daily, monthly, wallet.metadata):
        return []
    # After this point the command must be accepted.
    return [WalletUpdated(
        wallet_id=wallet.id, overdraft_limit=new_overdraft, daily_limit=new_daily, monthly_limit=new_monthly,
        metadata=metadata, at_us=now_us,
    )]


def decide_change_status(
    state: State, command: ChangeWalletStatus, now_us: int, *, pending: int = 0
) -> Decision:
    """``pending`` is the amount of transfers in flight into this wallet (a reservation the
    shard holds): a wallet with money on its way cannot be closed."""
    wallet = state.wallets.get(command.wallet_id)
    if wallet is None:
        return Rejection(reason=Reason.SENDER_NOT_FOUND, detail=f"wallet {command.wallet_id} does not exist")
    if wallet.status == command.status:
        return []  # already so
    if wallet.status == WalletStatus.CLOSED:
        return Rejection(reason=Reason.WALLET_CLOSED, detail=f"wallet {wallet.id} is closed")
    if state.reserved_in:
        pending += state.reserved_in.get(wallet.id, 0)  # transfers from other groups (ADR 0013)
    if command.status == WalletStatus.CLOSED and (wallet.balance != 0 or wallet.held != 0 or pending):
        return Rejection(
            reason=Reason.WALLET_NOT_EMPTY,
            detail=f"wallet {wallet.id} has balance {wallet.balance}, held {wallet.held}"
            + (", and transfers in flight" if pending else ""),
        )
    # After this point the command must be accepted.
    return [WalletStatusChanged(wallet_id=wallet.id, status=command.status, at_us=now_us)]


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditCheck:
    """The receiving side's verdict on a transfer: its asset (None if the wallet is missing)
    and the first credit-side failure, if any."""

    asset: str | None
    failure: Rejection | None


def check_credit(state: State, command: Transfer, *, pending: int = 0) -> CreditCheck:
    """Credit-side checks (rows 2, 6, 7) on the shard that owns ``to_wallet_id``. Pure.

    ``pending`` is what this shard already reserved for other transfers in flight into the
    same wallet, so that together they cannot overflow it."""
    return check_credit_to(state, command.to_wallet_id, command.amount, pending=pending)


def check_credit_to(state: State, wallet_id: str, amount: int, *, pending: int = 0) -> CreditCheck:
    """``check_credit`` for any movement that credits ``amount`` to ``wallet_id``."""
    wallet = state.wallets.get(wallet_id)
    if wallet is None:
        return CreditCheck(
            asset=None,
            failure=Rejection(
                reason=Reason.RECEIVER_NOT_FOUND, detail=f"wallet {wallet_id} does not exist"
            ),
        )
    if wallet.status == _CLOSED:
        return CreditCheck(
            asset=wallet.asset,
            failure=Rejection(reason=Reason.RECEIVER_CLOSED, detail=f"wallet {wallet.id} is closed"),
        )
    if wallet.balance + pending + amount > INT64_MAX:
        return CreditCheck(
            asset=wallet.asset,
            failure=Rejection(
                reason=Reason.BALANCE_OVERFLOW,
                detail=f"crediting {amount} would take wallet {wallet.id} past int64",
            ),
        )
    passed = _PASSED.get(wallet.asset)
    if passed is None:
        passed = _PASSED[wallet.asset] = _new_credit_check(wallet.asset, None)
    return passed


_new_credit_check = frozen_builder(CreditCheck)
# A passed check is the same immutable value for every wallet of an asset: made once per asset
# (a batch checks a thousand credits). Asset codes are few; the table never shrinks.
_PASSED: dict[str, CreditCheck] = {}
# The statuses the hot checks compare with, bound once: an enum member read through its class
# costs several times a global read.
_FROZEN = WalletStatus.FROZEN
_CLOSED = WalletStatus.CLOSED


def _earlier(first: Rejection | None, second: Rejection | None) -> Rejection | None:
    if first is None:
        return second
    if second is None:
        return first
    return first if TRANSFER_CHECK_ORDER[first.reason] <= TRANSFER_CHECK_ORDER[second.reason] else second


def check_debit(
    wallet: Wallet, amount: int, type_: TransactionType, now_us: int, *, moved: int = 0, spent: int = 0
) -> Rejection | None:
    """Rows 7 and 7b for a debit of ``amount`` from ``wallet`` (not a treasury): enough
    available down to minus its overdraft limit, then within its spend limits. ``moved`` and
    ``spent`` are what earlier items of the same step changed its balance by and spent."""
    available = wallet.available + moved
    limits = wallet.limits
    if limits is None:
        if available < amount:
            return Rejection(
                reason=Reason.INSUFFICIENT_FUNDS,
                detail=f"wallet {wallet.id} has {available} available, {amount} requested",
            )
        return None
    if available + limits.overdraft < amount:
        return Rejection(
            reason=Reason.INSUFFICIENT_FUNDS,
            detail=f"wallet {wallet.id} has {available} available with an overdraft limit of "
                   f"{limits.overdraft}, {amount} requested",
        )
    if (limits.daily is None and limits.monthly is None) or not counts_as_spend(type_):
        return None
    daily, monthly = wallet.spent_at(now_us)
    for limit, spent_now, window in ((limits.daily, daily, "daily"), (limits.monthly, monthly, "monthly")):
        if limit is not None and spent_now + spent + amount > limit:
            return Rejection(
                reason=Reason.SPEND_LIMIT_EXCEEDED,
                detail=f"wallet {wallet.id} has a {window} spend limit of {limit}, has spent "
                       f"{spent_now + spent} in this {'day' if window == 'daily' else 'month'} (UTC), "
                       f"{amount} requested",
            )
    return None


def decide_transfer(
    state: State, command: Transfer, now_us: int, credit: CreditCheck, *, moved: int = 0, spent: int = 0
) -> Decision:
    """Debit-side checks (rows 0, 1, 3, 4, 5, 7, 8) on the shard that owns the sender, given
    the credit side's verdict. Pure; the accepted event is the whole transfer.

    ``moved`` is what earlier transfers of the same step changed the sender's balance by without
    being applied yet (``decide_transfers``); the funds and overflow rows count it. ``spent``
    is what they spent from it (the spend limit row counts it)."""
    assert command.amount >= 1
    assert command.amount <= INT64_MAX
    replay = check_idempotency(state.directory, command.idempotency)
    if replay is not None:
        return replay
    sender_id = command.from_wallet_id
    if sender_id is None:
        assert command.type == TransactionType.DEPOSIT
        if credit.asset is None:
            # The receiving wallet does not exist, so neither does a treasury to debit.
            assert credit.failure is not None
            return credit.failure
        sender_id = treasury_id(credit.asset)
    failure: Rejection | None = None
    sender = state.wallets.get(sender_id)
    if sender is None:
        failure = Rejection(reason=Reason.SENDER_NOT_FOUND, detail=f"wallet {sender_id} does not exist")
    elif command.owner_id is not None and sender.owner_id != command.owner_id:
        failure = Rejection(reason=Reason.FORBIDDEN, detail=f"wallet {sender_id} belongs to another owner")
    elif sender_id == command.to_wallet_id:
        failure = Rejection(reason=Reason.SAME_WALLET, detail="a transfer needs two different wallets")
    elif credit.asset is not None and sender.asset != credit.asset:
        failure = Rejection(
            reason=Reason.ASSET_MISMATCH,
            detail=f"wallet {sender.id} holds {sender.asset}, wallet {command.to_wallet_id} holds {credit.asset}",
        )
    elif sender.status == _FROZEN:
        failure = Rejection(reason=Reason.SENDER_FROZEN, detail=f"wallet {sender.id} is frozen")
    elif sender.status == _CLOSED:
        failure = Rejection(reason=Reason.SENDER_CLOSED, detail=f"wallet {sender.id} is closed")
    elif not is_treasury(sender_id):
        # Rows 7 and 7b: a wallet without limits that has the money pays these two tests.
        if sender.limits is not None or sender.available + moved < command.amount:
            failure = check_debit(sender, command.amount, command.type, now_us, moved=moved, spent=spent)
    elif sender.balance + moved - command.amount < INT64_MIN:
        failure = Rejection(
            reason=Reason.BALANCE_OVERFLOW,
            detail=f"debiting {command.amount} would take {sender.id} past int64",
        )
    failure = _earlier(failure, credit.failure)
    if failure is not None:
        return failure
    assert sender is not None
    assert credit.asset == sender.asset
    # After this point the command must be accepted.
    if command.hold_timeout_s is not None:
        assert command.type == TransactionType.TRANSFER
        assert command.hold_timeout_s >= 1
        return [
            HoldCreated(
                transaction_id=command.transaction_id,
                type=command.type,
                from_wallet_id=sender.id,
                to_wallet_id=command.to_wallet_id,
                asset=sender.asset,
                amount=command.amount,
                description=command.description,
                metadata=command.metadata,
                at_us=now_us,
                deadline_us=now_us + command.hold_timeout_s * 1_000_000,
                destination=None,
                idempotency=command.idempotency,
            )
        ]
    return [
        new_transferred(
            command.transaction_id, command.type, sender_id, command.to_wallet_id, sender.asset,
            command.amount, command.description, command.metadata, now_us, command.idempotency,
        )
    ]


def decide_transfers(
    state: State,
    items: Sequence[tuple[Transfer, CreditCheck | None]],
    now_us: int,
    pending: Mapping[str, int],
    *,
    atomic: bool = False,
) -> list[Decision]:
    """Decides a batch of transfers in order, each as ``decide_transfer`` would after every
    accepted one before it had been applied. Pure: the effects of the accepted ones are
    carried in ``moved`` (balance change per wallet), never written to the state.

    An item's ``CreditCheck`` is the receiving shard's verdict when the receiver lives
    elsewhere; None means the receiver lives in ``state`` and is checked here, counting what
    ``pending`` reserves for it (transfers in flight into it) and what earlier items credited.
    Items must carry distinct idempotency keys (the caller checks): an item never sees an
    earlier item's key. With ``atomic`` the decisions stop after the first rejection.
    """
    moved: dict[str, int] = {}
    spent: dict[str, int] = {}  # only senders with limits: what this step spent from them
    wallets = state.wallets
    decisions: list[Decision] = []
    for command, credit in items:
        assert command.from_wallet_id is not None  # batches carry no deposits
        receiver_here = credit is None
        if credit is None:
            to_wallet_id = command.to_wallet_id
            credit = check_credit(
                state, command, pending=pending.get(to_wallet_id, 0) + moved.get(to_wallet_id, 0)
            )
        sender_id = command.from_wallet_id
        decision = decide_transfer(
            state, command, now_us, credit, moved=moved.get(sender_id, 0), spent=spent.get(sender_id, 0) if spent else 0
        )
        decisions.append(decision)
        if isinstance(decision, list):
            amount = command.amount
            moved[sender_id] = moved.get(sender_id, 0) - amount
            if wallets[sender_id].limits is not None:
                spent[sender_id] = spent.get(sender_id, 0) + amount
            if receiver_here:
                moved[command.to_wallet_id] = moved.get(command.to_wallet_id, 0) + amount
        elif atomic and isinstance(decision, Rejection):
            break
    return decisions


def decide_create_token(state: State, command: CreateToken, now_us: int) -> Decision:
    directory = state.directory
    if command.token_hash in directory.tokens or command.prefix in directory.token_prefixes:
        return Rejection(reason=Reason.TOKEN_EXISTS, detail="token prefix collision; try again")
    # After this point the command must be accepted.
    return [
        TokenCreated(
            token_hash=command.token_hash, prefix=command.prefix, owner_id=command.owner_id, at_us=now_us
        )
    ]


def decide_revoke_token(state: State, command: RevokeToken, now_us: int) -> Decision:
    if command.prefix not in state.directory.token_prefixes:
        return Rejection(reason=Reason.TOKEN_NOT_FOUND, detail=f"no token with prefix {command.prefix}")
    # After this point the command must be accepted.
    return [TokenRevoked(prefix=command.prefix, at_us=now_us)]


# -- holds and withdrawals ----------------------------------------------------------------
#
# A hold lives in its sender's shard (``State.holds``) from ``HoldCreated`` until one
# ``HoldCaptured`` or ``HoldVoided``: it is resolved at most once because resolving removes
# it. Checks, in order (each row a test in ``tests/ledger/test_holds.py``):
#
#     | # | check                                     | reason                   |
#     |---|-------------------------------------------|--------------------------|
#     | 0 | key seen (same / other request)           | replay / KEY_REUSED      |
#     | 1 | a pending hold with that id exists        | NOT_PENDING              |
#     | 2 | it is a transfer (withdrawals: the bank)  | NOT_PENDING              |
#     | 3 | the caller owns the sender                | FORBIDDEN                |
#     | 4 | capture amount <= held amount             | AMOUNT_EXCEEDS_HOLD      |
#     | 5 | capture: sender not frozen                | SENDER_FROZEN            |
#     | 6 | capture: receiver exists, open, no overflow | (credit side, as transfers) |
#
# Voiding is always allowed to the owner (releasing money is safe, also when frozen).
# Completing a withdrawal skips 3-5: the bank has paid, the ledger must record it.


def _hold_for(state: State, command: ResolveHold) -> Hold | Rejection:
    transaction_id = command.transaction_id
    owner_id = command.owner_id
    hold = state.holds.get(transaction_id)
    if hold is None or hold.type != TransactionType.TRANSFER:
        # The router saw it pending, from ``command.from_wallet_id``: were that wallet another
        # owner's, the answer is 403 (as the route would say), which is not recorded; the
        # 409 transfer_not_pending that the caller's own resolved hold gets is.
        sender = state.wallets.get(command.from_wallet_id)
        if owner_id is not None and sender is not None and sender.owner_id != owner_id:
            return Rejection(reason=Reason.FORBIDDEN, detail=f"transfer {transaction_id} belongs to another owner")
        return Rejection(reason=Reason.NOT_PENDING, detail=f"transfer {transaction_id} is not pending")
    if owner_id is not None and state.wallets[hold.from_wallet_id].owner_id != owner_id:
        return Rejection(reason=Reason.FORBIDDEN, detail=f"transfer {transaction_id} belongs to another owner")
    return hold


def _captured(hold: Hold, amount: int, now_us: int, reference: str | None,
              idempotency: Idempotency | None, reservation: str | None = None) -> HoldCaptured:
    return HoldCaptured(
        transaction_id=hold.transaction_id, type=hold.type, from_wallet_id=hold.from_wallet_id,
        to_wallet_id=hold.to_wallet_id, asset=hold.asset, amount=amount, held_amount=hold.amount,
        description=hold.description, metadata=hold.metadata, created_at_us=hold.created_at_us,
        created_lsn=hold.lsn, at_us=now_us, reference=reference, idempotency=idempotency,
        reservation=reservation,
    )


def _voided(hold: Hold, now_us: int, reason: VoidReason, detail: str | None,
            idempotency: Idempotency | None) -> HoldVoided:
    return HoldVoided(
        transaction_id=hold.transaction_id, type=hold.type, from_wallet_id=hold.from_wallet_id,
        to_wallet_id=hold.to_wallet_id, asset=hold.asset, amount=hold.amount,
        description=hold.description, metadata=hold.metadata, created_at_us=hold.created_at_us,
        created_lsn=hold.lsn, at_us=now_us, reason=reason, detail=detail, idempotency=idempotency,
    )


def capture_amount(command: ResolveHold, held_amount: int) -> int:
    return held_amount if command.amount is None else command.amount


def decide_capture(state: State, command: ResolveHold, now_us: int, credit: CreditCheck) -> Decision:
    """On the sender's shard, given the receiver's verdict for the captured amount."""
    assert command.capture
    replay = check_idempotency(state.directory, command.idempotency)
    if replay is not None:
        return replay
    hold = _hold_for(state, command)
    if isinstance(hold, Rejection):
        return hold
    assert (command.from_wallet_id, command.to_wallet_id) == (hold.from_wallet_id, hold.to_wallet_id)
    amount = capture_amount(command, hold.amount)
    assert amount >= 1
    if amount > hold.amount:
        return Rejection(
            reason=Reason.AMOUNT_EXCEEDS_HOLD,
            detail=f"transfer {hold.transaction_id} holds {hold.amount}, {amount} cannot be captured",
        )
    if state.wallets[hold.from_wallet_id].status == WalletStatus.FROZEN:
        return Rejection(reason=Reason.SENDER_FROZEN, detail=f"wallet {hold.from_wallet_id} is frozen")
    if credit.failure is not None:
        return credit.failure
    assert credit.asset == hold.asset
    # After this point the command must be accepted.
    return [_captured(hold, amount, now_us, None, command.idempotency, command.reservation)]


def decide_void(state: State, command: ResolveHold, now_us: int) -> Decision:
    assert not command.capture
    replay = check_idempotency(state.directory, command.idempotency)
    if replay is not None:
        return replay
    hold = _hold_for(state, command)
    if isinstance(hold, Rejection):
        return hold
    # After this point the command must be accepted.
    return [_voided(hold, now_us, VoidReason.VOIDED, None, command.idempotency)]


def decide_expire(state: State, command: ExpireHolds, now_us: int) -> Decision:
    """Voids the listed transfer holds whose deadline is at or before ``now_us``; ids that
    are gone or not yet due are skipped (the timer's list may be stale)."""
    due = []
    for transaction_id in command.transaction_ids:
        hold = state.holds.get(transaction_id)
        if hold is not None and hold.type == TransactionType.TRANSFER and 0 < hold.deadline_us <= now_us:
            due.append(hold)
    due.sort(key=lambda hold: (hold.deadline_us, hold.transaction_id))
    # After this point the command must be accepted.
    return [_voided(hold, now_us, VoidReason.EXPIRED, None, None) for hold in due]


def decide_request_withdrawal(state: State, command: RequestWithdrawal, now_us: int) -> Decision:
    """Rows 0, 1, 1b, 5, 7, 7b of the transfer table, on the wallet's shard."""
    assert command.amount >= 1
    replay = check_idempotency(state.directory, command.idempotency)
    if replay is not None:
        return replay
    wallet = state.wallets.get(command.wallet_id)
    if wallet is None or is_treasury(command.wallet_id):
        return Rejection(reason=Reason.SENDER_NOT_FOUND, detail=f"wallet {command.wallet_id} does not exist")
    if command.owner_id is not None and wallet.owner_id != command.owner_id:
        return Rejection(reason=Reason.FORBIDDEN, detail=f"wallet {wallet.id} belongs to another owner")
    if wallet.status == WalletStatus.FROZEN:
        return Rejection(reason=Reason.SENDER_FROZEN, detail=f"wallet {wallet.id} is frozen")
    if wallet.status == WalletStatus.CLOSED:
        return Rejection(reason=Reason.SENDER_CLOSED, detail=f"wallet {wallet.id} is closed")
    failure = check_debit(wallet, command.amount, TransactionType.WITHDRAWAL, now_us)
    if failure is not None:
        return failure
    assert command.withdrawal_id not in state.withdrawals
    # After this point the command must be accepted.
    return [
        HoldCreated(
            transaction_id=command.withdrawal_id, type=TransactionType.WITHDRAWAL,
            from_wallet_id=wallet.id, to_wallet_id=treasury_id(wallet.asset), asset=wallet.asset,
            amount=command.amount, description=None, metadata=None, at_us=now_us, deadline_us=0,
            destination=command.destination, idempotency=command.idempotency,
        )
    ]


# Payout steps a withdrawal accepts, by its status.
_STEP_FROM = {
    PayoutStep.BEGIN: (WithdrawalStatus.PENDING, WithdrawalStatus.PROCESSING),
    PayoutStep.TRANSIENT: (WithdrawalStatus.PROCESSING,),
    PayoutStep.DEAD: (WithdrawalStatus.PROCESSING,),
    PayoutStep.REFUSED: (WithdrawalStatus.PROCESSING,),
    PayoutStep.RETRY: (WithdrawalStatus.DEAD,),
}
assert set(_STEP_FROM) == set(PayoutStep)


def decide_advance_withdrawal(state: State, command: AdvanceWithdrawal, now_us: int) -> Decision:
    withdrawal = state.withdrawals.get(command.withdrawal_id)
    if withdrawal is None:
        return Rejection(
            reason=Reason.WITHDRAWAL_NOT_FOUND, detail=f"withdrawal {command.withdrawal_id} does not exist"
        )
    if withdrawal.status not in _STEP_FROM[command.step]:
        reason = Reason.WITHDRAWAL_NOT_DEAD if command.step == PayoutStep.RETRY else Reason.WITHDRAWAL_NOT_PAYABLE
        return Rejection(reason=reason, detail=f"withdrawal {withdrawal.id} is {withdrawal.status.label}")
    # After this point the command must be accepted.
    step = command.step
    if step == PayoutStep.REFUSED:
        hold = state.holds[withdrawal.id]
        return [_voided(hold, now_us, VoidReason.REFUSED, command.detail, None)]
    status, attempts, error, next_at = withdrawal.status, withdrawal.attempts, withdrawal.last_error, 0
    if step == PayoutStep.BEGIN:
        status, attempts = WithdrawalStatus.PROCESSING, attempts + 1
    elif step == PayoutStep.TRANSIENT:
        error, next_at = command.detail, command.retry_at_us
    elif step == PayoutStep.DEAD:
        status, error = WithdrawalStatus.DEAD, command.detail
    else:
        assert step == PayoutStep.RETRY
        status, attempts = WithdrawalStatus.PENDING, 0
    return [
        WithdrawalUpdated(
            withdrawal_id=withdrawal.id, wallet_id=withdrawal.wallet_id, status=status,
            attempts=attempts, last_error=error, next_attempt_at_us=next_at, at_us=now_us,
        )
    ]


def decide_complete_withdrawal(
    state: State, command: CompleteWithdrawal, now_us: int, credit: CreditCheck
) -> Decision:
    """The bank paid: only an attempt in progress can complete. A treasury that would
    overflow int64 refuses (the worker keeps retrying; see the README's limits)."""
    withdrawal = state.withdrawals.get(command.withdrawal_id)
    if withdrawal is None:
        return Rejection(
            reason=Reason.WITHDRAWAL_NOT_FOUND, detail=f"withdrawal {command.withdrawal_id} does not exist"
        )
    if withdrawal.status != WithdrawalStatus.PROCESSING:
        return Rejection(
            reason=Reason.WITHDRAWAL_NOT_PAYABLE, detail=f"withdrawal {withdrawal.id} is {withdrawal.status.label}"
        )
    if credit.failure is not None:
        return credit.failure
    hold = state.holds[withdrawal.id]
    assert hold.amount == withdrawal.amount == command.amount
    # After this point the command must be accepted.
    return [_captured(hold, hold.amount, now_us, command.reference, None)]


# -- balance alerts -----------------------------------------------------------------------
#
# Created and deleted through the log, on the shard that owns the wallet. Checks, in order
# (each row a test in ``tests/ledger/test_alerts.py``):
#
#     | # | check                                   | reason               |
#     |---|-----------------------------------------|----------------------|
#     | 1 | create: the wallet exists               | SENDER_NOT_FOUND     |
#     | 2 | create: the caller owns it              | FORBIDDEN            |
#     | 3 | create: fewer than ALERTS_PER_WALLET_MAX| ALERT_LIMIT_REACHED  |
#     | 1 | delete: the alert exists                | ALERT_NOT_FOUND      |
#     | 2 | delete: the caller owns its wallet      | FORBIDDEN            |
#
# Firings are not requests: ``decide_firings`` turns what the changes of a step owe
# (``State.crossings``, filled by ``ledger._apply``) into records; nothing can refuse them.


def decide_create_alert(state: State, command: CreateAlert, now_us: int) -> Decision:
    assert command.alert_id not in state.alerts
    wallet = state.wallets.get(command.wallet_id)
    if wallet is None:
        return Rejection(reason=Reason.SENDER_NOT_FOUND, detail=f"wallet {command.wallet_id} does not exist")
    if command.owner_id is not None and wallet.owner_id != command.owner_id:
        return Rejection(reason=Reason.FORBIDDEN, detail=f"wallet {wallet.id} belongs to another owner")
    watching = state.watched.get(wallet.id, ())
    if len(watching) >= ALERTS_PER_WALLET_MAX:
        return Rejection(
            reason=Reason.ALERT_LIMIT_REACHED,
            detail=f"wallet {wallet.id} has {len(watching)} alerts, the most a wallet may have "
                   f"({ALERTS_PER_WALLET_MAX}); delete one first",
        )
    # After this point the command must be accepted.
    value = wallet.balance if command.field == AlertField.BALANCE else wallet.available
    holds = value < command.threshold if command.direction == AlertDirection.BELOW else value > command.threshold
    return [
        AlertCreated(
            alert_id=command.alert_id, wallet_id=wallet.id, field=command.field, direction=command.direction,
            threshold=command.threshold, triggered=holds, at_us=now_us,
        )
    ]


def decide_delete_alert(state: State, command: DeleteAlert, now_us: int) -> Decision:
    alert = state.alerts.get(command.alert_id)
    if alert is None:
        return Rejection(reason=Reason.ALERT_NOT_FOUND, detail=f"alert {command.alert_id} does not exist")
    if command.owner_id is not None and state.wallets[alert.wallet_id].owner_id != command.owner_id:
        return Rejection(reason=Reason.FORBIDDEN, detail=f"alert {alert.id} is on a wallet of another owner")
    # After this point the command must be accepted.
    return [AlertDeleted(alert_id=alert.id, wallet_id=alert.wallet_id, at_us=now_us)]


def decide_firings(state: State, now_us: int) -> list[AlertsTriggered]:
    """The records that pay every firing ``state`` owes, in the order the crossings happened
    (at most ``FIRINGS_PER_RECORD_MAX`` per record). Pure: applying them empties the list."""
    crossings = state.crossings
    return [
        AlertsTriggered(firings=tuple(crossings[start : start + FIRINGS_PER_RECORD_MAX]), at_us=now_us)
        for start in range(0, len(crossings), FIRINGS_PER_RECORD_MAX)
    ]


# -- refunds ------------------------------------------------------------------------------
#
# A refund is a transfer from the original's receiver back to its sender (a deposit's: the
# treasury), run with the credit-first protocol like any transfer and decided on the shard that
# owns the refunding wallet, which keeps ``State.refunded`` for every original that wallet
# received: the cap is decided in the same step as the debit, so concurrent refunds can never
# refund more than the original together. ADR 0011 has the design. Checks, in order (each row a
# test in ``tests/ledger/test_refunds.py``):
#
#     | # | check                                          | reason                   |
#     |---|------------------------------------------------|--------------------------|
#     | 0 | key seen (same / other request)                | replay / KEY_REUSED      |
#     | 1 | the original is a posted deposit or transfer   | NOT_REFUNDABLE           |
#     |   |   (captured holds included)                    |                          |
#     | 2 | the refunding wallet exists                    | SENDER_NOT_FOUND         |
#     | 3 | the caller owns it                             | FORBIDDEN                |
#     | 4 | something is left, amount <= what is left      | REFUND_EXCEEDS_REMAINING |
#     |   |   (no amount: what is left)                    |                          |
#     | 5 | rows 2-8 of the transfer table, by             | as there: RECEIVER_*,    |
#     |   |   ``decide_transfer`` itself (the same funds   | SENDER_FROZEN/_CLOSED,   |
#     |   |   check as a transfer's row 7)                 | INSUFFICIENT_FUNDS, ...  |
#
# The refunded wallet (the original's sender) may be frozen, not closed: row 6 of the transfer
# table checks only that it is open.

_REFUNDABLE = (TransactionType.DEPOSIT, TransactionType.TRANSFER)


def refund_reservation(command: Refund) -> int:
    """What step 1 reserves on the refunded wallet: the amount asked, or (no amount) the
    original's, which bounds what is left; the debit step takes at most that."""
    return command.original_amount if command.amount is None else command.amount


def decide_refund(state: State, command: Refund, now_us: int, credit: CreditCheck) -> Decision:
    """On the shard that owns ``command.from_wallet_id``, given the refunded wallet's verdict
    for ``refund_reservation(command)``. Pure; the accepted event is the whole refund."""
    assert command.original_amount >= 1
    assert command.amount is None or command.amount >= 1
    replay = check_idempotency(state.directory, command.idempotency)
    if replay is not None:
        return replay
    if command.original_type not in _REFUNDABLE or command.original_status != TransactionStatus.POSTED:
        what = (command.original_type.label if command.original_status == TransactionStatus.POSTED
                else f"{command.original_status.label} {command.original_type.label}")
        return Rejection(
            reason=Reason.NOT_REFUNDABLE,
            detail=f"transaction {command.refund_of} is a {what}: only posted deposits and transfers can be refunded",
        )
    sender = state.wallets.get(command.from_wallet_id)
    if sender is None:
        return Rejection(reason=Reason.SENDER_NOT_FOUND, detail=f"wallet {command.from_wallet_id} does not exist")
    if command.owner_id is not None and sender.owner_id != command.owner_id:
        return Rejection(
            reason=Reason.FORBIDDEN,
            detail=f"transaction {command.refund_of} was received by a wallet of another owner",
        )
    tally = state.refunded.get(command.refund_of)
    # The first refund's record fixed the original's amount; later ones read the same fact.
    original_amount = command.original_amount if tally is None else tally.original_amount
    remaining = original_amount - (0 if tally is None else tally.refunded)
    assert remaining >= 0
    amount = remaining if command.amount is None else command.amount
    if remaining == 0 or amount > remaining:
        return Rejection(
            reason=Reason.REFUND_EXCEEDS_REMAINING,
            detail=f"transaction {command.refund_of} has {remaining} left to refund"
            + ("" if command.amount is None else f", {amount} requested"),
        )
    assert amount <= refund_reservation(command)
    # The transfer's own checks, funds included (one implementation of each rule). The key was
    # checked above; the refund records it.
    decision = decide_transfer(
        state,
        new_transfer(command.transaction_id, TransactionType.REFUND, command.from_wallet_id,
                     command.to_wallet_id, amount, command.description, command.metadata, None,
                     command.owner_id, None),
        now_us,
        credit,
    )
    if not isinstance(decision, list):
        return decision
    (transferred,) = decision
    assert isinstance(transferred, Transferred)
    assert transferred.from_wallet_id == sender.id
    # After this point the command must be accepted.
    return [
        Refunded(
            transaction_id=command.transaction_id, refund_of=command.refund_of, from_wallet_id=sender.id,
            to_wallet_id=command.to_wallet_id, asset=sender.asset, amount=amount,
            original_amount=original_amount, description=command.description, metadata=command.metadata,
            at_us=now_us, idempotency=command.idempotency,
        )
    ]



# -- transfers between ledger groups (ADR 0013): prepare and settle at the receiver's group,
# settle and abort at the sender's. The commit itself is ``decide_transfer`` at the sender's
# group, with the receiver group's verdict as its credit check.


def decide_reserve_credit(state: State, command: ReserveCredit, now_us: int, *, pending: int = 0) -> Decision:
    """Prepare: the credit checks of ADR 0001 on ``to_wallet_id``, counting what is already
    reserved on it (``pending``: this shard's transfers in flight; the group's reservations are
    in the state), then the reservation. A transaction reserved already answers ``[]`` (the
    verdict stands: a retried prepare); a failure is the verdict, recorded nowhere."""
    if command.transaction_id in state.reservations:
        return []
    assert 1 <= command.amount <= INT64_MAX
    check = check_credit_to(state, command.to_wallet_id, command.amount,
                            pending=pending + state.reserved_in.get(command.to_wallet_id, 0))
    if check.failure is not None:
        return check.failure
    assert check.asset is not None
    return [CreditReserved(
        transaction_id=command.transaction_id, wallet_id=command.to_wallet_id, asset=check.asset,
        amount=command.amount, from_wallet_id=command.from_wallet_id, from_group=command.from_group,
        description=command.description, metadata=command.metadata, at_us=now_us, refund_of=command.refund_of,
        capture_of=command.capture_of,
    )]


def decide_settle_reservation(state: State, command: SettleReservation, now_us: int) -> Decision:
    """Credit or release a reservation; ``[]`` when it is gone (settled before: a repeated
    settle changes nothing). The credit needs no check: the reservation made it safe."""
    reservation = state.reservations.get(command.transaction_id)
    if reservation is None:
        return []
    assert reservation.wallet_id == command.wallet_id, (reservation, command)
    return [ReservationSettled(
        transaction_id=reservation.transaction_id, wallet_id=reservation.wallet_id, asset=reservation.asset,
        amount=reservation.amount, from_wallet_id=reservation.from_wallet_id, from_group=reservation.from_group,
        description=reservation.description, metadata=reservation.metadata, reserved_at_us=reservation.at_us,
        credited=command.credit, at_us=now_us, refund_of=reservation.refund_of, capture_of=reservation.capture_of,
    )]


def decide_settle_transit(state: State, command: SettleTransit, now_us: int) -> Decision:
    """Stops owing the named transfers that are still owed (the others were settled before)."""
    owed = state.directory.owed
    settled = tuple(dict.fromkeys(id_ for id_ in command.transaction_ids if id_ in owed))
    return [TransitSettled(transaction_ids=settled, at_us=now_us)] if settled else []


def decide_abort_transfers(state: State, command: AbortTransfers, now_us: int) -> Decision:
    """Presumed abort: of the named transfers, those this group has not committed (not owed:
    a committed one stays owed until its receiver credited it, and a receiver asks only about
    reservations it still has), does not hold in a prepared batch (its coordinator decides those)
    and has not aborted already are aborted for good."""
    directory = state.directory
    aborted = tuple(dict.fromkeys(
        id_ for id_ in command.transaction_ids
        if id_ not in directory.owed and id_ not in directory.aborted and id_ not in directory.prepared_ids
    ))
    return [TransfersAborted(transaction_ids=aborted, at_us=now_us)] if aborted else []


def decide_batch(state: State, command: DecideBatch, now_us: int) -> Decision:
    """The coordinator's decision on a batch of several sending groups, unless it has one:
    the first decision stands (``Directory.decided`` then answers)."""
    if command.batch in state.directory.decided:
        return []
    return [BatchDecided(batch=command.batch, committed=command.committed, at_us=now_us)]


def decide(state: State, command: object, now_us: int) -> Decision:
    """Decides any command against a state that holds every wallet it names (one shard, or
    the whole ledger). The shard actors call the per-command functions directly."""
    if isinstance(command, Transfer):
        return decide_transfer(state, command, now_us, check_credit(state, command))
    if isinstance(command, CreateWallet):
        return decide_create_wallet(state, command, now_us)
    if isinstance(command, ChangeWalletStatus):
        return decide_change_status(state, command, now_us)
    if isinstance(command, UpdateWallet):
        return decide_update_wallet(state, command, now_us)
    if isinstance(command, CreateAsset):
        return decide_create_asset(state, command, now_us)
    if isinstance(command, CreateToken):
        return decide_create_token(state, command, now_us)
    if isinstance(command, RevokeToken):
        return decide_revoke_token(state, command, now_us)
    if isinstance(command, ResolveHold):
        if not command.capture:
            return decide_void(state, command, now_us)
        hold = state.holds.get(command.transaction_id)
        amount = capture_amount(command, hold.amount if hold is not None else 1)
        return decide_capture(state, command, now_us, check_credit_to(state, command.to_wallet_id, amount))
    if isinstance(command, ExpireHolds):
        return decide_expire(state, command, now_us)
    if isinstance(command, RequestWithdrawal):
        return decide_request_withdrawal(state, command, now_us)
    if isinstance(command, AdvanceWithdrawal):
        return decide_advance_withdrawal(state, command, now_us)
    if isinstance(command, CompleteWithdrawal):
        credit = check_credit_to(state, treasury_id(command.asset), command.amount)
        return decide_complete_withdrawal(state, command, now_us, credit)
    if isinstance(command, CreateAlert):
        return decide_create_alert(state, command, now_us)
    if isinstance(command, DeleteAlert):
        return decide_delete_alert(state, command, now_us)
    if isinstance(command, Refund):
        credit = check_credit_to(state, command.to_wallet_id, refund_reservation(command))
        return decide_refund(state, command, now_us, credit)
    if isinstance(command, ReserveCredit):
        return decide_reserve_credit(state, command, now_us)
    if isinstance(command, SettleReservation):
        return decide_settle_reservation(state, command, now_us)
    if isinstance(command, SettleTransit):
        return decide_settle_transit(state, command, now_us)
    if isinstance(command, AbortTransfers):
        return decide_abort_transfers(state, command, now_us)
    if isinstance(command, DecideBatch):
        return decide_batch(state, command, now_us)
    raise AssertionError(f"unknown command {command!r}")

