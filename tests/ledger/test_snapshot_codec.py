"""The snapshot codec: states built by applying random valid events round-trip exactly (the
digest, and everything the digest leaves out), decoded states keep evolving like the originals,
the body layout matches the table in ``ledger/_snapshot.py``, and anything else fed to
``decode_state`` raises ``CodecError``, never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import given, settings

import ledger._snapshot
from ledger import (
    DAY_US,
    IDEMPOTENCY_RETENTION_US,
    INT64_MAX,
    SNAPSHOT_CODEC_VERSION,
    AdvanceWithdrawal,
    ChangeWalletStatus,
    CodecError,
    Command,
    CompleteWithdrawal,
    CreateAsset,
    CreateToken,
    CreateWallet,
    ExpireHolds,
    Idempotency,
    PayoutStep,
    Reason,
    Rejection,
    RequestWithdrawal,
    ResolveHold,
    RevokeToken,
    State,
    TokenRevoked,
    TransactionType,
    Transfer,
    UpdateWallet,
    WalletCreated,
    WalletStatus,
    apply,
    check_state,
    count_records,
    decide,
    decide_transfers,
    decode_event,
    decode_state,
    digest_state,
    encode_event,
    encode_state,
    is_treasury,
    new_state,
    transfers_posted,
    treasury_id,
)
from snapshots import load_newest, write_snapshot
from tests._budget import scaled

ASSETS = ["USD", "EUR"]
WALLETS = [f"w{index}" for index in range(5)]
OWNERS = ["alice", "bob"]
PREFIXES = ["tk_a", "tk_b", "tk_c"]
KEYS = ["k1", "k2", "k3", "k4"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
metadatas = st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
# Few keys and two fingerprints: keys get reused, with the same request and with another one.
idempotencies = st.none() | st.builds(
    Idempotency, scope=st.sampled_from(OWNERS), key=st.sampled_from(KEYS),
    fingerprint=st.sampled_from([b"\x01" * 16, b"\x02" * 16]),
)
amounts = st.one_of(
    st.integers(min_value=1, max_value=1000),
    st.sampled_from([1, 2, 2**31, 2**62, INT64_MAX - 1, INT64_MAX]),
)
create_assets = st.builds(CreateAsset, code=st.sampled_from(ASSETS), scale=st.integers(min_value=0, max_value=18))
create_wallets = st.builds(
    CreateWallet, wallet_id=st.sampled_from(WALLETS), owner_id=st.sampled_from(OWNERS),
    asset=st.sampled_from(ASSETS), metadata=metadatas, idempotency=idempotencies,
)
deposits = st.builds(
    Transfer, transaction_id=st.text(min_size=1, max_size=8), type=st.just(TransactionType.DEPOSIT),
    from_wallet_id=st.none(), to_wallet_id=st.sampled_from(WALLETS), amount=amounts,
    description=st.none() | st.text(max_size=10), metadata=metadatas, idempotency=idempotencies,
)
transfers = st.builds(
    Transfer, transaction_id=st.text(min_size=1, max_size=8), type=st.just(TransactionType.TRANSFER),
    from_wallet_id=st.sampled_from(WALLETS), to_wallet_id=st.sampled_from(WALLETS), amount=amounts,
    description=st.none() | st.text(max_size=10), metadata=metadatas, idempotency=idempotencies,
)
commands: st.SearchStrategy[Command] = st.one_of(
    create_assets,
    create_wallets,
    deposits,
    transfers,
    transfers,  # twice: most of a real ledger's records are transfers
    st.builds(
        ChangeWalletStatus, wallet_id=st.sampled_from(WALLETS),
        status=st.sampled_from([WalletStatus.ACTIVE, WalletStatus.FROZEN, WalletStatus.FROZEN, WalletStatus.CLOSED]),
    ),
    st.builds(
        CreateToken, token_hash=st.sampled_from([bytes([n]) * 32 for n in range(4)]),
        prefix=st.sampled_from(PREFIXES), owner_id=st.sampled_from(OWNERS),
    ),
    st.builds(RevokeToken, prefix=st.sampled_from(PREFIXES)),
    # Wallet limits: overdrafts, spend limits (0 removes one), metadata.
    st.builds(
        UpdateWallet, wallet_id=st.sampled_from(WALLETS),
        overdraft_limit=st.none() | st.integers(min_value=0, max_value=300) | st.just(INT64_MAX),
        daily_limit=st.none() | st.integers(min_value=0, max_value=500),
        monthly_limit=st.none() | st.integers(min_value=0, max_value=2000), metadata=metadatas,
    ),
    # Holds and withdrawals: markers that ``states`` turns into commands on what exists.
    st.just("hold"), st.just("hold"), st.just("resolve"), st.just("withdraw"), st.just("payout"),
    st.just("expire"),
)
# Time steps: mostly small, sometimes past the idempotency retention so records expire.
steps_us = st.one_of(st.integers(min_value=0, max_value=10**6), st.just(IDEMPOTENCY_RETENTION_US + 1),
                     st.sampled_from([DAY_US // 3, 31 * DAY_US]))  # spend windows roll over


# A batch: its accepted transfers become one record, so their idempotency records share an LSN.
batches = st.lists(
    transfers, min_size=2, max_size=5,
    unique_by=lambda t: None if t.idempotency is None else (t.idempotency.scope, t.idempotency.key),
).map(tuple)


def run(state: State, command: Command | tuple[Transfer, ...], now_us: int) -> None:
    """Decides ``command`` and applies whatever it accepted, with the next LSNs."""
    if isinstance(command, tuple):
        decisions = decide_transfers(state, [(item, None) for item in command], now_us, {})
        events = tuple(d[0] for d in decisions if isinstance(d, list))
        if events:
            apply(state, transfers_posted(events, now_us), state.directory.lsn + 1)
        return
    decision = decide(state, command, now_us)
    if isinstance(decision, list):
        for event in decision:
            apply(state, event, state.directory.lsn + 1)


@st.composite
def states(draw: st.DrawFn) -> State:
    state = new_state()
    now_us = draw(st.integers(min_value=0, max_value=2**50))
    # A prelude of assets, wallets and deposits, so that most of the random commands that
    # follow find something to act on instead of being rejected.
    prelude: list[Command] = [
        CreateAsset(code=code, scale=draw(st.integers(min_value=0, max_value=18))) for code in ASSETS
    ]
    for wallet_id in draw(st.lists(st.sampled_from(WALLETS), min_size=2, unique=True)):
        prelude.append(draw(st.builds(
            CreateWallet, wallet_id=st.just(wallet_id), owner_id=st.sampled_from(OWNERS),
            asset=st.sampled_from(ASSETS), metadata=metadatas, idempotency=idempotencies,
        )))
    prelude += draw(st.lists(deposits, min_size=1, max_size=6))
    for command in [*prelude, *draw(st.lists(commands | batches, min_size=4, max_size=30))]:
        now_us += draw(steps_us)
        run(state, _concrete(draw, state, command), now_us)
    check_state(state)
    return state


def _concrete(draw: st.DrawFn, state: State, command: Any) -> Any:
    """Turns a marker into a command on the holds and withdrawals ``state`` has."""
    if not isinstance(command, str):
        return command
    number = len(state.holds) + len(state.withdrawals) + state.directory.lsn
    wallets = sorted(w for w in state.wallets if not is_treasury(w)) or ["w0"]
    if command == "hold":
        return draw(st.builds(
            Transfer, transaction_id=st.just(f"h{number}"), type=st.just(TransactionType.TRANSFER),
            from_wallet_id=st.sampled_from(wallets), to_wallet_id=st.sampled_from(WALLETS),
            amount=amounts, description=st.none() | st.text(max_size=10), metadata=metadatas,
            idempotency=idempotencies, hold_timeout_s=st.sampled_from([1, 60, 3600]),
        ))
    if command == "withdraw":
        return draw(st.builds(
            RequestWithdrawal, withdrawal_id=st.just(f"wd{number}"), wallet_id=st.sampled_from(wallets),
            amount=amounts, destination=st.dictionaries(st.text(max_size=5), json_values, max_size=2),
            owner_id=st.none(), idempotency=idempotencies,
        ))
    holds = sorted(state.holds)
    if command == "expire":
        return ExpireHolds(transaction_ids=tuple(holds))
    if command == "resolve" and holds:
        transaction_id = draw(st.sampled_from(holds))
        from_id, to_id, amount = state.directory.hold_routes[transaction_id]
        return ResolveHold(
            transaction_id=transaction_id, capture=draw(st.booleans()),
            amount=draw(st.none() | st.integers(min_value=1, max_value=amount)),
            from_wallet_id=from_id, to_wallet_id=to_id, owner_id=None, idempotency=draw(idempotencies),
        )
    if command == "payout" and state.withdrawals:
        withdrawal = state.withdrawals[draw(st.sampled_from(sorted(state.withdrawals)))]
        if draw(st.booleans()):
            return CompleteWithdrawal(
                withdrawal_id=withdrawal.id, wallet_id=withdrawal.wallet_id, asset=withdrawal.asset,
                amount=withdrawal.amount, reference=draw(st.none() | st.text(max_size=5)),
            )
        return AdvanceWithdrawal(
            withdrawal_id=withdrawal.id, step=draw(st.sampled_from(PayoutStep)),
            detail=draw(st.none() | st.text(max_size=5)), retry_at_us=draw(st.integers(0, 2**50)),
        )
    return ExpireHolds(transaction_ids=())


def body_of(state: State) -> bytes:
    return b"".join(encode_state(state))


def digest(state: State) -> str:
    return digest_state(state)


def everything(state: State) -> Any:
    """All a state holds, ordered dicts as lists: stricter than ``state_digest``, which leaves
    out wallet lsn, idempotency events and at_us, the directory's at_us and dict order."""
    directory = state.directory
    wallets = [
        (w.id, w.owner_id, w.asset, w.metadata, w.balance, w.held, w.status, type(w.status),
         w.created_at_us, w.updated_at_us, w.lsn, w.limits, w.window, w.spent_day, w.spent_month)
        for w in sorted(state.wallets.values(), key=lambda w: w.id)
    ]
    return (
        list(directory.assets.items()), list(directory.tokens.items()),
        list(directory.token_prefixes.items()), list(directory.idempotency.items()),
        directory.lsn, directory.at_us, wallets,
        sorted(state.holds.items()), sorted(w.key() for w in state.withdrawals.values()),
        sorted(directory.hold_routes.items()), sorted(directory.withdrawal_wallets.items()),
    )


