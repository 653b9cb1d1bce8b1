"""The webhook dispatcher: every durable event of a subscribed type, POSTed to each enabled
endpoint in log order, at least once, signed by the Standard Webhooks specification (ADR 0010).

Where it runs: the ``webhooks`` child of ``wallet serve --workers N`` (its own process,
supervised and restarted like the projector; it reaches the ledger over the ledger port as a
worker does), or a task of the one process of ``--workers 0``. Exactly one runs per data
directory. It reads events only through the port's event feed (``events(after, limit,
wait_s)``: durable records only, in LSN order, the same the ``/v1/events`` route serves) and
renders them with the route's own ``event_items``, so a webhook's body is byte for byte the
JSON of that event in ``/v1/events``. It never writes to the ledger, and the ledger never waits
for it: it may lag, never block.

One *lane* per enabled endpoint: a task that reads the feed from the endpoint's cursor (its own
bounded queue: one page of records), skips the types the endpoint does not subscribe to
(advancing the cursor without a POST), and delivers the others one at a time, each until a 2xx
answers, retrying with exponential backoff and full jitter (``backoff_base_s * 2^(n-1)``,
capped at ``backoff_max_s``, a uniform draw below that). POSTs in flight across lanes are
bounded by ``concurrency``; a lane waiting for its backoff holds no slot. So a slow or dead
endpoint delays only its own lane.

    | what happens                                   | what the dispatcher does                   |
    |------------------------------------------------|--------------------------------------------|
    | 2xx                                            | cursor past the event (saved within        |
    |                                                | SAVE_INTERVAL_S), failing_since cleared    |
    | other status, timeout, connection error,       | attempt logged; failing_since set at the   |
    |   redirect (never followed), URL resolving to  | first failure of a streak; retry after the |
    |   a private address (without the flag)         | backoff                                    |
    | failing for ``disable_after_s`` (kept across   | endpoint ``disabled`` (reason ``failing``):|
    |   restarts)                                    | its events wait; ``enable`` resumes there  |
    | the log was compacted past the cursor          | ``disabled`` (reason ``events_compacted``, |
    |                                                | with the oldest LSN kept); ``enable`` logs |
    |                                                | the gap and goes on from there             |
    | the ledger is unreachable (restarting)         | retry the read every second                |
    | endpoint deleted / enabled (new revision)      | its lane is cancelled / started again      |
    | SIGTERM                                        | lanes cancelled, progress saved            |
    | SIGKILL                                        | up to SAVE_INTERVAL_S of acknowledged      |
    |                                                | events are sent again (at least once)      |

The cursor only ever moves past an event after a 2xx for it (or when its type is not
subscribed), so nothing is skipped; it is saved in batches, so a crash may send again what was
acknowledged just before it. ``webhook-id`` is derived from the event's position (``evt_<lsn>_
<index>``), the same on every attempt and after any restart: receivers deduplicate by it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import random
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from standardwebhooks import Webhook

from ledger import Event, Gone
from server._port import Status, Unavailable
from server._webhook_store import (
    COMPLETE,
    AnyWebhookStore,
    Delivery,
    Endpoint,
    Progress,
    WebhookStore,
    lsn_of,
    next_after,
    position,
)
from server.api._render import event_items
from wal import StorageFailed

log = logging.getLogger("server.webhooks")

TIMEOUT_S = 10.0
DISABLE_AFTER_S = 24 * 3600.0
CONCURRENCY = 100
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 600.0
WEBHOOKS_MAX = 100  # endpoints per server (one lane each)
URL_CHARS_MAX = 2048
SECRET_BYTES = 24
PAGE_RECORDS = 100  # records a lane reads at once (its queue)
LONG_POLL_S = 10.0  # how long a lane's read of the feed waits at the head of the log
CHANGES_POLL_S = 0.2  # how often the dispatcher looks for endpoint changes (a PRAGMA read)
SAVE_INTERVAL_S = 0.2  # how often cursors, failures and attempts are committed, at most
LAG_POLL_S = 2.0  # how often the lag gauges are refreshed from the durable LSN
RETRY_READ_S = 1.0  # pause before reading the feed again after the ledger was unreachable
ERROR_CHARS_MAX = 300
USER_AGENT = "wallet-ledger-webhooks/1"
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RESULTS = ("delivered", "failed_status", "timeout", "error", "refused")


# -- URLs and addresses ------------------------------------------------------------------------


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook endpoint (its form only), or None."""
    if not 1 <= len(url) <= URL_CHARS_MAX:
        return f"must be 1 to {URL_CHARS_MAX} characters"
    if not url.isascii() or any(char <= " " or char == "\x7f" for char in url):
        return "must be ASCII without spaces or control characters (encode international names)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as error:
        return f"is not a valid URL ({error})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@)"
    if parts.fragment:
        return "must not carry a #fragment"
    return None


def forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why delivering to ``address`` could reach this host or its private network, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, test in (("loopback", address.is_loopback), ("unspecified", address.is_unspecified),
                       ("link-local", address.is_link_local), ("private", address.is_private),
                       ("multicast", address.is_multicast), ("reserved", address.is_reserved)):
        if test:
            return f"{address} is a {kind} address"
    return None


async def refused_host(url: str) -> str | None:
    """Why ``url``'s host may not be called (it is or resolves to a forbidden address, or does
    not resolve), or None. Every address the name resolves to must be allowed."""
    host = urllib.parse.urlsplit(url).hostname
    assert host
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        return forbidden_address(literal)
    try:
        infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as error:
        return f"the host {host} does not resolve ({error})"
    if not infos:
        return f"the host {host} does not resolve"
    for *_, sockaddr in infos:
        reason = forbidden_address(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        if reason is not None:
            return f"{host} resolves to {reason}"
    return None


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature(secret: str, event_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    return Webhook(secret).sign(event_id, datetime.fromtimestamp(timestamp_s, UTC), body)


def event_id(lsn: int, index: int) -> str:
    """The ``webhook-id`` of the ``index``-th event of the record at ``lsn``: the same on every
    attempt, after any restart, for every endpoint."""
    return f"evt_{lsn}_{index}"


# -- configuration, metrics --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    allow_private: bool = False
    timeout_s: float = TIMEOUT_S
    disable_after_s: float = DISABLE_AFTER_S
    concurrency: int = CONCURRENCY
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_max_s: float = BACKOFF_MAX_S

    def __post_init__(self) -> None:
        assert self.timeout_s > 0
        assert self.disable_after_s >= 0
        assert self.concurrency >= 1
        assert 0 < self.backoff_base_s <= self.backoff_max_s


class WebhookMetrics:
    """Deliveries by result, their latency, and how far each endpoint is behind the log. In the
    ``webhooks`` process they go to the shared multiprocess files (``server._scrape``); the lag
    gauge is ``livemax`` there, so a dead dispatcher's values go with it."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.deliveries = Counter("wallet_webhook_deliveries", "Webhook delivery attempts by result",
                                  ["result"], registry=registry)
        self.duration = Histogram("wallet_webhook_delivery_duration_seconds",
                                  "Time from sending a webhook to its answer (or failure)",
                                  buckets=DURATION_BUCKETS_S, registry=registry)
        self.lag = Gauge("wallet_webhook_lag_records",
                         "Durable log records after the endpoint's cursor (not yet acknowledged or skipped)",
                         ["endpoint"], registry=registry, multiprocess_mode="livemax")
        for result in RESULTS:
            self.deliveries.labels(result)


class EventSource(Protocol):
    """The part of the ledger port the dispatcher uses."""

    async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]: ...
    async def status(self) -> Status: ...


@dataclass(slots=True, kw_only=True)
class DispatcherStatistics:
    endpoints: int = 0
    lanes: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0  # events an endpoint does not subscribe to
    results: dict[str, int] = field(default_factory=dict)


# -- the dispatcher ----------------------------------------------------------------------------


class _Lane:
    """One endpoint's delivery task and its state (which outlives a restart of the task)."""

    def __init__(self, endpoint: Endpoint, cursor: int, previous: _Lane | None) -> None:
        self.endpoint = endpoint
        self.cursor = cursor
        self.failing_since_us = endpoint.failing_since_us
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.previous = previous


class Dispatcher:
    def __init__(self, data_dir: Path, source: EventSource, config: WebhookConfig, *,
                 metrics: WebhookMetrics | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time,
                 open_store: Callable[[], AnyWebhookStore] | None = None) -> None:
        """``open_store``: where the endpoints are (blocking), when not ``<data_dir>/webhooks.sqlite3``
        (cluster mode: ``SharedWebhookStore``)."""
        self._data_dir = data_dir
        self._open_store = open_store or partial(WebhookStore.open, data_dir)
        self._source = source
        self.config = config
        self._metrics = metrics or WebhookMetrics(CollectorRegistry())
        self._transport = transport
        self._rng = rng or random.Random()
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._progress = Progress.new()
        self._store: AnyWebhookStore | None = None
        self._store_lock = anyio.Lock()
        self._slots = anyio.Semaphore(config.concurrency)
        self._client: httpx.AsyncClient | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._durable_lsn = 0
        self.stats = DispatcherStatistics()
        self.changed = anyio.Event()  # set after each look at the endpoints (for tests)

    def statistics(self) -> DispatcherStatistics:
        self.stats.lanes = sum(1 for lane in self._lanes.values() if not lane.done.is_set())
        self.stats.endpoints = len(self._lanes)
        return self.stats

    async def _in_store(self, function: Callable[..., Any], *args: Any) -> Any:
        assert self._store is not None
        async with self._store_lock:
            return await anyio.to_thread.run_sync(function, *args)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._store = await anyio.to_thread.run_sync(self._open_store)
        timeout = httpx.Timeout(self.config.timeout_s)
        self._client = httpx.AsyncClient(transport=self._transport, timeout=timeout, follow_redirects=False,
                                         limits=httpx.Limits(max_connections=self.config.concurrency),
                                         trust_env=False)
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                group.start_soon(self._save_loop)
                group.start_soon(self._lag_loop)
                task_status.started()
                version: int | None = None
                while True:
                    current = await self._in_store(self._store.data_version)
                    if current != version:
                        version = current
                        self._reconcile(await self._in_store(self._store.endpoints))
                    changed, self.changed = self.changed, anyio.Event()
                    changed.set()
                    await anyio.sleep(CHANGES_POLL_S)
        finally:
            with anyio.CancelScope(shield=True):
                await self._save()
                await self._client.aclose()
                store, self._store = self._store, None
                await anyio.to_thread.run_sync(store.close)

    def _reconcile(self, endpoints: list[Endpoint]) -> None:
        """Starts, restarts and stops lanes to match the stored endpoints."""
        assert self._group is not None
        found = {endpoint.id: endpoint for endpoint in endpoints}
        for endpoint_id in list(self._lanes):
            if endpoint_id not in found:
                gone = self._lanes.pop(endpoint_id)
                gone.scope.cancel()
                self._progress.cursors.pop(endpoint_id, None)
                self._metrics.lag.labels(endpoint_id).set(0)
                log.info("webhook %s was deleted: its deliveries stop", endpoint_id)
        for endpoint in endpoints:
            lane = self._lanes.get(endpoint.id)
            if lane is not None and lane.endpoint.revision == endpoint.revision:
                continue
            if lane is not None:
                lane.scope.cancel()
            cursor = max(endpoint.cursor, lane.cursor if lane is not None else 0)
            fresh = self._lanes[endpoint.id] = _Lane(endpoint, cursor, lane)
            if endpoint.status == "enabled":
                self._group.start_soon(self._run_lane, fresh)
            else:
                fresh.done.set()

    async def _run_lane(self, lane: _Lane) -> None:
        try:
            with lane.scope:
                if lane.previous is not None:
                    await lane.previous.done.wait()  # one event in flight per endpoint, always
                    lane.previous = None
                await self._follow(lane)
                await self._save()  # a disabled endpoint shows so at once
        finally:
            lane.done.set()

    async def _follow(self, lane: _Lane) -> None:
        endpoint = lane.endpoint
        while True:
            try:
                records = await self._source.events(next_after(lane.cursor), PAGE_RECORDS, LONG_POLL_S)
            except Gone as gone:
                log.error("webhook %s: the log was compacted past its cursor (LSN %d; the oldest kept is %d): "
                          "disabled until an operator enables it", endpoint.id, lsn_of(lane.cursor), gone.oldest_lsn)
                self._disable(lane, "events_compacted", gone.oldest_lsn)
                return
            except (Unavailable, StorageFailed, OSError) as error:
                log.debug("webhook %s: the event feed is unavailable (%s); reading again", endpoint.id, error)
                await anyio.sleep(RETRY_READ_S)
                continue
            for lsn, event in records:
                self._durable_lsn = max(self._durable_lsn, lsn)
                items = event_items(lsn, event)
                if not items:
                    # A record the feed does not show (a refusals record): past it at once, or
                    # the next read would return it again without waiting.
                    complete = position(lsn, COMPLETE)
                    if complete > lane.cursor:
                        self._advance(lane, complete)
                    continue
                for index, body in enumerate(items):
                    at = position(lsn, COMPLETE if index == len(items) - 1 else index)
                    if at <= lane.cursor:
                        continue
                    if endpoint.subscribes(body["type"]):
                        if not await self._deliver(lane, event_id(lsn, index), body):
                            return
                    else:
                        self.stats.skipped += 1
                    self._advance(lane, at)
            self._metrics.lag.labels(endpoint.id).set(max(self._durable_lsn - lsn_of(lane.cursor), 0))

    def _advance(self, lane: _Lane, at: int) -> None:
        assert at > lane.cursor
        lane.cursor = at
        self._progress.cursors[lane.endpoint.id] = at

    def _disable(self, lane: _Lane, reason: str, gap_oldest_lsn: int | None = None) -> None:
        endpoint = lane.endpoint
        self._progress.disabled[endpoint.id] = (endpoint.revision, reason, gap_oldest_lsn)

    async def _deliver(self, lane: _Lane, message_id: str, body: dict[str, Any]) -> bool:
        """Sends one event until a 2xx answers (True), or until the endpoint is disabled
        (False: the event waits for ``enable``)."""
        endpoint = lane.endpoint
        payload = json.dumps(body).encode()  # what /v1/events shows for this item
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            async with self._slots:
                status, error, result = await self._post(endpoint, message_id, payload)
            elapsed = time.perf_counter() - started
            self._metrics.deliveries.labels(result).inc()
            self._metrics.duration.observe(elapsed)
            self.stats.results[result] = self.stats.results.get(result, 0) + 1
            now_s = self._clock()
            self._progress.deliveries.append(Delivery(
                endpoint_id=endpoint.id, event_id=message_id, event_type=body["type"], attempt=attempt,
                status_code=status, error=error, duration_ms=round(elapsed * 1000), at_us=int(now_s * 1_000_000),
            ))
            if result == "delivered":
                self.stats.delivered += 1
                if lane.failing_since_us is not None:
                    lane.failing_since_us = None
                    self._progress.failing[endpoint.id] = (endpoint.revision, None)
                return True
            self.stats.failed += 1
            if lane.failing_since_us is None:
                lane.failing_since_us = int(now_s * 1_000_000)
                self._progress.failing[endpoint.id] = (endpoint.revision, lane.failing_since_us)
            failing_s = now_s - lane.failing_since_us / 1_000_000
            if failing_s >= self.config.disable_after_s:
                log.warning("webhook %s has failed for %.0f s (last: %s): disabled; its events wait",
                            endpoint.id, failing_s, error or status)
                self._disable(lane, "failing")
                return False
            delay = self._rng.uniform(0, backoff_ceiling_s(self.config, attempt))
            # Never wait past the moment the endpoint would be disabled: it is judged then.
            await anyio.sleep(min(delay, self.config.disable_after_s - failing_s))

    async def _post(self, endpoint: Endpoint, message_id: str, payload: bytes) -> tuple[int | None, str | None, str]:
        """One attempt: (status code, error, result label)."""
        assert self._client is not None
        if not self.config.allow_private:
            # Checked at every attempt, not only when the endpoint was created: DNS changes.
            reason = await refused_host(endpoint.url)
            if reason is not None:
                return None, f"refused: {reason} (see --allow-private-webhooks)"[:ERROR_CHARS_MAX], "refused"
        timestamp_s = int(self._clock())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": signature(endpoint.secret, message_id, timestamp_s, payload),
        }
        timeout_s = self.config.timeout_s
        try:
            with anyio.fail_after(timeout_s + 1):  # a backstop: httpx's own timeouts fire first
                async with self._client.stream("POST", endpoint.url, content=payload, headers=headers) as response:
                    status = response.status_code
        except (httpx.TimeoutException, TimeoutError):
            return None, f"timeout after {timeout_s:g} s", "timeout"
        except (httpx.HTTPError, OSError, ValueError) as error:
            text = f"{type(error).__name__}: {error}".strip().rstrip(":")
            return None, text[:ERROR_CHARS_MAX], "error"
        if 200 <= status <= 299:
            return status, None, "delivered"
        return status, None, "failed_status"

    async def _save_loop(self) -> None:
        while True:
            await anyio.sleep(SAVE_INTERVAL_S)
            await self._save()

    async def _save(self) -> None:
        if self._progress.empty() or self._store is None:
            return
        progress, self._progress = self._progress, Progress.new()
        try:
            await self._in_store(self._store.save, progress)
        except Exception:
            log.exception("saving webhook progress failed; trying again")
            _merge_back(self._progress, progress)

    async def _lag_loop(self) -> None:
        while True:
            try:
                self._durable_lsn = max(self._durable_lsn, (await self._source.status()).durable_lsn)
            except (Unavailable, StorageFailed, OSError):
                pass
            for endpoint_id, lane in list(self._lanes.items()):
                self._metrics.lag.labels(endpoint_id).set(max(self._durable_lsn - lsn_of(lane.cursor), 0))
            await anyio.sleep(LAG_POLL_S)


def _merge_back(current: Progress, failed: Progress) -> None:
    """Puts a save that failed back in front of what came since (newer values win)."""
    for endpoint_id, cursor in failed.cursors.items():
        current.cursors[endpoint_id] = max(cursor, current.cursors.get(endpoint_id, 0))
    current.failing = {**failed.failing, **current.failing}
    current.disabled = {**failed.disabled, **current.disabled}
    current.deliveries[:0] = failed.deliveries


def backoff_ceiling_s(config: WebhookConfig, attempt: int) -> float:
    """The upper bound of the jittered wait after failed attempt number ``attempt``."""
    return min(config.backoff_max_s, config.backoff_base_s * math.pow(2, min(attempt - 1, 60)))

