"""Verifying a webhook delivery (the Standard Webhooks specification): the server signs each
delivery with the endpoint's secret (``whsec_<base64>``, shown once when the endpoint is
created) and sends

    webhook-id: evt_...              stable across retries of the same event: deduplicate on it
    webhook-timestamp: 1767225600    seconds since the epoch, when this attempt was signed
    webhook-signature: v1,<base64>   HMAC-SHA256 over "<id>.<timestamp>.<body>" (space-separated
                                     when several signatures are sent, e.g. during a key rotation)

The HMAC itself is the ``standardwebhooks`` package's (``Webhook.sign``). Its ``verify`` is not
used as it is: its timestamp tolerance is fixed at five minutes and it reads the clock itself,
while here both are parameters (a receiver behind a queue needs a longer window; tests need a
fixed "now"), and it also accepts timestamps such as ``1e9`` or ``1.5`` that the specification
does not. So the checks are done here, in this order: the three headers are present, the
timestamp is whole seconds within ``tolerance_s`` of ``now``, and one of the ``v1`` signatures
matches (compared in constant time). Only then is the body parsed.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

DEFAULT_TOLERANCE_S = 300  # the specification's suggestion: five minutes either way
TIMESTAMP_DIGITS_MAX = 12


class WebhookVerificationError(ValueError):
    """The delivery is not authentic or not fresh: answer it with a 4xx and do not act on it."""


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify_webhook(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Checks a delivery's signature and freshness and returns its parsed JSON body (the event,
    as in ``/v1/events``); raises ``WebhookVerificationError`` otherwise.

    ``secret`` is the endpoint's ``whsec_...`` secret, or several (any may match: a rotation).
    ``headers`` is any mapping of the request's headers (names in any case), ``body`` the raw
    body exactly as received (verify before parsing: re-serialised JSON does not match).
    ``now`` (seconds since the epoch) defaults to the clock.

    Example (a Starlette receiver)::

        from wallet_client import verify_webhook, WebhookVerificationError

        async def receive(request):
            try:
                event = verify_webhook(SECRET, request.headers, await request.body())
            except WebhookVerificationError:
                return Response(status_code=400)
            if not seen(request.headers["webhook-id"]):   # at least once: deduplicate
                handle(event)
            return Response(status_code=204)
    """
    message_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp").strip()
    signatures = _header(headers, "webhook-signature")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= TIMESTAMP_DIGITS_MAX):
        raise WebhookVerificationError("webhook-timestamp is not a whole number of seconds")
    signed_at = int(stamp)
    current = time.time() if now is None else now
    if signed_at < current - tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old")
    if signed_at > current + tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is in the future")
    payload = body.encode() if isinstance(body, str) else bytes(body)
    candidates = [secret] if isinstance(secret, str) else list(secret)
    if not candidates:
        raise ValueError("no secret to verify with")
    moment = datetime.fromtimestamp(signed_at, UTC)
    given = [part.encode() for part in signatures.split() if part.startswith("v1,")]
    for candidate in candidates:
        try:
            expected = Webhook(candidate).sign(message_id, moment, payload).encode()
        except Exception as error:  # a secret that is not base64: the caller's mistake
            raise ValueError(f"not a webhook secret: {type(error).__name__}") from None
        # Every signature is compared (no early exit on the first mismatch).
        if any([hmac.compare_digest(expected, signature) for signature in given]):
            break
    else:
        raise WebhookVerificationError("no matching signature")
    try:
        event: dict[str, Any] = json.loads(payload)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    return event


def sign_webhook(secret: str, message_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The three headers a sender puts on ``body`` (for receivers' tests and simulators)."""
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp_s, UTC), body)
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp_s), "webhook-signature": signature}
