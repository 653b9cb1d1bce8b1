"""The ledger state machine: ``decide`` (pure, total) and ``apply`` (the only mutator).

Stdlib only: no trio, no I/O, no clock, no randomness. Time arrives as ``now_us``; ids arrive
inside commands. Replay calls ``apply`` alone, so history never depends on today's rules.

State is split the way the shard actors own it: a ``Directory`` (assets, tokens, idempotency
records: small, shared, mutated only inside an actor's synchronous step and always in log
order) and a ``State`` per shard holding the wallets that shard owns. A full replay uses one
``State`` holding every wallet.

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
    | 7 | enough available (treasury exempt)      | INSUFFICIENT_FUNDS     | debit    |
    | 8 | no balance leaves int64                 | BALANCE_OVERFLOW       | both     |

Funds are checked before overflow so that a sender cannot learn a stranger's balance by
probing with amounts it does not have (overflow would reveal the receiver's balance).

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

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ledger._model import (
    BATCH_ITEMS_MAX,
    IDEMPOTENCY_RETENTION_US,
    INT64_MAX,
    INT64_MIN,
    SYSTEM_OWNER,
    TRANSFER_CHECK_ORDER,
    TREASURY_PREFIX,
    Asset,
    AssetCreated,
    ChangeWalletStatus,
    CreateAsset,
    CreateToken,
    CreateWallet,
    Duplicate,
    Event,
    Idempotency,
    IdempotencyRecord,
    Reason,
    Rejection,
    RevokeToken,
    Token,
    TokenCreated,
    TokenRevoked,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    Wallet,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    frozen_builder,
    is_treasury,
    new_idempotency_record,
    new_transferred,
    treasury_id,
)


@dataclass(slots=True)
class Directory:
    """Assets, tokens and idempotency records: one per process, mutated in log order."""

    assets: dict[str, Asset] = field(default_factory=dict)
    tokens: dict[bytes, Token] = field(default_factory=dict)
    token_prefixes: dict[str, bytes] = field(default_factory=dict)
    # Insertion order is LSN order, so expiry pops from the front.
    idempotency: dict[tuple[str, str], IdempotencyRecord] = field(default_factory=dict)
    lsn: int = 0
    at_us: int = 0


@dataclass(slots=True)
class State:
    directory: Directory
    wallets: dict[str, Wallet] = field(default_factory=dict)


def new_state() -> State:
    return State(directory=Directory())


Decision = list[Event] | Rejection | Duplicate


# -- decide ------------------------------------------------------------------------------


def check_idempotency(directory: Directory, idempotency: Idempotency | None) -> Decision | None:
    """Returns the replay or the rejection for a key already used, None for a fresh key."""
    if idempotency is None:
        return None
    record = directory.idempotency.get((idempotency.scope, idempotency.key))
    if record is None:
        return None
    if record.fingerprint != idempotency.fingerprint:
        return Rejection(
            reason=Reason.IDEMPOTENCY_KEY_REUSED,
            detail=f"idempotency key {idempotency.key!r} was used for a different request",
        )
    return Duplicate(record=record)


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
    return [
        WalletCreated(
            wallet_id=command.wallet_id,
            owner_id=command.owner_id,
            asset=command.asset,
            metadata=command.metadata,
            at_us=now_us,
            idempotency=command.idempotency,
        )
    ]


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
    wallet = state.wallets.get(command.to_wallet_id)
    if wallet is None:
        return CreditCheck(
            asset=None,
            failure=Rejection(
                reason=Reason.RECEIVER_NOT_FOUND, detail=f"wallet {command.to_wallet_id} does not exist"
            ),
        )
    if wallet.status == WalletStatus.CLOSED:
        return CreditCheck(
            asset=wallet.asset,
            failure=Rejection(reason=Reason.RECEIVER_CLOSED, detail=f"wallet {wallet.id} is closed"),
        )
    if wallet.balance + pending + command.amount > INT64_MAX:
        return CreditCheck(
            asset=wallet.asset,
            failure=Rejection(
                reason=Reason.BALANCE_OVERFLOW,
                detail=f"crediting {command.amount} would take wallet {wallet.id} past int64",
            ),
        )
    return _new_credit_check(wallet.asset, None)


_new_credit_check = frozen_builder(CreditCheck)


def _earlier(first: Rejection | None, second: Rejection | None) -> Rejection | None:
    if first is None:
        return second
    if second is None:
        return first
    return first if TRANSFER_CHECK_ORDER[first.reason] <= TRANSFER_CHECK_ORDER[second.reason] else second


def decide_transfer(
    state: State, command: Transfer, now_us: int, credit: CreditCheck, *, moved: int = 0
) -> Decision:
    """Debit-side checks (rows 0, 1, 3, 4, 5, 7, 8) on the shard that owns the sender, given
    the credit side's verdict. Pure; the accepted event is the whole transfer.

    ``moved`` is what earlier transfers of the same step changed the sender's balance by without
    being applied yet (``decide_transfers``); the funds and overflow rows count it."""
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
    elif sender.status == WalletStatus.FROZEN:
        failure = Rejection(reason=Reason.SENDER_FROZEN, detail=f"wallet {sender.id} is frozen")
    elif sender.status == WalletStatus.CLOSED:
        failure = Rejection(reason=Reason.SENDER_CLOSED, detail=f"wallet {sender.id} is closed")
    elif not (treasury := is_treasury(sender_id)) and sender.available + moved < command.amount:
        failure = Rejection(
            reason=Reason.INSUFFICIENT_FUNDS,
            detail=f"wallet {sender.id} has {sender.available + moved} available, {command.amount} requested",
        )
    elif treasury and sender.balance + moved - command.amount < INT64_MIN:
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
        decision = decide_transfer(state, command, now_us, credit, moved=moved.get(sender_id, 0))
        decisions.append(decision)
        if isinstance(decision, list):
            amount = command.amount
            moved[sender_id] = moved.get(sender_id, 0) - amount
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


def decide(state: State, command: object, now_us: int) -> Decision:
    """Decides any command against a state that holds every wallet it names (one shard, or
    the whole ledger). The shard actors call the per-command functions directly."""
    if isinstance(command, Transfer):
        return decide_transfer(state, command, now_us, check_credit(state, command))
    if isinstance(command, CreateWallet):
        return decide_create_wallet(state, command, now_us)
    if isinstance(command, ChangeWalletStatus):
        return decide_change_status(state, command, now_us)
    if isinstance(command, CreateAsset):
        return decide_create_asset(state, command, now_us)
    if isinstance(command, CreateToken):
        return decide_create_token(state, command, now_us)
    if isinstance(command, RevokeToken):
        return decide_revoke_token(state, command, now_us)
    raise AssertionError(f"unknown command {command!r}")


# -- apply -------------------------------------------------------------------------------


def apply_directory(directory: Directory, event: Event, lsn: int) -> None:
    """The part of an event that lands in the directory. Called once per record, in LSN
    order, by whichever actor appended it."""
    assert lsn == directory.lsn + 1, (lsn, directory.lsn)
    directory.lsn = lsn
    if event.at_us > directory.at_us:
        directory.at_us = event.at_us
    if isinstance(event, TransfersPosted):
        assert 1 <= len(event.transfers) <= BATCH_ITEMS_MAX, len(event.transfers)
        records = directory.idempotency
        for transfer in event.transfers:
            assert transfer.at_us == event.at_us
            idempotency = transfer.idempotency
            if idempotency is not None:
                key = (idempotency.scope, idempotency.key)
                assert key not in records
                records[key] = new_idempotency_record(idempotency.fingerprint, lsn, transfer.at_us, transfer)
        _expire_idempotency(directory)
    elif isinstance(event, Transferred | WalletCreated) and event.idempotency is not None:
        key = (event.idempotency.scope, event.idempotency.key)
        assert key not in directory.idempotency
        directory.idempotency[key] = IdempotencyRecord(
            fingerprint=event.idempotency.fingerprint, lsn=lsn, at_us=event.at_us, event=event
        )
        _expire_idempotency(directory)
    elif isinstance(event, AssetCreated):
        assert event.code not in directory.assets
        directory.assets[event.code] = Asset(code=event.code, scale=event.scale, created_at_us=event.at_us)
    elif isinstance(event, TokenCreated):
        assert event.token_hash not in directory.tokens
        directory.tokens[event.token_hash] = Token(
            token_hash=event.token_hash, prefix=event.prefix, owner_id=event.owner_id, created_at_us=event.at_us
        )
        directory.token_prefixes[event.prefix] = event.token_hash
    elif isinstance(event, TokenRevoked):
        token_hash = directory.token_prefixes.pop(event.prefix)
        del directory.tokens[token_hash]


def _expire_idempotency(directory: Directory) -> None:
    horizon = directory.at_us - IDEMPOTENCY_RETENTION_US
    records = directory.idempotency
    while records:
        key = next(iter(records))
        if records[key].at_us >= horizon:
            break
        del records[key]


def apply_debit(state: State, event: Transferred, lsn: int) -> None:
    sender = state.wallets[event.from_wallet_id]
    assert sender.asset == event.asset
    if is_treasury(sender.id):
        assert sender.balance - event.amount >= INT64_MIN
    else:
        assert sender.available >= event.amount
    sender.balance -= event.amount
    # max(): on a live shard a credit can arrive after later records touched the same wallet
    # (the cross-shard lag); the result must equal replay in LSN order.
    sender.updated_at_us = max(sender.updated_at_us, event.at_us)
    sender.lsn = max(sender.lsn, lsn)


def apply_credit(state: State, event: Transferred, lsn: int) -> None:
    receiver = state.wallets[event.to_wallet_id]
    assert receiver.asset == event.asset
    assert receiver.balance + event.amount <= INT64_MAX
    receiver.balance += event.amount
    receiver.updated_at_us = max(receiver.updated_at_us, event.at_us)
    receiver.lsn = max(receiver.lsn, lsn)


def apply_wallets(state: State, event: Event, lsn: int) -> None:
    """The part of a non-transfer event that lands on wallets (all on the same shard)."""
    if isinstance(event, WalletCreated):
        assert event.wallet_id not in state.wallets
        state.wallets[event.wallet_id] = Wallet(
            id=event.wallet_id,
            owner_id=event.owner_id,
            asset=event.asset,
            metadata=event.metadata,
            created_at_us=event.at_us,
            lsn=lsn,
        )
    elif isinstance(event, WalletStatusChanged):
        wallet = state.wallets[event.wallet_id]
        assert wallet.status != WalletStatus.CLOSED
        if event.status == WalletStatus.CLOSED:
            assert wallet.balance == 0
            assert wallet.held == 0
        wallet.status = event.status
        wallet.updated_at_us = max(wallet.updated_at_us, event.at_us)
        wallet.lsn = max(wallet.lsn, lsn)
    elif isinstance(event, AssetCreated):
        wallet_id = treasury_id(event.code)
        assert wallet_id not in state.wallets
        state.wallets[wallet_id] = Wallet(
            id=wallet_id, owner_id=SYSTEM_OWNER, asset=event.code, metadata=None,
            created_at_us=event.at_us, lsn=lsn,
        )


def apply(state: State, event: Event, lsn: int) -> None:
    """Applies a whole record to a state that owns every wallet it touches (replay)."""
    apply_directory(state.directory, event, lsn)
    if isinstance(event, Transferred):
        apply_debit(state, event, lsn)
        apply_credit(state, event, lsn)
    elif isinstance(event, TransfersPosted):
        for transfer in event.transfers:
            apply_debit(state, transfer, lsn)
            apply_credit(state, transfer, lsn)
    else:
        apply_wallets(state, event, lsn)


# -- invariants --------------------------------------------------------------------------


def check_invariants(wallets: Iterable[Wallet], directory: Directory) -> None:
    """O(N) check of the ledger's invariants over every wallet. Raises AssertionError."""
    totals: dict[str, int] = {}
    treasuries = set()
    for wallet in wallets:
        assert wallet.asset in directory.assets, wallet
        assert INT64_MIN <= wallet.balance <= INT64_MAX, wallet
        assert 0 <= wallet.held, wallet
        assert wallet.lsn <= directory.lsn, wallet
        if is_treasury(wallet.id):
            treasuries.add(wallet.asset)
            assert wallet.id == treasury_id(wallet.asset), wallet
            assert wallet.owner_id == SYSTEM_OWNER, wallet
            assert wallet.held == 0, wallet
        else:
            assert wallet.owner_id != SYSTEM_OWNER, wallet
            assert wallet.held <= wallet.balance, wallet
            assert wallet.available >= 0, wallet
        if wallet.status == WalletStatus.CLOSED:
            assert wallet.balance == 0, wallet
        totals[wallet.asset] = totals.get(wallet.asset, 0) + wallet.balance
    for asset in directory.assets:
        assert asset in treasuries, f"asset {asset} has no treasury wallet"
        assert totals.get(asset, 0) == 0, f"asset {asset} sums to {totals.get(asset)}, not 0"
    for token_hash, token in directory.tokens.items():
        assert directory.token_prefixes[token.prefix] == token_hash
    assert len(directory.tokens) == len(directory.token_prefixes)
    previous = 0
    for record in directory.idempotency.values():
        assert record.lsn >= previous  # the items of one batch record share its LSN
        previous = record.lsn
        assert record.lsn <= directory.lsn


def state_digest(wallets: Iterable[Wallet], directory: Directory) -> str:
    """A digest of everything the state holds, independent of dict order and shard layout."""
    digest = hashlib.blake2b(digest_size=16)
    for wallet in sorted(wallets, key=lambda w: w.id):
        digest.update(
            repr(
                (wallet.id, wallet.owner_id, wallet.asset, wallet.balance, wallet.held,
                 int(wallet.status), wallet.created_at_us, wallet.updated_at_us,
                 sorted((wallet.metadata or {}).items(), key=str))
            ).encode()
        )
    for code in sorted(directory.assets):
        digest.update(repr(directory.assets[code]).encode())
    for prefix in sorted(directory.token_prefixes):
        digest.update(repr(directory.tokens[directory.token_prefixes[prefix]]).encode())
    for key, record in sorted(directory.idempotency.items()):
        digest.update(repr((key, record.fingerprint, record.lsn)).encode())
    digest.update(repr(directory.lsn).encode())
    return digest.hexdigest()
