"""The server's lifecycle: one ``anyio.run`` whose task group holds Hypercorn, the shard actors
and the WAL writer, so a crashed actor takes the process down with a non-zero status. The same
code runs on trio (the default), asyncio or uvloop (``--loop``): everything below is anyio, and
only the choice of Hypercorn's worker differs per backend (``_serve_http``).

    start HTTP (``/health`` 200, ``/ready`` 503) -> recover from the log in a worker thread
    -> start the WAL writer and the actors -> ``/ready`` 200
    SIGTERM/SIGINT -> stop accepting, let in-flight requests finish (``--shutdown-timeout``)
    -> stop the actors -> flush and fsync the log -> final snapshot -> exit 0. A second signal
    exits at once, which is still safe: the log is the truth and nothing unacknowledged was
    promised.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import random
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry

from ledger import (
    MAILBOX_CAPACITY,
    MEMORY_KEYS_DEFAULT,
    SHARDS_DEFAULT,
    SNAPSHOT_EVERY_DEFAULT,
    Ledger,
    Projector,
    recover,
)
from server._config import LOOP_DEFAULT, LOOPS
from server._gc import tune_gc
from server._limits import BODY_TIMEOUT_S, CONNECTIONS_MAX, CONNECTIONS_PER_ADDRESS_MAX
from server._lock import DataDirLocked, lock_data_dir
from server._loop_lag import LoopLag, loop_lag, loop_lag_histogram
from server._payout_ledger import LedgerPayouts
from server._payouts import Payouts
from server._port import LocalPort, RemoteCalls, RemotePort, Unavailable, serve_port
from server._scrape import MULTIPROC_DIR_ENV, MultiProcessScrape
from server._snapshotter import Snapshotter
from server._supervisor import child_command, ledger_socket_path, mark_worker_up, prepare_run_dir
from server.api._limits import BATCHES_IN_FLIGHT_MAX
from wal import LogCorrupt, StorageFailed

if TYPE_CHECKING:
    from hypercorn.config import Config

    from server._edge import ConnectionLimits
    from server._webhooks import WebhookConfig
    from server.api import Deps
    from wal import StreamClient

# The HTTP front (Hypercorn, Starlette, the routes), the bank's HTTP client and the webhook
# dispatcher are imported by the functions of the processes that use them: a process's start
# is mostly its imports, and the ledger process, the projector and the dispatcher each need a
# different part.

log = logging.getLogger("server")

ADMIN_TOKEN_ENV = "WALLET_ADMIN_TOKEN"
SHUTDOWN_TIMEOUT_S = 10.0
LOCK_WAIT_S = 10.0  # how long a ledger process under a supervisor waits for the data directory
HTTP_DRAIN_SHARE = 0.5  # of --shutdown-timeout, at most, for the HTTP drain
# A connection that sends nothing for this long is closed, so slow or stalled clients cannot
# pile up and hold connections (and file descriptors) for everyone else.
# Hypercorn's read timeout also bounds the idle time between requests, so it doubles as the
# keep-alive timeout; much shorter would close pooled connections just as clients reuse them
# (a reset the client sees, measured at 10 s under a burst).
READ_TIMEOUT_S = 30
HISTORY_FILE = "history.sqlite3"



class Owner(Protocol):
    """What ``serve`` needs of a cluster group's owner (``server._member.Replica``): the group
    and the NATS connection its requests arrive on, the log's hook, the replies' confirmation."""

    @property
    def group(self) -> int: ...

    @property
    def client(self) -> StreamClient: ...

    def replicate(self, first_lsn: int, last_lsn: int, data: bytes) -> None: ...

    async def confirm(self, arrived: float) -> None: ...

    def serving(self) -> None: ...

    @property
    def servers(self) -> list[str]: ...

@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    shards: int = SHARDS_DEFAULT
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S
    segment_bytes_max: int | None = None
    snapshot_every: int = SNAPSHOT_EVERY_DEFAULT
    archive: bool = False
    mailbox_capacity: int = MAILBOX_CAPACITY
    idempotency_memory_keys: int = MEMORY_KEYS_DEFAULT  # 0: every record stays in memory
    read_timeout_s: int = READ_TIMEOUT_S
    max_in_flight: int = 4096
    max_connections: int = CONNECTIONS_MAX
    max_connections_per_ip: int = CONNECTIONS_PER_ADDRESS_MAX
    body_timeout_s: float = BODY_TIMEOUT_S
    max_batches_in_flight: int = BATCHES_IN_FLIGHT_MAX
    rate_limit: float = 0.0
    rate_burst: int = 100
    rate_limit_admin: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None
    loop: str = LOOP_DEFAULT
    payout_workers: int = 16
    payout_max_attempts: int = 8
    bank_url: str | None = None
    bank_latency_ms: float = 50.0
    bank_failure_rate: float = 0.0
    bank_timeout_s: float = 10.0
    log_level: str = "INFO"
    allow_private_webhooks: bool = False
    webhook_timeout_s: float = 10.0
    webhook_disable_after_s: float = 24 * 3600.0
    webhook_concurrency: int = 100
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_max_s: float = 600.0
    workers: int = 0  # the supervisor's; a child ignores it
    cluster: bool = False  # under ``wallet cluster up`` (``server._cluster``)
    groups: int = 1  # a cluster's ledger groups (ADR 0013; ``server._groups``)
    # A cluster owner's webhook dispatcher: the NATS URLs, comma-separated (its endpoints are in
    # the cluster's bucket; with several groups it reads the aggregate stream).
    nats_servers: str = ""

    def webhooks(self) -> WebhookConfig:
        from server._webhooks import WebhookConfig

        return WebhookConfig(
            allow_private=self.allow_private_webhooks, timeout_s=self.webhook_timeout_s,
            disable_after_s=self.webhook_disable_after_s, concurrency=self.webhook_concurrency,
            backoff_base_s=self.webhook_backoff_base_s,
            backoff_max_s=max(self.webhook_backoff_max_s, self.webhook_backoff_base_s),
        )


def _bank(options: ServeOptions) -> Any:
    """The bank gateway over HTTP (``--bank-url``), else the built-in simulated bank."""
    from server._bank import HttpBank, SimulatedBank

    if options.bank_url:
        return HttpBank(options.bank_url, timeout_s=options.bank_timeout_s, connections_max=options.payout_workers)
    return SimulatedBank(
        latency_ms=options.bank_latency_ms, failure_rate=options.bank_failure_rate, rng=random.Random()
    )


def _release_recovery_garbage() -> None:
    """Recovery decodes a snapshot and the log into short-lived objects: collect them and hand
    the freed heap back to the OS (glibc keeps it otherwise), so the resident size reflects the
    ledger, not its recovery; then freeze what survived."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
    # What recovery built (every wallet, the directory) lives as long as the process: keep the
    # cyclic collector from walking it again in every full collection (with a million wallets
    # each walk is a pause of a good part of a second on the event loop).
    gc.freeze()


