"""What the client returns: frozen dataclasses read from the server's JSON, one per
representation in the contract (``API.md``). Money is ``int`` (minor units), timestamps are
timezone-aware ``datetime`` values, ids are ``str``.

Every value keeps the whole decoded JSON object in ``raw``, so a field a newer server adds is
never lost to an older client. Fields the contract defines for features a server may not have
yet (refunds, wallet limits) have defaults and are ``None`` when absent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from wallet_client._errors import WalletError, error_from_problem

T = TypeVar("T")
Json = Mapping[str, Any]

_MODEL = {"frozen": True, "slots": True, "kw_only": True}


def when(value: Any) -> datetime | None:
    """An RFC 3339 timestamp of the API (``...Z``) as an aware ``datetime``; ``None`` stays."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    return datetime.fromisoformat(value)


def rfc3339(value: datetime | str) -> str:
    """A query parameter's timestamp: a ``str`` as given, an aware ``datetime`` in UTC with
    microseconds and ``Z`` (a naive one is refused: it names no moment)."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("a naive datetime names no moment: give it a timezone")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _created(data: Json) -> datetime:
    found = when(data["created_at"])
    assert found is not None
    return found


@dataclass(**_MODEL)
class Page(Generic[T]):
    """One page of a listing: ``items`` and the ``next_cursor`` to pass for the next page
    (``None`` on the last page)."""

    items: list[T]
    next_cursor: str | None


@dataclass(**_MODEL)
class Asset:
    code: str
    scale: int
    treasury_wallet_id: str
    created_at: datetime
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Asset:
        return cls(code=data["code"], scale=data["scale"], treasury_wallet_id=data["treasury_wallet_id"],
                   created_at=_created(data), raw=dict(data))


@dataclass(**_MODEL)
class Token:
    """A new API token: ``token`` is shown once (the server keeps its hash)."""

    token: str
    prefix: str
    owner_id: str
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Token:
        return cls(token=data["token"], prefix=data.get("prefix", data["token"][:12]), owner_id=data["owner_id"],
                   raw=dict(data))


@dataclass(**_MODEL)
class Deleted:
    """The answer of a revoke or delete: what went (``id``: a token prefix, an alert or webhook id)."""

    id: str
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Deleted:
        return cls(id=data.get("id", data.get("prefix", "")), raw=dict(data))


@dataclass(**_MODEL)
class Wallet:
    id: str
    owner_id: str
    asset: str
    balance: int
    held: int
    available: int
    status: str  # active | frozen | closed
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    overdraft_limit: int | None = None  # wallet limits (contract); None when the server has none
    spend_limits: dict[str, int | None] | None = None
    spent: dict[str, int] | None = None
    raw: dict[str, Any] = dataclasses.field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, data: Json) -> Wallet:
        updated = when(data["updated_at"])
        assert updated is not None
        return cls(
            id=data["id"], owner_id=data["owner_id"], asset=data["asset"], balance=data["balance"],
            held=data["held"], available=data["available"], status=data["status"],
            metadata=dict(data.get("metadata") or {}), created_at=_created(data), updated_at=updated,
            overdraft_limit=data.get("overdraft_limit"), spend_limits=data.get("spend_limits"),
            spent=data.get("spent"), raw=dict(data),
        )


@dataclass(**_MODEL)
class Balance:
    """A wallet's posted balance, now (``as_of`` is ``None``) or at a past moment."""

    wallet_id: str
    balance: int
    as_of: datetime | None
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Balance:
        return cls(wallet_id=data["wallet_id"], balance=data["balance"], as_of=when(data.get("as_of")),
                   raw=dict(data))


