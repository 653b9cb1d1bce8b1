"""The flags of ``wallet bench`` (kept free of heavy imports: ``wallet --help`` builds them)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

SHARDS_DEFAULT = 4  # the service's default (ledger.SHARDS_DEFAULT; asserted in the tests)
# `wallet serve --workers`'s default (server._config; asserted in the tests). Without --workers
# the harness passes no flag, so the server's own default applies; this is what the echo
# baseline matches then.
WORKERS_DEFAULT = os.cpu_count() or 1


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("target")
    target.add_argument("--mode", choices=["http", "core"], default="http",
                        help="http: against a server; core: shards + WAL in process, no HTTP (default http)")
    target.add_argument("--url", default=None,
                        help="a running server (default: start `wallet serve` on a temporary data directory)")
    target.add_argument("--token", default=None,
                        help="admin token for --url (default: WALLET_ADMIN_TOKEN, else DATA/admin.token)")
    target.add_argument("--data", type=Path, default=Path("./data"),
                        help="the --url server's data directory, for its admin.token (default ./data)")
    target.add_argument("--server-pid", type=int, default=None,
                        help="pid of the --url server, to report its CPU (read from /proc/<pid>/stat)")
    target.add_argument("--shards", type=_positive_int, default=None,
                        help=f"shards of the server it starts, or of --url for the cross-shard ratio "
                        f"(default {SHARDS_DEFAULT}; with --url, read from /metrics)")
    target.add_argument("--loop", default=None,
                        help="passed to `wallet serve --loop` (trio|asyncio|uvloop) and used by the echo server")
    target.add_argument("--workers", type=_non_negative_int, default=None, metavar="N",
                        help="passed to `wallet serve --workers N` (N HTTP worker processes and one ledger "
                        "process; 0: one process); the echo baseline runs N worker processes too "
                        f"(default: the server's own default, {WORKERS_DEFAULT})")

    target.add_argument("--idempotency-memory-keys", type=_non_negative_int, default=None, metavar="N",
                        help="the ledger keeps N idempotency records in memory and the older ones on disk "
                        "(`wallet serve --idempotency-memory-keys`; core mode: the same in process; "
                        "default: the server's default for http, every record in memory for core; "
                        "0: every record in memory)")

    workload = parser.add_argument_group("workload")
    workload.add_argument("--wallets", type=_positive_int, default=10_000, help="wallets (default 10000)")
    workload.add_argument("--hot-share", type=_fraction, default=0.0,
                          help="share of transfers between the --hot-wallets first wallets (default 0)")
    workload.add_argument("--hot-wallets", type=_positive_int, default=2, help="size of the hot set (default 2)")
    workload.add_argument("--zipf", type=_positive_float, default=None, metavar="S",
                          help="Zipf-distributed wallets with exponent S (default: uniform)")
    workload.add_argument("--cross-shard", type=_fraction, default=None,
                          help="share of transfers whose two wallets are on different shards "
                          "(default: whatever the distribution gives)")
    workload.add_argument("--read-share", type=_fraction, default=0.0,
                          help="share of requests that are GET balance reads (default 0)")
    workload.add_argument("--amount", type=_positive_int, default=1, help="minor units per transfer (default 1)")
    workload.add_argument("--batch", type=_positive_int, default=None, metavar="N",
                          help="N transfers per request (POST /v1/transfers/batch) or per message "
                          "(Ledger.transfer_batch) (default: single transfers)")
    workload.add_argument("--msgpack", action="store_true", help="batches as MessagePack (http mode)")
    workload.add_argument("--no-history", action="store_true",
                          help="core mode: do not feed the history read model (measures the ledger alone)")
    workload.add_argument("--prebuilt", type=int, default=None, metavar="N",
                          help="core mode: build N transfers (commands with their ids and keys) before "
                          "the run, so the load generator's own work is not measured; past N they are "
                          "built during the run and the report says how many (default: enough for the "
                          "run at 150,000/s with --batch, 40,000/s without, at most 3,000,000; 0: build "
                          "every one during the run)")
    workload.add_argument("--seed", type=int, default=1, help="workload seed (default 1)")

    load = parser.add_argument_group("load")
    load.add_argument("--connections", type=_positive_int, default=64,
                      help="concurrent clients: connections (http) or tasks (core) (default 64)")
    load.add_argument("--rate", type=_positive_float, default=None,
                      help="open loop: requests per second on a fixed schedule, latency from the intended "
                      "send time (default: closed loop)")
    load.add_argument("--processes", type=_positive_int, default=1,
                      help="generator processes (python driver) or wrk threads (default 1)")
    load.add_argument("--driver", choices=["wrk", "python"], default=None,
                      help="http load generator (default: wrk for single-request closed loops when installed)")
    load.add_argument("--warmup", type=_seconds, default=2.0, help="seconds of load not measured (default 2)")
    load.add_argument("--duration", type=_positive_float, default=10.0, help="seconds measured (default 10)")
    load.add_argument("--baseline-echo", action="store_true",
                      help="also run the same load against a bare Starlette echo route on Hypercorn "
                      "and report the service's throughput as a ratio of it (with --workers N: N echo "
                      "worker processes on one port)")
    load.add_argument("--baseline-one-process", action="store_true",
                      help="also run the same load against `wallet serve --workers 0` (one process) and "
                      "report the service's throughput as a ratio of it")

    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=None, help="write every parameter and figure as JSON here")
    output.add_argument("--chart", type=Path, default=None,
                        help="PNG of throughput and latency over time (default: --out with .png; "
                        "needs matplotlib: pip install -e '.[plot]')")
