"""The state digest's lines are spelled out as f-strings for speed; they must stay the exact
text of the tuples' ``repr`` they replaced, or every digest recorded in a snapshot, a test
fixture or an operator's notes would change (``tests/wal/test_old_log.py`` pins one)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledger import (
    IdempotencyRecord,
    Reason,
    Rejection,
    TransactionType,
    Transferred,
    Wallet,
    WalletStatus,
)
from ledger._invariants import key_line, wallet_line

# Quotes, backslashes, non-ASCII and unprintable characters: everything repr escapes or keeps.
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
money = st.integers(min_value=-(2**63), max_value=2**63 - 1)
metadata = st.none() | st.dictionaries(text, text | st.integers() | st.booleans() | st.none(), max_size=4)


@given(text, text, text, money, money, st.sampled_from(WalletStatus), money, money, metadata)
def test_a_wallet_line_is_the_repr_of_its_tuple(
    wallet_id: str, owner: str, asset: str, balance: int, held: int, status: WalletStatus,
    created: int, updated: int, meta: dict | None,
) -> None:
    wallet = Wallet(id=wallet_id, owner_id=owner, asset=asset, metadata=meta, created_at_us=created, lsn=1,
                    balance=balance, held=held, status=status, updated_at_us=updated)
    assert wallet_line(wallet) == repr(
        (wallet_id, owner, asset, balance, held, int(status), created, updated,
         sorted((meta or {}).items(), key=str))
    )


@given(text, text, st.binary(max_size=16), st.integers(min_value=0, max_value=2**62),
       st.sampled_from(Reason), text)
def test_a_key_line_is_the_repr_of_its_tuple(
    scope: str, name: str, fingerprint: bytes, lsn: int, reason: Reason, detail: str,
) -> None:
    event = Transferred(
        transaction_id="tx_1", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
        asset="USD", amount=5, description=None, metadata=None, at_us=1, idempotency=None,
    )
    kept = IdempotencyRecord(fingerprint=fingerprint, lsn=lsn, at_us=1, source=event)
    assert key_line((scope, name), kept) == repr(((scope, name), fingerprint, lsn))
    refusal = Rejection(reason=reason, detail=detail)
    refused = IdempotencyRecord(fingerprint=fingerprint, lsn=lsn, at_us=1, source=refusal)
    assert key_line((scope, name), refused) == repr(((scope, name), fingerprint, lsn, reason.value, detail))
