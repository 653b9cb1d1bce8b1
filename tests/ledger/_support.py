"""Shared helpers for the ledger tests: edge-biased amounts and a replay through the codec."""

from __future__ import annotations

from collections.abc import Iterable

import hypothesis.strategies as st

from ledger import (
    INT64_MAX,
    Event,
    State,
    apply,
    check_state,
    decode_event,
    digest_state,
    encode_event,
    new_state,
)

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

