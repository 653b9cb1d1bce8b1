"""``verify_webhook`` against deliveries signed here independently (hmac + base64, as the
Standard Webhooks specification says): a genuine one is accepted; a tampered body, an old or
future timestamp, a wrong secret, a missing header or a malformed timestamp are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from wallet_client import WebhookVerificationError, sign_webhook, verify_webhook

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_767_225_600
BODY = json.dumps({"lsn": 9, "type": "transfer.posted", "created_at": "2026-01-01T00:00:00.000000Z",
                   "data": {"id": "tx_1", "amount": 100}}).encode()


def signed(body: bytes = BODY, *, key: bytes = KEY, at: int = NOW, message_id: str = "evt_9_0") -> dict[str, str]:
    mac = hmac.new(key, f"{message_id}.{at}.".encode() + body, hashlib.sha256).digest()
    return {"Webhook-Id": message_id, "Webhook-Timestamp": str(at),
            "Webhook-Signature": "v1," + base64.b64encode(mac).decode()}


def test_a_genuine_delivery_is_accepted_and_parsed() -> None:
    event = verify_webhook(SECRET, signed(), BODY, now=NOW + 10)
    assert event["lsn"] == 9 and event["data"]["amount"] == 100
    assert verify_webhook(SECRET, signed(), BODY.decode(), now=NOW)["type"] == "transfer.posted"


def test_any_of_several_signatures_or_secrets_may_match() -> None:
    headers = signed()
    headers["Webhook-Signature"] = "v1,bm90IGl0 v1a,zzz " + headers["Webhook-Signature"]
    assert verify_webhook(SECRET, headers, BODY, now=NOW)["lsn"] == 9
    other = "whsec_" + base64.b64encode(b"another key of 32 bytes........").decode()
    assert verify_webhook([other, SECRET], signed(), BODY, now=NOW)["lsn"] == 9


def test_a_tampered_body_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, signed(), BODY.replace(b"100", b"900"), now=NOW)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, signed(key=b"x" * 32), BODY, now=NOW)


def test_a_changed_id_or_timestamp_breaks_the_signature() -> None:
    headers = signed()
    headers["Webhook-Id"] = "evt_10_0"
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, headers, BODY, now=NOW)
    headers = signed()
    headers["Webhook-Timestamp"] = str(NOW + 1)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(SECRET, headers, BODY, now=NOW)


def test_old_and_future_timestamps_are_refused_within_the_tolerance() -> None:
    assert verify_webhook(SECRET, signed(at=NOW - 300), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, signed(at=NOW - 301), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify_webhook(SECRET, signed(at=NOW + 301), BODY, now=NOW)
    assert verify_webhook(SECRET, signed(at=NOW - 3000), BODY, now=NOW, tolerance_s=3600)


def test_the_clock_is_the_default_now() -> None:
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, signed(at=NOW), BODY)  # NOW is long past for the machine's clock


@pytest.mark.parametrize("stamp", ["1.7e9", "1767225600.0", "-1", "", "abc", "1" * 13])
def test_a_timestamp_that_is_not_whole_seconds_is_refused(stamp: str) -> None:
    headers = signed()
    headers["Webhook-Timestamp"] = stamp
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize("missing", ["Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"])
def test_a_missing_header_is_refused(missing: str) -> None:
    headers = signed()
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(SECRET, headers, BODY, now=NOW)


def test_a_signed_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="JSON"):
        verify_webhook(SECRET, signed(b"not json"), b"not json", now=NOW)


def test_sign_webhook_matches_the_independent_signature() -> None:
    assert {k.lower(): v for k, v in signed().items()} == sign_webhook(SECRET, "evt_9_0", NOW, BODY)
