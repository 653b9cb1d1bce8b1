"""Validation at the edge: bytes from outside become typed values or a 400/413/415, never a 500.

Rules (``API.md``): money is a JSON integer 1..int64 max; a float (even ``10.0``), a string, a
boolean, null, zero or a negative is refused. Ids are 1-64 of ``[A-Za-z0-9_.:-]``; ids starting
with ``treasury:`` are reserved. Unknown fields, duplicate keys, NaN/Infinity and strings that
are not valid Unicode (lone surrogates) are refused, because each would otherwise reach the log.

The batch route (``batch_body``, ``batch_request``, ``batch_items``) takes JSON or MessagePack
under the same rules: MessagePack is decoded strictly (``raw=False``: strings must be UTF-8 and
bin is never a string; map keys must be strings; duplicate keys, trailing bytes and anything
that does not decode are refused) and its values then meet the same checks as JSON's, so a
float amount is refused whichever way it came. An item is first checked by a tight predicate
(type and range tests, one regex per id, no allocation); only an item that fails it, or carries
metadata, goes through ``fields`` with the single-transfer route's validators, which produce the
same messages and codes, under field paths ``transfers[i].name``.

Limits on what the decoders accept, checked while decoding so that a hostile body is refused
before it becomes a large structure or a long list of errors (each is above what any valid
request holds, so a valid request never meets one, and a near miss still gets its field's own
message):

    | limit                     | value  | a valid request holds at most                    |
    |---------------------------|--------|--------------------------------------------------|
    | DECODE_MAP_ENTRIES_MAX    | 1024   | 6 fields; metadata of 4 KiB: 512 entries         |
    | DECODE_ARRAY_ITEMS_MAX    | 16384  | a batch's 8190 transfers (BATCH_ITEMS_MAX)       |
    | DECODE_STRING_BYTES_MAX   | 16 KiB | 4 KiB (metadata; a description: 1024 characters) |
    | DECODE_DEPTH_MAX          | 32     | 10 levels (batch, item, metadata's 8 levels)     |

MessagePack: the unpacker checks the lengths from each header before reading what follows
(``max_map_len`` and friends), so a map that claims two million entries costs nothing; depth
is counted by the hooks as each container is finished (about 0.5 us per map: 5 ms on a full
batch of 8,190 items; trusting the unpacker's own 1,024-level stack instead was rejected, as it
would leave every later walker of the value to bound its own recursion). JSON: Python's scanner has no hook for
strings or arrays and calls ``object_pairs_hook`` when an object ends, so an object's members
are counted there (before they become a dict or errors), arrays are measured by the object that
holds them, and strings are bounded by the body size alone. Past a limit, the whole request is
``400`` with one ``body`` error naming it. Error lists stop at ``ERRORS_MAX`` (``_errors``);
a non-atomic batch lists at most ``BATCH_ERRORS_MAX`` errors in all before each further bad
item lists only its first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
from starlette.requests import Request

from ledger import (
    AMOUNT_MAX,
    BATCH_ITEMS_MAX,
    DESCRIPTION_CHARS_MAX,
    ID_PATTERN,
    INT64_MAX,
    INT64_MIN,
    METADATA_BYTES_MAX,
    SCALE_MAX,
    SYSTEM_OWNER,
    TREASURY_PREFIX,
)
from server._errors import ERRORS_MAX, ApiError, capped, first_errors, invalid, invalid_field

BODY_BYTES_MAX = 1024 * 1024
BATCH_BODY_BYTES_MAX = 16 * 1024 * 1024
JSON_MEDIA_TYPE = "application/json"
MSGPACK_MEDIA_TYPE = "application/msgpack"
IDEMPOTENCY_KEY_CHARS_MAX = 128
METADATA_DEPTH_MAX = 8
LIMIT_DEFAULT = 50
LIMIT_MAX = 1000
DECODE_MAP_ENTRIES_MAX = 1024
DECODE_ARRAY_ITEMS_MAX = 16 * 1024
DECODE_STRING_BYTES_MAX = 16 * 1024
DECODE_DEPTH_MAX = 32
BATCH_ERRORS_MAX = 1000  # errors listed in all the items of one non-atomic batch
assert DECODE_MAP_ENTRIES_MAX >= METADATA_BYTES_MAX // 8  # an entry of metadata encodes to 8+ bytes
assert DECODE_ARRAY_ITEMS_MAX >= 2 * BATCH_ITEMS_MAX  # an over-full batch still gets its transfers error
assert DECODE_STRING_BYTES_MAX >= max(4 * DESCRIPTION_CHARS_MAX, METADATA_BYTES_MAX)
assert DECODE_DEPTH_MAX >= 3 + METADATA_DEPTH_MAX
assert BATCH_ERRORS_MAX >= ERRORS_MAX


class _Float:
    """A JSON number with a fraction or exponent, kept apart from ints so ``10.0`` is refused."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _BigInt:
    """An integer literal too long to be an int64 (kept as text: Python refuses to parse
    integers past 4300 digits, and nothing that long is a valid amount anyway)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _BigInt:
    return int(text) if len(text) <= 20 else _BigInt(text)


class _Constant(Exception):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise invalid_field(key, "duplicate key")
            seen.add(key)
    return result


def _too_many(what: str, count: int, limit: int) -> ApiError:
    return invalid_field("body", f"{what} holds {count}; at most {limit} are accepted")


def _too_deep() -> ApiError:
    return invalid_field("body", f"nests deeper than {DECODE_DEPTH_MAX} levels")


class _Shape:
    """The decode limits for one body, checked by the decoders' hooks. Hooks see a container
    when it is finished, so depth is counted upwards: a container of scalars has depth 1, and
    one that holds containers 1 more than the deepest of them. Only the depth of containers
    that hold containers is kept (by id: they are all alive until the decode ends)."""

    __slots__ = ("_depths",)

    def __init__(self) -> None:
        self._depths: dict[int, int] = {}

    def _record(self, container: Any, depth: int) -> None:
        if depth > DECODE_DEPTH_MAX:
            raise _too_deep()
        if depth > 1:
            self._depths[id(container)] = depth

    def json_object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len(pairs) > DECODE_MAP_ENTRIES_MAX:
            raise _too_many("an object's members", len(pairs), DECODE_MAP_ENTRIES_MAX)
        result = _no_duplicates(pairs)
        kinds = set(map(type, result.values()))  # at C speed: most objects hold only scalars
        if dict in kinds or list in kinds:
            depth = 1
            depths = self._depths
            for value in result.values():
                kind = type(value)
                if kind is dict:
                    depth = max(depth, depths.get(id(value), 1) + 1)
                elif kind is list:
                    depth = max(depth, self.json_array(value, DECODE_DEPTH_MAX - 1) + 1)
            self._record(result, depth)
        return result

    def json_array(self, values: list[Any], room: int) -> int:
        """The depth of a JSON array (measured by whoever holds it: JSON has no array hook),
        refusing it past the limits; ``room`` is the depth it may have at most."""
        if len(values) > DECODE_ARRAY_ITEMS_MAX:
            raise _too_many("an array's items", len(values), DECODE_ARRAY_ITEMS_MAX)
        if room < 1:
            raise _too_deep()
        depth = 1
        depths = self._depths
        for value in values:
            kind = type(value)
            if kind is dict:
                depth = max(depth, depths.get(id(value), 1) + 1)
            elif kind is list:
                depth = max(depth, self.json_array(value, room - 1) + 1)
        if depth > room:
            raise _too_deep()
        return depth

    def msgpack_map(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        result = _msgpack_map(pairs)
        kinds = set(map(type, result.values()))
        if dict in kinds or list in kinds:
            self._record(result, self._held_depth(result.values()))
        return result

    def msgpack_array(self, values: list[Any]) -> list[Any]:
        kinds = set(map(type, values))
        if dict in kinds or list in kinds:
            self._record(values, self._held_depth(values))
        return values

    def _held_depth(self, values: Any) -> int:
        """The depth of a container holding ``values`` (whose containers the hooks have seen)."""
        depth = 1
        depths = self._depths
        for value in values:
            kind = type(value)
            if kind is dict or kind is list:
                depth = max(depth, depths.get(id(value), 1) + 1)
        return depth


def _too_large(limit: int) -> ApiError:
    # The rest of the body is not read, so the connection cannot carry another request: say so.
    return ApiError(
        413, "payload_too_large", "Payload too large", f"the body limit is {limit} bytes",
        headers={"Connection": "close"},
    )


async def read_body(request: Request, *, limit: int = BODY_BYTES_MAX) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise invalid_field("Content-Length", "must be a non-negative integer")
        if int(length) > limit:
            raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _check_json_content_type(request: Request) -> None:
    if media_type(request) != JSON_MEDIA_TYPE:
        content_type = request.headers.get("content-type", "")
        raise ApiError(
            415, "unsupported_media_type", "Unsupported media type",
            f"send the body as application/json, not {content_type or 'nothing'}",
        )


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object. ``optional``: an empty body means ``{}``."""
    body = await read_body(request)
    if optional and not body.strip():
        return {}
    _check_json_content_type(request)
    value = _decode_json(body)
    if not isinstance(value, dict):
        raise invalid_field("body", "must be a JSON object")
    return value


