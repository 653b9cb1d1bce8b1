"""What the routes are built from (``Deps``, made once per process by ``server._serve``) and how
they call the ledger (``call``: the port's failures as problems). Runs in every HTTP worker,
and in the one process of ``--workers 0``.

``Deps`` is frozen; the parts of it that change are objects with one job each: the port slot
(set once, below), the rate limiter's buckets, the batch gate's counters and the metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ledger import HistoryLagging, Overloaded
from server._errors import ApiError, overloaded
from server._observe import Metrics
from server._port import LedgerPort, Unauthorized, Unavailable
from server.api._limits import BATCHES_IN_FLIGHT_MAX, BatchGate, RateLimiter
from wal import StorageFailed

T = TypeVar("T")

NOT_READY_REASON = "recovering the ledger from its write-ahead log"


class PortSlot:
    """The ledger's port once it can serve. An HTTP worker has its ``RemoteCalls`` from the start;
    the one process of ``--workers 0`` serves HTTP while it recovers (``/health`` 200,
    ``/ready`` 503) and gets its ``LocalPort`` only once recovery has finished. So the slot is
    filled once, after the routes were built; it is never emptied nor replaced."""

    __slots__ = ("_port",)

    def __init__(self, port: LedgerPort | None = None) -> None:
        self._port = port

    @property
    def current(self) -> LedgerPort | None:
        """The port, or None while the ledger recovers."""
        return self._port

    def fill(self, port: LedgerPort) -> None:
        assert self._port is None, "the port is set once"
        self._port = port

    def get(self) -> LedgerPort:
        """The port; 503 not_ready while the ledger recovers."""
        if self._port is None:
            raise ApiError(503, "not_ready", "Not ready", NOT_READY_REASON, headers={"Retry-After": "1"})
        return self._port


@dataclass(frozen=True, slots=True, kw_only=True)
class Deps:
    """Everything a route uses besides its request. ``data_dir`` is where the supervisor's table
    of processes lives (None: there is none to read)."""

    admin_token: bytes
    ledger: PortSlot
    metrics: Metrics
    limiter: RateLimiter | None = None
    limit_admin: bool = False
    batches: BatchGate = field(default_factory=BatchGate)
    data_dir: Path | None = None
    allow_private_webhooks: bool = False  # webhook URLs may reach this host's network (tests)
    # ``GET /v1/admin/cluster`` of a cluster worker with no ``wallet cluster up`` on its host.
    cluster: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # Opens the webhook endpoints' store (blocking) when not ``<data_dir>/webhooks.sqlite3``:
    # cluster mode's bucket (``server._webhook_store.SharedWebhookStore``).
    webhook_store: Callable[[], Any] | None = None

    @classmethod
    def build(cls, *, admin_token: str, port: LedgerPort | None = None, limiter: RateLimiter | None = None,
              limit_admin: bool = False, batches_in_flight_max: int = BATCHES_IN_FLIGHT_MAX,
              data_dir: Path | None = None,
              exposition: Callable[[], Awaitable[bytes]] | None = None,
              allow_private_webhooks: bool = False,
              cluster: Callable[[], Awaitable[dict[str, Any]]] | None = None,
              webhook_store: Callable[[], Any] | None = None) -> Deps:
        """``exposition`` is what ``GET /metrics`` answers, when not this process's registry."""
        slot = PortSlot(port)
        # The metrics read the ledger's statistics() through the slot: a LocalPort's ledger in
        # this process, nothing while recovering or through a RemotePort.
        metrics = Metrics(port_of=lambda: slot.current, exposition=exposition)
        return cls(
            admin_token=admin_token.encode(), ledger=slot, metrics=metrics, limiter=limiter,
            limit_admin=limit_admin, batches=BatchGate(batches_in_flight_max), data_dir=data_dir,
            allow_private_webhooks=allow_private_webhooks, cluster=cluster, webhook_store=webhook_store,
        )

    def port(self) -> LedgerPort:
        return self.ledger.get()


async def call(awaitable: Awaitable[T]) -> T:
    """The port's answer, or its failure as the problem a client sees."""
    try:
        return await awaitable
    except Overloaded as error:
        raise overloaded(str(error)) from None
    except StorageFailed as error:
        raise ApiError(
            503, "storage_unavailable", "Storage unavailable",
            f"the server cannot make changes durable and refuses writes: {error}",
        ) from None
    except Unavailable as error:
        raise ApiError(
            503, "ledger_unavailable", "Ledger unavailable",
            f"{error}; a change sent just now may or may not have been made: retry with the same "
            "Idempotency-Key", headers={"Retry-After": "1"},
        ) from None
    except Unauthorized:
        raise ApiError(401, "unauthorized", "Unauthorized", "unknown or revoked token") from None
    except HistoryLagging as error:
        raise ApiError(503, "history_lagging", "History lagging", str(error), headers={"Retry-After": "1"}) from None
