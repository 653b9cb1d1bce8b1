"""The ledger state machine (``decide`` + ``apply``) against a boringly simple reference model.

The model is a few dicts and one function per command that runs the checks of the rejection
table in ``ledger/_decide.py`` top to bottom (the refund table too: refunds of the posted
transactions, partial, whole, past the cap, of refunds, by their receiver's owner or not). After every step the real state must agree with the
model (wallets, assets, tokens, idempotency keys), satisfy ``check_invariants``, and equal a
fresh replay of every accepted event through the codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger import (
    IDEMPOTENCY_RETENTION_US,
    INT64_MAX,
    INT64_MIN,
    SCALE_MAX,
    AssetCreated,
    ChangeWalletStatus,
    Command,
    CreateAsset,
    CreateToken,
    CreateWallet,
    Decision,
    Duplicate,
    Event,
    Idempotency,
    Reason,
    Refund,
    Refunded,
    Rejection,
    RevokeToken,
    TokenCreated,
    TokenRevoked,
    TransactionStatus,
    TransactionType,
    Transfer,
    Transferred,
    UpdateWallet,
    WalletCreated,
    WalletStatus,
    WalletStatusChanged,
    WalletUpdated,
    apply,
    check_invariants,
    decide,
    encode_event,
    is_treasury,
    new_state,
    treasury_id,
)
from ledger.testing import amounts, digest, replay

START_US = 1_700_000_000_000_000
ASSET_CODES = ["USD", "EUR"]
WALLET_ASSETS = [*ASSET_CODES, "GBP"]  # GBP is never created
WALLET_IDS = ["alice", "bob", "erin", "frank"]
# Senders and receivers of transfers: client wallets, the treasuries and one never created.
TRANSFER_IDS = [*WALLET_IDS, *(treasury_id(code) for code in ASSET_CODES), "ghost"]
OWNERS = ["o1", "o2"]
# Who asks for a transfer: the admin (owner_id None), the sender's owner, or someone else.
CALLERS = ["admin", "owner", "owner", "other"]
SYSTEM_OWNER = "system"

idempotencies = st.one_of(
    st.none(),
    st.builds(
        Idempotency,
        scope=st.sampled_from(["admin", "owner:o1"]),
        key=st.sampled_from(["k1", "k2", "k3"]),
        fingerprint=st.sampled_from([b"f1", b"f2"]),
    ),
)
metadatas = st.sampled_from([None, {}, {"note": "x", "n": 1}])
descriptions = st.sampled_from([None, "", "rent", "ünïcødé ✓"])


@dataclass
class ModelWallet:
    owner_id: str
    asset: str
    balance: int = 0
    status: WalletStatus = WalletStatus.ACTIVE
    metadata: dict[str, Any] | None = None
    overdraft: int = 0
    daily: int | None = None
    monthly: int | None = None
    # Every spending (at_us, amount): the windows are summed from it with ``datetime``.
    spendings: list[tuple[int, int]] = field(default_factory=list)

    def spent(self, now_us: int) -> tuple[int, int]:
        now = datetime.fromtimestamp(now_us / 1e6, UTC)
        daily = monthly = 0
        for at_us, amount in self.spendings:
            moment = datetime.fromtimestamp(at_us / 1e6, UTC)
            if (moment.year, moment.month) == (now.year, now.month):
                monthly += amount
                if moment.day == now.day:
                    daily += amount
        return daily, monthly


@dataclass(frozen=True)
class ModelKey:
    fingerprint: bytes
    lsn: int
    at_us: int


@dataclass
class ModelPosted:
    """A posted transaction, as the read model would show it to the refund route."""

    type: TransactionType
    from_wallet_id: str
    to_wallet_id: str
    amount: int
    refunded: int = 0


@dataclass(frozen=True)
class Replayed:
    """The model's expectation that ``decide`` answers with the record made at ``lsn``."""

    lsn: int