@dataclass(**_MODEL)
class Transaction:
    id: str
    type: str  # deposit | transfer | withdrawal | refund
    status: str  # posted | pending | voided | failed
    from_wallet_id: str
    to_wallet_id: str
    asset: str
    amount: int
    description: str | None
    metadata: dict[str, Any]
    created_at: datetime
    lsn: int
    refund_of: str | None = None  # refunds (contract); None when absent
    refunded_amount: int | None = None
    raw: dict[str, Any] = dataclasses.field(repr=False, default_factory=dict)

    @classmethod
    def from_json(cls, data: Json) -> Transaction:
        return cls(
            id=data["id"], type=data["type"], status=data["status"], from_wallet_id=data["from_wallet_id"],
            to_wallet_id=data["to_wallet_id"], asset=data["asset"], amount=data["amount"],
            description=data.get("description"), metadata=dict(data.get("metadata") or {}),
            created_at=_created(data), lsn=data["lsn"], refund_of=data.get("refund_of"),
            refunded_amount=data.get("refunded_amount"), raw=dict(data),
        )


@dataclass(**_MODEL)
class StatementEntry:
    """One line of a wallet's history (``GET /v1/wallets/{id}/transactions``)."""

    transaction_id: str
    type: str
    status: str
    direction: str  # debit | credit
    amount: int
    balance_after: int
    counterparty_wallet_id: str | None
    description: str | None
    created_at: datetime
    lsn: int
    raw: dict[str, Any] = dataclasses.field(repr=False)
    refund_of: str | None = None  # refunds: the refunded transaction
    refunded_amount: int | None = None  # what refunds of the entry's transaction sent back so far

    @classmethod
    def from_json(cls, data: Json) -> StatementEntry:
        return cls(
            transaction_id=data["transaction_id"], type=data["type"], status=data["status"],
            direction=data["direction"], amount=data["amount"], balance_after=data["balance_after"],
            counterparty_wallet_id=data.get("counterparty_wallet_id"), description=data.get("description"),
            created_at=_created(data), lsn=data["lsn"], raw=dict(data), refund_of=data.get("refund_of"),
            refunded_amount=data.get("refunded_amount"),
        )


@dataclass(**_MODEL)
class BatchTransfer:
    """One transfer of ``transfer_batch``. Without ``idempotency_key`` the client makes one
    (kept for the batch's retries; read it back from ``BatchItem.idempotency_key``)."""

    from_wallet_id: str
    to_wallet_id: str
    amount: int
    description: str | None = None
    metadata: Mapping[str, Any] | None = None
    idempotency_key: str | None = None


@dataclass(**_MODEL)
class BatchItem:
    """One item's answer: ``status`` 201 with its ``transaction``, or a 4xx/5xx with ``error``."""

    status: int
    idempotency_key: str
    transaction: Transaction | None
    error: WalletError | None

    @property
    def ok(self) -> bool:
        return self.transaction is not None


@dataclass(**_MODEL)
class BatchResult:
    items: list[BatchItem]

    @property
    def transactions(self) -> list[Transaction]:
        """The posted items' transactions, in request order."""
        return [item.transaction for item in self.items if item.transaction is not None]

    @property
    def failed(self) -> list[BatchItem]:
        return [item for item in self.items if item.transaction is None]

    @classmethod
    def from_json(cls, data: Json, keys: list[str]) -> BatchResult:
        results = data["results"]
        if len(results) != len(keys):
            raise ValueError(f"{len(results)} results for {len(keys)} transfers")
        items = []
        for key, result in zip(keys, results, strict=True):
            status = result["status"]
            if "transaction" in result:
                items.append(BatchItem(status=status, idempotency_key=key,
                                       transaction=Transaction.from_json(result["transaction"]), error=None))
            else:
                error = error_from_problem(status, result.get("error") or {}, idempotency_key=key)
                items.append(BatchItem(status=status, idempotency_key=key, transaction=None, error=error))
        return cls(items=items)


