"""Routes of webhook endpoints (admin only): create (the secret is shown once), list, get,
delete, enable, and the log of recent delivery attempts. Runs in every HTTP worker, and in the
one process of ``--workers 0``. The endpoints live in ``<data>/webhooks.sqlite3``, or in cluster
mode in the cluster's bucket (``server._webhook_store``); an answer is sent only after its change
has committed there. The
dispatcher (``server._webhooks``) picks changes up within a fraction of a second.

Checks, in this order: the admin token; the body's shape (``url``, ``events``, nothing else);
the URL's form (http/https, a host, at most 2,048 ASCII characters, no credentials nor
fragment); the event types (``["*"]`` alone, or 1-32 distinct known types); unless
``--allow-private-webhooks``, the host (it and every address it resolves to must not be
loopback, private, link-local, unspecified, multicast or reserved: ``422 webhook_url_forbidden``;
a name that does not resolve: ``422 webhook_url_unresolvable``); at most ``WEBHOOKS_MAX``
endpoints (``409 webhooks_limit_reached``).
"""

from __future__ import annotations

import secrets
import time
from functools import partial
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from server import _validate as v
from server._errors import ApiError
from server._webhook_store import (
    COMPLETE,
    AnyWebhookStore,
    Delivery,
    Endpoint,
    WebhookStore,
    index_of,
    lsn_of,
    position,
)
from server._webhooks import WEBHOOKS_MAX, new_secret, refused_host, url_problem
from server.api._auth import admin
from server.api._deps import Deps, call
from server.api._render import EVENT_TYPES, json_response, timestamp
from wal import LogUnavailable

EVENT_TYPES_MAX = 32
DELIVERIES_LIMIT_DEFAULT = 20
DELIVERIES_LIMIT_MAX = 100
ID_PREFIX = "wh_"


def _url(name: str, value: Any) -> str:
    if type(value) is not str:
        raise v.invalid_field(name, "must be a string")
    problem = url_problem(value)
    if problem is not None:
        raise v.invalid_field(name, problem)
    return value


def _events(name: str, value: Any) -> tuple[str, ...]:
    if type(value) is not list or not value:
        raise v.invalid_field(name, 'must be a non-empty array: ["*"] or event types')
    if len(value) > EVENT_TYPES_MAX:
        raise v.invalid_field(name, f"must hold at most {EVENT_TYPES_MAX} event types")
    errors = []
    for index, item in enumerate(value):
        if type(item) is not str:
            errors.append({"field": f"{name}[{index}]", "message": "must be a string"})
        elif item != "*" and item not in EVENT_TYPES:
            errors.append({"field": f"{name}[{index}]",
                           "message": f"unknown event type (known: *, {', '.join(EVENT_TYPES)})"[:600]})
    if errors:
        raise v.invalid(errors)
    if len(set(value)) != len(value):
        raise v.invalid_field(name, "must not repeat an event type")
    if "*" in value and len(value) > 1:
        raise v.invalid_field(name, '"*" (every event) stands alone')
    return tuple(value)


def endpoint_body(endpoint: Endpoint, *, secret: bool = False) -> dict[str, Any]:
    cursor = endpoint.cursor
    done_lsn = lsn_of(cursor) if index_of(cursor) == COMPLETE else lsn_of(cursor) - 1
    body = {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": list(endpoint.events),
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": timestamp(endpoint.failing_since_us) if endpoint.failing_since_us is not None else None,
        "acknowledged_lsn": done_lsn,
        "oldest_available_lsn": endpoint.gap_oldest_lsn,
        "created_at": timestamp(endpoint.created_at_us),
    }
    if secret:
        body["secret"] = endpoint.secret
    return body


def delivery_body(delivery: Delivery) -> dict[str, Any]:
    return {
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "attempt": delivery.attempt,
        "status_code": delivery.status_code,
        "error": delivery.error,
        "duration_ms": delivery.duration_ms,
        "at": timestamp(delivery.at_us),
    }


def not_found() -> ApiError:
    return ApiError(404, "webhook_not_found", "Webhook not found", "no webhook endpoint has that id")


def _unreachable(error: Exception) -> ApiError:
    return ApiError(503, "webhooks_unavailable", "Webhooks unavailable",
                    f"the cluster's webhook store did not answer ({error}); try again", headers={"Retry-After": "1"})


