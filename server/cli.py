"""The ``wallet`` command line: ``serve``, and the log tools under ``wal``.

Exit codes: 0 success, 1 a check failed or a bug, 2 refused (damaged data or bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ledger import (
    SHARDS_DEFAULT,
    CodecError,
    check_invariants,
    decode_event,
    new_state,
    state_digest,
)
from ledger import apply as apply_event
from wal import LogCorrupt, RepairRefused, ScanResult, apply_repair, plan_repair, scan


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wallet", description="Durable, sharded wallet ledger.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--data", type=Path, default=Path("./data"), help="data directory (default ./data)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument(
        "--shards", type=_positive, default=SHARDS_DEFAULT,
        help=f"number of shard actors (default {SHARDS_DEFAULT}); may change between restarts",
    )
    serve.add_argument(
        "--shutdown-timeout", type=float, default=10.0,
        help="seconds in-flight requests get to finish after SIGTERM (default 10)",
    )
    serve.add_argument(
        "--segment-bytes", type=_positive, default=None,
        help="roll WAL segments at this size (default 64 MiB)",
    )
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")

    wal = commands.add_parser("wal", help="inspect and check the write-ahead log")
    wal_commands = wal.add_subparsers(dest="wal_command", required=True)
    verify = wal_commands.add_parser("verify", help="check every record, replay, check invariants")
    verify.add_argument("--data", type=Path, required=True)
    dump = wal_commands.add_parser("dump", help="print the records, decoded, one per line")
    dump.add_argument("--data", type=Path, required=True)
    dump.add_argument("--from-lsn", type=int, default=1)
    dump.add_argument("--to-lsn", type=int, default=None)
    dump.add_argument("--format", choices=["text", "jsonl"], default="text")
    repair = wal_commands.add_parser(
        "repair", help="cut a torn tail; with --truncate-at-lsn, drop everything from that LSN on"
    )
    repair.add_argument("--data", type=Path, required=True)
    repair.add_argument(
        "--truncate-at-lsn", type=int, default=None,
        help="drop every record from this LSN on (needed when valid records follow damage)",
    )
    repair.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    return parser


def wal_repair(data_dir: Path, *, truncate_at_lsn: int | None, dry_run: bool) -> int:
    directory = data_dir / "wal"
    try:
        plan = plan_repair(directory, truncate_at_lsn=truncate_at_lsn)
    except RepairRefused as error:
        print(f"REFUSED: {error}")
        return 1
    print(plan.describe())
    if plan.empty or dry_run:
        return 0
    aside = apply_repair(directory, plan)
    if aside is not None:
        print(f"moved {len(plan.segments_moved)} segment(s) to {aside}")
    print("repaired; `wallet wal verify` should now pass")
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if hasattr(value, "label"):
        return value.label
    return value


def wal_verify(data_dir: Path) -> int:
    result = ScanResult()
    state = new_state()
    try:
        for frame in scan(data_dir / "wal", result, truncate_torn_tail=False):
            apply_event(state, decode_event(frame.payload), frame.lsn)
    except LogCorrupt as error:
        print(f"FAILED: {error}")
        return 1
    except CodecError as error:
        print(f"FAILED: record LSN {result.next_lsn} does not decode: {error}")
        return 1
    try:
        check_invariants(state.wallets.values(), state.directory)
    except AssertionError as error:
        print(f"FAILED: invariant violated after replay: {error}")
        return 1
    last = result.next_lsn - 1
    print(f"segments: {result.segments}")
    print(f"records:  {result.records}")
    print(f"LSNs:     {result.first_lsn or '-'}..{last}")
    print(f"wallets:  {len(state.wallets)}; assets: {len(state.directory.assets)}")
    print(f"digest:   {state_digest(state.wallets.values(), state.directory)}")
    for message in result.torn:
        print(f"WARNING: {message} (the server cuts it on start)")
    print("OK")
    return 0


def wal_dump(data_dir: Path, *, from_lsn: int, to_lsn: int | None, fmt: str) -> int:
    result = ScanResult()
    try:
        for frame in scan(data_dir / "wal", result, truncate_torn_tail=False):
            if frame.lsn < from_lsn:
                continue
            if to_lsn is not None and frame.lsn > to_lsn:
                break
            event = decode_event(frame.payload)
            if fmt == "jsonl":
                record = {"lsn": frame.lsn, "type": type(event).__name__, **_plain(event)}
                print(json.dumps(record))
            else:
                print(f"{frame.lsn:>10} {type(event).__name__} {_plain(event)}")
    except LogCorrupt as error:
        print(f"wallet wal dump: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        from server._serve import ServeOptions, run

        logging.basicConfig(
            level=arguments.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        try:
            return run(
                ServeOptions(
                    data_dir=arguments.data, host=arguments.host, port=arguments.port,
                    shards=arguments.shards, shutdown_timeout_s=arguments.shutdown_timeout,
                    segment_bytes_max=arguments.segment_bytes,
                )
            )
        except LogCorrupt as error:
            print(f"wallet serve: refusing to start: {error}", file=sys.stderr, flush=True)
            return 2
    if arguments.command == "wal":
        if arguments.wal_command == "verify":
            return wal_verify(arguments.data)
        if arguments.wal_command == "dump":
            return wal_dump(arguments.data, from_lsn=arguments.from_lsn, to_lsn=arguments.to_lsn, fmt=arguments.format)
        if arguments.wal_command == "repair":
            return wal_repair(arguments.data, truncate_at_lsn=arguments.truncate_at_lsn, dry_run=arguments.dry_run)
    raise AssertionError(arguments)


if __name__ == "__main__":
    sys.exit(main())
