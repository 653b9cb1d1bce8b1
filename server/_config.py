"""``wallet serve`` options from three places, in this order of precedence: the command line, the
environment (``WALLET_<OPTION>``, e.g. ``WALLET_PORT``), a TOML file (``--config FILE`` or
``WALLET_CONFIG``; keys are the option names with underscores, e.g. ``snapshot_every = 500000``),
then the defaults. One table (``SERVE_OPTIONS``) drives the parser, the lookup and the README."""

from __future__ import annotations

import argparse
import math
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger import MAILBOX_CAPACITY, MEMORY_KEYS_DEFAULT, SHARDS_DEFAULT, SNAPSHOT_EVERY_DEFAULT
from server._limits import BODY_TIMEOUT_S, CONNECTIONS_MAX, CONNECTIONS_PER_ADDRESS_MAX
from server.api._limits import BATCHES_IN_FLIGHT_MAX


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number")
    return value


def non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def probability(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def http_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"bad port: {error}") from None
    return text
# The event loops ``wallet serve --loop`` offers; the server runs the same code on each
# (``server._serve.backend_of``). trio stays the default.
LOOPS = ("trio", "asyncio", "uvloop")
LOOP_DEFAULT = "trio"


def event_loop(text: str) -> str:
    lowered = str(text).strip().lower()
    if lowered not in LOOPS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOOPS)}, not {text!r}")
    return lowered


