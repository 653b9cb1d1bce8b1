"""The cyclic garbage collector's thresholds, set by every process of the server and by the
tools that replay the log (``wallet wal``, ``wallet snapshot``) or measure the ledger
(``wallet bench --mode core``, ``bench.projector``)."""

from __future__ import annotations

import gc
import os

# The cyclic garbage collector's thresholds in every process of the server (``tune_gc``).
# CPython's default (700, 10, 10) runs a young collection every 700 net allocations; a batch
# of 1000 transfers allocates about ten objects per item (the command, its event, idempotency
# and reply records), nearly all freed by reference counting, and the collections they set off
# took about 40% of the ledger's time in `wallet bench --mode core --batch 1000`. Medians of
# three interleaved runs, default -> these: core batches 64,000 -> 106,000 transfers/s, core
# single 17,900 -> 19,600, HTTP batches (--workers 2) 24,500 -> 30,100, HTTP single 2,314 ->
# 2,492 (docs/performance.md). Young collections are rarer and larger; what only a cycle
# holds is freed a little later.
GC_THRESHOLDS = (50_000, 20, 100)


GC_THRESHOLDS_ENV = "WALLET_GC_THRESHOLDS"  # "young,middle,old" to try others (README, Configuration)


def thresholds(environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[int, int, int]:
    """The thresholds to use: ``GC_THRESHOLDS``, or three non-negative integers from
    ``WALLET_GC_THRESHOLDS``; anything else there is refused (ValueError) rather than ignored."""
    raw = environ.get(GC_THRESHOLDS_ENV)
    if raw is None or not raw.strip():
        return GC_THRESHOLDS
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{GC_THRESHOLDS_ENV} must be three non-negative integers like 50000,20,100, not {raw!r}")
    young, middle, old = (int(part) for part in parts)
    return young, middle, old


def tune_gc() -> None:
    gc.set_threshold(*thresholds())
