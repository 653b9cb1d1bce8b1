"""What ``GET /metrics`` answers in an HTTP worker of ``wallet serve --workers N``: the series of
every process, whichever worker the scrape lands on. (One process, ``--workers 0``, answers its
own registry: ``Metrics._own_exposition``.)

Three sources, merged into one exposition with each metric family once:

1. The series every process updates as it goes (requests, latency, rejections, batch items, the
   event loop's lag): prometheus-client's multiprocess mode. The supervisor gives every child
   ``PROMETHEUS_MULTIPROC_DIR`` (``metrics/`` in the run folder, emptied when it starts) before the
   child imports prometheus_client, so each process writes its values to its own files there;
   ``MultiProcessCollector`` sums them at scrape time.
2. The ledger process's series (mailboxes, WAL, history, snapshots, payouts): custom
   collectors that read ``statistics()`` when scraped, which files cannot carry. The worker
   asks the ledger for them over the ledger port (``LocalPort.metrics``: Prometheus text),
   within ``LEDGER_SCRAPE_TIMEOUT_S``; while the ledger is unreachable they are left out (an
   absent series, never a stale or made-up one), and the scrape still answers.
3. ``process_*`` (memory, CPU, open files, start time) of every process in the supervisor's
   table, read from ``/proc`` by the scraped worker and labelled ``role`` and ``slot``, so the
   series are the same whichever worker answers (a worker's own unlabelled ``process_*``
   would collide with the others' and flip with every scrape).

What multiprocess mode means for a process that dies (the README's *Deploy*): its counters and
histograms stay in its files and keep counting in the sums, so a total never drops because a
worker was killed, and its replacement (a new pid, new files) adds to it rather than restarting
it. Nothing is counted twice: each pid's file is read once. The files are kept until the
supervisor starts again (then every counter restarts from zero, like any process restart,
which ``rate()`` handles). No series here is a file-backed gauge: every gauge is read from
``statistics()`` in the ledger process (source 2). A gauge added to the shared files must name
its ``multiprocess_mode`` (``livesum`` for a quantity summed over the live workers, such as
requests in flight); the supervisor calls ``mark_process_dead`` for every child that exits,
which drops the dead pid's ``live*`` gauges.

Reading the files and ``/proc`` is blocking I/O: it runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from server._port import RemoteCalls, Unavailable
from server._supervisor import processes

log = logging.getLogger("server.scrape")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
LEDGER_SCRAPE_TIMEOUT_S = 2.0


class _Families:
    """A collector over families already collected (``generate_latest`` takes a registry)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class MultiProcessScrape:
    def __init__(self, port: RemoteCalls, data_dir: Path, multiproc_dir: str) -> None:
        assert os.path.isdir(multiproc_dir), multiproc_dir
        self._port = port
        self._data_dir = data_dir
        self._shared = MultiProcessCollector(None, path=multiproc_dir)

    async def __call__(self) -> bytes:
        ledger_text: str | None = None
        with anyio.move_on_after(LEDGER_SCRAPE_TIMEOUT_S):
            try:
                ledger_text = await self._port.metrics()
            except Unavailable as error:
                log.debug("the ledger's series are left out of this scrape: %s", error)
        return await anyio.to_thread.run_sync(self.render, ledger_text)

    def render(self, ledger_text: str | None) -> bytes:
        shared = list(self._shared.collect())
        processes_ = process_families(processes(self._data_dir))
        ledger = [] if ledger_text is None else list(text_string_to_metric_families(ledger_text))
        return generate_latest(_Families(merge(shared, processes_, ledger)))


def merge(*sources: Iterable[Metric]) -> list[Metric]:
    """The families of ``sources``, each name once: the first source that has it wins (the
    sources are disjoint by construction; a clash is a bug, logged, not a broken exposition)."""
    merged: dict[str, Metric] = {}
    for source in sources:
        for family in source:
            if family.name in merged:
                log.error("metric family %s comes from two sources; keeping the first", family.name)
                continue
            merged[family.name] = family
    return list(merged.values())


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def process_families(table: list[dict[str, Any]]) -> list[Metric]:
    """``process_*`` of every live process in the supervisor's table, labelled ``role`` and
    ``slot`` (the position among the processes of its role: the table lists them in slot
    order). A process that is gone by the time ``/proc`` is read shows nothing."""
    families: dict[str, Metric] = {}
    slots: dict[str, int] = {}
    for item in table:
        role = str(item["role"])
        slot = int(item.get("slot", slots.get(role, 0)))
        slots[role] = slot + 1
        if not item.get("alive", True):
            continue
        pid = int(item["pid"])
        labels = {"role": role, "slot": str(slot)}
        for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, **labels}, sample.value)
    return list(families.values())
