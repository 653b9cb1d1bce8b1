"""The ``wallet`` command line: ``serve``, the log tools under ``wal`` and ``snapshot``, ``seed``
and ``bench`` (the benchmark harness, in ``bench/``).

Exit codes: 0 success; 1 a check failed, damaged data, or a bug; 2 bad arguments (argparse's own
status; also a ``--data`` with no log, an LSN past the end of the log), a directory in use, or
``serve`` refusing to start (see ``server._tools`` and the README's *Command line*).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import bench
from server import _tools as tools
from server._admin_token import find_admin_token, where_to_look
from server._config import (
    add_serve_arguments,
    non_negative,
    non_negative_float,
    probability,
    resolve,
    serve_options,
)
from server._gc import thresholds as gc_thresholds
from server._gc import tune_gc
from server._lock import DataDirLocked
from server._observe import configure_logging
from wal import LogCorrupt


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wallet", description="Durable, sharded wallet ledger.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the HTTP API",
        description="Options also come from WALLET_<OPTION> environment variables and a TOML file, "
        "in that order of precedence after the command line.",
    )
    add_serve_arguments(serve)

    cluster = commands.add_parser("cluster", help="a local cluster on NATS JetStream (ADR 0013)")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    up = cluster_commands.add_parser(
        "up", help="NATS nodes, ledger groups (owner + standby) and HTTP workers on this host, in the foreground")
    add_serve_arguments(up)
    up.add_argument("--groups", type=_positive, default=1,
                    help="ledger groups, each with an owner and a standby (default 1; README: what several groups "
                         "do not do yet)")
    up.add_argument("--nodes", type=_positive, default=3, help="NATS JetStream nodes (default 3)")
    member = cluster_commands.add_parser(
        "member", help="one ledger group member (standby, then owner) in the foreground, for a host of a "
        "cluster whose NATS nodes run elsewhere; restart it when it exits")
    add_serve_arguments(member)
    _servers_argument(member)
    member.add_argument("--member", default="a", help="this member's name, unique in its group (default a)")
    member.add_argument("--group", type=int, default=0, help="the group it is a member of (default 0)")
    _groups_argument(member)
    node = cluster_commands.add_parser(
        "node", help="one NATS JetStream node of the cluster's log, from the pinned nats-server, in the foreground "
        "(it writes the node's configuration, fsync on every write, then becomes the server)")
    node.add_argument("--name", required=True, help="the node's name, unique in the cluster")
    node.add_argument("--data", type=Path, default=Path("nats"), help="the node's directory (default ./nats)")
    node.add_argument("--host", default="127.0.0.1", help="address for clients and monitoring (default 127.0.0.1)")
    node.add_argument("--port", type=_positive, default=4222, help="client port (default 4222)")
    node.add_argument("--http-port", type=_positive, default=8222, help="monitoring port (default 8222)")
    node.add_argument("--cluster-host", default=None, help="address for the routes between nodes (default --host)")
    node.add_argument("--cluster-port", type=_positive, default=6222, help="route port (default 6222)")
    node.add_argument("--routes", required=True,
                      help="every node's route URL, comma-separated (nats-route://host:port; its own may be listed)")
    worker = cluster_commands.add_parser(
        "worker", help="one HTTP worker in the foreground on --host/--port, reaching the groups' owners over NATS")
    add_serve_arguments(worker)
    _servers_argument(worker)
    _groups_argument(worker)

    wal = commands.add_parser("wal", help="inspect and check the write-ahead log")
    wal_commands = wal.add_subparsers(dest="wal_command", required=True)
    verify = wal_commands.add_parser("verify", help="check every record, replay, check invariants")
    _data_argument(verify)
    _progress_argument(verify)
    dump = wal_commands.add_parser("dump", help="print the records, decoded, one per line (JSON)")
    _data_argument(dump)
    dump.add_argument("--from-lsn", type=_positive, default=1, help="first LSN to print (default 1)")
    dump.add_argument("--to-lsn", type=_positive, default=None, help="last LSN to print (default: the end)")
    dump.add_argument("--format", choices=["jsonl", "text"], default="jsonl",
                      help="jsonl: one JSON object per record (default); text: LSN, type, then the fields as JSON")
    repair = wal_commands.add_parser(
        "repair", help="cut a torn tail; with --truncate-at-lsn, drop everything from that LSN on"
    )
    _data_argument(repair)
    repair.add_argument(
        "--truncate-at-lsn", type=_positive, default=None,
        help="drop every record from this LSN on (needed when valid records follow damage)",
    )
    repair.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    replay = wal_commands.add_parser(
        "replay", help="point-in-time recovery: a new data directory as the ledger was at an LSN or time"
    )
    _data_argument(replay)
    until = replay.add_mutually_exclusive_group(required=True)
    until.add_argument("--until-lsn", type=_positive, help="the last LSN to keep")
    until.add_argument("--until-time", help="keep every record stamped at or before this RFC 3339 time, "
                       "e.g. 2026-11-22T10:00:00Z")
    replay.add_argument("--out", type=Path, required=True, help="the new data directory (must be empty)")
    _progress_argument(replay)

    seed = commands.add_parser("seed", help="demo data on a running server (admin token needed)")
    seed.add_argument("--url", default="http://127.0.0.1:8080", help="the server (default http://127.0.0.1:8080)")
    seed.add_argument("--token", default=None, help="admin token (default: WALLET_ADMIN_TOKEN, else DATA/admin.token)")
    seed.add_argument("--data", type=Path, default=Path("./data"),
                      help="the server's data directory, for its admin.token (default ./data)")

    demo = commands.add_parser(
        "demo", help="serve with demo data (make demo): seed once ready, stop cleanly on Ctrl-C or SIGTERM",
        description="Checks that the port and the data directory are free, starts `wallet serve` with its "
        "logs in a file, runs `wallet seed` once it is ready, and waits; SIGTERM or SIGINT stops the "
        "server gracefully and exits 0.",
    )
    demo.add_argument("--data", type=Path, default=Path("./data"), help="data directory (default ./data)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    demo.add_argument("--log", type=Path, default=None,
                      help="the server's log file (default DATA/demo-server.log)")

    bench_parser = commands.add_parser(
        "bench", help="the benchmark harness",
        description="Load the service (HTTP, or the ledger in process) with a chosen workload and report "
        "throughput, latency percentiles, errors, records per fsync, CPU, and whether money was conserved. "
        "See the README's Benchmarks section.",
    )
    bench.add_arguments(bench_parser)
    bank_sim = commands.add_parser(
        "bank-sim", help="a simulated bank gateway over HTTP (idempotent POST /payouts, GET /payouts)",
        description="Honours Idempotency-Key (same key and body: the original answer, paid once; "
        "different body: 422); refuses destinations whose account starts with 'refuse' (422); "
        "fails with 503 at --failure-rate and on the first --fail-first calls per key; "
        "with --drop-response-rate, pays and then closes the connection before the answer is complete.",
    )
    bank_sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    bank_sim.add_argument("--port", type=int, default=8081, help="port to listen on (default 8081)")
    bank_sim.add_argument("--latency-ms", type=non_negative_float, default=0.0, help="delay before each answer")
    bank_sim.add_argument("--failure-rate", type=probability, default=0.0, help="probability of a 503 per call")
    bank_sim.add_argument("--fail-first", type=non_negative, default=0,
                          help="the first N calls for each idempotency key get 503")
    bank_sim.add_argument("--drop-response-rate", type=probability, default=0.0,
                          help="probability that a call which paid loses its answer (connection closed)")
    bank_sim.add_argument("--seed", type=int, default=None, help="seed for failures and drops")
    bank_sim.add_argument("--log-level", default="INFO", help="logging level (default INFO)")

    webhook_sim = commands.add_parser(
        "webhook-sim", help="a simulated webhook receiver over HTTP (verifies signatures, records events)",
        description="Receives webhooks on any path (POST), verifies their Standard Webhooks signature "
        "against the known secrets, records them (GET /received; --record FILE appends JSON lines) and "
        "answers 200, or 503 while down (--down-until), --status, 500 for the first --fail-first calls "
        "per webhook-id or at --fail-rate, after --delay-ms. POST /control changes any of these at run "
        'time, e.g. {"secret": "whsec_...", "status": null}.',
    )
    webhook_sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    webhook_sim.add_argument("--port", type=int, default=8082, help="port to listen on (default 8082)")
    webhook_sim.add_argument("--secret", action="append", default=[],
                             help="a webhook secret (whsec_...) to verify with; repeatable")
    webhook_sim.add_argument("--fail-rate", type=probability, default=0.0, help="probability of a 500 per call")
    webhook_sim.add_argument("--fail-first", type=non_negative, default=0,
                             help="the first N calls for each webhook-id get 500")
    webhook_sim.add_argument("--status", type=int, default=None, help="answer every call with this status")
    webhook_sim.add_argument("--delay-ms", type=non_negative_float, default=0.0, help="delay before each answer")
    webhook_sim.add_argument("--down-until", default=None,
                             help="answer 503 until this RFC 3339 time (e.g. 2026-11-22T10:00:00Z)")
    webhook_sim.add_argument("--record", type=Path, default=None, help="append what is received to this JSON lines file")
    webhook_sim.add_argument("--seed", type=int, default=None, help="seed for --fail-rate")
    webhook_sim.add_argument("--log-level", default="INFO", help="logging level (default INFO)")

    snapshot = commands.add_parser("snapshot", help="create, list and verify snapshots")
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", required=True)
    create = snapshot_commands.add_parser("create", help="snapshot the data directory (server stopped)")
    _data_argument(create)
    create.add_argument("--until-lsn", type=_positive, default=None,
                        help="the LSN of the snapshot (default: the end of the log)")
    create.add_argument("--server-child", action="store_true", help=argparse.SUPPRESS)
    _progress_argument(create)
    for name, text in (("list", "list snapshots: LSN, size, records, file, status"),
                       ("verify", "check every snapshot fully")):
        sub = snapshot_commands.add_parser(name, help=text)
        _data_argument(sub)
    return parser


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True,
                        help="the data directory (a missing one, or one without a log, is exit 2)")


def _progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar with an ETA on stderr (default: only when stderr is a terminal)")


def _parse_time(raw: str, command: str = "wal replay", name: str = "--until-time") -> int:
    """The same RFC 3339 rules as the API's ``as_of``/``since``/``until``."""
    from server._errors import ApiError
    from server.api import parse_timestamp

    try:
        return parse_timestamp(name, raw)
    except ApiError as error:
        raise SystemExit(f"wallet {command}: {error.detail}") from None


