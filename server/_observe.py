"""What operators see: Prometheus metrics, one structured log line per request, request ids and
the response headers a JSON API should send.

``Observe`` is a plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task and a
stream per request): it times the request, takes the route template Starlette matched, echoes
``X-Request-ID`` (the caller's, if it is sane, else a new one), adds the security headers, counts
and logs. Gauges and the WAL's histograms are read from the components' ``statistics()`` only
when ``/metrics`` is scraped, so the hot path pays one counter and one histogram observation.
Logs never contain a token, a body or a query string (the path of ``DELETE /v1/tokens/...`` is
logged with at most a token's prefix). They are JSON lines when stderr is not a terminal
(``configure_logging``).

Every label value comes from a closed set, so no request can add series: the method is one of
``METHODS`` or ``other``, the route is a template of the app's routes or ``unmatched``, the
status is an HTTP status, and a rejection's code is one of ``_errors.CODES`` or ``other``.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from server._errors import code_label
from server._limits import BodyTimeout
from server._loop_lag import loop_lag_histogram
from server._payouts import BANK_LATENCY_BUCKETS_S, PayoutsStatistics
from server._validate import BODY_BYTES_MAX
from wal import BATCH_BUCKETS, FSYNC_BUCKETS_S

log = logging.getLogger("server.access")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_ID_CHARS_MAX = 128
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
METHOD_OTHER = "other"
ROUTE_UNMATCHED = "unmatched"
# A token sent where its prefix belongs (DELETE /v1/tokens/{prefix}) keeps only a prefix's
# length in logs and answers (``server.api._tokens.TOKEN_PREFIX_CHARS``, checked there).
TOKEN_CHARS_SHOWN = 12
_TOKEN_PATH = re.compile(rf"(/v1/tokens/[^/]{{{TOKEN_CHARS_SHOWN}}})[^/]+")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class Metrics:
    """This process's registry. ``port_of`` gives the ledger's port for its statistics at scrape
    time (a ``LocalPort`` when the ledger runs in this process; a ``RemotePort`` has no
    ``ledger`` nor ``payouts``, so those collectors show nothing); ``exposition`` is what
    ``GET /metrics`` answers when not this registry (``server._scrape`` in an HTTP worker)."""

    def __init__(self, *, port_of: Callable[[], object] = lambda: None,
                 exposition: Callable[[], Awaitable[bytes]] | None = None) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "wallet_http_requests", "HTTP requests by route and status", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "wallet_http_request_duration_seconds", "HTTP request latency by route", ["method", "route"],
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.rejections = Counter(
            "wallet_rejections", "Answers that are not 2xx, by problem code", ["code"], registry=self.registry,
        )
        self.batch_transfers = Counter(
            "wallet_batch_transfers",
            "Items of POST /v1/transfers/batch by atomic and item status (every item of a failed "
            "atomic batch counts as 422)",
            ["atomic", "status"], registry=self.registry,
        )
        self.loop_lag = loop_lag_histogram(self.registry)
        register_ledger_collectors(self.registry, port_of)
        # What ``GET /metrics`` answers: this registry, in one process; in an HTTP worker of
        # ``--workers N``, every process's series (``server._scrape``).
        self.exposition: Callable[[], Awaitable[bytes]] = exposition or self._own_exposition

    async def _own_exposition(self) -> bytes:
        return generate_latest(self.registry)


def register_ledger_collectors(registry: CollectorRegistry, port_of: Callable[[], Any]) -> None:
    """The ledger's series (mailboxes, WAL, history, snapshots, payouts), read from the
    components' ``statistics()`` at scrape time through ``port_of()``: the ``LocalPort`` of
    the ledger in this process; nothing while it is None (recovering) or remote (a worker)."""
    registry.register(_LedgerCollector(port_of))
    registry.register(_PayoutsCollector(port_of))


class _LedgerCollector:
    def __init__(self, port_of: Callable[[], Any]) -> None:
        self._port_of = port_of

    def collect(self) -> Iterator[Any]:
        port = self._port_of()
        ledger = getattr(port, "ledger", None)
        if ledger is None:
            return
        depth = GaugeMetricFamily("wallet_shard_mailbox_depth", "Commands waiting per shard", labels=["shard", "mailbox"])
        fired = 0
        for shard in ledger.shards:
            stats = shard.statistics()
            depth.add_metric([str(stats.index), "external"], stats.mailbox_depth)
            depth.add_metric([str(stats.index), "internal"], stats.internal_depth)
            fired += stats.alerts_fired
        yield depth
        yield CounterMetricFamily("wallet_alerts_triggered", "Balance-alert firings recorded in the log since start",
                                  value=fired)
        wal = ledger.wal.statistics()
        yield CounterMetricFamily("wallet_wal_records", "WAL records written", value=wal.records_written)
        yield CounterMetricFamily("wallet_wal_bytes", "WAL bytes written", value=wal.bytes_written)
        yield CounterMetricFamily("wallet_wal_group_commits", "WAL group commits (fsyncs)", value=wal.batches)
        yield GaugeMetricFamily("wallet_wal_durable_lsn", "Last durable LSN", value=wal.durable_lsn)
        yield GaugeMetricFamily("wallet_wal_failed", "1 once a write or fsync failed", value=int(wal.failed is not None))
        yield _histogram("wallet_wal_fsync_seconds", "fsync latency", FSYNC_BUCKETS_S, wal.fsync_bucket_counts,
                         wal.fsync_seconds_total)
        yield _histogram("wallet_wal_records_per_commit", "Records per group commit", BATCH_BUCKETS,
                         wal.batch_bucket_counts, wal.records_written)
        yield GaugeMetricFamily("wallet_idempotency_keys_in_memory", "Idempotency records held in memory",
                                value=len(ledger.directory.idempotency))
        keys = ledger.keys
        if keys is not None:
            yield GaugeMetricFamily("wallet_idempotency_index_lsn",
                                    "LSN through which idempotency records are in the on-disk index",
                                    value=keys.index.through_lsn)
            yield CounterMetricFamily("wallet_idempotency_spilled", "Idempotency records moved to the on-disk index",
                                      value=keys.spilled)
            yield CounterMetricFamily("wallet_idempotency_recalled",
                                      "Idempotency records found in the on-disk index for a request",
                                      value=keys.recalled)
            yield CounterMetricFamily("wallet_idempotency_index_failures",
                                      "Failed writes to the on-disk idempotency index", value=keys.failures)
        history = ledger.history.statistics()
        yield GaugeMetricFamily("wallet_history_lsn", "LSN the history read model reached", value=history.applied_lsn)
        yield GaugeMetricFamily("wallet_history_lag_records", "Durable records not yet in the history",
                                value=max(wal.durable_lsn - history.applied_lsn, 0))
        snapshotter = port.snapshotter
        if snapshotter is not None:
            stats = snapshotter.statistics()
            yield GaugeMetricFamily("wallet_snapshot_lsn", "LSN of the newest snapshot", value=stats.last_lsn)
            yield GaugeMetricFamily("wallet_snapshot_duration_seconds", "Duration of the last snapshot",
                                    value=stats.last_seconds)
            # Absent until this process finished a snapshot: a -1 would read as "fresh" to an
            # alert on age > N, and averaging it into a graph lies. (The alternative, the age of
            # the image recovery started from, needs its header's time here: left for later.)
            if stats.last_finished_monotonic is not None:
                yield GaugeMetricFamily("wallet_snapshot_age_seconds",
                                        "Seconds since this process last finished a snapshot (absent before the first)",
                                        value=time.monotonic() - stats.last_finished_monotonic)
            yield CounterMetricFamily("wallet_snapshots", "Snapshots taken by this process", value=stats.taken)
            yield CounterMetricFamily("wallet_snapshot_failures", "Snapshots that failed", value=stats.failed)


class _PayoutsCollector:
    """The payout workers' ``statistics()``, read at scrape time from ``port.payouts`` (absent
    until the server starts them)."""

    def __init__(self, port_of: Callable[[], Any]) -> None:
        self._port_of = port_of

    def collect(self) -> Iterator[Any]:
        payouts = getattr(self._port_of(), "payouts", None)
        if payouts is None:
            return
        yield from payout_metrics(payouts.statistics())


def payout_metrics(stats: PayoutsStatistics) -> Iterator[Any]:
    attempts = CounterMetricFamily("wallet_payout_attempts", "Bank calls by outcome (paid, refused, transient)",
                                   labels=["outcome"])
    for outcome, count in sorted(stats.attempts.items()):
        attempts.add_metric([outcome], count)
    yield attempts
    results = CounterMetricFamily("wallet_payout_results", "Withdrawal state changes the payout workers recorded",
                                  labels=["status"])
    for status, count in (("completed", stats.completed), ("failed", stats.failed), ("dead", stats.dead),
                          ("retry_scheduled", stats.rescheduled), ("skipped", stats.skipped)):
        results.add_metric([status], count)
    yield results
    yield CounterMetricFamily("wallet_payout_bank_timeouts", "Bank calls cut off by --bank-timeout-s",
                              value=stats.timeouts)
    yield CounterMetricFamily("wallet_payout_ledger_errors", "Ledger calls from the payout workers that raised "
                              "and were retried", value=stats.ledger_errors)
    yield _histogram("wallet_payout_bank_seconds", "Bank call latency", BANK_LATENCY_BUCKETS_S,
                     stats.bank_latency_bucket_counts, stats.bank_latency_s_total)
    yield GaugeMetricFamily("wallet_payout_workers", "Payout workers", value=stats.workers)
    yield GaugeMetricFamily("wallet_payouts_in_flight", "Bank calls under way", value=stats.bank_in_flight)
    depth = GaugeMetricFamily("wallet_payout_queue_depth", "Withdrawals waiting: for a worker (ready) or "
                              "for their backoff to end (delayed)", labels=["queue"])
    depth.add_metric(["ready"], stats.queued)
    depth.add_metric(["delayed"], stats.delayed)
    yield depth


def _histogram(name: str, documentation: str, bounds: tuple[float, ...], counts: tuple[int, ...],
               total: float) -> HistogramMetricFamily:
    cumulative = 0
    buckets = []
    for bound, count in zip([*map(str, bounds), "+Inf"], counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


def shown_path(path: str) -> str:
    """``path`` as logs and answers may show it: a token in it cut to a prefix."""
    return _TOKEN_PATH.sub(r"\1...", path)


def _request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if 0 < len(text) <= REQUEST_ID_CHARS_MAX and text.isascii() and text.isprintable():
                return text
            break
    return secrets.token_hex(8)


OVERLOADED_BODY = json.dumps({
    "type": "about:blank", "title": "Overloaded", "status": 503, "code": "overloaded",
    "detail": "too many requests in flight; retry shortly",
}).encode()


# Answered even past the in-flight cap: what a load balancer and an operator ask first, cheap and
# without a body, so a flood of requests cannot make a healthy server look dead.
ADMISSION_EXEMPT = frozenset({"/health", "/ready"})


def _has_body(scope: Any) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def _closes(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"connection" and b"close" in value.lower() for name, value in headers)


class Observe:
    def __init__(self, app: Any, metrics: Metrics, *, in_flight_max: int = 4096) -> None:
        self._app = app
        self._metrics = metrics
        self._in_flight = 0
        self._in_flight_max = in_flight_max

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope.get("headers", []))
        echoed = request_id.encode()
        status = 500
        # A response that starts before the request body was read (401, 403, 415, 429, 503, ...)
        # would leave the body in the connection: Hypercorn then closes it after the response,
        # without saying so, and a keep-alive client's next request on it fails ("server
        # disconnected"), on any loop when the body arrives after the headers, and often on
        # asyncio/uvloop. So the rest of the body is read and dropped first, up to the body
        # limit; past it (or if the app is itself waiting in ``receive``) the response says
        # ``Connection: close``. Requests without a body, and bodies the app read, cost nothing.
        body_done = not _has_body(scope)
        receiving = 0

        async def tracked_receive() -> Any:
            nonlocal body_done, receiving
            receiving += 1
            try:
                message = await receive()
            finally:
                receiving -= 1
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def drain_body() -> bool:
            """True when the request body is now fully read (and dropped)."""
            if receiving:
                return False  # the app waits in receive(): a second reader could hang
            size = 0
            try:
                while not body_done:
                    size += len((await tracked_receive()).get("body", b""))
                    if size > BODY_BYTES_MAX:
                        return False
            except BodyTimeout:
                return False
            return True

        async def observed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", echoed), *SECURITY_HEADERS]
                if not body_done and not _closes(headers) and not await drain_body():
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            if self._in_flight >= self._in_flight_max and scope["path"] not in ADMISSION_EXEMPT:
                # Bounded work in progress: past the cap, answer at once instead of queueing.
                await observed_send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"application/problem+json"), (b"retry-after", b"1"),
                    (b"content-length", str(len(OVERLOADED_BODY)).encode())]})
                await send({"type": "http.response.body", "body": OVERLOADED_BODY})
                self._metrics.rejections.labels(code_label("overloaded")).inc()
                return
            self._in_flight += 1
            try:
                await self._app(scope, tracked_receive, observed_send)
            finally:
                self._in_flight -= 1
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = route.path if route is not None else ROUTE_UNMATCHED
            method = scope["method"]
            label = method if method in METHODS else METHOD_OTHER
            self._metrics.requests.labels(label, template, str(status)).inc()
            self._metrics.latency.labels(label, template).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                self._log(method, scope["path"], template, status, elapsed, request_id)

    def _log(self, method: str, path: str, route: str, status: int, elapsed: float, request_id: str) -> None:
        path = shown_path(path)
        fields = {"event": "request", "method": method, "path": path, "route": route, "status": status,
                  "latency_ms": round(elapsed * 1000, 3), "request_id": request_id}
        log.info("%s %s %d %.1f ms request_id=%s", method, path, status, elapsed * 1000, request_id,
                 extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line (used when stderr is not a terminal): time, level, logger,
    message, and the record's structured ``fields`` when it has them."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