def assert_same(decoded: State, original: State) -> None:
    assert digest(decoded) == digest(original)
    assert everything(decoded) == everything(original)


# -- round trips ---------------------------------------------------------------------------


@settings(max_examples=scaled(75, 300), deadline=None)
@given(state=states(), more=commands.filter(lambda command: not isinstance(command, str)), step_us=steps_us)
def test_round_trip_is_exact_and_keeps_evolving_alike(state: State, more: Command, step_us: int) -> None:
    body = body_of(state)
    decoded = decode_state(body)
    assert_same(decoded, state)
    check_state(decoded)
    assert count_records(decoded) == count_records(state)
    assert body_of(decoded) == body  # deterministic: the image depends on the state alone
    # The loaded records keep their events encoded (memory), and answer with the same events.
    for key, record in decoded.directory.idempotency.items():
        if type(record.source) is not Rejection:
            assert type(record.source) is bytes and record.position == -1
            assert record.event == state.directory.idempotency[key].event

    # One more command: both decide alike, and the results stay identical.
    now_us = state.directory.at_us + step_us
    assert decide(decoded, more, now_us) == decide(state, more, now_us)
    run(state, more, now_us)
    run(decoded, more, now_us)
    assert_same(decoded, state)


def test_the_empty_state_round_trips() -> None:
    state = new_state()
    assert count_records(state) == 0
    chunks = list(encode_state(state))
    # The header, then the version 4 limits section's count (0 wallets with limits or spending).
    assert len(chunks) == 2
    assert msgpack.unpackb(chunks[0]) == [SNAPSHOT_CODEC_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert msgpack.unpackb(chunks[1]) == 0
    assert_same(decode_state(b"".join(chunks)), state)


def built(wallets: int) -> State:
    """A state with one asset, ``wallets`` wallets, a token, an idempotency record and money."""
    state = new_state()
    run(state, CreateAsset(code="USD", scale=2), 1)
    run(state, CreateToken(token_hash=b"h" * 32, prefix="tk_a", owner_id="alice"), 2)
    for index in range(wallets):
        state_id = f"w{index:06d}"
        idempotency = Idempotency(scope="alice", key="k", fingerprint=b"f") if index == 0 else None
        run(state, CreateWallet(wallet_id=state_id, owner_id="alice", asset="USD",
                                metadata={"n": index}, idempotency=idempotency), 3)
    run(state, Transfer(transaction_id="t", type=TransactionType.DEPOSIT, from_wallet_id=None,
                        to_wallet_id="w000000", amount=5, description=None, metadata=None,
                        idempotency=None), 4)
    return state


def test_the_body_layout_matches_the_docstring() -> None:
    state = built(2)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body_of(state))
    objects = list(unpacker)
    record = state.directory.idempotency[("alice", "k")]
    assert isinstance(record.event, WalletCreated)
    assert objects == [
        [SNAPSHOT_CODEC_VERSION, 5, 4, 1, 1, 1, 3, 0, 0, 0, 0, 0, 0],
        ["USD", 2, 1],
        [b"h" * 32, "tk_a", "alice", 2],
        ["alice", "k", b"f", 3, 3, encode_event(record.event)],
        [treasury_id("USD"), "system", "USD", None, -5, 0, 0, 1, 4, 5],
        ["w000000", "alice", "USD", {"n": 0}, 5, 0, 0, 3, 4, 5],
        ["w000001", "alice", "USD", {"n": 1}, 0, 0, 0, 3, 3, 4],
        0,  # the limits section: no wallet has limits or spent (a deposit is not spending)
    ]


