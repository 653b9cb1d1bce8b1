"""The history read model: transactions, per-wallet statements and the wallet index.

Kept outside the state machine and fed only with durable records, in LSN order (the WAL calls
``History.feed`` after each fsync, before it wakes any waiter), so everything it shows is
durable and a GET issued after a 2xx sees that write. It computes ``balance_after`` itself, in
log order, which is the order clients can observe.

In this version it lives in memory and is rebuilt from the log at start; the history issue moves
it to SQLite. Entries are append-only lists in LSN order, so a page is a bisect plus a slice:
its cost does not depend on how long the wallet's history is.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ledger._model import Event, TransactionType, Transferred, WalletCreated


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One line of a wallet's statement."""

    lsn: int
    transaction_id: str
    type: TransactionType
    direction: str  # "debit" | "credit"
    amount: int
    balance_after: int
    counterparty_wallet_id: str
    at_us: int


class History:
    def __init__(self) -> None:
        self._transactions: dict[str, tuple[Transferred, int]] = {}
        self._entries: dict[str, list[Entry]] = {}
        self._entry_lsns: dict[str, list[int]] = {}
        self._balances: dict[str, int] = {}
        # (created lsn, wallet id, asset), in creation order.
        self._wallets: list[tuple[int, str, str]] = []
        self._wallets_by_owner: dict[str, list[tuple[int, str, str]]] = {}
        self._wallets_by_asset: dict[str, list[tuple[int, str, str]]] = {}
        self.lsn = 0

    def feed(self, records: Iterable[tuple[int, bytes, Any]]) -> None:
        """Applies durable records (lsn, payload, event) in LSN order."""
        for lsn, _, event in records:
            self.apply(event, lsn)

    def apply(self, event: Event, lsn: int) -> None:
        assert lsn > self.lsn, (lsn, self.lsn)
        self.lsn = lsn
        if isinstance(event, Transferred):
            self._transactions[event.transaction_id] = (event, lsn)
            self._add(event.from_wallet_id, event, lsn, "debit", -event.amount, event.to_wallet_id)
            self._add(event.to_wallet_id, event, lsn, "credit", event.amount, event.from_wallet_id)
        elif isinstance(event, WalletCreated):
            entry = (lsn, event.wallet_id, event.asset)
            self._wallets.append(entry)
            self._wallets_by_owner.setdefault(event.owner_id, []).append(entry)
            self._wallets_by_asset.setdefault(event.asset, []).append(entry)

    def _add(
        self, wallet_id: str, event: Transferred, lsn: int, direction: str, delta: int, other: str
    ) -> None:
        balance = self._balances.get(wallet_id, 0) + delta
        self._balances[wallet_id] = balance
        entry = Entry(
            lsn=lsn, transaction_id=event.transaction_id, type=event.type, direction=direction,
            amount=event.amount,
            balance_after=balance, counterparty_wallet_id=other, at_us=event.at_us,
        )
        self._entries.setdefault(wallet_id, []).append(entry)
        self._entry_lsns.setdefault(wallet_id, []).append(lsn)

    # -- queries -------------------------------------------------------------------------

    def transaction(self, transaction_id: str) -> tuple[Transferred, int] | None:
        return self._transactions.get(transaction_id)

    def entries(
        self,
        wallet_id: str,
        *,
        before_lsn: int | None,
        limit: int,
        type_: TransactionType | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
    ) -> list[Entry]:
        """Newest first: entries strictly older than ``before_lsn``, stamped within
        [``since_us``, ``until_us``] (both inclusive), of ``type_`` when given. Bisects on LSN and time (both
        ascending in a statement); only a type filter scans, and only over the window."""
        assert limit >= 1
        entries = self._entries.get(wallet_id)
        if not entries:
            return []
        lsns = self._entry_lsns[wallet_id]
        end = len(lsns) if before_lsn is None else bisect.bisect_left(lsns, before_lsn)
        if until_us is not None:
            end = min(end, bisect.bisect_right(entries, until_us, key=lambda entry: entry.at_us))
        start = 0
        if since_us is not None:
            start = bisect.bisect_left(entries, since_us, hi=end, key=lambda entry: entry.at_us)
        if type_ is None:
            return entries[max(start, end - limit) : end][::-1]
        found = []
        for index in range(end - 1, start - 1, -1):
            if entries[index].type == type_:
                found.append(entries[index])
                if len(found) == limit:
                    break
        return found

    def balance_at(self, wallet_id: str, at_us: int) -> int:
        """The posted balance after every entry stamped at or before ``at_us``."""
        entries = self._entries.get(wallet_id)
        if not entries:
            return 0
        position = bisect.bisect_right(entries, at_us, key=lambda entry: entry.at_us)
        return entries[position - 1].balance_after if position else 0

    def wallet_ids(
        self, *, owner_id: str | None, asset: str | None, after_lsn: int, limit: int
    ) -> list[tuple[int, str]]:
        """Wallets in creation order, created after ``after_lsn``; (lsn, wallet_id)."""
        if owner_id is not None:
            source = self._wallets_by_owner.get(owner_id, [])
        elif asset is not None:
            source = self._wallets_by_asset.get(asset, [])
        else:
            source = self._wallets
        start = bisect.bisect_right(source, after_lsn, key=lambda entry: entry[0])
        found = []
        for lsn, wallet_id, wallet_asset in source[start:]:
            if owner_id is not None and asset is not None and wallet_asset != asset:
                continue
            found.append((lsn, wallet_id))
            if len(found) >= limit:
                break
        return found