def flag(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError("must be true or false")


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    name: str  # the flag without dashes, underscores for dashes
    parse: Callable[[str], Any]
    default: Any
    help: str


SERVE_OPTIONS = [
    Option(name="data", parse=Path, default=Path("./data"), help="data directory"),
    Option(name="host", parse=str, default="127.0.0.1", help="address to listen on"),
    Option(name="port", parse=int, default=8080, help="port to listen on"),
    Option(name="shards", parse=positive, default=SHARDS_DEFAULT, help="shard actors; may change between restarts"),
    Option(name="snapshot_every", parse=positive, default=SNAPSHOT_EVERY_DEFAULT,
           help="durable records between periodic snapshots (a batch record counts one per transfer)"),
    Option(name="archive", parse=flag, default=False,
           help="move compacted WAL segments to <data>/archive/ instead of deleting them"),
    Option(name="shutdown_timeout", parse=float, default=10.0,
           help="seconds the graceful shutdown may take (in-flight requests, then the final snapshot)"),
    Option(name="segment_bytes", parse=positive, default=64 * 1024 * 1024, help="WAL segment size before rolling"),
    Option(name="mailbox_capacity", parse=positive, default=MAILBOX_CAPACITY,
           help="commands waiting per shard before 503 overloaded"),
    Option(name="idempotency_memory_keys", parse=non_negative, default=MEMORY_KEYS_DEFAULT,
           help="idempotency records kept in memory (about 300 bytes each); older ones move to "
                "<data>/idempotency.sqlite3 and are still honoured for 24 hours (0: keep all in memory)"),
    Option(name="read_timeout", parse=positive, default=30,
           help="seconds a connection may stay silent (mid-request or idle) before it is closed"),
    Option(name="max_in_flight", parse=positive, default=4096,
           help="HTTP requests handled at once; past it, 503 overloaded at once"),
    Option(name="max_connections", parse=positive, default=CONNECTIONS_MAX,
           help="open connections at once, in total; past it, a new connection gets 503 and is closed "
                "(keep it under --max-in-flight and the open-file limit)"),
    Option(name="max_connections_per_ip", parse=positive, default=CONNECTIONS_PER_ADDRESS_MAX,
           help="open connections at once from one client address; past it, 503 and closed"),
    Option(name="body_timeout", parse=positive_float, default=BODY_TIMEOUT_S,
           help="seconds a request body may take to arrive whole (from the end of its headers); "
                "past it, 408 request_timeout and the connection is closed"),
    Option(name="max_batches_in_flight", parse=positive, default=BATCHES_IN_FLIGHT_MAX,
           help="POST /v1/transfers/batch requests handled at once (each may hold a 16 MiB body); "
                "past it, 503 overloaded at once"),
    Option(name="rate_limit", parse=float, default=0.0,
           help="requests per second allowed per user token (token bucket; 0: no limit)"),
    Option(name="rate_burst", parse=positive, default=100, help="bucket size: requests a token may send at once"),
    Option(name="rate_limit_admin", parse=flag, default=False, help="apply the rate limit to the admin token too"),
    Option(name="certfile", parse=Path, default=None, help="TLS certificate (PEM); serves HTTPS with --keyfile"),
    Option(name="keyfile", parse=Path, default=None, help="TLS private key (PEM)"),
    Option(name="log_level", parse=str, default="INFO", help="logging level"),
    Option(name="payout_workers", parse=positive, default=16,
           help="payout workers: bank calls in flight at once, at most"),
    Option(name="payout_max_attempts", parse=positive, default=8,
           help="bank attempts per withdrawal before it is dead (hold kept, for an operator)"),
    Option(name="bank_url", parse=http_url, default=None,
           help="the bank gateway's payout endpoint (POST); none: the built-in simulated bank"),
    Option(name="bank_latency_ms", parse=non_negative_float, default=50.0,
           help="simulated bank only: milliseconds per call"),
    Option(name="bank_failure_rate", parse=probability, default=0.0,
           help="simulated bank only: probability that a call fails with 503"),
    Option(name="bank_timeout_s", parse=positive_float, default=10.0,
           help="seconds a bank call may take before it counts as a transient failure"),
    Option(name="allow_private_webhooks", parse=flag, default=False,
           help="let webhook URLs reach loopback, private and link-local addresses (tests, demos, "
                "a receiver on this host's network); off: such URLs are refused when created and when called"),
    Option(name="webhook_timeout", parse=positive_float, default=10.0,
           help="seconds a webhook delivery may take before it counts as failed (and is retried)"),
    Option(name="webhook_disable_after", parse=non_negative_float, default=24 * 3600.0,
           help="seconds of failed deliveries after which a webhook endpoint is disabled (its events wait "
                "for POST /v1/webhooks/{id}/enable)"),
    Option(name="webhook_concurrency", parse=positive, default=100,
           help="webhook deliveries in flight at once, over all endpoints"),
    Option(name="webhook_backoff_base", parse=positive_float, default=1.0,
           help="seconds: the first retry of a failed webhook waits up to this long, doubling per attempt "
                "(full jitter) up to --webhook-backoff-max; lower it for tests and demos"),
    Option(name="webhook_backoff_max", parse=positive_float, default=600.0,
           help="seconds: the longest wait between two attempts of one webhook delivery"),
    Option(name="workers", parse=non_negative, default=os.cpu_count() or 1,
           help="HTTP worker processes in front of one ledger process (default: the number of "
                "CPUs; 0: one process serves HTTP and the ledger)"),
    Option(name="loop", parse=event_loop, default=LOOP_DEFAULT,
           help="event loop: trio, asyncio or uvloop (the same code on each; see the README's figures)"),
]


# Where an option's value goes in ``server._serve.ServeOptions`` when the names differ (the
# fields carry their unit). Every other option has a field of its own name.
FIELD_OF = {
    "data": "data_dir",
    "shutdown_timeout": "shutdown_timeout_s",
    "segment_bytes": "segment_bytes_max",
    "read_timeout": "read_timeout_s",
    "body_timeout": "body_timeout_s",
    "webhook_timeout": "webhook_timeout_s",
    "webhook_disable_after": "webhook_disable_after_s",
    "webhook_backoff_base": "webhook_backoff_base_s",
    "webhook_backoff_max": "webhook_backoff_max_s",
}


def serve_options(values: Mapping[str, Any]) -> Any:
    """The ``ServeOptions`` of resolved option values (``resolve``): the table above is the one
    place an option is defined."""
    from server._serve import ServeOptions

    return ServeOptions(**{FIELD_OF.get(name, name): value for name, value in values.items()})


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="TOML file of options (also WALLET_CONFIG)")
    for option in SERVE_OPTIONS:
        flag_name = "--" + option.name.replace("_", "-")
        env = "WALLET_" + option.name.upper()
        default = option.default if option.default is not None else "none"
        help_text = f"{option.help} (env {env}; default {default})"
        if option.parse is flag:
            # On/off: --archive / --no-archive, never a value (the environment and the file
            # still take true/false, through ``flag``). None means "not given" to ``resolve``.
            default = "on" if option.default else "off"
            parser.add_argument(flag_name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{option.help} (env {env}; default {default})")
            continue
        parser.add_argument(flag_name, type=option.parse, default=None, help=help_text)


def resolve(arguments: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Each option from the command line, else the environment, else the TOML file, else the
    default. Raises SystemExit with a clear message on a bad value."""
    config_path = arguments.config or (Path(environ["WALLET_CONFIG"]) if environ.get("WALLET_CONFIG") else None)
    file_values: dict[str, Any] = {}
    if config_path is not None:
        try:
            file_values = tomllib.loads(config_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise SystemExit(f"wallet serve: cannot read {config_path}: {error}") from None
        unknown = set(file_values) - {option.name for option in SERVE_OPTIONS}
        if unknown:
            raise SystemExit(f"wallet serve: unknown option(s) in {config_path}: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for option in SERVE_OPTIONS:
        value = getattr(arguments, option.name)
        source = "command line"
        if value is None and ("WALLET_" + option.name.upper()) in environ:
            source = "WALLET_" + option.name.upper()
            value = _parse(option, environ[source], source)
        elif value is None and option.name in file_values:
            source = str(config_path)
            value = _parse(option, str(file_values[option.name]), source)
        if value is None:
            value = option.default
        values[option.name] = value
    return values


def _parse(option: Option, raw: str, source: str) -> Any:
    try:
        return option.parse(raw)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise SystemExit(f"wallet serve: {option.name} from {source}: {error}") from None
