"""The composition root: the HTTP front, validation, problem+json errors, the ledger port, the
server's lifecycle and the ``wallet`` command line.

Which code runs in which process (``docs/ARCHITECTURE.md``, Processes; ADR 0006):

- supervisor (``wallet serve --workers N``): ``_supervisor`` only; no event loop.
- every child: ``_child`` (its entry), ``_loop_lag``, ``_scrape``'s shared metric files.
- ledger process (and the one process of ``--workers 0``): ``_serve.serve``, ``_port.LocalPort``
  and ``_port.serve_port``, ``_snapshotter``, ``_payouts`` with ``_payout_ledger`` and
  ``_bank``, ``_lock``; the ledger itself (``ledger/``, ``wal/``, ``snapshots/``).
- projector process: ``_serve.serve_projector`` -> ``ledger/_projector.py``.
- cluster member (``wallet cluster up``): ``_member`` (standby, then the owner: the ledger
  process above, whose workers reach it over NATS through ``_natsport.serve_nats``).
- HTTP workers (and the one process of ``--workers 0``): ``api/`` (routes, auth, rendering)
  over ``_port.RemotePort`` (``_natsport.NatsPort`` in a cluster, ``_port.LocalPort`` in one
  process), with ``_validate``,
  ``_errors``, ``_openapi``, ``_observe`` and ``_edge``; ``_serve.serve_worker`` starts them.
- command line and tools, in the operator's shell: ``cli``, ``_config``, ``_tools``, ``_seed``,
  ``_banksim``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server._errors import REASONS, ApiError
    from server._serve import ServeOptions, serve
    from server.api import Deps, build_app

__all__ = ["REASONS", "ApiError", "Deps", "ServeOptions", "build_app", "serve"]

# Imported when first asked for, not with the package: every child process imports
# ``server._child`` (so this package), and the projector or the webhook dispatcher has no use
# for the HTTP front. A process's start is mostly its imports; a server starts six.
_WHERE = {"REASONS": "server._errors", "ApiError": "server._errors", "ServeOptions": "server._serve",
          "serve": "server._serve", "Deps": "server.api", "build_app": "server.api"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'server' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
