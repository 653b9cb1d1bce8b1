"""The running ledger's two tiers of idempotency records: memory capped, the rest on disk.

``ledger._key_index`` has the rule and the file. Here is what a running ledger does with them:

- **Spill.** When memory holds more than ``memory_keys`` records, the oldest durable ones
  (whole LSNs, in log order) are written to the index, ``through_lsn`` is advanced in the same
  durable transaction, and only then are they deleted from memory. Records a request in flight
  has pinned stay in memory until it is answered (see below).
- **Recall.** Before a keyed command is sent to its shard (a single request under the in-flight
  guard, or every item of a batch), its keys are **pinned**, and those not in memory are looked
  up in the index; what is found goes to ``Directory.recalled``, which the shard's decision
  consults exactly like memory. Lookups of concurrent requests share one SQLite query (one
  round at a time, in a worker thread). A pinned key cannot be spilled between the check and the
  decision, so the decision never misses a record that exists: that is what keeps a retried key
  from executing twice while its record moves to disk.
- **Expire.** Every minute, rows past the 24-hour horizon are deleted from the index.

While the index holds no row, nothing is looked up: a ledger below its memory cap pays only
the pins.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

import anyio
import anyio.lowlevel

from ledger._key_index import Key, KeyIndex
from ledger._messages import Overloaded
from ledger._model import IDEMPOTENCY_RETENTION_US, IdempotencyRecord
from ledger._state import Directory
from wal import StorageFailed, WriteAheadLog

log = logging.getLogger("ledger.keys")

MEMORY_KEYS_DEFAULT = 1_000_000  # about 300 MB of records
SPILL_INTERVAL_MS = 200
SPILL_CHUNK = 5_000  # records per index transaction (and per synchronous step deleting them)
EXPIRE_INTERVAL_S = 60
SPILL_RETRY_S = 1


class KeyFilter:
    """A Bloom filter over the keys in the index, so that a fresh key (nearly every request)
    skips the lookup: no false negatives, about 0.15% false positives per filter (16 bits and 5
    probes a key: 2 bytes, against about 300 for a record in memory). It grows by adding
    filters of twice the previous capacity (false positives add up over them: about 1.5% with
    the eleven that 24 hours at 1,000 keys/s take). Python's
    ``hash`` is salted per process, so it is rebuilt from the index at every start (until then,
    lookups go to the index)."""

    BITS_PER_KEY = 16
    PROBES = 5

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._filters: list[tuple[bytearray, int]] = []
        self._capacity = capacity
        self._count = 0  # keys in the newest filter
        self.keys = 0
        self._grow()

    def _grow(self) -> None:
        if self._filters:
            self._capacity *= 2
        nbits = self._capacity * self.BITS_PER_KEY
        self._filters.append((bytearray((nbits + 7) // 8), nbits))
        self._count = 0

    def add(self, key: Key) -> None:
        if self._count >= self._capacity:
            self._grow()
        bits, nbits = self._filters[-1]
        value = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        first, step = value & 0xFFFF_FFFF, (value >> 32) | 1
        for probe in range(self.PROBES):
            bit = (first + probe * step) % nbits
            bits[bit >> 3] |= 1 << (bit & 7)
        self._count += 1
        self.keys += 1

    def __contains__(self, key: Key) -> bool:
        value = hash(key) & 0xFFFF_FFFF_FFFF_FFFF
        first, step = value & 0xFFFF_FFFF, (value >> 32) | 1
        for bits, nbits in self._filters:
            for probe in range(self.PROBES):
                bit = (first + probe * step) % nbits
                if not bits[bit >> 3] & (1 << (bit & 7)):
                    break
            else:
                return True
        return False


class _Round:
    """One shared lookup: its keys, then ``done`` (with ``error`` if it failed)."""

    __slots__ = ("done", "error", "keys")

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.done = anyio.Event()
        self.error: BaseException | None = None


class _Holding:
    __slots__ = ("_keys", "_tier")

    def __init__(self, tier: KeyTier, keys: Collection[Key]) -> None:
        self._tier = tier
        self._keys = keys

    async def __aenter__(self) -> None:
        tier = self._tier
        tier.check_room()
        tier.pin(self._keys)
        try:
            await tier.recall(self._keys)
        except BaseException:
            tier.unpin(self._keys)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._tier.unpin(self._keys)


class KeyTier:
    def __init__(self, directory: Directory, index: KeyIndex, *, memory_keys: int) -> None:
        assert memory_keys >= 1
        self._directory = directory
        self.index = index
        self.memory_keys = memory_keys
        self._pins: dict[Key, int] = {}
        self._round = _Round()
        self._wanted = anyio.Event()
        # One thread at a time per connection: the writer's (spill, expiry) and the reader's.
        self._limiter = anyio.CapacityLimiter(1)
        self._read_limiter = anyio.CapacityLimiter(1)
        # None until built from the index (at start and after expiry removed many rows):
        # meanwhile every key memory lacks is looked up.
        self.filter: KeyFilter | None = None
        self._expired_since_build = 0
        self.spilled = 0
        self.recalled = 0
        self.skipped = 0  # lookups the filter saved
        self.refused = 0  # requests refused while the spill was behind
        self.failures = 0

    # -- requests --------------------------------------------------------------------------

    def holding(self, keys: Collection[Key]) -> _Holding:
        """``async with tier.holding(keys):`` around sending a command: refuses while the spill
        is behind (``check_room``), pins the keys and recalls the ones memory lacks; unpins on
        the way out."""
        return _Holding(self, keys)

    def pin(self, keys: Iterable[Key]) -> None:
        pins = self._pins
        for key in keys:
            pins[key] = pins.get(key, 0) + 1

    def unpin(self, keys: Iterable[Key]) -> None:
        pins = self._pins
        directory = self._directory
        through = self.index.through_lsn
        for key in keys:
            count = pins[key] - 1
            if count:
                pins[key] = count
                continue
            del pins[key]
            directory.recalled.pop(key, None)
            # A record that stayed in memory only because this request pinned it while it was
            # spilled: the index has it now.
            record = directory.idempotency.get(key)
            if record is not None and record.lsn <= through:
                del directory.idempotency[key]

    async def recall(self, keys: Iterable[Key]) -> None:
        """Brings back from the index the records of pinned ``keys`` that memory lacks. Raises
        StorageFailed if the index cannot be read (the request must not go on as if its key
        were new)."""
        if not self.index.maybe_holds:
            return
        memory = self._directory.idempotency
        recalled = self._directory.recalled
        missing = [key for key in keys if key not in memory and key not in recalled]
        key_filter = self.filter
        if key_filter is not None and missing:
            wanted = [key for key in missing if key in key_filter]
            self.skipped += len(missing) - len(wanted)
            missing = wanted
        if not missing:
            return
        round_ = self._round
        round_.keys.extend(missing)
        self._wanted.set()
        with anyio.CancelScope(shield=True):
            await round_.done.wait()
        if round_.error is not None:
            raise StorageFailed(f"the idempotency index cannot be read: {round_.error}") from round_.error

    def check_room(self) -> None:
        """Raises ``Overloaded`` when spilling fell behind by more than the cap (plus a chunk):
        requests that would add keys are refused until it catches up, so memory stays bounded
        at any sustained rate (about 25,000 records/s spill on this machine while the ledger is
        saturated, about 100,000/s when it is idle). Reads and unkeyed commands go on."""
        if len(self._directory.idempotency) > 2 * self.memory_keys + SPILL_CHUNK:
            self.refused += 1
            raise Overloaded("idempotency records are waiting to move to disk")

    # -- background ----------------------------------------------------------------------

    async def run(self, wal: WriteAheadLog) -> None:
        await self._build_filter()
        async with anyio.create_task_group() as group:
            group.start_soon(self._read)
            group.start_soon(self._expire)
            await self._spill(wal)

    async def _build_filter(self) -> None:
        """Builds the filter from the index's keys, holding the writer's turn so that no spill
        commits during the scan (what a spill adds after it goes into the new filter)."""
        self.filter = None
        async with self._limiter:
            built = await anyio.to_thread.run_sync(self._scan_into_filter)
        self.filter = built
        self._expired_since_build = 0

    def _scan_into_filter(self) -> KeyFilter:
        built = KeyFilter()
        for key in self.index.keys():
            built.add(key)
        return built

    async def _read(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            round_, self._round = self._round, _Round()
            horizon = self._directory.at_us - IDEMPOTENCY_RETENTION_US
            try:
                found = await anyio.to_thread.run_sync(
                    self.index.lookup, set(round_.keys), horizon, limiter=self._read_limiter
                )
            except Exception as error:  # handed to every waiting request
                log.error("idempotency index lookup failed: %s", error)
                round_.error = error
                round_.done.set()
                continue
            memory = self._directory.idempotency
            recalled = self._directory.recalled
            for key, record in found.items():
                if key in self._pins and key not in memory:
                    recalled[key] = record
            self.recalled += len(found)
            round_.done.set()

    async def _spill(self, wal: WriteAheadLog) -> None:
        while True:
            try:
                moved = await self.spill_once(wal)
            except Exception as error:  # memory only grows past the cap meanwhile
                log.error("idempotency index write failed (records stay in memory): %s", error)
                self.failures += 1
                await anyio.sleep(SPILL_RETRY_S)
                continue
            if moved:
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(SPILL_INTERVAL_MS / 1000)

    async def spill_once(self, wal: WriteAheadLog) -> bool:
        """Moves up to ``SPILL_CHUNK`` of the oldest durable records past the memory cap to the
        index. True if it moved any."""
        records = self._directory.idempotency
        excess = len(records) - self.memory_keys
        if excess <= 0:
            return False
        durable = wal.durable_lsn
        through = self.index.through_lsn
        take = min(excess, SPILL_CHUNK)
        chunk: list[tuple[Key, IdempotencyRecord]] = []
        for key, record in records.items():
            lsn = record.lsn
            if lsn <= through:
                continue  # stayed for a pin; on disk already
            if lsn > durable or (len(chunk) >= take and lsn != chunk[-1][1].lsn):
                break  # never past the durable log, and whole LSNs (a batch's items share one)
            chunk.append((key, record))
        if not chunk:
            return False
        new_through = chunk[-1][1].lsn
        await anyio.to_thread.run_sync(self.index.write, chunk, new_through, limiter=self._limiter)
        records = self._directory.idempotency
        pins = self._pins
        key_filter = self.filter
        # In the same step as the deletions: a key is in memory or in the filter at every instant.
        for key, record in chunk:
            if key_filter is not None:
                key_filter.add(key)
            if key not in pins and records.get(key) is record:
                del records[key]
        self.spilled += len(chunk)
        return True

    async def _expire(self) -> None:
        while True:
            await anyio.sleep(EXPIRE_INTERVAL_S)
            horizon = self._directory.at_us - IDEMPOTENCY_RETENTION_US
            removed = await anyio.to_thread.run_sync(self.index.expire, horizon, limiter=self._limiter)
            if removed:
                log.info("idempotency index: %d expired keys removed", removed)
                # Expired keys stay in the filter as false positives: rebuild once they are many.
                self._expired_since_build += removed
                if self.filter is not None and self._expired_since_build * 2 > self.filter.keys:
                    await self._build_filter()

    def close(self) -> None:
        self.index.close()