def test_a_version_1_body_still_decodes() -> None:
    """Bodies written before holds existed: a 7-field header and no holds or withdrawals."""
    state = built(2)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body_of(state))
    objects = list(unpacker)
    objects[0] = [1, *objects[0][1:7]]
    assert objects.pop() == 0  # nor the limits section (version 4)
    decoded = decode_state(packed(*objects))
    assert_same(decoded, state)


def test_a_version_3_body_still_decodes_without_limits_or_spending() -> None:
    state = built(2)
    run(state, UpdateWallet(wallet_id="w000000", overdraft_limit=7, daily_limit=3), 5)
    run(state, Transfer(transaction_id="tx9", type=TransactionType.TRANSFER, from_wallet_id="w000000",
                        to_wallet_id="w000001", amount=2, description=None, metadata=None, idempotency=None), 6)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body_of(state))
    objects = list(unpacker)
    window = state.wallets["w000000"].window
    assert window is not None
    assert objects[-2:] == [1, ["w000000", 7, 3, None, -7, window.day, 2, 2]]
    assert_same(decode_state(packed(*objects)), state)
    assert objects[0][-2:] == [0, 0]  # no refusals, no refund tallies
    objects[0] = [3, *objects[0][1:-2]]
    decoded = decode_state(packed(*objects[:-2]))
    assert decoded.wallets["w000000"].limits is None
    assert decoded.wallets["w000000"].window is None
    assert decoded.wallets["w000000"].balance == 3


