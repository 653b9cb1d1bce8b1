"""The server's lifecycle: one ``trio.run`` whose nursery holds Hypercorn, the shard actors and
the WAL writer, so a crashed actor takes the process down with a non-zero status.

    start HTTP (``/health`` 200, ``/ready`` 503) -> recover from the log in a worker thread
    -> start the WAL writer and the actors -> ``/ready`` 200
    SIGTERM/SIGINT -> stop accepting, let in-flight requests finish (``--shutdown-timeout``)
    -> stop the actors -> flush and fsync the log -> exit 0. A second signal exits at once,
    which is still safe: the log is the truth and nothing unacknowledged was promised.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ledger import MAILBOX_CAPACITY, SHARDS_DEFAULT, SNAPSHOT_EVERY_DEFAULT, Ledger, recover
from server._app import BATCHES_IN_FLIGHT_MAX, Api, RateLimiter, build_app
from server._lock import lock_data_dir
from server._snapshotter import Snapshotter
from wal import LogCorrupt

log = logging.getLogger("server")

ADMIN_TOKEN_ENV = "WALLET_ADMIN_TOKEN"
HEADER_BYTES_MAX = 16 * 1024
SHUTDOWN_TIMEOUT_S = 10.0
# A connection that sends nothing for this long is closed, so slow or stalled clients cannot
# pile up and hold connections (and file descriptors) for everyone else.
# Hypercorn's read timeout also bounds the idle time between requests, so it doubles as the
# keep-alive timeout; much shorter would close pooled connections just as clients reuse them
# (a reset the client sees, measured at 10 s under a burst).
READ_TIMEOUT_S = 30


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
    read_timeout_s: int = READ_TIMEOUT_S
    max_in_flight: int = 4096
    max_batches_in_flight: int = BATCHES_IN_FLIGHT_MAX
    rate_limit: float = 0.0
    rate_burst: int = 100
    rate_limit_admin: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None


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


def hypercorn_config(options: ServeOptions) -> Config:
    config = Config()
    config.bind = [f"{options.host}:{options.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = options.shutdown_timeout_s
    config.h11_max_incomplete_size = HEADER_BYTES_MAX
    if options.certfile is not None:
        config.certfile = str(options.certfile)
        config.keyfile = str(options.keyfile) if options.keyfile is not None else None
    config.keep_alive_timeout = options.read_timeout_s
    config.read_timeout = options.read_timeout_s
    config.backlog = 1024
    return config


async def _signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for signum in received:
            if not shutdown.is_set():
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                shutdown.set()
            else:
                log.warning("second signal: exiting at once (the log is the truth)")
                os._exit(1)


EXIT_SOFTWARE = 70  # an actor or the WAL writer crashed: a bug


async def _crash_only(ledger: Ledger, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Runs the actors and the WAL writer; if one of them crashes (a bug), the process exits at
    once with status 70. Waiting requests cannot be answered any more (their replies belonged
    to the dead actor), so a graceful stop would hang; the log is the truth and a supervisor's
    restart recovers everything that was acknowledged."""
    try:
        await ledger.run(task_status=task_status)
    except BaseException as error:
        if isinstance(error, trio.Cancelled):
            raise
        log.critical("ledger task crashed; exiting at once (status %d)", EXIT_SOFTWARE, exc_info=error)
        logging.shutdown()
        os._exit(EXIT_SOFTWARE)


async def _until_cancelled(scope: trio.CancelScope, function: Any) -> None:
    with scope:
        await function()


async def serve(options: ServeOptions) -> int:
    """Serves until SIGTERM/SIGINT; returns the exit status. Raises ``wal.LogCorrupt`` when
    the log is damaged (the command line reports it and exits 2)."""
    data_dir = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_data_dir(data_dir)  # held until the process exits; raises DataDirLocked
    limiter = None
    if options.rate_limit > 0:
        limiter = RateLimiter(rate=options.rate_limit, burst=options.rate_burst)
    api = Api(admin_token=admin_token(data_dir), limiter=limiter, limit_admin=options.rate_limit_admin,
              batches_in_flight_max=options.max_batches_in_flight)
    app = build_app(api, in_flight_max=options.max_in_flight)
    shutdown = trio.Event()
    http_done = trio.Event()

    async def run_http(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await hypercorn_serve(
                app,
                hypercorn_config(options), shutdown_trigger=shutdown.wait, task_status=task_status
            )
        finally:
            http_done.set()

    ledger: Ledger | None = None
    refused: LogCorrupt | None = None
    async with trio.open_nursery() as outer:
        outer.start_soon(_signals, shutdown)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(run_http)
            log.info("listening on %s; recovering %s", ", ".join(binds), data_dir)
            try:
                recovered = await trio.to_thread.run_sync(recover, data_dir)
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
                )
                await nursery.start(_crash_only, ledger)
                snapshotter = Snapshotter(
                    data_dir, ledger, every=options.snapshot_every, archive=options.archive
                )
                api.ledger = ledger
                api.snapshotter = snapshotter
                log.info(
                    "ready: %d records replayed in %.3f s, next LSN %d, %d shards",
                    recovered.scan.records, recovered.seconds, ledger.wal.next_lsn, options.shards,
                )
                periodic = trio.CancelScope()
                nursery.start_soon(_until_cancelled, periodic, snapshotter.run)
                await shutdown.wait()
                deadline = trio.current_time() + options.shutdown_timeout_s
                periodic.cancel()
                await http_done.wait()
                await ledger.stop()
        outer.cancel_scope.cancel()
    if refused is not None:
        raise refused
    assert ledger is not None
    with trio.move_on_at(deadline) as bounded:
        await trio.to_thread.run_sync(snapshotter.final, abandon_on_cancel=True)
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


def run(options: ServeOptions) -> int:
    return trio.run(partial(serve, options))