Expected = list[Event] | Reason | Replayed


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = new_state()
        self.now_us = START_US
        self.events: list[Event] = []
        self.transactions = 0
        # The reference model.
        self.assets: dict[str, int] = {}
        self.wallets: dict[str, ModelWallet] = {}
        self.tokens: dict[str, bytes] = {}  # prefix -> token hash
        self.keys: dict[tuple[str, str], ModelKey] = {}
        self.posted: dict[str, ModelPosted] = {}
        self.latest_us = 0

    # -- running a command on the real state machine -------------------------------------

    def execute(self, command: Command, expected: Expected) -> None:
        before = digest(self.state)
        decision = decide(self.state, command, self.now_us)
        assert digest(self.state) == before, "decide mutated the state"
        self.check_outcome(decision, expected)
        if isinstance(decision, list):
            for event in decision:
                lsn = len(self.events) + 1
                apply(self.state, event, lsn)
                self.events.append(event)
                encode_event(event)  # every accepted event must be encodable

    def check_outcome(self, decision: Decision, expected: Expected) -> None:
        if isinstance(expected, Reason):
            assert isinstance(decision, Rejection), (decision, expected)
            assert decision.reason == expected, (decision, expected)
            assert decision.detail
        elif isinstance(expected, Replayed):
            assert isinstance(decision, Duplicate), (decision, expected)
            assert decision.record.lsn == expected.lsn
            assert decision.record.event == self.events[expected.lsn - 1]
        else:
            assert decision == expected, (decision, expected)

    # -- the model's bookkeeping ---------------------------------------------------------

    def model_accepted(self, events: list[Event]) -> None:
        """Records ``events``, just appended at the end of the log, in the model."""
        first_lsn = len(self.events) - len(events) + 1
        for lsn, event in enumerate(events, start=first_lsn):
            self.latest_us = max(self.latest_us, event.at_us)
            idempotency = getattr(event, "idempotency", None)
            if idempotency is None:
                continue
            self.keys[(idempotency.scope, idempotency.key)] = ModelKey(
                fingerprint=idempotency.fingerprint, lsn=lsn, at_us=event.at_us
            )
            horizon = self.latest_us - IDEMPOTENCY_RETENTION_US
            self.keys = {key: record for key, record in self.keys.items() if record.at_us >= horizon}

    def model_key(self, idempotency: Idempotency | None) -> Expected | None:
        if idempotency is None:
            return None
        record = self.keys.get((idempotency.scope, idempotency.key))
        if record is None:
            return None
        if record.fingerprint != idempotency.fingerprint:
            return Reason.IDEMPOTENCY_KEY_REUSED
        return Replayed(record.lsn)

    def some_wallet_id(self, data: st.DataObject, label: str) -> str:
        """Mostly a wallet that exists (so deep rows of the table are reached), else any id."""
        existing = sorted(self.wallets)
        choices = st.sampled_from(TRANSFER_IDS)
        if existing:
            choices = st.sampled_from(existing) | st.sampled_from(existing) | choices
        return data.draw(choices, label=label)

    # -- rules ---------------------------------------------------------------------------

    @initialize(
        usd_scale=st.integers(0, SCALE_MAX),
        with_eur=st.booleans(),
        wallets=st.lists(
            st.tuples(st.sampled_from(WALLET_IDS), st.sampled_from(OWNERS), st.sampled_from(ASSET_CODES)),
            min_size=1,
            max_size=4,
        ),
    )
    def start(self, usd_scale: int, with_eur: bool, wallets: list[tuple[str, str, str]]) -> None:
        """Usually begins with assets and wallets, through the same checked path as the rules."""
        self.create_asset("USD", usd_scale)
        if with_eur:
            self.create_asset("EUR", 2)
        for wallet_id, owner_id, asset in wallets:
            self.create_wallet(wallet_id, owner_id, asset, None, None)

    @rule(
        delta_us=st.sampled_from(
            [0, 1, 1_000_000, IDEMPOTENCY_RETENTION_US - 1, IDEMPOTENCY_RETENTION_US,
             IDEMPOTENCY_RETENTION_US + 1, 7 * 3600 * 1_000_000, 16 * IDEMPOTENCY_RETENTION_US]
        )
    )
    def advance_clock(self, delta_us: int) -> None:
        self.now_us += delta_us

    @rule(code=st.sampled_from(ASSET_CODES), scale=st.sampled_from([0, 2, SCALE_MAX]) | st.integers(0, SCALE_MAX))
    def create_asset(self, code: str, scale: int) -> None:
        expected: Expected
        if code in self.assets:
            expected = [] if self.assets[code] == scale else Reason.ASSET_EXISTS
        else:
            expected = [AssetCreated(code=code, scale=scale, at_us=self.now_us)]
        self.execute(CreateAsset(code=code, scale=scale), expected)
        if isinstance(expected, list) and expected:
            self.model_accepted(expected)
            self.assets[code] = scale
            self.wallets[treasury_id(code)] = ModelWallet(owner_id=SYSTEM_OWNER, asset=code)

    @rule(
        wallet_id=st.sampled_from(WALLET_IDS),
        owner_id=st.sampled_from(OWNERS),
        asset=st.sampled_from(WALLET_ASSETS),
        metadata=metadatas,
        idempotency=idempotencies,
        overdraft=st.sampled_from([0, 0, 0, 40]),
        daily=st.sampled_from([None, None, 25]),
    )
    def create_wallet(
        self, wallet_id: str, owner_id: str, asset: str, metadata: dict[str, Any] | None,
        idempotency: Idempotency | None, overdraft: int = 0, daily: int | None = None,
    ) -> None:
        expected = self.model_key(idempotency)
        if expected is None:
            existing = self.wallets.get(wallet_id)
            if asset not in self.assets:
                expected = Reason.ASSET_NOT_FOUND
            elif existing is not None:
                same = existing.owner_id == owner_id and existing.asset == asset
                expected = [] if same else Reason.WALLET_EXISTS
            else:
                expected = [
                    WalletCreated(
                        wallet_id=wallet_id, owner_id=owner_id, asset=asset, metadata=metadata,
                        at_us=self.now_us, idempotency=idempotency,
                    )
                ]
                if overdraft or daily is not None:
                    expected.append(WalletUpdated(wallet_id=wallet_id, overdraft_limit=overdraft, daily_limit=daily,
                                                  monthly_limit=None, metadata=metadata, at_us=self.now_us))
        command = CreateWallet(
            wallet_id=wallet_id, owner_id=owner_id, asset=asset, metadata=metadata,
            idempotency=idempotency, overdraft_limit=overdraft, daily_limit=daily,
        )
        self.execute(command, expected)
        if isinstance(expected, list) and expected:
            self.model_accepted(expected)
            self.wallets[wallet_id] = ModelWallet(owner_id=owner_id, asset=asset, metadata=metadata,
                                                  overdraft=overdraft, daily=daily)

    @rule(
        data=st.data(),
        overdraft=st.sampled_from([None, 0, 50, 1000]),
        daily=st.sampled_from([None, 0, 30, 500]),
        monthly=st.sampled_from([None, 0, 100, 2000]),
        metadata=st.sampled_from([None, {}, {"tier": "gold"}]),
    )
    def update_wallet(
        self, data: st.DataObject, overdraft: int | None, daily: int | None, monthly: int | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        wallet_id = self.some_wallet_id(data, "wallet_id")
        wallet = self.wallets.get(wallet_id)
        expected: Expected
        if wallet is None or is_treasury(wallet_id):
            expected = Reason.SENDER_NOT_FOUND
        elif wallet.status == WalletStatus.CLOSED:
            expected = Reason.WALLET_CLOSED
        else:
            new = (wallet.overdraft if overdraft is None else overdraft,
                   wallet.daily if daily is None else (daily or None),
                   wallet.monthly if monthly is None else (monthly or None),
                   wallet.metadata if metadata is None else metadata)
            if new == (wallet.overdraft, wallet.daily, wallet.monthly, wallet.metadata):
                expected = []
            else:
                expected = [WalletUpdated(wallet_id=wallet_id, overdraft_limit=new[0], daily_limit=new[1],
                                          monthly_limit=new[2], metadata=new[3], at_us=self.now_us)]
        command = UpdateWallet(wallet_id=wallet_id, overdraft_limit=overdraft, daily_limit=daily,
                               monthly_limit=monthly, metadata=metadata)
        self.execute(command, expected)
        if isinstance(expected, list) and expected:
            assert wallet is not None
            self.model_accepted(expected)
            wallet.overdraft, wallet.daily, wallet.monthly, wallet.metadata = new

    def model_transfer(self, command: Transfer) -> Expected:
        """The whole rejection table, top to bottom, on one boring dict."""
        replayed = self.model_key(command.idempotency)
        if replayed is not None:
            return replayed
        receiver = self.wallets.get(command.to_wallet_id)
        if command.from_wallet_id is None:
            if receiver is None:
                return Reason.RECEIVER_NOT_FOUND  # and so no treasury to debit either
            sender_id = treasury_id(receiver.asset)
        else:
            sender_id = command.from_wallet_id
        sender = self.wallets.get(sender_id)
        if sender is None:
            return Reason.SENDER_NOT_FOUND
        if command.owner_id is not None and sender.owner_id != command.owner_id:
            return Reason.FORBIDDEN
        if receiver is None:
            return Reason.RECEIVER_NOT_FOUND
        if sender_id == command.to_wallet_id:
            return Reason.SAME_WALLET
        if sender.asset != receiver.asset:
            return Reason.ASSET_MISMATCH
        if sender.status == WalletStatus.FROZEN:
            return Reason.SENDER_FROZEN
        if sender.status == WalletStatus.CLOSED:
            return Reason.SENDER_CLOSED
        if receiver.status == WalletStatus.CLOSED:
            return Reason.RECEIVER_CLOSED
        if not is_treasury(sender_id) and sender.balance + sender.overdraft < command.amount:
            return Reason.INSUFFICIENT_FUNDS
        if command.type == TransactionType.TRANSFER and not is_treasury(sender_id):
            daily, monthly = sender.spent(self.now_us)
            if sender.daily is not None and daily + command.amount > sender.daily:
                return Reason.SPEND_LIMIT_EXCEEDED
            if sender.monthly is not None and monthly + command.amount > sender.monthly:
                return Reason.SPEND_LIMIT_EXCEEDED
        if receiver.balance + command.amount > INT64_MAX:
            return Reason.BALANCE_OVERFLOW
        if is_treasury(sender_id) and sender.balance - command.amount < INT64_MIN:
            return Reason.BALANCE_OVERFLOW
        return [
            Transferred(
                transaction_id=command.transaction_id, type=command.type, from_wallet_id=sender_id,
                to_wallet_id=command.to_wallet_id, asset=sender.asset, amount=command.amount,
                description=command.description, metadata=command.metadata, at_us=self.now_us,
                idempotency=command.idempotency,
            )
        ]

    def move(self, command: Transfer) -> None:
        expected = self.model_transfer(command)
        self.execute(command, expected)
        if isinstance(expected, list):
            self.model_accepted(expected)
            (event,) = expected
            assert isinstance(event, Transferred)
            self.wallets[event.from_wallet_id].balance -= event.amount
            self.wallets[event.to_wallet_id].balance += event.amount
            if event.type == TransactionType.TRANSFER and not is_treasury(event.from_wallet_id):
                self.wallets[event.from_wallet_id].spendings.append((event.at_us, event.amount))
            self.posted[event.transaction_id] = ModelPosted(
                type=event.type, from_wallet_id=event.from_wallet_id, to_wallet_id=event.to_wallet_id,
                amount=event.amount,
            )

    def model_refund(self, command: Refund) -> Expected:
        """The refund table, then the transfer table's rows from the refunding wallet."""
        replayed = self.model_key(command.idempotency)
        if replayed is not None:
            return replayed
        if (command.original_type not in (TransactionType.DEPOSIT, TransactionType.TRANSFER)
                or command.original_status != TransactionStatus.POSTED):
            return Reason.NOT_REFUNDABLE
        sender = self.wallets[command.from_wallet_id]
        if command.owner_id is not None and sender.owner_id != command.owner_id:
            return Reason.FORBIDDEN
        original = self.posted[command.refund_of]
        remaining = original.amount - original.refunded
        amount = remaining if command.amount is None else command.amount
        if remaining == 0 or amount > remaining:
            return Reason.REFUND_EXCEEDS_REMAINING
        receiver = self.wallets[command.to_wallet_id]
        reserved = original.amount if command.amount is None else command.amount  # what step 1 checks
        if sender.status == WalletStatus.FROZEN:
            return Reason.SENDER_FROZEN
        if sender.status == WalletStatus.CLOSED:
            return Reason.SENDER_CLOSED
        if receiver.status == WalletStatus.CLOSED:
            return Reason.RECEIVER_CLOSED
        if not is_treasury(command.from_wallet_id) and sender.balance + sender.overdraft < amount:
            return Reason.INSUFFICIENT_FUNDS
        if receiver.balance + reserved > INT64_MAX:
            return Reason.BALANCE_OVERFLOW
        if is_treasury(command.from_wallet_id) and sender.balance - amount < INT64_MIN:
            return Reason.BALANCE_OVERFLOW
        return [
            Refunded(
                transaction_id=command.transaction_id, refund_of=command.refund_of,
                from_wallet_id=command.from_wallet_id, to_wallet_id=command.to_wallet_id, asset=sender.asset,
                amount=amount, original_amount=original.amount, description=command.description,
                metadata=command.metadata, at_us=self.now_us, idempotency=command.idempotency,
            )
        ]

    @precondition(lambda self: bool(self.posted))
    @rule(
        data=st.data(),
        caller=st.sampled_from(CALLERS),
        status=st.sampled_from([TransactionStatus.POSTED] * 12 + list(TransactionStatus)),
        idempotency=idempotencies,
    )
    def refund(self, data: st.DataObject, caller: str, status: TransactionStatus,
               idempotency: Idempotency | None) -> None:
        refund_of = data.draw(st.sampled_from(sorted(self.posted)), label="refund_of")
        original = self.posted[refund_of]
        left = original.amount - original.refunded
        small = st.sampled_from(sorted({1, max(left, 1), left + 1, max(left // 2, 1)}))
        amount = data.draw(st.one_of(st.none(), small, small, amounts()), label="amount")
        command = Refund(
            transaction_id=self.next_transaction_id(), refund_of=refund_of,
            from_wallet_id=original.to_wallet_id, to_wallet_id=original.from_wallet_id, amount=amount,
            original_type=original.type, original_status=status, original_amount=original.amount,
            description=None, metadata=None, idempotency=idempotency,
            owner_id=self.owner_for(caller, original.to_wallet_id),
        )
        expected = self.model_refund(command)
        self.execute(command, expected)
        if isinstance(expected, list):
            self.model_accepted(expected)
            (event,) = expected
            assert isinstance(event, Refunded)
            self.wallets[event.from_wallet_id].balance -= event.amount
            self.wallets[event.to_wallet_id].balance += event.amount
            original.refunded += event.amount
            self.posted[event.transaction_id] = ModelPosted(
                type=TransactionType.REFUND, from_wallet_id=event.from_wallet_id,
                to_wallet_id=event.to_wallet_id, amount=event.amount,
            )

    def owner_for(self, caller: str, wallet_id: str) -> str | None:
        """The ``owner_id`` a transfer from ``wallet_id`` carries when ``caller`` asks."""
        if caller == "admin":
            return None
        wallet = self.wallets.get(wallet_id)
        owner_id = "o1" if wallet is None else wallet.owner_id
        if caller == "owner":
            return owner_id
        return "o2" if owner_id == "o1" else "o1"

    def next_transaction_id(self) -> str:
        self.transactions += 1
        return f"tx{self.transactions}"

    @rule(
        data=st.data(),
        amount=amounts(),
        caller=st.sampled_from(CALLERS),
        metadata=metadatas,
        idempotency=idempotencies,
    )
    def deposit(
        self, data: st.DataObject, amount: int, caller: str,
        metadata: dict[str, Any] | None, idempotency: Idempotency | None,
    ) -> None:
        # Mostly an existing client wallet; else any id (a treasury: SAME_WALLET; a missing
        # wallet: RECEIVER_NOT_FOUND).
        clients = sorted(wallet_id for wallet_id in self.wallets if not is_treasury(wallet_id))
        receivers = st.sampled_from(TRANSFER_IDS)
        if clients:
            receivers = st.sampled_from(clients) | st.sampled_from(clients) | receivers
        to_wallet_id = data.draw(receivers, label="to_wallet_id")
        receiver = self.wallets.get(to_wallet_id)
        treasury = treasury_id(receiver.asset) if receiver is not None else treasury_id("USD")
        owner_id = self.owner_for(caller, treasury)
        command = Transfer(
            transaction_id=self.next_transaction_id(), type=TransactionType.DEPOSIT,
            from_wallet_id=None, to_wallet_id=to_wallet_id, amount=amount, description=None,
            metadata=metadata, idempotency=idempotency, owner_id=owner_id,
        )
        self.move(command)

    @rule(
        data=st.data(),
        amount=amounts(),
        caller=st.sampled_from(CALLERS),
        description=descriptions,
        idempotency=idempotencies,
    )
    def transfer(
        self, data: st.DataObject, amount: int, caller: str,
        description: str | None, idempotency: Idempotency | None,
    ) -> None:
        from_wallet_id = self.some_wallet_id(data, "from_wallet_id")
        to_wallet_id = self.some_wallet_id(data, "to_wallet_id")
        owner_id = self.owner_for(caller, from_wallet_id)
        command = Transfer(
            transaction_id=self.next_transaction_id(), type=TransactionType.TRANSFER,
            from_wallet_id=from_wallet_id, to_wallet_id=to_wallet_id, amount=amount,
            description=description, metadata=None, idempotency=idempotency, owner_id=owner_id,
        )
        self.move(command)

    @precondition(lambda self: any(w.balance > 0 for i, w in self.wallets.items() if not is_treasury(i)))
    @rule(data=st.data(), caller=st.sampled_from(CALLERS))
    def transfer_everything(self, data: st.DataObject, caller: str) -> None:
        """Empties a funded wallet into another, so closes and exact-balance edges happen."""
        funded = sorted(i for i, w in self.wallets.items() if w.balance > 0 and not is_treasury(i))
        from_wallet_id = data.draw(st.sampled_from(funded), label="from_wallet_id")
        to_wallet_id = self.some_wallet_id(data, "to_wallet_id")
        sender = self.wallets[from_wallet_id]
        command = Transfer(
            transaction_id=self.next_transaction_id(), type=TransactionType.TRANSFER,
            from_wallet_id=from_wallet_id, to_wallet_id=to_wallet_id, amount=sender.balance,
            description=None, metadata=None, idempotency=None,
            owner_id=self.owner_for(caller, from_wallet_id),
        )
        self.move(command)

    @rule(data=st.data(), status=st.sampled_from(list(WalletStatus)))
    def change_status(self, data: st.DataObject, status: WalletStatus) -> None:
        wallet_id = self.some_wallet_id(data, "wallet_id")
        wallet = self.wallets.get(wallet_id)
        expected: Expected
        if wallet is None:
            expected = Reason.SENDER_NOT_FOUND
        elif wallet.status == status:
            expected = []
        elif wallet.status == WalletStatus.CLOSED:
            expected = Reason.WALLET_CLOSED
        elif status == WalletStatus.CLOSED and wallet.balance != 0:
            expected = Reason.WALLET_NOT_EMPTY
        else:
            expected = [WalletStatusChanged(wallet_id=wallet_id, status=status, at_us=self.now_us)]
        self.execute(ChangeWalletStatus(wallet_id=wallet_id, status=status), expected)
        if isinstance(expected, list) and expected:
            assert wallet is not None
            self.model_accepted(expected)
            wallet.status = status

    @rule(
        create=st.booleans(),
        token_hash=st.sampled_from([b"h1", b"h2", b"h3"]),
        prefix=st.sampled_from(["p1", "p2", "p3"]),
        owner_id=st.sampled_from(OWNERS),
    )
    def token(self, create: bool, token_hash: bytes, prefix: str, owner_id: str) -> None:
        if create:
            self.create_token(token_hash, prefix, owner_id)
        else:
            self.revoke_token(prefix)

    def create_token(self, token_hash: bytes, prefix: str, owner_id: str) -> None:
        expected: Expected
        if token_hash in self.tokens.values() or prefix in self.tokens:
            expected = Reason.TOKEN_EXISTS
        else:
            expected = [
                TokenCreated(token_hash=token_hash, prefix=prefix, owner_id=owner_id, at_us=self.now_us)
            ]
        self.execute(CreateToken(token_hash=token_hash, prefix=prefix, owner_id=owner_id), expected)
        if isinstance(expected, list):
            self.model_accepted(expected)
            self.tokens[prefix] = token_hash

    def revoke_token(self, prefix: str) -> None:
        expected: Expected
        if prefix in self.tokens:
            expected = [TokenRevoked(prefix=prefix, at_us=self.now_us)]
        else:
            expected = Reason.TOKEN_NOT_FOUND
        self.execute(RevokeToken(prefix=prefix), expected)
        if isinstance(expected, list):
            self.model_accepted(expected)
            del self.tokens[prefix]

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        check_invariants(self.state.wallets.values(), self.state.directory, refunded=self.state.refunded.items())
        assert self.state.directory.lsn == len(self.events)

    @invariant()
    def state_matches_model(self) -> None:
        wallets = self.state.wallets
        assert sorted(wallets) == sorted(self.wallets)
        for wallet_id, model in self.wallets.items():
            wallet = wallets[wallet_id]
            assert wallet.balance == model.balance, (wallet, model)
            assert wallet.status == model.status, (wallet, model)
            assert wallet.owner_id == model.owner_id, (wallet, model)
            assert wallet.asset == model.asset, (wallet, model)
            assert wallet.held == 0, wallet
            limits = wallet.limits
            assert (0 if limits is None else limits.overdraft) == model.overdraft, (wallet, model)
            assert (None if limits is None else limits.daily) == model.daily, (wallet, model)
            assert (None if limits is None else limits.monthly) == model.monthly, (wallet, model)
            assert wallet.spent_at(self.now_us) == model.spent(self.now_us), (wallet, model)
        directory = self.state.directory
        assert {code: asset.scale for code, asset in directory.assets.items()} == self.assets
        assert dict(directory.token_prefixes) == self.tokens
        assert {
            key: (record.fingerprint, record.lsn, record.at_us)
            for key, record in directory.idempotency.items()
        } == {key: (record.fingerprint, record.lsn, record.at_us) for key, record in self.keys.items()}
        assert {transaction_id: tally.refunded for transaction_id, tally in self.state.refunded.items()} == {
            transaction_id: posted.refunded for transaction_id, posted in self.posted.items() if posted.refunded
        }

    @invariant()
    def replay_of_the_log_gives_the_same_state(self) -> None:
        assert digest(replay(self.events)) == digest(self.state)


LedgerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
