"""What a group's owner finishes of the transfers between groups that no worker finished (ADR
0013, *a two-phase commit decided by the sender's group*): a worker that died, or a group that
had no owner for a moment, leaves either a committed transfer the receiver has not credited
(the sender's group still owes it) or a reservation whose commit may never come. Both are in the
logs, so every owner, a new one after a takeover included, finds them in its state:

- as a sender's group, every transfer it has owed for ``owed_after_s``: it asks the receiver's
  group to credit it (a repeated credit changes nothing), then appends ``TransitSettled``;
- as a receiver's group, every reservation older than ``reserved_after_s`` (by this ledger's
  clock: only when to ask, never what to do): it asks the sender's group to resolve it, which
  answers committed or aborts it for good (presumed abort), and credits or releases; a transfer
  the sender's group holds in a prepared batch gets no answer yet (asked again later);
- as a sending group of an atomic batch whose senders are in several groups, every part it
  has held for ``reserved_after_s``: it asks the batch's coordinating group for its decision
  (which decides it not committed if it has no decision yet: presumed abort), and posts or
  releases the part.

A group that cannot be reached is asked again at the next step. Nothing here is on a client's
path: the worker that drove the transfer finished it in the usual case.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import anyio

from ledger import Ledger
from server._groups import group_of
from server._port import RemoteCalls, Unavailable

log = logging.getLogger("crossing")

EVERY_S = 0.5
OWED_AFTER_S = 1.0
RESERVED_AFTER_S = 5.0


class Crossing:
    def __init__(self, ledger: Ledger, ports: Mapping[int, RemoteCalls], *, every_s: float = EVERY_S,
                 owed_after_s: float = OWED_AFTER_S, reserved_after_s: float = RESERVED_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._ports = ports
        self._groups = ledger.directory.groups
        self._every_s = every_s
        self._owed_after_s = owed_after_s
        self._reserved_after_us = int(reserved_after_s * 1_000_000)
        self._clock = clock
        self._owed_since: dict[str, tuple[float, int]] = {}  # id -> first seen: (time, log's last LSN)
        self.credited = 0  # owed transfers this owner had credited
        self.resolved = 0  # reservations this owner settled after asking their sender's group
        self.ended = 0  # parts of batches this owner posted or released after asking the coordinator

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._every_s)
            try:
                await self.step()
            except Exception:  # a bug must not stop the loop that finishes money movements
                log.exception("crossing: a step failed")

    async def step(self) -> None:
        await self._credit_owed()
        await self._resolve_reserved()
        await self._end_prepared()

    def due_owed(self) -> list[tuple[str, str]]:
        """The committed transfers to other groups (id, receiving wallet) this owner should ask
        their receivers' groups to credit now: owed for ``owed_after_s`` (the worker that drove
        one usually credits it well before), and durable. A transfer is owed from the moment
        its shard decided it, before its record is durable; a credit asked for then, with the
        log stalled (a stream leader being elected) and the owner dying before the record was
        stored, would be money the sender's group never debited. The record's LSN is at most
        the log's last LSN when the transfer is first seen here, so it waits for that."""
        now = self._clock()
        wal = self._ledger.wal
        owed = self._ledger.owed()
        for transaction_id in list(self._owed_since):
            if transaction_id not in owed:
                del self._owed_since[transaction_id]
        due = []
        for transaction_id, wallet_id in owed.items():
            since, lsn = self._owed_since.setdefault(transaction_id, (now, wal.last_lsn))
            if now - since >= self._owed_after_s and wal.durable_lsn >= lsn:
                due.append((transaction_id, wallet_id))
        return due

    def due_reservations(self) -> dict[int, list[tuple[str, str]]]:
        """The reservations (id, wallet) held for ``reserved_after_s``, by the group that
        decides them: this owner asks that group to resolve them."""
        before_us = self._ledger.clock() - self._reserved_after_us
        by_sender: dict[int, list[tuple[str, str]]] = {}
        for reservation in self._ledger.all_reservations():
            if reservation.at_us <= before_us:
                by_sender.setdefault(reservation.from_group, []).append(
                    (reservation.transaction_id, reservation.wallet_id))
        return by_sender

    def due_prepared(self) -> list[tuple[str, int]]:
        """The parts of batches of several sending groups held for ``reserved_after_s`` (batch,
        coordinating group): this owner asks the coordinator for the decision and ends them."""
        before_us = self._ledger.clock() - self._reserved_after_us
        return [(batch, coordinator) for batch, coordinator, at_us in self._ledger.prepared_batches()
                if at_us <= before_us]

    async def _end_prepared(self) -> None:
        for batch, coordinator in self.due_prepared():
            try:
                if coordinator == self._ledger.directory.group:
                    committed = await self._ledger.decide_batch(batch, False)
                else:
                    committed = await self._ports[coordinator].decide_batch(batch, False)
            except Unavailable as error:
                log.info("crossing: batch %s: its coordinator (group %d) cannot answer now (%s)", batch, coordinator,
                         error)
                continue
            await self._ledger.settle_batch(batch, committed)
            self.ended += 1
            log.info("crossing: batch %s %s (asked group %d)", batch, "posted" if committed else "released",
                     coordinator)

    async def _credit_owed(self) -> None:
        done: list[str] = []
        for transaction_id, wallet_id in self.due_owed():
            port = self._ports[group_of(wallet_id, self._groups)]
            try:
                # True: credited now; False: it was already (or, never, released: a receiver
                # releases only what this group did not commit).
                await port.settle_reservation(transaction_id, wallet_id, True)
            except Unavailable as error:
                log.info("crossing: transfer %s: its receiver's group cannot credit it now (%s)", transaction_id,
                         error)
                continue
            done.append(transaction_id)
        if done:
            await self._ledger.settle_transit(done)
            self.credited += len(done)
            log.info("crossing: %d transfers to other groups credited there and settled", len(done))

    async def _resolve_reserved(self) -> None:
        for group, reservations in self.due_reservations().items():
            try:
                answers = await self._ports[group].resolve_transfers([tx for tx, _ in reservations])
            except Unavailable as error:
                log.info("crossing: group %d cannot resolve %d reservations now (%s)", group, len(reservations),
                         error)
                continue
            for transaction_id, wallet_id in reservations:
                committed = answers.get(transaction_id)
                if committed is None:
                    continue  # held in a batch its coordinator has not decided: later
                await self._ledger.settle_reservation(transaction_id, wallet_id, credit=committed)
                self.resolved += 1
                log.info("crossing: reservation %s %s (asked group %d)", transaction_id,
                         "credited" if committed else "released", group)