def test_holds_and_withdrawals_round_trip_and_rebuild_the_routes() -> None:
    state = built(2)
    run(state, Transfer(transaction_id="tx_h", type=TransactionType.TRANSFER, from_wallet_id="w000000",
                        to_wallet_id="w000001", amount=2, description="d", metadata={"a": 1},
                        idempotency=None, hold_timeout_s=30), 5)
    run(state, RequestWithdrawal(withdrawal_id="wd_1", wallet_id="w000000", amount=1,
                                 destination={"iban": "X"}, owner_id=None, idempotency=None), 6)
    run(state, AdvanceWithdrawal(withdrawal_id="wd_1", step=PayoutStep.BEGIN), 7)
    assert state.wallets["w000000"].held == 3
    decoded = decode_state(body_of(state))
    assert_same(decoded, state)
    assert decoded.directory.hold_routes == {"tx_h": ("w000000", "w000001", 2),
                                             "wd_1": ("w000000", treasury_id("USD"), 1)}
    assert decoded.directory.withdrawal_wallets == {"wd_1": "w000000"}
    check_state(decoded)


def test_chunks_hold_at_most_chunk_records_entities() -> None:
    state = built(2 * ledger._snapshot.CHUNK_RECORDS + 5)
    records = count_records(state)
    assert records == 1 + 1 + 1 + 2 * ledger._snapshot.CHUNK_RECORDS + 5 + 1
    records += 1  # the limits section's count, not an entity
    chunks = list(encode_state(state))
    sizes = []
    for chunk in chunks:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(chunk)
        sizes.append(sum(1 for _ in unpacker))
    assert sizes[0] == 1  # the header alone
    assert sizes[1:] == [ledger._snapshot.CHUNK_RECORDS, ledger._snapshot.CHUNK_RECORDS, 10]
    assert_same(decode_state(b"".join(chunks)), state)