class Webhooks:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._store: AnyWebhookStore | None = None
        self._lock = anyio.Lock()  # one call at a time on this process's connection

    async def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async with self._lock:
            if self._store is None:
                data_dir, opener = self._deps.data_dir, self._deps.webhook_store
                if opener is None and data_dir is None:
                    raise ApiError(503, "webhooks_unavailable", "Webhooks unavailable",
                                   "this server has no data directory for webhook endpoints")
                if opener is None:
                    assert data_dir is not None
                    opener = partial(WebhookStore.open, data_dir)
                try:
                    self._store = await anyio.to_thread.run_sync(opener)
                except LogUnavailable as error:
                    raise _unreachable(error) from None
            function = getattr(self._store, method)
            try:
                return await anyio.to_thread.run_sync(lambda: function(*args, **kwargs))
            except LogUnavailable as error:  # cluster mode: the bucket's nodes did not answer
                raise _unreachable(error) from None

    async def _endpoint_id(self, request: Request) -> str:
        endpoint_id = request.path_params["webhook_id"]
        if not (endpoint_id.startswith(ID_PREFIX) and len(endpoint_id) <= 64 and endpoint_id.isascii()):
            raise not_found()
        return str(endpoint_id)

    async def create_webhook(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, set())
        body = v.fields(await v.json_object(request), {"url": (True, _url), "events": (True, _events)})
        url: str = body["url"]
        if not self._deps.allow_private_webhooks:
            reason = await refused_host(url)
            if reason is not None:
                code, title = (("webhook_url_unresolvable", "Webhook URL unresolvable") if "does not resolve" in reason
                               else ("webhook_url_forbidden", "Webhook URL forbidden"))
                raise ApiError(422, code, title,
                               f"{reason}: webhooks may not reach this host or its private network "
                               "(the server's --allow-private-webhooks lifts this)")
        # Every event after this LSN goes to the endpoint: everything its creator can cause
        # after the 201 is later in the log.
        durable_lsn = (await call(self._deps.port().status())).durable_lsn
        endpoint = Endpoint(
            id=ID_PREFIX + secrets.token_hex(12), url=url, events=body["events"], secret=new_secret(),
            status="enabled", disabled_reason=None, created_at_us=time.time_ns() // 1000, failing_since_us=None,
            cursor=position(durable_lsn, COMPLETE), gap_oldest_lsn=None, revision=0,
        )
        if not await self._run("create", endpoint, endpoints_max=WEBHOOKS_MAX):
            raise ApiError(409, "webhooks_limit_reached", "Webhooks limit reached",
                           f"at most {WEBHOOKS_MAX} webhook endpoints; delete one first")
        return json_response(endpoint_body(endpoint, secret=True), 201)

    async def list_webhooks(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, set())
        endpoints = await self._run("endpoints")
        return json_response({"items": [endpoint_body(endpoint) for endpoint in endpoints]})

    async def get_webhook(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, set())
        endpoint = await self._run("get", await self._endpoint_id(request))
        if endpoint is None:
            raise not_found()
        return json_response(endpoint_body(endpoint))

    async def delete_webhook(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, set())
        endpoint_id = await self._endpoint_id(request)
        if not await self._run("delete", endpoint_id):
            raise not_found()
        return json_response({"id": endpoint_id, "deleted": True})

    async def enable_webhook(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, set())
        v.fields(await v.json_object(request, optional=True), {})
        endpoint = await self._run("enable", await self._endpoint_id(request), now_us=time.time_ns() // 1000)
        if endpoint is None:
            raise not_found()
        return json_response(endpoint_body(endpoint))

    async def deliveries(self, request: Request) -> Response:
        await admin(self._deps, request)
        v.query(request, {"limit"})
        limit = v.limit(request, default=DELIVERIES_LIMIT_DEFAULT, maximum=DELIVERIES_LIMIT_MAX)
        endpoint_id = await self._endpoint_id(request)
        if await self._run("get", endpoint_id) is None:
            raise not_found()
        found = await self._run("deliveries", endpoint_id, limit)
        return json_response({"items": [delivery_body(delivery) for delivery in found]})
