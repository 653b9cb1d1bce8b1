"""The pieces of a multi-process ``/metrics`` (``server._scrape``), the ledger's series over the
port (``LocalPort.metrics``) and the event loop's lag (``server._loop_lag``). The multiprocess
files themselves need ``PROMETHEUS_MULTIPROC_DIR`` before prometheus-client is imported: that
is tested on the real server (``tests/e2e/test_metrics_processes.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from ledger import CreateAsset, Ledger, recover
from server._loop_lag import LOOP_STALL_S, LoopLag, loop_lag, loop_lag_histogram
from server._port import LocalPort, RemotePort, Unavailable, serve_port
from server._scrape import MultiProcessScrape, merge, process_families


def _text(families: list) -> str:  # type: ignore[type-arg]
    class Collector:
        def collect(self) -> list:  # type: ignore[type-arg]
            return families

    return generate_latest(Collector()).decode()  # type: ignore[arg-type]


def test_merge_keeps_each_family_once_the_first_source_winning() -> None:
    first = GaugeMetricFamily("wallet_x", "first", value=1)
    second = GaugeMetricFamily("wallet_x", "second", value=2)
    other = CounterMetricFamily("wallet_y", "other", value=3)
    merged = merge([first], [second, other])
    assert [family.documentation for family in merged] == ["first", "other"]
    parsed = {family.name: family for family in text_string_to_metric_families(_text(merged))}
    assert parsed["wallet_x"].samples[0].value == 1


def test_process_families_label_every_live_process_by_role_and_slot() -> None:
    me = os.getpid()
    table = [
        {"role": "supervisor", "pid": me, "alive": True},
        {"role": "ledger", "pid": me, "alive": True},
        {"role": "http", "pid": me, "alive": True},
        {"role": "http", "pid": 999_999_999, "alive": False},  # gone: slot 1 shows nothing
        {"role": "http", "pid": me, "alive": True},
    ]
    families = {family.name: family for family in text_string_to_metric_families(_text(process_families(table)))}
    memory = families["process_resident_memory_bytes"]
    labels = sorted((sample.labels["role"], sample.labels["slot"]) for sample in memory.samples)
    assert labels == [("http", "0"), ("http", "2"), ("ledger", "0"), ("supervisor", "0")]
    assert all(sample.value > 0 for sample in memory.samples)


def test_process_families_of_an_empty_table_are_empty() -> None:
    assert process_families([]) == []


class _DownPort:
    async def metrics(self) -> str:
        raise Unavailable("the ledger process is not reachable")


async def test_a_scrape_without_the_ledger_still_answers_the_shared_series(tmp_path: Path) -> None:
    scrape = MultiProcessScrape(_DownPort(), tmp_path, str(tmp_path))  # type: ignore[arg-type]
    text = (await scrape()).decode()
    list(text_string_to_metric_families(text))  # valid, if nearly empty (no files, no table)
    assert "wallet_wal" not in text


def test_a_scrape_adds_the_ledger_series_once(tmp_path: Path) -> None:
    scrape = MultiProcessScrape(_DownPort(), tmp_path, str(tmp_path))  # type: ignore[arg-type]
    ledger_text = _text([GaugeMetricFamily("wallet_wal_durable_lsn", "Last durable LSN", value=7)])
    families = list(text_string_to_metric_families(scrape.render(ledger_text).decode()))
    assert [(family.name, family.samples[0].value) for family in families] == [("wallet_wal_durable_lsn", 7)]


async def test_the_ledger_series_cross_the_port(tmp_path: Path) -> None:
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        port = LocalPort(ledger)
        path = str(tmp_path / "ledger.sock")
        listener = await anyio.create_unix_listener(path)
        remote = RemotePort(path)
        transport = trio.CancelScope()

        async def serve(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with transport:
                async with trio.open_nursery() as inner:
                    inner.start_soon(serve_port, lambda: port, listener)
                    await inner.start(remote.run)
                    task_status.started()

        await nursery.start(serve)
        await remote.connected.wait()
        assert await remote.create_asset(CreateAsset(code="USD", scale=2))
        # The history read model catches up on its own time (its LSN gauge may move between
        # the two readings): compare once it has the asset's record.
        with trio.fail_after(10):
            while (text := await remote.metrics()) != port.metrics():
                await trio.sleep(0.05)
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert families["wallet_wal_durable_lsn"].samples[0].value == 1
        assert len(families["wallet_shard_mailbox_depth"].samples) == 2 * 2
        # Only the ledger's own series: the shared ones come from the files.
        assert not any(name.startswith(("wallet_http", "process_", "wallet_event_loop")) for name in families)
        transport.cancel()
        await ledger.stop()


def test_the_lag_is_how_late_the_sleep_ended() -> None:
    seen: list[float] = []
    lag = LoopLag(seen.append)
    assert abs(lag.record(0.010, 0.0105) - 0.0005) < 1e-12 and seen == [lag.statistics().lag_s_max]
    assert lag.record(0.010, 0.0099) == 0.0  # woke a hair early: no negative lag
    lag.record(0.010, 0.010 + LOOP_STALL_S + 0.001)
    stats = lag.statistics()
    assert stats.samples == 3 and stats.stalls == 1
    assert abs(stats.lag_s_max - (LOOP_STALL_S + 0.001)) < 1e-9


async def test_a_stalled_loop_shows_in_the_histogram(mock_clock: trio.testing.MockClock) -> None:
    registry = CollectorRegistry()
    lag = loop_lag(loop_lag_histogram(registry), "one")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(0.5)  # the loop was busy elsewhere for half a second
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert lag.statistics().samples == 1 and lag.statistics().stalls == 1
    count = registry.get_sample_value("wallet_event_loop_lag_seconds_count", {"role": "one"})
    within = registry.get_sample_value("wallet_event_loop_lag_seconds_bucket", {"role": "one", "le": "0.25"})
    late = registry.get_sample_value("wallet_event_loop_lag_seconds_bucket", {"role": "one", "le": "0.5"})
    assert (count, within, late) == (1, 0, 1)