def test_the_token_prefixes_are_rebuilt_and_revoked_tokens_stay_gone() -> None:
    state = built(0)
    run(state, CreateToken(token_hash=b"g" * 32, prefix="tk_b", owner_id="bob"), 5)
    run(state, RevokeToken(prefix="tk_a"), 6)
    decoded = decode_state(body_of(state))
    assert decoded.directory.token_prefixes == {"tk_b": b"g" * 32}
    assert_same(decoded, state)
    assert decide(decoded, RevokeToken(prefix="tk_b"), 7) == [TokenRevoked(prefix="tk_b", at_us=7)]
    rejection = decide(decoded, RevokeToken(prefix="tk_a"), 7)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == Reason.TOKEN_NOT_FOUND


def test_through_the_snapshot_store(tmp_path: Path) -> None:
    """The pairing the server does: digest in the header on write, compared after decoding."""
    state = built(3)
    write_snapshot(
        tmp_path, lsn=state.directory.lsn, records=count_records(state), log_checksum=b"\x07" * 16,
        state_digest=bytes.fromhex(digest(state)), created_at_us=state.directory.at_us,
        chunks=encode_state(state),
    )
    loaded = load_newest(tmp_path)
    assert loaded.snapshot is not None
    decoded = decode_state(loaded.snapshot.body)
    assert bytes.fromhex(digest(decoded)) == loaded.snapshot.header.state_digest
    assert count_records(decoded) == loaded.snapshot.header.records
    assert decoded.directory.lsn == loaded.snapshot.header.lsn
    assert_same(decoded, state)


# -- garbage -------------------------------------------------------------------------------


def packed(*objects: Any) -> bytes:
    return b"".join(msgpack.packb(item, use_bin_type=True) for item in objects)


