"""``POST /v1/transfers/batch``: up to ``BATCH_ITEMS_MAX`` transfers in one request, JSON or
MessagePack, atomic or not (ADR 0004; the README). Items are validated here (a bad item is its
own 400 in a non-atomic batch, the whole request's in an atomic one), the valid ones go to the
ledger as one batch, and every item's answer comes back in request order. Bounded by the batch
gate (``_limits``). Runs in every HTTP worker, and in the one process of ``--workers 0``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from typing import Any

import msgpack
from starlette.requests import Request
from starlette.responses import Response

from ledger import BatchFailed, TransactionType, Transfer, new_idempotency, new_transfer
from server import _validate as v
from server._errors import batch_failed, invalid, problem_body
from server.api._auth import Caller, authenticate
from server.api._deps import Deps, call
from server.api._render import accepts_msgpack, item_result, json_response


def item_fingerprint(item: v.BatchItem) -> bytes:
    """What a batch item asked for, for its idempotency record: sender, receiver, amount,
    description and metadata as validated (a missing optional field and null are the same;
    metadata key order does not matter). Its own domain: a key used for a single transfer and
    then for a batch item is two different requests."""
    _, source, target, amount, description, metadata = item
    canonical = None if metadata is None else json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    packed = msgpack.packb(["batch-item", source, target, amount, description, canonical])
    return hashlib.blake2b(packed, digest_size=16).digest()


class Batches:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def transfer_batch(self, request: Request) -> Response:
        caller = await authenticate(self._deps, request)
        # Accepted and checked like everywhere else, but each item's own key is what makes a
        # batch safe to retry; the header has no further effect.
        v.idempotency_key(request, required=False)
        # A batch counts against the in-flight limit once its body has arrived (decoding and
        # posting it is the work the limit bounds); while it arrives, it counts against its
        # caller's share only (each body is bounded in size and, by --body-timeout, in time).
        gate = self._deps.batches
        with gate.receiving(caller.scope):
            payload = await v.read_body(request, limit=v.BATCH_BODY_BYTES_MAX)
        with gate.handling():
            return await self._transfer_batch(request, caller, payload)

    async def _transfer_batch(self, request: Request, caller: Caller, payload: bytes) -> Response:
        atomic, values = v.batch_request(await v.batch_body(request, payload))
        repeated = v.repeated_keys(values)
        if repeated:
            raise invalid(repeated)
        items = v.batch_items(values)
        if atomic:
            errors = [error for item in items if type(item) is list for error in item]
            if errors:
                raise invalid(errors)
        scope = caller.scope
        owner_id = caller.owner_id
        base = "tx_" + secrets.token_hex(10)  # + 4 hex digits of the index: 24 like a single one
        commands: list[Transfer] = []
        positions = []
        transfer_type = TransactionType.TRANSFER
        for index, item in enumerate(items):
            if type(item) is tuple:
                key, source, target, amount, description, metadata = item
                # The builders make the same frozen values as Transfer(...) and
                # Idempotency(...), at half the cost (ledger._model.frozen_builder).
                commands.append(new_transfer(
                    f"{base}{index:04x}", transfer_type, source, target, amount, description, metadata,
                    new_idempotency(scope, key, item_fingerprint(item)), owner_id, None,
                ))
                positions.append(index)
        results: list[dict[str, Any] | None] = [None] * len(items)
        counts: dict[int, int] = {}
        if commands:
            outcome = await call(self._deps.port().transfer_batch(commands, atomic))
            if isinstance(outcome, BatchFailed):
                self._count_batch(atomic, {422: len(items)})
                if outcome.index is not None:  # the item's place in the request
                    outcome = dataclasses.replace(outcome, index=positions[outcome.index])
                raise batch_failed(outcome)
            for index, result in zip(positions, outcome, strict=True):
                rendered = item_result(result)
                results[index] = rendered
                counts[rendered["status"]] = counts.get(rendered["status"], 0) + 1
        for index, item in enumerate(items):
            if type(item) is list:
                results[index] = {"status": 400, "error": problem_body(invalid(item))}
                counts[400] = counts.get(400, 0) + 1
        self._count_batch(atomic, counts)
        body = {"results": results}
        if accepts_msgpack(request):
            return Response(msgpack.packb(body, use_bin_type=True), media_type=v.MSGPACK_MEDIA_TYPE)
        return json_response(body)

    def _count_batch(self, atomic: bool, counts: dict[int, int]) -> None:
        label = "true" if atomic else "false"
        for status, count in counts.items():
            self._deps.metrics.batch_transfers.labels(label, str(status)).inc(count)