def admin_token(data_dir: Path) -> str:
    """From ``WALLET_ADMIN_TOKEN``, else ``<data>/admin.token`` (made on first start, mode 0600)."""
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if token:
        return token
    path = data_dir / "admin.token"
    if path.exists():
        return path.read_text().strip()
    token = "wa_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    log.info("admin token written to %s", path)
    return token


def hypercorn_config(options: ServeOptions, limits: ConnectionLimits) -> Config:
    """Hypercorn's config: HTTP/1.1 only, the connection caps (``server._edge``), timeouts."""
    from server._edge import edge_config

    config = edge_config(limits)
    config.bind = [f"{options.host}:{options.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Half of the shutdown budget for in-flight requests, so that a connection Hypercorn keeps
    # waiting on (a keep-alive client that sent its next request as the signal came) cannot
    # use up the time of the final snapshot.
    config.graceful_timeout = options.shutdown_timeout_s * HTTP_DRAIN_SHARE
    if options.certfile is not None:
        config.certfile = str(options.certfile)
        config.keyfile = str(options.keyfile) if options.keyfile is not None else None
    config.keep_alive_timeout = options.read_timeout_s
    config.read_timeout = options.read_timeout_s
    config.backlog = 1024
    return config


async def _signals(shutdown: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            if not shutdown.is_set():
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                shutdown.set()
            else:
                log.warning("second signal: exiting at once (the log is the truth)")
                os._exit(1)


EXIT_SOFTWARE = 70  # an actor or the WAL writer crashed: a bug


async def _crash_only(ledger: Ledger, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Runs the actors and the WAL writer; if one of them crashes (a bug), the process exits at
    once with status 70. Waiting requests cannot be answered any more (their replies belonged
    to the dead actor), so a graceful stop would hang; the log is the truth and a supervisor's
    restart recovers everything that was acknowledged."""
    try:
        await ledger.run(task_status=task_status)
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as error:
        log.critical("ledger task crashed; exiting at once (status %d)", EXIT_SOFTWARE, exc_info=error)
        logging.shutdown()
        os._exit(EXIT_SOFTWARE)


async def _until_cancelled(scope: anyio.CancelScope, function: Any) -> None:
    with scope:
        await function()


async def _until_cancelled_started(
    scope: anyio.CancelScope, function: Any, ended: anyio.Event,
    *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """``_until_cancelled`` for a function that reports ``task_status.started()``; sets
    ``ended`` when it has returned (cancelling ``scope`` does not mean that it has: a task in a
    shielded wait goes on until the wait ends)."""
    try:
        with scope:
            await function(task_status=task_status)
    finally:
        ended.set()


async def _serve_http(
    app: Any, config: Config, loop: str, shutdown_trigger: Callable[[], Awaitable[Any]],
    *, task_status: TaskStatus[list[str]],
) -> None:
    """Hypercorn's worker for the running backend; reports the bound addresses through
    ``task_status`` once the sockets listen, so recovery starts with ``/health`` answering.

    ``hypercorn.trio.serve`` takes a ``task_status``; ``hypercorn.asyncio.serve`` takes
    neither a ``task_status`` nor sockets and binds inside. So on asyncio the sockets are bound
    and listening here first (a busy port fails before recovery starts, as on trio) and handed
    to ``hypercorn.asyncio.run.worker_serve``, the function ``serve`` is a thin wrapper of."""
    if loop == "trio":
        from hypercorn.trio import serve as trio_serve

        # On trio, anyio's ``TaskGroup.start`` is trio's ``nursery.start``: this is trio's own
        # task status, which is what Hypercorn expects.
        await trio_serve(
            app, config, shutdown_trigger=shutdown_trigger, task_status=task_status  # type: ignore[arg-type]
        )
        return
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import repr_socket_addr, wrap_app

    if config.ssl_enabled:
        config.create_ssl_context()  # a bad certificate fails now, not after recovery
    sockets = config.create_sockets()
    binds = []
    for scheme, group in (("https", sockets.secure_sockets), ("http", sockets.insecure_sockets)):
        for sock in group:
            sock.listen(config.backlog)
            binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
    task_status.started(binds)
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, None), config, sockets=sockets,
        shutdown_trigger=shutdown_trigger,
    )


async def _in_daemon_thread(function: Callable[[], None]) -> None:
    """``function()`` in a new daemon thread; if the caller is cancelled the thread is
    abandoned, and it dies with the process. (anyio's worker threads are not daemons on
    asyncio, so ``to_thread.run_sync(..., abandon_on_cancel=True)`` would keep the process
    alive past ``--shutdown-timeout`` there until the abandoned call returned.)"""
    await anyio.lowlevel.checkpoint_if_cancelled()  # out of time already: do not start it
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            function()
        except BaseException as error:
            failure.append(error)
        finally:
            try:  # scheduled, not waited for: the loop may be gone when it was abandoned
                token.backend_class.run_sync_soon(done.set, (), token.native_token)
            except anyio.RunFinishedError:
                pass

    threading.Thread(target=main, name="final-snapshot", daemon=True).start()
    await done.wait()
    if failure:
        raise failure[0]


def _http_app(options: ServeOptions, deps: Deps) -> tuple[Any, Config]:
    """The ASGI app over ``deps`` and Hypercorn's config for it (both modes' HTTP)."""
    from server._edge import BodyDeadline, ConnectionLimits, install
    from server.api import build_app

    install()  # HTTP/1.1 only, connection caps, per-connection failures (server._edge)
    limits = ConnectionLimits(total_max=options.max_connections, per_address_max=options.max_connections_per_ip)
    _check_file_limit(options.max_connections)
    app = BodyDeadline(build_app(deps, in_flight_max=options.max_in_flight), timeout_s=options.body_timeout_s)
    return app, hypercorn_config(options, limits)


def _deps(options: ServeOptions, *, port: RemoteCalls | None = None,
          exposition: Callable[[], Awaitable[bytes]] | None = None,
          cluster: Callable[[], Awaitable[dict[str, Any]]] | None = None,
          webhook_store: Callable[[], Any] | None = None) -> Deps:
    """What the routes are built from. ``port`` is None in one process: its ``LocalPort`` is
    set once recovery has finished."""
    from server.api import Deps, RateLimiter

    limiter = None
    if options.rate_limit > 0:
        limiter = RateLimiter(rate=options.rate_limit, burst=options.rate_burst)
    return Deps.build(
        admin_token=admin_token(options.data_dir), port=port, limiter=limiter, limit_admin=options.rate_limit_admin,
        batches_in_flight_max=options.max_batches_in_flight, data_dir=options.data_dir, exposition=exposition,
        allow_private_webhooks=options.allow_private_webhooks, cluster=cluster, webhook_store=webhook_store,
    )


async def serve(options: ServeOptions, *, port_socket: str | None = None, owner: Owner | None = None) -> int:
    """Serves until SIGTERM/SIGINT; returns the exit status. Raises ``wal.LogCorrupt`` when
    the log is damaged (the command line reports it and exits 2).

    The front that starts before recovery and drains first on the way out is HTTP (one
    process), or with ``port_socket`` the ledger port for the HTTP workers (the ledger process
    of ``--workers N``: ``server._supervisor``), or with ``owner`` (cluster mode,
    ``server._member``) the group's requests over NATS (``server._natsport.serve_nats``): the
    log is replicated through the owner, every reply of the port is confirmed by its fence, and
    two child processes of the owner (``_owner_child``) do what the projector and webhooks
    processes of ``--workers N`` do: one tails the log into the history read model once the
    ledger serves (recovery does not project, so a takeover does not wait for it; the workers
    read it over the port), the other delivers webhooks to the endpoints in the cluster's
    bucket (``server._webhook_store.SharedWebhookStore``)."""
    data_dir = options.data_dir
    # Creates the data directory 0700 (or tightens it); held until the process exits; raises
    # DataDirLocked.
    lock = lock_data_dir(data_dir)
    shutdown = anyio.Event()
    http_done = anyio.Event()
    deps: Deps | None = None
    published: list[LocalPort] = []
    if owner is not None:
        assert port_socket is None, "a cluster owner's workers reach it over NATS"
        from server._natsport import serve_nats

        async def run_http(*, task_status: TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve_nats(owner.client, owner.group, lambda: published[0] if published else None,
                                 confirm=owner.confirm, stop=shutdown,
                                 drain_s=options.shutdown_timeout_s * HTTP_DRAIN_SHARE, task_status=task_status)
            finally:
                http_done.set()
    elif port_socket is None:
        deps = _deps(options)
        app, config = _http_app(options, deps)

        async def run_http(*, task_status: TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await _serve_http(app, config, options.loop, shutdown.wait, task_status=task_status)
            finally:
                http_done.set()
    else:
        socket_path = port_socket

        async def run_http(*, task_status: TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await _serve_port(socket_path, lambda: published[0] if published else None, shutdown,
                                  task_status=task_status)
            finally:
                http_done.set()

    ledger: Ledger | None = None
    refused: LogCorrupt | None = None
    embedded = port_socket is None and owner is None  # one process: HTTP and the ledger
    role = "one" if embedded else "ledger"
    # The ledger process's histogram goes to the shared files only (server._scrape).
    lag = loop_lag(deps.metrics.loop_lag if deps is not None else loop_lag_histogram(None), role)
    async with anyio.create_task_group() as outer:
        outer.start_soon(_signals, shutdown)
        outer.start_soon(lag.run)
        async with anyio.create_task_group() as group:
            binds = await group.start(run_http)
            log.info("listening on %s (event loop: %s); recovering %s", ", ".join(binds), _loop_name(), data_dir)
            try:
                # With workers, the projector process keeps the read model, and a cluster owner
                # its projector task: recovery leaves it be.
                recovered = await anyio.to_thread.run_sync(
                    partial(recover, data_dir, project_history=embedded)
                )
            except LogCorrupt as error:
                log.error("refusing to start: %s", error)
                refused = error
                outer.cancel_scope.cancel()
            else:
                for message in recovered.scan.torn:
                    log.warning("recovery: %s", message)
                ledger = Ledger(
                    recovered, data_dir, shards=options.shards,
                    segment_bytes_max=options.segment_bytes_max,
                    mailbox_capacity=options.mailbox_capacity,
                    memory_keys=options.idempotency_memory_keys or None,
                    replicate=owner.replicate if owner is not None else None,
                    group=owner.group if owner is not None and options.groups > 1 else 0,
                    groups=options.groups if owner is not None else 1,
                )
                replayed, recovery_s = recovered.scan.records, recovered.seconds
                # The shards own the wallets now: drop the recovered state's own dict of them
                # (about 40 bytes per wallet).
                del recovered
                _release_recovery_garbage()
                await group.start(_crash_only, ledger)
                snapshotter = Snapshotter(
                    data_dir, ledger, every=options.snapshot_every, archive=options.archive
                )
                port = LocalPort(ledger, snapshotter=snapshotter,
                                 history_path=data_dir / HISTORY_FILE if owner is not None else None)
                if deps is not None:
                    deps.ledger.fill(port)
                published.append(port)
                if owner is not None:
                    owner.serving()  # the heartbeats say so: workers send what they held
                log.info(
                    "ready: %d records replayed in %.3f s, next LSN %d, %d shards",
                    replayed, recovery_s, ledger.wal.next_lsn, options.shards,
                )
                periodic = anyio.CancelScope()
                group.start_soon(_until_cancelled, periodic, snapshotter.run)
                projecting = anyio.CancelScope()
                dispatching = anyio.CancelScope()
                crossing = anyio.CancelScope()
                if owner is not None and options.groups > 1:
                    await group.start(_until_cancelled_started, crossing,
                                      partial(_run_crossing, ledger, owner, options.groups), anyio.Event())
                if owner is not None:
                    # The read model and the webhook dispatcher in processes of their own, as
                    # with ``--workers N``, on a private socket whose calls are not confirmed:
                    # they report LSNs and read durable events, facts no newer owner can undo.
                    prepare_run_dir(data_dir)
                    private_socket = ledger_socket_path(data_dir)
                    await group.start(partial(_serve_port, private_socket, lambda: port, shutdown))
                    group.start_soon(_until_cancelled, projecting,
                                     partial(_owner_child, "projector", options, private_socket))
                    # With several groups, group 0's owner alone delivers webhooks, from every
                    # group's events (the aggregate stream: one order, one cursor per endpoint).
                    if options.groups == 1 or owner.group == 0:
                        shared = dataclasses.replace(options, nats_servers=",".join(owner.servers))
                        group.start_soon(_until_cancelled, dispatching,
                                         partial(_owner_child, "webhooks", shared, private_socket))
                # Payouts: workers that only issue ledger commands. Withdrawals left pending
                # or processing by a crash are loaded from the ledger and sent again under the
                # same idempotency key.
                bank = _bank(options)
                payouts = Payouts(
                    LedgerPayouts(ledger), bank, workers=options.payout_workers,
                    max_attempts=options.payout_max_attempts,
                    bank_timeout_s=options.bank_timeout_s + 1,  # a backstop: the bank's own timeout fires first
                    rng=random.Random(),
                )
                payouts_scope = anyio.CancelScope()
                payouts_ended = anyio.Event()
                await group.start(_until_cancelled_started, payouts_scope, payouts.run, payouts_ended)
                port.payouts = payouts
                # Webhooks: with workers, the ``webhooks`` process delivers them; in one process
                # this task does (``server._webhooks``).
                webhooks_scope = anyio.CancelScope()
                webhooks_ended = anyio.Event()
                if deps is not None:
                    from server._webhooks import Dispatcher, WebhookMetrics

                    dispatcher = Dispatcher(data_dir, port, options.webhooks(),
                                            metrics=WebhookMetrics(deps.metrics.registry))
                    await group.start(_until_cancelled_started, webhooks_scope, dispatcher.run, webhooks_ended)
                else:
                    webhooks_ended.set()
                await shutdown.wait()
                signalled = anyio.current_time()
                deadline = signalled + options.shutdown_timeout_s
                periodic.cancel()
                crossing.cancel()  # what it leaves, the next owner finishes
                projecting.cancel()
                dispatching.cancel()
                webhooks_scope.cancel()  # crash-only: it saves its cursors as it stops
                # Payouts stop first: a bank call cut short leaves its withdrawal processing,
                # and the next start sends it again with the same key.
                payouts_scope.cancel()
                if options.bank_url:  # an ``HttpBank`` (``_bank``): its connections
                    await bank.aclose()
                # The actors stop only once the workers have ended: a worker cancelled while
                # its ledger call waits (shielded) for the log makes its next call when it
                # wakes, and that call must still be answered (Ledger.stop would refuse it).
                await payouts_ended.wait()
                await webhooks_ended.wait()
                await http_done.wait()
                log.info("%s drained in %.3f s; stopping the actors", "HTTP" if deps is not None else "port",
                         anyio.current_time() - signalled)
                await ledger.stop()
                await port.aclose()
        outer.cancel_scope.cancel()
    if refused is not None:
        raise refused
    assert ledger is not None
    lag.log_summary(role)
    log.info("ledger stopped (log flushed, history drained) %.3f s after the signal", anyio.current_time() - signalled)
    with anyio.CancelScope(deadline=deadline) as bounded:
        await _in_daemon_thread(snapshotter.final)
    if bounded.cancelled_caught:
        log.warning("shutdown timeout reached before the final snapshot was written; the log is complete")
    del lock
    stats = ledger.wal.statistics()
    log.info(
        "stopped cleanly at LSN %d; this run wrote %d records in %d group commits "
        "(%.1f records per fsync, mean fsync %.3f ms, max %.3f ms)",
        stats.durable_lsn, stats.records_written, stats.batches,
        stats.records_written / max(stats.batches, 1),
        1000 * stats.fsync_seconds_total / max(stats.batches, 1), 1000 * stats.fsync_seconds_max,
    )
    return 0


CHILD_POLL_S = 0.2
CHILD_STOP_S = 5.0
CHILD_RESTART_S = 1.0


async def _run_crossing(ledger: Ledger, owner: Owner, groups: int, *,
                        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """A group's owner among several: its ports to the other groups' owners, and what it
    finishes of the transfers between groups (``server._crossing``)."""
    from server._crossing import Crossing
    from server._natsport import NatsPort

    ports = {group: NatsPort(owner.servers, group=group) for group in range(groups) if group != owner.group}
    async with anyio.create_task_group() as tasks:
        for port in ports.values():
            await tasks.start(port.run)
        tasks.start_soon(Crossing(ledger, ports).run)
        task_status.started()


async def _owner_child(role: str, options: ServeOptions, socket_path: str) -> None:
    """A cluster owner's history projector (``serve_projector``) or webhook dispatcher
    (``serve_webhooks``) as its child process, restarted when it exits (both are crash-only:
    each SQLite transaction of the projector carries its LSN, the dispatcher resumes from its
    saved cursors) and stopped with SIGTERM when cancelled. ``Popen`` runs on this, the main,
    thread: the child's ``PR_SET_PDEATHSIG`` fires when the thread that started it ends, so a
    worker thread (which trio's ``open_process`` would use) could kill it while the owner lives;
    a fenced owner's ``os._exit`` takes it along."""
    command = child_command(role, options, supervisor=os.getpid(), socket_path=socket_path)
    while True:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        log.info("started the owner's %s process (pid %d)", role, process.pid)
        try:
            while process.poll() is None:
                await anyio.sleep(CHILD_POLL_S)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                with anyio.CancelScope(shield=True), anyio.move_on_after(CHILD_STOP_S):
                    while process.poll() is None:
                        await anyio.sleep(CHILD_POLL_S / 4)
                if process.poll() is None:
                    process.kill()
                    process.wait()
        log.warning("the owner's %s process (pid %d) exited with status %s; starting another in %.0f s",
                    role, process.pid, process.returncode, CHILD_RESTART_S)
        await anyio.sleep(CHILD_RESTART_S)


async def _serve_port(path: str, port_of: Callable[[], LocalPort | None], shutdown: anyio.Event,
                      *, task_status: TaskStatus[list[str]]) -> None:
    """The ledger port on a Unix socket (mode 0600) until ``shutdown``: the HTTP workers were
    stopped before the ledger process is asked to stop, so nothing is in flight by then.

    The socket is bound under a temporary name, made 0600, and renamed onto ``path``, so it is
    never reachable with the default mode and a file left by a killed process is replaced in one
    step; on the way out the path is removed only if it still names this process's socket."""
    temporary = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    listener = await anyio.create_unix_listener(temporary)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)  # replaces a socket file left by a killed or replaced process
    inode = os.stat(path).st_ino
    task_status.started([f"unix:{path}"])
    async with anyio.create_task_group() as group:
        group.start_soon(partial(serve_port, port_of, listener))
        await shutdown.wait()
        group.cancel_scope.cancel()
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


async def serve_worker(options: ServeOptions, socket_path: str, *, fd: int, servers: list[str] | None = None,
                       ledger_group: int = 0) -> int:
    """One HTTP worker of ``--workers N``: Hypercorn on the inherited listening socket ``fd``,
    the routes over a ``RemotePort`` to the ledger process; in cluster mode (``servers``: the
    NATS URLs) over a ``NatsPort`` to group ``ledger_group``'s owner, wherever it runs. SIGTERM: stop
    accepting, answer what was accepted, exit 0."""
    # History reads query the projector process's SQLite file here, read-only; in a cluster
    # the group's owner keeps the read model and answers them over the port.
    remote: RemoteCalls
    if options.cluster and options.groups > 1:
        from server._groups import GroupRouter
        from server._natsport import NatsPort

        assert servers, "a cluster worker needs the NATS URLs"
        # Every group's owner, each over its own port (ADR 0013): the router is duck-typed as a
        # port (``LedgerPort``), which is all the routes ask of it.
        remote = cast(RemoteCalls, GroupRouter([NatsPort(servers, group=group) for group in range(options.groups)],
                                               servers=servers))
    elif options.cluster:
        from server._natsport import NatsPort

        assert servers, "a cluster worker needs the NATS URLs"
        remote = NatsPort(servers, group=ledger_group)
    else:
        remote = RemotePort(socket_path, history_path=options.data_dir / HISTORY_FILE)
    exposition = None
    multiproc_dir = os.environ.get(MULTIPROC_DIR_ENV)
    if multiproc_dir is not None:
        exposition = MultiProcessScrape(remote, options.data_dir, multiproc_dir)
    else:  # not under the supervisor (which always sets it): this worker's own series only
        log.warning("%s is not set: /metrics shows this worker's series only", MULTIPROC_DIR_ENV)
    watch = None
    if options.cluster:
        from server._cluster import ClusterWatch, cluster_view

        if cluster_view(options.data_dir) is None:
            # A worker without ``wallet cluster up`` on its host: the cluster as NATS tells it.
            watch = ClusterWatch(servers or [], options.groups)
    webhook_store = None
    if options.cluster:
        from server._webhook_store import SharedWebhookStore

        webhook_store = partial(SharedWebhookStore.open, servers or [])
    deps = _deps(options, port=remote, exposition=exposition, cluster=None if watch is None else watch.view,
                 webhook_store=webhook_store)
    app, config = _http_app(options, deps)
    config.bind = [f"fd://{fd}"]
    lag: LoopLag = loop_lag(deps.metrics.loop_lag, "http")
    shutdown = anyio.Event()
    async with anyio.create_task_group() as group:

        async def http(*, task_status: TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await _serve_http(app, config, options.loop, shutdown.wait, task_status=task_status)
            finally:
                if shutdown.is_set():
                    log.info("HTTP drained in %.3f s", anyio.current_time() - signalled[0])
                group.cancel_scope.cancel()  # drained: the signal handler and the port go too

        signalled = [0.0]

        async def mark() -> None:
            await shutdown.wait()
            signalled[0] = anyio.current_time()

        group.start_soon(mark)

        group.start_soon(_signals, shutdown)
        group.start_soon(lag.run)
        await group.start(remote.run)
        if watch is not None:
            await group.start(watch.run)

        async def up() -> None:
            await remote.connected.wait()
            mark_worker_up(options.data_dir)

        group.start_soon(up)
        binds = await group.start(http)
        log.info("HTTP worker %d serving %s (event loop: %s)", os.getpid(), ", ".join(binds), _loop_name())
    lag.log_summary("http")
    await remote.aclose()
    return 0


SYNC_RETRY_S = 0.1  # the projector's pause between attempts to reach the ledger process


async def serve_projector(options: ServeOptions, socket_path: str) -> int:
    """The history projector process of ``--workers N`` (``ledger._projector``): tails the log,
    writes SQLite, learns the durable LSN from and reports its progress to the ledger process.
    It is crash-only (each SQLite transaction carries its LSN): SIGTERM stops it at once."""
    remote = RemotePort(socket_path, reconnect_s=SYNC_RETRY_S)

    async def sync(applied_lsn: int, wait_s: float, linger_s: float) -> int:
        while True:
            try:
                return await remote.sync_projection(applied_lsn, wait_s, linger_s)
            except (Unavailable, StorageFailed):
                await anyio.sleep(SYNC_RETRY_S)  # the ledger is restarting or recovering

    projector = Projector(options.data_dir, sync)
    shutdown = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(_signals, shutdown)
        await group.start(remote.run)
        group.start_soon(projector.run)
        log.info("history projector %d following %s (event loop: %s)", os.getpid(), options.data_dir / "wal",
                 _loop_name())
        await shutdown.wait()
        group.cancel_scope.cancel()
    log.info("history projector stopped: %d transactions projected in %.3f s of work",
             projector.transactions, projector.seconds)
    return 0


STANDBY_SYNC_POLL_S = 0.02


def _idle_priority() -> None:
    """Only the cores' and the disk's idle time for this process (Linux's ``SCHED_IDLE`` and
    the idle I/O class): a standby's read model is worth having, not worth the owner's
    throughput when both share a host (as under ``wallet cluster up``, where running it at the
    normal priority cost cluster batches about 30%). It lags behind the copy under load and
    catches up when the load eases; whatever it has not projected at a takeover, the new
    owner's projector does. On a host of its own it changes nothing."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as error:
        log.warning("standby history projector: SCHED_IDLE not available (%s); lowering its priority", error)
        os.nice(19)
    ioprio_set = {"x86_64": 251, "aarch64": 30}.get(os.uname().machine)  # the syscall's number
    who_process, class_idle = 1, 3  # linux/ioprio.h
    try:
        if ioprio_set is None:
            raise OSError(f"ioprio_set's number on {os.uname().machine} is not known here")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(ioprio_set, who_process, 0, class_idle << 13) != 0:
            raise OSError(ctypes.get_errno(), "ioprio_set")
    except (AttributeError, OSError) as error:
        log.info("standby history projector: idle I/O class not set (%s)", error)


async def serve_standby_history(options: ServeOptions, copied_path: str) -> int:
    """A cluster standby's history projector (``server._member.StandbyHistory``): the projector
    of ``serve_projector`` following the standby's copy of the log instead of a ledger's. The
    durable LSN is what the standby has copied (every copied frame was stored by the stream's
    quorum), read from the 8 bytes the standby writes in ``copied_path``. Crash-only, like the
    other projector: the takeover kills it and the new owner's projector resumes from the LSN
    of its last SQLite transaction, so the read model is current at the takeover instead of
    projected from the whole log after it."""
    _idle_priority()
    fd = os.open(copied_path, os.O_RDONLY)

    def copied() -> int:
        data = os.pread(fd, 8, 0)
        return int.from_bytes(data, "little") if len(data) == 8 else 0

    async def sync(applied_lsn: int, wait_s: float, linger_s: float) -> int:
        deadline = anyio.current_time() + wait_s
        while (lsn := copied()) <= applied_lsn and anyio.current_time() < deadline:
            await anyio.sleep(STANDBY_SYNC_POLL_S)
        return lsn

    shutdown = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(_signals, shutdown)
        while copied() == 0:  # nothing copied yet: the log has no segment to tail
            await anyio.sleep(STANDBY_SYNC_POLL_S)
        projector = Projector(options.data_dir, sync)
        group.start_soon(projector.run)
        log.info("standby history projector %d following the copy in %s", os.getpid(), options.data_dir / "wal")
        await shutdown.wait()
        group.cancel_scope.cancel()
    log.info("standby history projector stopped: %d transactions projected in %.3f s of work",
             projector.transactions, projector.seconds)
    return 0


async def serve_webhooks(options: ServeOptions, socket_path: str) -> int:
    """The webhook dispatcher process of ``--workers N`` (``server._webhooks``): reads the event
    feed over the ledger port, delivers, keeps its cursors in ``<data>/webhooks.sqlite3`` (a
    cluster owner's: in the cluster's bucket). Crash-only (a restart resumes from the saved cursors); SIGTERM saves them and exits."""
    from server._webhooks import Dispatcher, WebhookMetrics

    remote = RemotePort(socket_path, reconnect_s=SYNC_RETRY_S)
    feed: Any = None
    if options.groups > 1:
        from server._groups import AggregateFeed

        feed = AggregateFeed(options.nats_servers.split(","))
    # The counters go to the shared multiprocess files (server._scrape); the registry only
    # keeps them from being registered twice.
    open_store = None
    if options.cluster:  # the endpoints are in the cluster's bucket, for every host
        from server._webhook_store import SharedWebhookStore

        open_store = partial(SharedWebhookStore.open, options.nats_servers.split(","))
    dispatcher = Dispatcher(options.data_dir, remote if feed is None else feed, options.webhooks(),
                            metrics=WebhookMetrics(CollectorRegistry()), open_store=open_store)
    lag = loop_lag(loop_lag_histogram(None), "webhooks")
    shutdown = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(_signals, shutdown)
        group.start_soon(lag.run)
        await group.start(remote.run)
        if feed is not None:
            group.start_soon(feed.run)
        await group.start(dispatcher.run)
        log.info("webhook dispatcher %d delivering for %s (event loop: %s)", os.getpid(), options.data_dir,
                 _loop_name())
        await shutdown.wait()
        group.cancel_scope.cancel()
    stats = dispatcher.statistics()
    log.info("webhook dispatcher stopped: %d delivered, %d failed attempts", stats.delivered, stats.failed)
    return 0


# File descriptors the server needs besides its connections: WAL segments, snapshots, SQLite,
# the listening sockets, the log.
FILES_OWN_MAX = 64


def _check_file_limit(connections_max: int) -> None:
    """Warns when the process may run out of file descriptors before ``--max-connections``."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return
    if soft != resource.RLIM_INFINITY and connections_max + FILES_OWN_MAX > soft:
        log.warning("--max-connections %d is close to the open-file limit %d (ulimit -n): accepting may "
                    "stall before the cap is reached", connections_max, soft)


def _loop_name() -> str:
    """What actually runs the server, for the log: ``trio``, or the asyncio loop's module."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    module = type(loop).__module__.split(".")[0]
    return "asyncio" if module == "asyncio" else module


def backend_of(loop: str) -> tuple[str, dict[str, Any]]:
    """``anyio.run``'s backend and options for a ``--loop`` value."""
    assert loop in LOOPS, loop
    if loop == "trio":
        return "trio", {}
    if loop == "asyncio":
        return "asyncio", {}
    # Explicit rather than ``use_uvloop=True``, which falls back to plain asyncio in silence
    # when uvloop cannot be imported.
    import uvloop

    return "asyncio", {"loop_factory": uvloop.new_event_loop}


def serve_ledger_process(options: ServeOptions, socket_path: str) -> int:
    """The ledger process of ``--workers N`` (``server._child``); 2 when it refuses to start."""
    tune_gc()
    backend, backend_options = backend_of(options.loop)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return anyio.run(partial(serve, options, port_socket=socket_path), backend=backend,
                             backend_options=backend_options)
        except DataDirLocked as error:
            # The ledger process of a supervisor that was just SIGKILLed dies a moment after
            # it (PR_SET_PDEATHSIG): wait for its lock rather than refuse at once.
            if time.monotonic() >= deadline:
                log.error("refusing to start: %s", error)
                return 2
            time.sleep(0.05)
        except LogCorrupt as error:
            log.error("refusing to start: %s", error)
            return 2


def serve_projector_process(options: ServeOptions, socket_path: str) -> int:
    """The history projector of ``--workers N`` (``server._child``)."""
    tune_gc()
    backend, backend_options = backend_of(options.loop)
    return anyio.run(partial(serve_projector, options, socket_path), backend=backend,
                     backend_options=backend_options)


def serve_standby_history_process(options: ServeOptions, copied_path: str) -> int:
    """A cluster standby's history projector (``server._child``)."""
    tune_gc()
    return anyio.run(partial(serve_standby_history, options, copied_path), backend="trio")


def serve_webhooks_process(options: ServeOptions, socket_path: str) -> int:
    """The webhook dispatcher of ``--workers N`` (``server._child``)."""
    tune_gc()
    backend, backend_options = backend_of(options.loop)
    return anyio.run(partial(serve_webhooks, options, socket_path), backend=backend,
                     backend_options=backend_options)


def serve_worker_process(options: ServeOptions, socket_path: str, *, fd: int, slot: int,
                         servers: list[str] | None = None, group: int = 0) -> int:
    """An HTTP worker of ``--workers N`` or of a cluster (``server._child``)."""
    tune_gc()
    backend, backend_options = backend_of(options.loop)
    return anyio.run(partial(serve_worker, options, socket_path, fd=fd, servers=servers, ledger_group=group),
                     backend=backend,
                     backend_options=backend_options)


def run(options: ServeOptions) -> int:
    tune_gc()
    backend, backend_options = backend_of(options.loop)
    return anyio.run(partial(serve, options), backend=backend, backend_options=backend_options)