GOOD_HEADER = [3, 5, 4, 1, 0, 0, 1, 0, 0, 0, 0]  # version 3: no refusals, tallies or limits (GOOD_V4 has them)
GOOD_V4 = [4, *GOOD_HEADER[1:], 0, 0]
GOOD_ASSET = ["USD", 2, 1]
GOOD_WALLET = [treasury_id("USD"), "system", "USD", None, 0, 0, 0, 1, 1, 1]
WALLET_CREATED = encode_event(
    WalletCreated(wallet_id="w", owner_id="o", asset="USD", metadata=None, at_us=0,
                  idempotency=Idempotency(scope="s", key="k", fingerprint=b"f"))
)


def test_the_garbage_fixtures_decode_when_intact() -> None:
    decode_state(packed(GOOD_HEADER, GOOD_ASSET, GOOD_WALLET))
    decode_state(packed(GOOD_V4, GOOD_ASSET, GOOD_WALLET, 0))


def _with(base: list[Any], index: int, value: Any) -> list[Any]:
    return [*base[:index], value, *base[index + 1 :]]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "undecodable"),
        (packed([]), "expected an array"),
        (packed({"version": 1}), "expected an array"),
        (packed(_with(GOOD_HEADER, 0, 6)), "unknown snapshot codec version 6"),
        (packed(GOOD_V4, GOOD_ASSET, GOOD_WALLET), "undecodable"),  # the limits section is missing
        (packed(GOOD_V4, GOOD_ASSET, GOOD_WALLET, 2, [treasury_id("USD"), 0, None, None, 0, None, 0, 0]),
         "limits count"),
        (packed(GOOD_V4, GOOD_ASSET, GOOD_WALLET, 1, ["w", 0, None, None, 0, None, 0, 0]), "unknown wallet"),
        (packed(GOOD_V4, GOOD_ASSET, GOOD_WALLET, 1, [treasury_id("USD"), -1, None, None, 0, None, 0, 0]),
         "overdraft limit"),
        (packed(GOOD_V4, GOOD_ASSET, GOOD_WALLET, 1, [treasury_id("USD"), 0, 0, None, 0, None, 0, 0]),
         "daily limit"),
        (packed(GOOD_V4, GOOD_ASSET, GOOD_WALLET, 1, [treasury_id("USD"), None, None, None, None, 1, -1, 0]),
         "spent today"),
        (packed(_with(GOOD_HEADER, 0, True)), "unknown snapshot codec version True"),
        (packed(GOOD_HEADER[:-1]), "expected an array of 11"),
        (packed(GOOD_V4[:-1]), "expected an array of 13"),
        (packed(_with(GOOD_HEADER, 1, -1)), "lsn"),
        (packed(_with(GOOD_HEADER, 3, 10**6)), "asset count"),
        (packed(GOOD_HEADER, GOOD_ASSET), "undecodable"),  # truncated: the wallet is missing
        (packed(GOOD_HEADER, GOOD_ASSET, GOOD_WALLET, 0), "1 bytes after the last entity"),
        (packed(GOOD_HEADER, _with(GOOD_ASSET, 1, "2"), GOOD_WALLET), "scale"),
        (packed(_with(GOOD_HEADER, 3, 2), GOOD_ASSET, GOOD_ASSET, GOOD_WALLET), "appears twice"),
        (packed(GOOD_HEADER, GOOD_ASSET, _with(GOOD_WALLET, 6, 7)), "undecodable"),  # no such status
        (packed(GOOD_HEADER, GOOD_ASSET, _with(GOOD_WALLET, 4, 2**63)), "balance"),
        (packed(GOOD_HEADER, GOOD_ASSET, _with(GOOD_WALLET, 5, -1)), "held"),
        (packed(GOOD_HEADER, GOOD_ASSET, _with(GOOD_WALLET, 9, 6)), "wallet lsn"),
        (packed(GOOD_HEADER, GOOD_ASSET, _with(GOOD_WALLET, 3, [1])), "metadata"),
        (packed(GOOD_HEADER, GOOD_ASSET, _with(GOOD_WALLET, 0, b"id")), "wallet id"),
        (packed(_with(GOOD_HEADER, 6, 2), GOOD_ASSET, GOOD_WALLET, GOOD_WALLET), "out of order"),
        (packed(GOOD_HEADER, GOOD_ASSET, _with(GOOD_WALLET, 3, {1: 2})), "undecodable"),  # int map key
        # An asset code that is not UTF-8.
        (packed(GOOD_HEADER) + b"\x93\xa2\xff\xfe\x02\x01" + packed(GOOD_WALLET), "undecodable"),
        (packed(_with(GOOD_HEADER, 5, 1), GOOD_ASSET, ["s", "k", b"f", 2, 0, b"\x00"], GOOD_WALLET),
         None),  # the event codec's own message
        (packed(_with(GOOD_HEADER, 5, 1), GOOD_ASSET,
                ["s", "k", b"f", 2, 0, encode_event(TokenRevoked(prefix="p", at_us=0))], GOOD_WALLET),
         "may hold"),
        (packed(_with(GOOD_HEADER, 5, 1), GOOD_ASSET, ["s", "k", b"f", 9, 0, WALLET_CREATED], GOOD_WALLET),
         "idempotency lsn"),
        (packed(_with(GOOD_V4, 12, 2), GOOD_ASSET, GOOD_WALLET, ["t2", "w", 5, 1], ["t1", "w", 5, 1], 0),
         "out of order"),
        (packed(_with(GOOD_V4, 12, 1), GOOD_ASSET, GOOD_WALLET, ["t1", "w", 5, 6], 0), "refunded"),
        (packed(_with(GOOD_V4, 12, 1), GOOD_ASSET, GOOD_WALLET, ["t1", "w", 0, 0], 0), "original amount"),
    ],
    ids=[
        "empty", "header-empty", "header-map", "version", "limits-missing", "limits-count", "limits-wallet",
        "limits-overdraft", "limits-daily", "limits-spent", "version-bool", "header-short", "header-short-v4", "lsn",
        "count-past-body", "truncated", "trailing", "scale-type", "asset-twice", "status", "balance",
        "held", "wallet-lsn", "metadata", "wallet-id-type", "wallet-order", "map-key", "utf8",
        "event-garbage", "event-kind", "idempotency-lsn", "tally-order", "tally-over", "tally-original",
    ],
)
def test_garbage_is_refused_with_codec_error(body: bytes, expected: str | None) -> None:
    with pytest.raises(CodecError, match=expected):
        decode_state(body)