def _groups_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", type=_positive, default=1,
                        help="the cluster's ledger groups, the same on every host (default 1)")


def _servers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", required=True,
                        help="the NATS URLs of the cluster's JetStream nodes, comma-separated")


def _cluster_alone(arguments: argparse.Namespace) -> int:
    """``wallet cluster member`` or ``wallet cluster worker`` (``server._cluster``)."""
    import dataclasses

    from server._cluster import run_member_alone, run_worker_alone

    values = resolve(arguments)
    configure_logging(str(values["log_level"]))
    options = dataclasses.replace(serve_options(values), cluster=True, groups=arguments.groups)
    servers = [url.strip() for url in arguments.servers.split(",") if url.strip()]
    if not servers:
        print(f"wallet cluster {arguments.cluster_command}: --servers names no NATS URL", file=sys.stderr, flush=True)
        return 2
    try:
        if arguments.cluster_command == "member":
            if not 0 <= arguments.group < arguments.groups:
                print(f"wallet cluster member: --group {arguments.group} is not one of --groups {arguments.groups}",
                      file=sys.stderr, flush=True)
                return 2
            return run_member_alone(options, member=arguments.member, servers=servers, group=arguments.group)
        return run_worker_alone(options, servers=servers)
    except OSError as error:  # the port could not be bound, the data directory is not ours
        print(f"wallet cluster {arguments.cluster_command}: {error}", file=sys.stderr, flush=True)
        return 2


