"""The HTTP front: Starlette routes that authenticate, validate, turn requests into commands,
hand them to the ledger through its port and render what it decided.

Runs in every HTTP worker (``--workers N``: ``server._serve.serve_worker``, over a
``RemotePort``; in a cluster over a ``NatsPort``), and in the one process of ``--workers 0`` (``server._serve.serve``, over a
``LocalPort``). It never touches a balance and holds no money state: the port is its only way
to the ledger.

``_app`` (the route table, error handlers, middleware) is built from one ``Deps`` (``_deps``);
one module per resource holds its routes (``_assets``, ``_tokens``, ``_wallets``,
``_transfers``, ``_batches``, ``_withdrawals``, ``_transactions``, ``_events``,
``_operations``), over shared concerns: who is calling (``_auth``), admission limits
(``_limits``), reading paths and queries (``_requests``), cursors (``_cursors``) and the JSON
representations (``_render``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.api._app import build_app, routes
    from server.api._deps import Deps, PortSlot
    from server.api._limits import BATCHES_IN_FLIGHT_MAX, RateLimiter
    from server.api._render import timestamp
    from server.api._requests import parse_timestamp

__all__ = ["BATCHES_IN_FLIGHT_MAX", "Deps", "PortSlot", "RateLimiter", "build_app", "parse_timestamp", "routes",
           "timestamp"]

# Imported when first asked for (as ``server``'s own names): the webhook dispatcher renders
# events with ``_render`` and needs none of the routes.
_WHERE = {"build_app": "_app", "routes": "_app", "Deps": "_deps", "PortSlot": "_deps",
          "BATCHES_IN_FLIGHT_MAX": "_limits", "RateLimiter": "_limits", "timestamp": "_render",
          "parse_timestamp": "_requests"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'server.api' has no attribute {name!r}")
    return getattr(importlib.import_module(f"server.api.{_WHERE[name]}"), name)