def test_a_keyed_record_is_checked_by_its_kind_on_load_and_in_full_when_asked() -> None:
    """Loading reads the kind of each key's record from its first bytes (the body's checksum
    rules out damage; decoding every record was half of a load); ``decode_events`` (what
    ``wallet snapshot verify`` uses) decodes each in full."""
    header = _with(GOOD_HEADER, 5, 1)
    wrong_kind = packed(header, GOOD_ASSET, ["s", "k", b"f", 2, 0, encode_event(TokenRevoked(prefix="p", at_us=0))],
                        GOOD_WALLET)
    with pytest.raises(CodecError, match="may hold"):
        decode_state(wrong_kind)
    with pytest.raises(CodecError, match="may hold"):
        decode_state(wrong_kind, decode_events=True)
    # The right kind, then fields that do not decode: found when the record is used.
    damaged = WALLET_CREATED[:3] + msgpack.packb("not the rest")
    body = packed(header, GOOD_ASSET, ["s", "k", b"f", 2, 0, damaged], GOOD_WALLET)
    record = decode_state(body).directory.idempotency[("s", "k")]
    with pytest.raises(CodecError):
        record.event  # noqa: B018 (the property decodes)
    with pytest.raises(CodecError):
        decode_state(body, decode_events=True)
    intact = packed(header, GOOD_ASSET, ["s", "k", b"f", 2, 0, WALLET_CREATED], GOOD_WALLET)
    for decode_events in (False, True):
        loaded = decode_state(intact, decode_events=decode_events).directory.idempotency[("s", "k")]
        assert loaded.event == decode_event(WALLET_CREATED)


