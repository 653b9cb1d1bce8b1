"""The entry point of the supervisor's children: ``python -m server._child ledger|projector|http
OPTIONS``.

Each child first asks the kernel to kill it when the supervisor dies (``PR_SET_PDEATHSIG``), then
checks the supervisor is still its parent (it may have died before the request took effect),
then runs its role:

- ``ledger``: ``server._serve.serve_ledger``: recovery, the actors, the WAL, snapshots, payouts,
  and the ledger port on the Unix socket.
- ``projector``: ``server._serve.serve_projector``: the history projector, tailing the log into
  SQLite and syncing with the ledger process over the same Unix socket.
- ``webhooks``: ``server._serve.serve_webhooks``: the webhook dispatcher, reading the event feed
  over the same Unix socket and keeping its cursors in ``<data>/webhooks.sqlite3``.
- ``http``: ``server._serve.serve_worker``: Hypercorn on the inherited listening socket, the
  routes over a ``RemotePort`` (``--socket``), or in a cluster over a ``NatsPort`` to the
  owner of ``--group`` (``--servers``: the NATS URLs).
- ``member``: ``server._member.run_member``: a cluster group's standby, then its owner
  (``wallet cluster up``).
- ``standby-history``: ``server._serve.serve_standby_history``: a standby member's history
  projector, following the standby's copy of the log (``--socket`` names the file where the
  standby writes how far it has copied).

``PROMETHEUS_MULTIPROC_DIR`` comes in the environment the supervisor starts the child with, not
from here: prometheus-client picks where its values live when first imported, which is already
done by the time ``main`` runs (``server/__init__.py`` imports it).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent(supervisor_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop path still applies
        pass
    if os.getppid() != supervisor_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server._child")
    parser.add_argument("role", choices=["ledger", "projector", "standby-history", "webhooks", "http", "member"])
    parser.add_argument("options")
    parser.add_argument("--supervisor", type=int, required=True)
    parser.add_argument("--socket", default="", help="the ledger process's Unix socket (not in a cluster)")
    parser.add_argument("--fd", type=int, default=None)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--group", type=int, default=0)
    parser.add_argument("--member", default="a")
    parser.add_argument("--servers", default="")
    parser.add_argument("--status-dir", default="")
    arguments = parser.parse_args(argv)
    _die_with_parent(arguments.supervisor)

    from server._observe import configure_logging
    from server._serve import (
        serve_ledger_process,
        serve_projector_process,
        serve_standby_history_process,
        serve_webhooks_process,
        serve_worker_process,
    )
    from server._supervisor import options_from_json

    options = options_from_json(arguments.options)
    configure_logging(options.log_level if hasattr(options, "log_level") else "INFO")
    if arguments.role == "ledger":
        return serve_ledger_process(options, arguments.socket)
    if arguments.role == "projector":
        return serve_projector_process(options, arguments.socket)
    if arguments.role == "standby-history":
        return serve_standby_history_process(options, arguments.socket)
    if arguments.role == "webhooks":
        return serve_webhooks_process(options, arguments.socket)
    if arguments.role == "member":
        from pathlib import Path

        from server._member import run_member

        return run_member(options, group=arguments.group, slot=arguments.member,
                          servers=arguments.servers.split(","), status_dir=Path(arguments.status_dir))
    assert arguments.fd is not None
    servers = arguments.servers.split(",") if arguments.servers else None
    return serve_worker_process(options, arguments.socket, fd=arguments.fd, slot=arguments.slot, servers=servers,
                                group=arguments.group)


if __name__ == "__main__":
    sys.exit(main())
