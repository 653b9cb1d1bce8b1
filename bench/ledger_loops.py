"""The ledger's two hot loops alone, without actors, the WAL writer or a load generator in the
clock: CPU time per transfer, the best of ``--repeat`` runs (the least disturbed by the rest of
the machine, which is what an A/B of the loop's own code wants).

    python -m bench.ledger_loops part             # a batch part: decide, record, apply, reply
    python -m bench.ledger_loops replay --data D  # replay of D's log (python -m bench.projector --data D)

``part``: batches of 1,000 keyed transfers among 10,000 wallets of one state (every receiver
local, as on a one-shard ledger), each decided by ``decide_part``, made a record by
``ledger._batch._records`` (encoded), applied by ``apply_posted`` and answered with a
``Committed`` per item: the steps of ``Shard._decide_part``. The commands are built before the
clock starts. ``replay``: ``replay_log`` of a whole log into an empty state, the loop that
recovery, ``wal verify`` and the snapshot builder run (the final digest and the process start
are not in it).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from pathlib import Path

from ledger import (
    AssetCreated,
    Committed,
    Event,
    State,
    TransactionType,
    Transfer,
    Transferred,
    TransfersPosted,
    WalletCreated,
    new_committed,
    new_idempotency,
    new_state,
    new_transfer,
    replay_log,
    treasury_id,
)
from ledger._apply import apply
from ledger._batch import _records
from ledger._part import apply_posted, decide_part
from server._gc import tune_gc
from wal import ScanResult

WALLETS = 10_000
BATCH = 1000


def _funded_state() -> tuple[State, int, list[str]]:
    """A state of ``WALLETS`` funded wallets: (state, its last LSN, the wallet ids)."""
    state = new_state()
    ids = [f"wal_{number:08d}" for number in range(WALLETS)]
    events: list[Event] = [AssetCreated(code="USD", scale=2, at_us=1)]
    for number, wallet_id in enumerate(ids):
        events.append(WalletCreated(wallet_id=wallet_id, owner_id=f"owner_{number}", asset="USD", metadata=None,
                                    at_us=1, idempotency=None))
        events.append(Transferred(transaction_id=f"dep_{number}", type=TransactionType.DEPOSIT,
                                  from_wallet_id=treasury_id("USD"), to_wallet_id=wallet_id, asset="USD",
                                  amount=10**12, description=None, metadata=None, at_us=1, idempotency=None))
    for lsn, event in enumerate(events, start=1):
        apply(state, event, lsn)
    return state, len(events), ids


def part(batches: int, repeat: int) -> float:
    """The best CPU time per transfer, in microseconds, of ``repeat`` runs of ``batches``."""
    best = float("inf")
    for run in range(repeat):
        state, lsn, ids = _funded_state()
        rng = random.Random(run)
        work: list[list[tuple[Transfer, None]]] = []
        for number in range(batches):
            items: list[tuple[Transfer, None]] = []
            for index in range(BATCH):
                source, target = rng.sample(ids, 2)
                items.append((new_transfer(
                    f"tx_{number}_{index}", TransactionType.TRANSFER, source, target, rng.randint(1, 1000), None,
                    None, new_idempotency("owner:o", f"key_{run}_{number}_{index}", b"f" * 16), None, None,
                ), None))
            work.append(items)
        gc.collect()
        now_us = 10**15
        started = time.process_time()
        for items in work:
            now_us += 1000
            outcomes = decide_part(state, items, now_us, {})
            rows = [outcome for outcome in outcomes if type(outcome) is tuple]
            assert len(rows) == len(items), "every transfer of the benchmark is accepted"
            results: list[Committed] = []
            for _payload, record, count in _records(rows, now_us):
                lsn += 1
                apply_posted(state, record, [True] * count, lsn)
                lone = count == 1
                results.extend(new_committed(record, lsn, -1 if lone else position) for position in range(count))
        best = min(best, (time.process_time() - started) / (batches * BATCH) * 1e6)
    return best


def replay(data: Path, repeat: int) -> tuple[int, int, float]:
    """(records, transfers, the best CPU seconds) of ``repeat`` replays of ``data``'s log."""
    best = float("inf")
    records = transfers = 0
    for _ in range(repeat):
        state = new_state()
        gc.collect()
        moved = 0

        def count(_frame: object, event: object) -> None:
            nonlocal moved
            if type(event) is TransfersPosted:
                moved += len(event.rows)
            elif type(event) is Transferred:
                moved += 1

        started = time.process_time()
        records, _, _ = replay_log(state, data / "wal", ScanResult(), after_lsn=0, base_lsn=0, on_record=count)
        best = min(best, time.process_time() - started)
        transfers = moved
        del state
    return records, transfers, best


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_loops", description=__doc__.split("\n\n")[0])
    parser.add_argument("loop", choices=["part", "replay"])
    parser.add_argument("--batches", type=int, default=200, help="part: batches of 1,000 (default 200)")
    parser.add_argument("--data", type=Path, help="replay: a data directory with a log")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported (default 3)")
    arguments = parser.parse_args()
    tune_gc()
    if arguments.loop == "part":
        micros = part(arguments.batches, arguments.repeat)
        print(f"part: {micros:.2f} us of CPU per transfer ({1e6 / micros:,.0f} transfers/s), best of "
              f"{arguments.repeat} runs of {arguments.batches} batches of {BATCH}")
    else:
        if arguments.data is None:
            parser.error("replay needs --data")
        records, transfers, seconds = replay(arguments.data, arguments.repeat)
        print(f"replay: {records:,} records ({transfers:,} transfers) in {seconds:.2f} CPU s: "
              f"{transfers / seconds:,.0f} transfers/s, best of {arguments.repeat}")


if __name__ == "__main__":
    main()