def test_idempotency_records_must_be_in_lsn_order() -> None:
    event = WALLET_CREATED
    header = _with(GOOD_HEADER, 5, 2)
    in_order = packed(header, GOOD_ASSET, ["s", "k", b"f", 2, 0, event], ["s", "l", b"f", 3, 0, event], GOOD_WALLET)
    decode_state(in_order)
    backwards = packed(header, GOOD_ASSET, ["s", "k", b"f", 3, 0, event], ["s", "l", b"f", 2, 0, event], GOOD_WALLET)
    with pytest.raises(CodecError, match="idempotency lsn"):
        decode_state(backwards)
    twice = packed(header, GOOD_ASSET, ["s", "k", b"f", 2, 0, event], ["s", "k", b"f", 3, 0, event], GOOD_WALLET)
    with pytest.raises(CodecError, match="appears twice"):
        decode_state(twice)
    # The items of one batch record share its LSN.
    shared = packed(header, GOOD_ASSET, ["s", "k", b"f", 3, 0, event], ["s", "l", b"f", 3, 0, event], GOOD_WALLET)
    assert [record.lsn for record in decode_state(shared).directory.idempotency.values()] == [3, 3]


def decodes_or_refuses(body: bytes) -> None:
    """``decode_state`` returns a state or raises CodecError; any other exception escapes."""
    try:
        decoded = decode_state(body)
    except CodecError:
        return
    assert isinstance(decoded, State)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300))
def test_random_bytes_raise_codec_error_only(body: bytes) -> None:
    decodes_or_refuses(body)


@settings(max_examples=200, deadline=None)
@given(objects=st.lists(json_values | st.binary(max_size=4), max_size=6))
def test_random_msgpack_raises_codec_error_only(objects: list[Any]) -> None:
    decodes_or_refuses(packed(*objects))
    decodes_or_refuses(packed(GOOD_HEADER, *objects))


@settings(max_examples=100, deadline=None)
@given(state=states(), data=st.data())
def test_damaged_bodies_raise_codec_error_only(state: State, data: st.DataObject) -> None:
    body = body_of(state)
    cut = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    with pytest.raises(CodecError):
        decode_state(body[:cut])  # every prefix is missing something the counts promise
    offset = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    replacement = data.draw(st.binary(min_size=1, max_size=4))
    decodes_or_refuses(body[:offset] + replacement + body[offset + len(replacement) :])


def test_snapshot_verify_decodes_every_keyed_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A record whose kind reads right but whose fields do not decode loads (it would fail when
    a retry asks for it), and ``wallet snapshot verify`` reports the image FAILED."""
    from ledger._checkpoint import snapshots_dir
    from ledger.testing import digest as digest_of
    from server._tools import EXIT_FAILED, EXIT_OK, snapshot_verify

    header = _with(GOOD_HEADER, 5, 1)
    for name, payload, expected in (("intact", WALLET_CREATED, EXIT_OK),
                                    ("damaged", WALLET_CREATED[:3] + msgpack.packb("x"), EXIT_FAILED)):
        body = packed(header, GOOD_ASSET, ["s", "k", b"f", 2, 0, payload], GOOD_WALLET)
        state = decode_state(body)
        directory = snapshots_dir(tmp_path / name)
        directory.mkdir(parents=True)
        write_snapshot(directory, lsn=state.directory.lsn, records=count_records(state), log_checksum=b"\0" * 16,
                       state_digest=bytes.fromhex(digest_of(state)), created_at_us=1, chunks=[body])
        assert snapshot_verify(tmp_path / name) == expected, capsys.readouterr().out
        assert ("FAILED" in capsys.readouterr().out) == (expected == EXIT_FAILED)