def _cluster_node(arguments: argparse.Namespace) -> int:
    """``wallet cluster node``: execs the pinned nats-server; returns only when it cannot."""
    from server._natsnodes import ClusterError, run_node_alone

    routes = [url.strip() for url in arguments.routes.split(",") if url.strip()]
    try:
        run_node_alone(name=arguments.name, data_dir=arguments.data, host=arguments.host, client_port=arguments.port,
                       monitor_port=arguments.http_port, route_host=arguments.cluster_host or arguments.host,
                       route_port=arguments.cluster_port, routes=routes)
    except (ClusterError, OSError) as error:
        print(f"wallet cluster node: {error}", file=sys.stderr, flush=True)
    return 2


def _cluster_up(arguments: argparse.Namespace) -> int:
    import dataclasses

    from server._cluster import run as run_cluster

    values = resolve(arguments)
    configure_logging(str(values["log_level"]))
    options = dataclasses.replace(serve_options(values), cluster=True)
    workers = values["workers"] or 2
    try:
        return run_cluster(options, groups=arguments.groups, nodes=arguments.nodes, workers=workers)
    except OSError as error:  # the port could not be bound, a NATS node did not start
        print(f"wallet cluster up: {error}", file=sys.stderr, flush=True)
        return 2


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        gc_thresholds()  # every process and tool reads it: a wrong value stops here, once
    except ValueError as error:
        print(f"wallet {arguments.command}: {error}", file=sys.stderr)
        return 2
    if arguments.command == "serve":
        from server._serve import run

        values = resolve(arguments)
        configure_logging(str(values["log_level"]))
        if (values["certfile"] is None) != (values["keyfile"] is None):
            print("wallet serve: --certfile and --keyfile go together", file=sys.stderr)
            return 2
        try:
            options = serve_options(values)
            if values["workers"] > 0:
                from server._supervisor import run as supervise

                try:
                    return supervise(options, workers=values["workers"])
                except OSError as error:  # the port could not be bound
                    print(f"wallet serve: {error}", file=sys.stderr, flush=True)
                    return 2
            return run(options)
        except LogCorrupt as error:
            print(f"wallet serve: refusing to start: {error}", file=sys.stderr, flush=True)
            return 2
        except DataDirLocked as error:
            print(f"wallet serve: {error}", file=sys.stderr, flush=True)
            return 2
    if arguments.command == "cluster":
        if arguments.cluster_command in ("member", "worker"):
            return _cluster_alone(arguments)
        if arguments.cluster_command == "node":
            return _cluster_node(arguments)
        return _cluster_up(arguments)
    if arguments.command in ("wal", "snapshot"):
        tune_gc()  # replay allocates as the ledger does: 6.0 -> 4.2 s to verify 520,001 transfers
    if arguments.command == "wal":
        if arguments.wal_command == "verify":
            return tools.wal_verify(arguments.data, progress=arguments.progress)
        if arguments.wal_command == "dump":
            return tools.wal_dump(arguments.data, from_lsn=arguments.from_lsn, to_lsn=arguments.to_lsn, fmt=arguments.format)
        if arguments.wal_command == "repair":
            return tools.wal_repair(arguments.data, truncate_at_lsn=arguments.truncate_at_lsn, dry_run=arguments.dry_run)
        if arguments.wal_command == "replay":
            until_us = None
            if arguments.until_time is not None:
                until_us = _parse_time(arguments.until_time)
            return tools.wal_replay(arguments.data, until_lsn=arguments.until_lsn, until_us=until_us, out=arguments.out,
                                    progress=arguments.progress)
    if arguments.command == "seed":
        from server._seed import seed

        token = find_admin_token(explicit=arguments.token, data_dir=arguments.data)
        if token is None:
            print(f"wallet seed: {where_to_look(arguments.data)}", file=sys.stderr)
            return 2
        return seed(arguments.url, token)
    if arguments.command == "demo":
        from server._seed import demo as run_demo

        return run_demo(data_dir=arguments.data, host=arguments.host, port=arguments.port, log_path=arguments.log)
    if arguments.command == "bench":
        configure_logging("WARNING")
        return bench.run(arguments)
    if arguments.command == "bank-sim":
        import random

        import trio

        from server._banksim import BankSimulator, serve_bank_sim

        configure_logging(arguments.log_level)
        simulator = BankSimulator(
            latency_ms=arguments.latency_ms, failure_rate=arguments.failure_rate, fail_first=arguments.fail_first,
            drop_response_rate=arguments.drop_response_rate, rng=random.Random(arguments.seed),
        )
        trio.run(partial(serve_bank_sim, simulator, host=arguments.host, port=arguments.port))
        return 0
    if arguments.command == "webhook-sim":
        import random

        from server._webhooksim import WebhookSimulator, run_webhook_sim

        configure_logging(arguments.log_level)
        down_until = 0.0
        if arguments.down_until is not None:
            try:
                down_until = _parse_time(arguments.down_until, "webhook-sim", "--down-until") / 1_000_000
            except SystemExit as error:
                print(error, file=sys.stderr)
                return 2
        receiver = WebhookSimulator(
            secrets=list(arguments.secret), status=arguments.status, delay_ms=arguments.delay_ms,
            fail_first=arguments.fail_first, fail_rate=arguments.fail_rate, down_until=down_until,
            rng=random.Random(arguments.seed), record=arguments.record,
        )
        run_webhook_sim(receiver, host=arguments.host, port=arguments.port)
        return 0
    if arguments.command == "snapshot":
        if arguments.snapshot_command == "create":
            return tools.snapshot_create(arguments.data, until_lsn=arguments.until_lsn, server_child=arguments.server_child,
                                         progress=arguments.progress)
        if arguments.snapshot_command == "list":
            return tools.snapshot_list(arguments.data)
        if arguments.snapshot_command == "verify":
            return tools.snapshot_verify(arguments.data)
    raise AssertionError(arguments)


if __name__ == "__main__":
    sys.exit(main())