def _decode_json(body: bytes) -> Any:
    shape = _Shape()
    decoder = json.JSONDecoder(
        parse_float=_Float, parse_int=_parse_int, parse_constant=_refuse_constant,
        object_pairs_hook=shape.json_object,
    )
    try:
        text = body.decode("utf-8")
        value = decoder.decode(text)
        if type(value) is list:  # an array at the top: nothing held it to measure it
            shape.json_array(value, DECODE_DEPTH_MAX)
    except UnicodeDecodeError:
        raise invalid_field("body", "is not valid UTF-8") from None
    except _Constant as constant:
        raise invalid_field("body", f"{constant} is not valid JSON") from None
    except json.JSONDecodeError as error:
        raise invalid_field("body", f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:  # deeper than the scanner goes, before any hook could count
        raise _too_deep() from None
    except ValueError as error:  # e.g. an integer literal past Python's digit limit
        raise invalid_field("body", f"malformed JSON: {error}") from None
    return value


Validator = Callable[[str, Any], Any]


def fields(body: dict[str, Any], spec: dict[str, tuple[bool, Validator]]) -> dict[str, Any]:
    """Checks ``body`` against ``spec`` (name -> (required, validator)); collects the errors,
    up to the first ``ERRORS_MAX`` (and says when there were more)."""
    values, errors = field_errors(body, spec)
    if errors:
        raise invalid(errors)
    return values


def field_errors(
    body: dict[str, Any], spec: dict[str, tuple[bool, Validator]]
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The values of ``body`` by ``spec``, and its first ``ERRORS_MAX + 1`` errors (checking
    stops there: a body of a thousand unknown fields is not walked to its end)."""
    values: dict[str, Any] = {}

    def errors() -> Iterator[dict[str, str]]:
        for name in body:
            if name not in spec:
                yield {"field": name, "message": "unknown field"}
        for name, (required, validate) in spec.items():
            if name not in body:
                if required:
                    yield {"field": name, "message": "is required"}
                continue
            try:
                values[name] = validate(name, body[name])
            except ApiError as error:
                yield from error.errors or [{"field": name, "message": error.detail}]

    return values, first_errors(errors())


def _describe(value: Any) -> str:
    if isinstance(value, _Float | _BigInt):
        return f"the number {value.text}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return f"a {type(value).__name__}" if not isinstance(value, str) else "a string"


def amount(name: str, value: Any) -> int:
    if isinstance(value, _BigInt):
        raise invalid_field(name, f"must be between 1 and {AMOUNT_MAX}")
    if type(value) is not int:
        raise invalid_field(name, f"must be an integer number of minor units, not {_describe(value)}")
    if not 1 <= value <= AMOUNT_MAX:
        raise invalid_field(name, f"must be between 1 and {AMOUNT_MAX}")
    return value


def threshold(name: str, value: Any) -> int:
    """An alert's threshold: any int64, negative and zero included (a balance can be below 0:
    the treasury, an overdraft), never a float, string, boolean or null."""
    if isinstance(value, _BigInt):
        raise invalid_field(name, f"must be between {INT64_MIN} and {INT64_MAX}")
    if type(value) is not int:
        raise invalid_field(name, f"must be an integer number of minor units, not {_describe(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise invalid_field(name, f"must be between {INT64_MIN} and {INT64_MAX}")
    return value


def overdraft_limit(name: str, value: Any) -> int:
    """A wallet's overdraft limit: 0 to int64 max (minor units), never a float, string,
    boolean or null."""
    if isinstance(value, _BigInt):
        raise invalid_field(name, f"must be between 0 and {INT64_MAX}")
    if type(value) is not int:
        raise invalid_field(name, f"must be an integer number of minor units, not {_describe(value)}")
    if not 0 <= value <= INT64_MAX:
        raise invalid_field(name, f"must be between 0 and {INT64_MAX}")
    return value


def _spend_limit(name: str, value: Any) -> int:
    """A spend limit: 1 to int64 max, or null for none (returned as 0: the ledger's "none")."""
    if value is None:
        return 0
    if isinstance(value, _BigInt):
        raise invalid_field(name, f"must be null or between 1 and {INT64_MAX}")
    if type(value) is not int:
        raise invalid_field(name, f"must be null or an integer number of minor units, not {_describe(value)}")
    if not 1 <= value <= INT64_MAX:
        raise invalid_field(name, f"must be null or between 1 and {INT64_MAX}")
    return value


def spend_limits(name: str, value: Any) -> dict[str, int]:
    """``{"daily"?: int|null, "monthly"?: int|null}``: the given ones, null as 0 (none);
    ``null`` for the whole object removes both."""
    if value is None:
        return {"daily": 0, "monthly": 0}
    if not isinstance(value, dict):
        raise invalid_field(name, f"must be an object, not {_describe(value)}")
    values, errors = field_errors(
        value, {"daily": (False, _spend_limit), "monthly": (False, _spend_limit)}
    )
    if errors:
        raise invalid([{**error, "field": f"{name}.{error['field']}"} for error in errors])
    return values


ALERT_FIELDS = ("available", "balance")


def alert_field(name: str, value: Any) -> str:
    if type(value) is not str or value not in ALERT_FIELDS:
        raise invalid_field(name, f"must be one of {', '.join(ALERT_FIELDS)}")
    return value


def identifier(name: str, value: Any) -> str:
    if type(value) is not str:
        raise invalid_field(name, f"must be a string, not {_describe(value)}")
    if not ID_PATTERN.fullmatch(value):
        raise invalid_field(name, "must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


def user_identifier(name: str, value: Any) -> str:
    """An id a client may name: not one of the system's reserved ``treasury:`` ids."""
    value = identifier(name, value)
    if value.startswith(TREASURY_PREFIX):
        raise invalid_field(name, f"ids starting with {TREASURY_PREFIX!r} are reserved")
    return value


def owner_identifier(name: str, value: Any) -> str:
    """An owner id a client may name: not the system owner of the treasury wallets."""
    value = user_identifier(name, value)
    if value == SYSTEM_OWNER:
        raise invalid_field(name, f"owner id {SYSTEM_OWNER!r} is reserved")
    return value


def asset_code(name: str, value: Any) -> str:
    value = identifier(name, value)
    if ":" in value:
        raise invalid_field(name, "an asset code may not contain ':'")
    return value


def scale(name: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value <= SCALE_MAX:
        raise invalid_field(name, f"must be an integer from 0 to {SCALE_MAX}")
    return value


def _text(value: str, name: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_field(name, "is not valid Unicode (lone surrogate)") from None
    return value


def description(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise invalid_field(name, f"must be a string, not {_describe(value)}")
    if len(value) > DESCRIPTION_CHARS_MAX:
        raise invalid_field(name, f"must be at most {DESCRIPTION_CHARS_MAX} characters")
    return _text(value, name)


class _Budget:
    """How many more values metadata may hold: each encodes to at least one byte, so past
    ``METADATA_BYTES_MAX`` values it is too large, and the rest need not be walked."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = METADATA_BYTES_MAX


def _too_large_metadata(name: str) -> ApiError:
    return invalid_field(name, f"must encode to at most {METADATA_BYTES_MAX} bytes")


def _plain(name: str, value: Any, depth: int, budget: _Budget) -> Any:
    if depth > METADATA_DEPTH_MAX:
        raise invalid_field(name, f"nests deeper than {METADATA_DEPTH_MAX} levels")
    budget.left -= 1
    if budget.left < 0:
        raise _too_large_metadata(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, _BigInt) or (isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX):
        raise invalid_field(name, "integers in metadata must fit in 64 bits")
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise invalid_field(name, "integers in metadata must fit in 64 bits")
        return value
    if isinstance(value, _Float) or type(value) is float:  # JSON text, or a MessagePack float
        number = float(value.text) if isinstance(value, _Float) else value
        if not math.isfinite(number):
            raise invalid_field(name, "numbers must be finite")
        return number
    if isinstance(value, str):
        return _text(value, name)
    if isinstance(value, list):
        return [_plain(name, item, depth + 1, budget) for item in value]
    if isinstance(value, dict):
        if not all(type(key) is str for key in value):
            raise invalid_field(name, "keys must be strings")
        return {_text(key, name): _plain(name, item, depth + 1, budget) for key, item in value.items()}
    raise invalid_field(name, f"unsupported value {_describe(value)}")


def metadata(name: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_field(name, f"must be an object, not {_describe(value)}")
    plain = _plain(name, value, 1, _Budget())
    if len(json.dumps(plain, ensure_ascii=False).encode()) > METADATA_BYTES_MAX:
        raise _too_large_metadata(name)
    return plain


HOLD_TIMEOUT_S_MAX = 7 * 24 * 3600


def destination(name: str, value: Any) -> dict[str, Any]:
    """A withdrawal's destination: a non-empty JSON object, bounded like metadata."""
    if not isinstance(value, dict) or not value:
        raise invalid_field(name, f"must be a non-empty object, not {_describe(value)}")
    plain = metadata(name, value)
    assert plain is not None
    return plain


def hold(name: str, value: Any) -> int:
    """``{"timeout_s": N}`` with 1 <= N <= a week; returns N."""
    if not isinstance(value, dict):
        raise invalid_field(name, f"must be an object, not {_describe(value)}")
    unknown = sorted(set(value) - {"timeout_s"})
    if unknown:
        raise invalid_field(f"{name}.{unknown[0]}", "is not a known field")
    if "timeout_s" not in value:
        raise invalid_field(f"{name}.timeout_s", "is required")
    timeout_s = value["timeout_s"]
    if type(timeout_s) is not int or not 1 <= timeout_s <= HOLD_TIMEOUT_S_MAX:
        raise invalid_field(f"{name}.timeout_s", f"must be an integer from 1 to {HOLD_TIMEOUT_S_MAX}")
    return timeout_s


def canonical(value: Any) -> Any:
    """The body as a JSON-serialisable value, one-to-one with the parsed body (every value is
    tagged with its kind), for fingerprints: ``1.5`` and ``"1.5"`` and ``{"n": "1.5"}`` differ."""
    if isinstance(value, dict):
        return {"o": {key: canonical(item) for key, item in value.items()}}
    if isinstance(value, list):
        return {"a": [canonical(item) for item in value]}
    if isinstance(value, _Float | _BigInt):
        return {"n": value.text}
    if isinstance(value, bool) or value is None:
        return {"c": value}
    if isinstance(value, int):
        return {"i": str(value)}
    return {"s": value}


def idempotency_key(request: Request, *, required: bool) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        if required:
            raise ApiError(
                400, "idempotency_key_missing", "Idempotency key missing",
                "this request moves money: send an Idempotency-Key header (1-128 printable ASCII characters)",
            )
        return None
    if not _key_chars(key):
        raise invalid_field("Idempotency-Key", "must be 1-128 printable ASCII characters")
    return key


def _key_chars(key: str) -> bool:
    """The rule for idempotency keys: 1-128 printable ASCII characters."""
    return 1 <= len(key) <= IDEMPOTENCY_KEY_CHARS_MAX and all(" " <= char <= "~" for char in key)


def limit(request: Request, *, default: int = LIMIT_DEFAULT, maximum: int = LIMIT_MAX) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= maximum:
        raise invalid_field("limit", f"must be an integer from 1 to {maximum}")
    return int(raw)


def integer_in(text: str, low: int, high: int) -> int | None:
    """``text`` as an integer from ``low`` to ``high`` when it is written plainly (an optional
    ``-``, then 1-19 ASCII digits: no sign ``+``, spaces, ``_`` or other scripts' digits, which
    ``int()`` would take), else None. The bounds keep it inside what SQLite stores (int64)."""
    assert INT64_MIN <= low <= high <= INT64_MAX
    digits = text[1:] if text.startswith("-") else text
    if not (0 < len(digits) <= 19 and digits.isascii() and digits.isdigit()):
        return None
    number = int(text)
    return number if low <= number <= high else None


def query(request: Request, allowed: set[str]) -> None:
    unknown = first_errors(
        {"field": name, "message": "unknown query parameter"} for name in request.query_params if name not in allowed
    )
    if unknown:
        raise invalid(unknown)


# -- the batch route -------------------------------------------------------------------------


def _msgpack_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise invalid_field(key if type(key) is str else "body", "duplicate key")
            seen.add(key)
    return result


_MSGPACK_LIMIT = re.compile(r"(\d+) exceeds max_(map|array|str|bin|ext)_len\((\d+)\)")
_MSGPACK_LIMITED = {"map": "a map's entries", "array": "an array's items", "str": "a string's bytes",
                    "bin": "a byte string's bytes", "ext": "an extension value's bytes"}


def _decode_msgpack(body: bytes) -> Any:
    shape = _Shape()
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            object_pairs_hook=shape.msgpack_map, list_hook=shape.msgpack_array,
            max_map_len=DECODE_MAP_ENTRIES_MAX, max_array_len=DECODE_ARRAY_ITEMS_MAX,
            max_str_len=DECODE_STRING_BYTES_MAX, max_bin_len=DECODE_STRING_BYTES_MAX,
            max_ext_len=DECODE_STRING_BYTES_MAX,
        )
    except ApiError:
        raise
    except msgpack.ExtraData:
        raise invalid_field("body", "bytes after the MessagePack object") from None
    except msgpack.StackError:  # deeper than the unpacker's stack, before any hook could count
        raise _too_deep() from None
    except ValueError as error:
        # Truncated or malformed data, invalid UTF-8 in a string, or a length past a limit
        # (checked from the header, before what follows is read).
        limited = _MSGPACK_LIMIT.fullmatch(str(error))
        if limited is None:
            raise invalid_field("body", f"malformed MessagePack: {type(error).__name__}: {error}") from None
        count, kind, limit = limited.groups()
        raise _too_many(_MSGPACK_LIMITED[kind], int(count), int(limit)) from None
    except (TypeError, msgpack.UnpackException, RecursionError) as error:
        # A map key that is not a string, malformed data.
        raise invalid_field("body", f"malformed MessagePack: {type(error).__name__}: {error}") from None


async def batch_body(request: Request, body: bytes | None = None) -> Any:
    """The decoded body of a batch request: JSON or MessagePack by Content-Type (415 for
    anything else), at most ``BATCH_BODY_BYTES_MAX`` bytes (413). ``body``: its bytes, when
    the caller read them already (``read_body(request, limit=BATCH_BODY_BYTES_MAX)``)."""
    if body is None:
        body = await read_body(request, limit=BATCH_BODY_BYTES_MAX)
    kind = media_type(request)
    if kind == JSON_MEDIA_TYPE:
        return _decode_json(body)
    if kind == MSGPACK_MEDIA_TYPE:
        return _decode_msgpack(body)
    content_type = request.headers.get("content-type", "")
    raise ApiError(
        415, "unsupported_media_type", "Unsupported media type",
        f"send the body as application/json or application/msgpack, not {content_type or 'nothing'}",
    )


def batch_request(value: Any) -> tuple[bool, list[Any]]:
    """The whole request's shape: ``{"atomic": bool, "transfers": [1..BATCH_ITEMS_MAX items]}``.
    Returns (atomic, the raw items); anything else is 400 for the whole request."""
    if not isinstance(value, dict):
        raise invalid_field("body", f"must be an object, not {_describe(value)}")
    errors = first_errors(
        {"field": name if type(name) is str else repr(name), "message": "unknown field"}
        for name in value if name not in ("atomic", "transfers")
    )
    atomic = value.get("atomic")
    if "atomic" not in value:
        errors.append({"field": "atomic", "message": "is required"})
    elif type(atomic) is not bool:
        errors.append({"field": "atomic", "message": f"must be true or false, not {_describe(atomic)}"})
    transfers = value.get("transfers")
    if "transfers" not in value:
        errors.append({"field": "transfers", "message": "is required"})
    elif type(transfers) is not list:
        errors.append({"field": "transfers", "message": f"must be an array, not {_describe(transfers)}"})
    elif not 1 <= len(transfers) <= BATCH_ITEMS_MAX:
        errors.append({"field": "transfers", "message": f"must hold 1 to {BATCH_ITEMS_MAX} transfers, not {len(transfers)}"})
    if errors:
        raise invalid(errors)
    assert type(atomic) is bool and type(transfers) is list
    return atomic, transfers


def item_key(name: str, value: Any) -> str:
    if type(value) is not str:
        raise invalid_field(name, f"must be a string, not {_describe(value)}")
    if not _key_chars(value):
        raise invalid_field(name, f"must be 1-{IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII characters")
    return value


def _printable_key(key: str) -> bool:
    """``_key_chars`` at C speed: ASCII and printable <=> every character is in " ".."~"."""
    return 0 < len(key) <= IDEMPOTENCY_KEY_CHARS_MAX and key.isascii() and key.isprintable()


ITEM_SPEC: dict[str, tuple[bool, Validator]] = {
    "idempotency_key": (True, item_key),
    "from_wallet_id": (True, user_identifier),
    "to_wallet_id": (True, user_identifier),
    "amount": (True, amount),
    "description": (False, description),
    "metadata": (False, metadata),
}
_ITEM_FIELDS = frozenset(ITEM_SPEC)
_ITEM_REQUIRED = frozenset(name for name, (required, _) in ITEM_SPEC.items() if required)
_id = ID_PATTERN.fullmatch

# A valid item: (idempotency_key, from_wallet_id, to_wallet_id, amount, description, metadata).
BatchItem = tuple[str, str, str, int, str | None, dict[str, Any] | None]


def batch_items(values: list[Any]) -> list[BatchItem | list[dict[str, str]]]:
    """Each item as a ``BatchItem``, or as its errors (field paths ``transfers[i].name``): at
    most ``ERRORS_MAX`` per item, and once ``BATCH_ERRORS_MAX`` are listed, only each further
    bad item's first (with a note when it has more)."""
    items: list[BatchItem | list[dict[str, str]]] = []
    listed = 0
    for index, value in enumerate(values):
        if type(value) is dict and value.keys() <= _ITEM_FIELDS and value.keys() >= _ITEM_REQUIRED:
            key = value["idempotency_key"]
            source = value["from_wallet_id"]
            target = value["to_wallet_id"]
            amount_ = value["amount"]
            description_ = value.get("description")
            if (
                type(key) is str and _printable_key(key)
                and type(source) is str and _id(source) is not None and not source.startswith(TREASURY_PREFIX)
                and type(target) is str and _id(target) is not None and not target.startswith(TREASURY_PREFIX)
                and type(amount_) is int and 0 < amount_ <= AMOUNT_MAX
                and (description_ is None or (
                    type(description_) is str and len(description_) <= DESCRIPTION_CHARS_MAX
                    and (description_.isascii() or _encodes(description_))))
                and value.get("metadata") is None
            ):
                items.append((key, source, target, amount_, description_, None))
                continue
        item = _batch_item(index, value)
        if type(item) is list:
            item = capped(item, ERRORS_MAX if listed < BATCH_ERRORS_MAX else 1)
            listed += len(item)
        items.append(item)
    return items


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _batch_item(index: int, value: Any) -> BatchItem | list[dict[str, str]]:
    """The slow path: the single-transfer route's validators, their messages and codes."""
    prefix = f"transfers[{index}]"
    if not isinstance(value, dict):
        return [{"field": prefix, "message": f"must be an object, not {_describe(value)}"}]
    if not all(type(name) is str for name in value):
        return [{"field": prefix, "message": "keys must be strings"}]
    body, errors = field_errors(value, ITEM_SPEC)
    if errors:
        return [{"field": f"{prefix}.{item['field']}", "message": item["message"]} for item in errors]
    return (body["idempotency_key"], body["from_wallet_id"], body["to_wallet_id"], body["amount"],
            body.get("description"), body.get("metadata"))


def repeated_keys(values: list[Any]) -> list[dict[str, str]]:
    """Errors for idempotency keys that appear twice in one batch (each item needs its own):
    the first ``ERRORS_MAX + 1``."""

    def errors() -> Iterator[dict[str, str]]:
        first: dict[str, int] = {}
        for index, value in enumerate(values):
            key = value.get("idempotency_key") if type(value) is dict else None
            if type(key) is not str:
                continue
            seen = first.setdefault(key, index)
            if seen != index:
                yield {"field": f"transfers[{index}].idempotency_key",
                       "message": f"repeats transfers[{seen}].idempotency_key: every item needs its own key"}

    return first_errors(errors())