@dataclass(**_MODEL)
class Withdrawal:
    id: str
    wallet_id: str
    amount: int
    asset: str
    status: str  # pending | processing | completed | failed | dead
    attempts: int
    destination: dict[str, Any]
    last_error: str | None
    bank_reference: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Withdrawal:
        updated = when(data["updated_at"])
        assert updated is not None
        return cls(
            id=data["id"], wallet_id=data["wallet_id"], amount=data["amount"], asset=data["asset"],
            status=data["status"], attempts=data["attempts"], destination=dict(data.get("destination") or {}),
            last_error=data.get("last_error"), bank_reference=data.get("bank_reference"),
            next_attempt_at=when(data.get("next_attempt_at")), created_at=_created(data), updated_at=updated,
            raw=dict(data),
        )


@dataclass(**_MODEL)
class Event:
    """One committed event of the feed (``/v1/events``), also the body a webhook receives."""

    lsn: int
    type: str  # transfer.posted, wallet.created, alert.triggered, ...
    created_at: datetime
    data: dict[str, Any]
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Event:
        return cls(lsn=data["lsn"], type=data["type"], created_at=_created(data), data=dict(data["data"]),
                   raw=dict(data))


@dataclass(**_MODEL)
class EventPage:
    """A page of the feed: ``next_after`` is the ``after`` to ask for next."""

    items: list[Event]
    next_after: int

    @classmethod
    def from_json(cls, data: Json) -> EventPage:
        return cls(items=[Event.from_json(item) for item in data["items"]], next_after=data["next_after"])


@dataclass(**_MODEL)
class Process:
    role: str
    pid: int
    started_at: datetime
    restarts: int
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Process:
        started = when(data["started_at"])
        assert started is not None
        return cls(role=data["role"], pid=data["pid"], started_at=started, restarts=data["restarts"],
                   raw=dict(data))


@dataclass(**_MODEL)
class Snapshot:
    """``POST /v1/admin/snapshots``: ``taken`` is False when nothing changed since the last one."""

    lsn: int
    taken: bool

    @classmethod
    def from_json(cls, data: Json) -> Snapshot:
        return cls(lsn=data["lsn"], taken=data["taken"])


@dataclass(**_MODEL)
class Readiness:
    """``GET /ready``: ``ready`` (200) or not (503, with the server's ``status`` and ``reason``)."""

    ready: bool
    status: str
    reason: str | None
    durable_lsn: int | None
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Readiness:
        status = data.get("status", "")
        return cls(ready=status == "ready", status=status, reason=data.get("reason"),
                   durable_lsn=data.get("durable_lsn"), raw=dict(data))


@dataclass(**_MODEL)
class Alert:
    """A balance alert: fires once each time ``field`` crosses below ``below`` (or above
    ``above``); ``state`` is ``armed`` or ``triggered``."""

    id: str
    wallet_id: str
    field: str  # available | balance
    below: int | None
    above: int | None
    state: str
    created_at: datetime
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Alert:
        return cls(id=data["id"], wallet_id=data["wallet_id"], field=data["field"], below=data.get("below"),
                   above=data.get("above"), state=data["state"], created_at=_created(data), raw=dict(data))


@dataclass(**_MODEL)
class Webhook:
    """A webhook endpoint. ``secret`` (``whsec_...``) is only in the answer that created it:
    keep it to verify deliveries with ``verify_webhook``."""

    id: str
    url: str
    events: list[str]
    status: str  # enabled | disabled
    secret: str | None
    created_at: datetime | None
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Webhook:
        return cls(id=data["id"], url=data["url"], events=list(data["events"]), status=data["status"],
                   secret=data.get("secret"), created_at=when(data.get("created_at")), raw=dict(data))


@dataclass(**_MODEL)
class Delivery:
    """One delivery attempt to a webhook endpoint: the answer's ``status_code`` or an ``error``."""

    event_id: str
    attempt: int
    status_code: int | None
    error: str | None
    at: datetime | None
    raw: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> Delivery:
        return cls(event_id=data["event_id"], attempt=data["attempt"], status_code=data.get("status_code"),
                   error=data.get("error"), at=when(data.get("at", data.get("time"))), raw=dict(data))
