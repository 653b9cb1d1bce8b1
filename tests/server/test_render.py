"""The renderer's shortcuts give what the plain code gives: timestamps formatted without
``datetime`` (and cached), and a batch item's answer built without the general checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ledger import (
    Committed,
    Duplicate,
    HoldCreated,
    IdempotencyRecord,
    Reason,
    Rejection,
    TransactionType,
    Transferred,
)
from server.api import parse_timestamp, timestamp
from server.api._render import event_status, item_result, transaction_body

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Years 1-9999, what parse_timestamp accepts.
FIRST_US = -62_135_596_800_000_000
LAST_US = 253_402_300_799_999_999


def formatted_by_datetime(at_us: int) -> str:
    moment = EPOCH + timedelta(microseconds=at_us)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S.%f}Z"


@given(st.integers(min_value=FIRST_US, max_value=LAST_US))
def test_timestamp_is_rfc3339_utc_with_microseconds(at_us: int) -> None:
    text = timestamp(at_us)
    assert text == formatted_by_datetime(at_us)
    assert parse_timestamp("t", text) == at_us


def test_timestamp_edges() -> None:
    assert timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert timestamp(-1) == "1969-12-31T23:59:59.999999Z"
    assert timestamp(FIRST_US) == "0001-01-01T00:00:00.000000Z"
    assert timestamp(LAST_US) == "9999-12-31T23:59:59.999999Z"
    # Cached values are the same answers.
    assert timestamp(1_765_000_000_123_456) == timestamp(1_765_000_000_123_456) == "2025-12-06T05:46:40.123456Z"


def _transferred(metadata: dict[str, str] | None = None) -> Transferred:
    return Transferred(
        transaction_id="tx_1", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
        asset="USD", amount=5, description="rent", metadata=metadata, at_us=1_765_000_000_000_001,
        idempotency=None,
    )


def test_transaction_body_of_a_transfer() -> None:
    assert transaction_body(_transferred({"k": "v"}), 7) == {
        "id": "tx_1", "type": "transfer", "status": "posted", "from_wallet_id": "a", "to_wallet_id": "b",
        "asset": "USD", "amount": 5, "description": "rent", "metadata": {"k": "v"},
        "created_at": "2025-12-06T05:46:40.000001Z", "lsn": 7, "refunded_amount": 0,
    }
    assert transaction_body(_transferred(), 7)["metadata"] == {}


def test_transaction_body_of_a_hold_takes_the_general_path() -> None:
    hold = HoldCreated(
        transaction_id="tx_h", type=TransactionType.TRANSFER, from_wallet_id="a", to_wallet_id="b",
        asset="USD", amount=5, description=None, metadata=None, at_us=2_000_000, deadline_us=3_000_000,
        destination=None, idempotency=None,
    )
    body = transaction_body(hold, 9)
    assert body["status"] == event_status(hold).label == "pending"
    assert body["created_at"] == "1970-01-01T00:00:02.000000Z"


def test_item_result_committed_and_duplicate_render_alike() -> None:
    event = _transferred()
    committed = item_result(Committed(source=event, lsn=11))
    assert committed == {"status": 201, "transaction": transaction_body(event, 11)}
    record = IdempotencyRecord(fingerprint=b"f" * 16, lsn=11, at_us=event.at_us, source=event)
    assert item_result(Duplicate(record=record)) == committed
    refused = item_result(Rejection(reason=Reason.INSUFFICIENT_FUNDS, detail="short"))
    assert refused["status"] == 422 and refused["error"]["code"] == "insufficient_funds"
