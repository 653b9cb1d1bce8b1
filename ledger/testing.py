"""Helpers for testing code that uses the ledger (shipped, like ``trio.testing``): commands with
made-up ids, a ledger set up with an asset and funded wallets, a settable clock, edge-biased
transfer amounts (a Hypothesis strategy) and a replay through the codec.

Nothing here is used by the ledger itself. ``amounts`` needs Hypothesis (a test dependency),
imported when it is called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ledger._apply import apply
from ledger._codec import decode_event, encode_event
from ledger._invariants import check_state, digest_state
from ledger._ledger import Ledger
from ledger._model import (
    INT64_MAX,
    Committed,
    CreateAsset,
    CreateWallet,
    Event,
    Idempotency,
    TransactionType,
    Transfer,
)
from ledger._state import State, new_state

if TYPE_CHECKING:
    import hypothesis.strategies as st

EDGE_AMOUNTS: list[int] = sorted(
    {1, 2, 3, INT64_MAX, INT64_MAX - 1, INT64_MAX - 2}
    | {
        2**power + delta
        for power in range(1, 63)
        for delta in (-3, -1, 0, 1, 3)
        if 1 <= 2**power + delta <= INT64_MAX
    }
)


def amounts() -> st.SearchStrategy[int]:
    """Transfer amounts: int64 edges, powers of two +/- a few, small ones, and arbitrary ones."""
    import hypothesis.strategies as st

    return st.one_of(
        st.sampled_from([1, 2, INT64_MAX, INT64_MAX - 1]),
        st.sampled_from(EDGE_AMOUNTS),
        st.integers(min_value=1, max_value=1000),
        st.integers(min_value=1, max_value=INT64_MAX),
    )


def replay(events: Iterable[Event]) -> State:
    """A fresh state built by encoding, decoding and applying ``events`` with LSNs from 1."""
    state = new_state()
    for lsn, event in enumerate(events, start=1):
        decoded = decode_event(encode_event(event))
        assert decoded == event
        apply(state, decoded, lsn)
    check_state(state)
    return state


def digest(state: State) -> str:
    return digest_state(state)


def transfer(number: int, source: str | None, target: str, amount: int, *, key: str | None = None) -> Transfer:
    """Transfer ``tx<number>`` (a deposit when ``source`` is None), with an idempotency key in
    scope ``s`` when ``key`` is given."""
    return Transfer(
        transaction_id=f"tx{number}",
        type=TransactionType.DEPOSIT if source is None else TransactionType.TRANSFER,
        from_wallet_id=source, to_wallet_id=target, amount=amount, description=None, metadata=None,
        idempotency=None if key is None else Idempotency(scope="s", key=key, fingerprint=key.encode()),
    )


def hold(number: int, source: str, target: str, amount: int, timeout_s: int = 3600) -> Transfer:
    """Transfer ``h<number>`` held for ``timeout_s`` seconds."""
    return Transfer(transaction_id=f"h{number}", type=TransactionType.TRANSFER, from_wallet_id=source,
                    to_wallet_id=target, amount=amount, description=None, metadata=None, idempotency=None,
                    hold_timeout_s=timeout_s)


async def setup(ledger: Ledger, ids: list[str], deposit: int) -> None:
    """Asset USD, a wallet of owner ``o`` per id, each with ``deposit`` (when not 0)."""
    assert await ledger.create_asset(CreateAsset(code="USD", scale=2))
    for number, wallet_id in enumerate(ids):
        created = await ledger.create_wallet(
            CreateWallet(wallet_id=wallet_id, owner_id="o", asset="USD", metadata=None, idempotency=None)
        )
        assert isinstance(created, list) and created
        if deposit:
            assert isinstance(await ledger.transfer(transfer(-1 - number, None, wallet_id, deposit)), Committed)


class FakeTime:
    """A time source for ``Clock``: nanoseconds since the epoch, set by hand (``ns``)."""

    def __init__(self) -> None:
        self.ns = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.ns


__all__ = [
    "EDGE_AMOUNTS",
    "FakeTime",
    "amounts",
    "digest",
    "hold",
    "replay",
    "setup",
    "transfer",
]
