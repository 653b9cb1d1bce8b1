"""The foundation's load script, kept as a shim: its flags mapped onto ``wallet bench`` (the
harness that superseded it), so old commands keep working.

    python -m bench.transfers --wallets 10000 --connections 64 --duration 15
    python -m bench.transfers --hot            # every transfer on the same 2 wallets

is ``wallet bench --mode http --driver wrk --wallets 10000 --connections 64 --duration 15``
(``--hot``: ``--hot-share 1.0 --hot-wallets 2``). ``--port`` is ignored: the harness picks a
free one. See the README's *Benchmarks* section for everything else.
"""

from __future__ import annotations

import argparse
import sys

from server.cli import main as wallet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument("--hot", action="store_true", help="all transfers between 2 wallets")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--port", type=int, default=None, help="ignored (the harness picks a free port)")
    parser.add_argument("--loop", choices=["trio", "asyncio", "uvloop"], default=None,
                        help="the server's event loop (wallet serve --loop; default: its own, trio)")
    arguments = parser.parse_args(argv)
    flags = [
        "bench", "--mode", "http", "--driver", "wrk", "--wallets", str(arguments.wallets),
        "--connections", str(arguments.connections), "--duration", str(arguments.duration),
        "--processes", str(arguments.threads),
    ]
    if arguments.hot:
        flags += ["--hot-share", "1.0", "--hot-wallets", "2"]
    if arguments.shards:
        flags += ["--shards", str(arguments.shards)]
    if arguments.loop:
        flags += ["--loop", arguments.loop]
    return wallet(flags)


if __name__ == "__main__":
    sys.exit(main())
