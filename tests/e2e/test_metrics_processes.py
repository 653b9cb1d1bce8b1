"""``/metrics`` of ``wallet serve --workers N``: one scrape of any worker shows every process (the
workers' summed HTTP series, the ledger process's own series, ``process_*`` and the event loop's
lag per role), as valid Prometheus text; a killed worker's counts neither vanish nor count twice.
(``--workers 0`` is ``tests/e2e/test_observe.py``, unchanged.)"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from server._supervisor import metrics_dir
from tests.e2e._server import ServerProcess

WORKERS = 2
ROUTE = "/v1/wallets/{wallet_id}"
SHARDS = 4
SCRAPES_MAX = 200  # polls of /metrics while a count settles (a request is counted as it ends)


@pytest.fixture
def supervised(tmp_path: Path) -> Any:
    server = ServerProcess(tmp_path / "data", shards=SHARDS, extra_args=["--workers", str(WORKERS)])
    server.start()
    yield server
    server.kill()


def _metrics_dir(server: ServerProcess) -> Path:
    return metrics_dir(server.data_dir)


def _samples(text: str) -> list[Sample]:
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), [name for name, count in Counter(names).items() if count > 1]
    return [sample for family in families for sample in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(sample.value for sample in samples
               if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()))


def _served(server: ServerProcess) -> dict[int, float]:
    """GET requests on ``ROUTE`` per process, from each pid's own file (what the sum is made of)."""
    served: dict[int, float] = {}
    for path in _metrics_dir(server).glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == "wallet_http_requests_total" and labels.get("route") == ROUTE:
                served[pid] = served.get(pid, 0.0) + value
    return served


def _workers(server: ServerProcess) -> list[dict[str, Any]]:
    with server.client() as http:
        items: list[dict[str, Any]] = http.get("/v1/admin/processes").json()["items"]
    return [item for item in items if item["role"] == "http"]


def _get_on_fresh_connections(server: ServerProcess, count: int) -> None:
    for _ in range(count):
        with server.client() as http:  # a new client: a new connection, accepted by either worker
            assert http.get("/v1/wallets/a").status_code == 200


def _scrape_once_counted(server: ServerProcess, sent: int) -> list[Sample]:
    """A scrape that shows all ``sent`` requests (each is counted just after its answer went
    out, so the first scrape may run a moment ahead of the last count); never more."""
    for _ in range(SCRAPES_MAX):
        with server.client() as http:
            response = http.get("/metrics")
        assert response.status_code == 200
        samples = _samples(response.text)
        counted = _value(samples, "wallet_http_requests_total", method="GET", route=ROUTE, status="200")
        assert counted <= sent, (counted, sent)
        if counted == sent:
            return samples
        time.sleep(0.05)
    raise AssertionError(f"/metrics counted {counted} of {sent} requests")


def _spread_over_both_workers(server: ServerProcess) -> int:
    """GETs on fresh connections, 40 and then more until each worker has served some (the
    kernel picks the worker that accepts); the number sent."""
    sent = 0
    for _ in range(10):
        _get_on_fresh_connections(server, 40)
        sent += 40
        served = _served(server)
        if len(served) == WORKERS and all(served.values()):
            return sent
    raise AssertionError(f"one worker served every request: {_served(server)}")


def test_one_scrape_shows_every_process(supervised: ServerProcess) -> None:
    with supervised.client() as http:
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        for wallet_id in ("a", "b"):
            assert http.post("/v1/wallets", json={"id": wallet_id, "owner_id": "o", "asset": "USD"}).status_code == 201
        assert http.post("/v1/deposits", json={"wallet_id": "a", "amount": 100},
                         headers={"Idempotency-Key": "d"}).status_code == 201
    for number in range(5):  # transfers, each on its own connection
        with supervised.client() as http:
            assert http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 1},
                             headers={"Idempotency-Key": f"t{number}"}).status_code == 201
    sent = _spread_over_both_workers(supervised)
    samples = _scrape_once_counted(supervised, sent)
    # From the ledger process (no worker has a ledger): 1 asset + 2 wallets + 1 deposit + 5
    # transfers, and every shard's two mailboxes.
    assert _value(samples, "wallet_wal_durable_lsn") == 9
    assert _value(samples, "wallet_wal_records_total") == 9
    depths = [sample for sample in samples if sample.name == "wallet_shard_mailbox_depth"]
    assert len(depths) == 2 * SHARDS
    assert _value(samples, "wallet_http_requests_total", route="/v1/transfers", status="201") == 5
    # The event loop's lag from each role, and each process's own process_* series.
    for role in ("ledger", "http"):
        assert _value(samples, "wallet_event_loop_lag_seconds_count", role=role) > 0
    assert _value(samples, "wallet_event_loop_lag_seconds_count", role="one") == 0
    memory = {(sample.labels["role"], sample.labels["slot"]) for sample in samples
              if sample.name == "process_resident_memory_bytes" and sample.value > 0}
    assert memory == {("supervisor", "0"), ("ledger", "0"), ("projector", "0"), ("webhooks", "0"), ("http", "0"),
                      ("http", "1")}


def test_a_killed_workers_counts_neither_vanish_nor_count_twice(supervised: ServerProcess) -> None:
    with supervised.client() as http:
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        assert http.post("/v1/wallets", json={"id": "a", "owner_id": "o", "asset": "USD"}).status_code == 201
    sent = _spread_over_both_workers(supervised)
    _scrape_once_counted(supervised, sent)
    served = _served(supervised)
    victim = next(pid for pid, count in served.items() if count > 0)
    os.kill(victim, signal.SIGKILL)
    for _ in range(100):
        workers = _workers(supervised)
        if len(workers) == WORKERS and victim not in {item["pid"] for item in workers}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the worker was not replaced: {_workers(supervised)}")
    # The dead worker's file stays and is summed; the replacement adds to the total.
    assert _served(supervised)[victim] == served[victim]
    _get_on_fresh_connections(supervised, 10)
    samples = _scrape_once_counted(supervised, sent + 10)
    assert _value(samples, "wallet_wal_durable_lsn") == 2
    assert supervised.terminate() == 0


def test_a_restarted_server_counts_from_zero(supervised: ServerProcess) -> None:
    with supervised.client() as http:
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        assert http.post("/v1/wallets", json={"id": "a", "owner_id": "o", "asset": "USD"}).status_code == 201
    _get_on_fresh_connections(supervised, 3)
    _scrape_once_counted(supervised, 3)
    assert supervised.terminate() == 0
    supervised.start()
    _get_on_fresh_connections(supervised, 2)
    samples = _scrape_once_counted(supervised, 2)  # not 5: the supervisor emptied the directory
    assert _value(samples, "wallet_wal_durable_lsn") == 2  # the log is what persists


def test_one_process_mode_shows_its_loop_lag(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--workers", "0"])
    server.start()
    try:
        with server.client() as http:
            for _ in range(SCRAPES_MAX):
                samples = _samples(http.get("/metrics").text)
                if _value(samples, "wallet_event_loop_lag_seconds_count", role="one") > 0:
                    break
                time.sleep(0.05)
    finally:
        server.kill()
    assert _value(samples, "wallet_event_loop_lag_seconds_count", role="one") > 0
    assert {sample.labels.get("role") for sample in samples if sample.name.startswith("wallet_event_loop")} == {"one"}
    assert any(sample.name == "process_resident_memory_bytes" and not sample.labels for sample in samples)
