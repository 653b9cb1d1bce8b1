"""Page cursors: opaque to clients, ``<kind>:<number>`` (or a withdrawal's ``<created_at_us>:<id>``)
in unpadded URL-safe base64. A cursor this server did not give out is ``400`` (field
``cursor``), never a 500 nor a page from somewhere else. Runs in every HTTP worker, and in the
one process of ``--workers 0``.
"""

from __future__ import annotations

import base64
import binascii

from ledger import ENTRY_POSITION_BITS, ID_PATTERN, INT64_MAX, INT64_MIN
from server import _validate as v
from server._errors import ApiError


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def encode_cursor(kind: str, lsn: int) -> str:
    return _encode(f"{kind}:{lsn}")


def cursor_text(raw: str) -> str:
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_cursor() from None


def _bad_cursor() -> ApiError:
    return v.invalid_field("cursor", "is not a cursor this endpoint gave out")


def decode_cursor(kind: str, raw: str | None, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int | None:
    """The number in a ``<kind>:<number>`` cursor, from ``low`` to ``high`` (the range of the
    keys it was made from, within int64 for SQLite); anything else is ``400`` (field cursor)."""
    if raw is None:
        return None
    prefix, _, number = cursor_text(raw).partition(":")
    found = v.integer_in(number, low, high) if prefix == kind else None
    if found is None:
        raise _bad_cursor()
    return found


# A statement cursor's ``t:<lsn>`` (schema 1) becomes the position ``lsn << ENTRY_POSITION_BITS``,
# which must stay within int64 too.
STATEMENT_LSN_MAX = INT64_MAX >> ENTRY_POSITION_BITS


def statement_cursor(raw: str | None) -> int | None:
    """The entry position a statement page continues below. Cursors are ``e:<position>``; the
    ``t:<lsn>`` ones given out before entries had positions (schema 1) still work. Positions
    and LSNs are never negative."""
    if raw is None:
        return None
    try:
        return decode_cursor("e", raw, low=0)
    except ApiError:
        lsn = decode_cursor("t", raw, low=0, high=STATEMENT_LSN_MAX)
        assert lsn is not None
        return lsn << ENTRY_POSITION_BITS


def encode_withdrawal_cursor(created_at_us: int, withdrawal_id: str) -> str:
    return _encode(f"{created_at_us}:{withdrawal_id}")


def withdrawal_cursor(raw: str | None) -> tuple[int, str] | None:
    """``<created_at_us>:<withdrawal id>`` of the last withdrawal of the previous page."""
    if raw is None:
        return None
    created, _, after_id = cursor_text(raw).partition(":")
    at_us = v.integer_in(created, 0, INT64_MAX)
    if at_us is None or not ID_PATTERN.fullmatch(after_id):
        raise _bad_cursor()
    return at_us, after_id
