"""The harness's reading of ``wallet_event_loop_lag_seconds`` (p99 per role over a window)."""

from __future__ import annotations

from bench._report import loop_lag_figures, loop_lag_line
from bench._service import parse_metrics

BOUNDS = ("0.001", "0.005", "0.02", "0.05", "+Inf")


def exposition(role_counts: dict[str, tuple[int, ...]]) -> str:
    lines = ["# HELP wallet_event_loop_lag_seconds lag", "# TYPE wallet_event_loop_lag_seconds histogram"]
    for role, counts in role_counts.items():
        for le, count in zip(BOUNDS, counts, strict=True):
            lines.append(f'wallet_event_loop_lag_seconds_bucket{{le="{le}",role="{role}"}} {count}.0')
        lines.append(f'wallet_event_loop_lag_seconds_count{{role="{role}"}} {counts[-1]}.0')
    lines.append("wallet_wal_records_total 7.0")
    return "\n".join(lines) + "\n"


def test_the_buckets_are_read_by_role() -> None:
    sample = parse_metrics(exposition({"ledger": (1, 2, 3, 4, 5), "http": (10, 10, 10, 10, 10)}))
    assert sample.loop_lag["ledger"] == {0.001: 1, 0.005: 2, 0.02: 3, 0.05: 4, float("inf"): 5}
    assert sample.loop_lag["http"][float("inf")] == 10
    assert sample.wal_records == 7


def test_the_window_is_the_difference_of_two_scrapes() -> None:
    before = parse_metrics(exposition({"ledger": (100, 100, 100, 100, 100)})).loop_lag
    # 1,000 new samples: 980 under 1 ms, 10 more under 5 ms, 6 under 20 ms, 4 under 50 ms
    after = parse_metrics(exposition({"ledger": (1080, 1090, 1096, 1100, 1100)})).loop_lag
    figures = loop_lag_figures(before, after)
    assert figures == {"ledger": {"samples": 1000, "p99_ms_at_most": 5.0, "over_20ms": 4, "max_ms_at_most": 50.0}}
    line = loop_lag_line("service", figures)
    assert line == "event loop lag (service): ledger p99 <= 5 ms, max <= 50 ms, 4 of 1,000 samples over 20 ms"


def test_a_stall_beyond_the_last_bound_is_said_so() -> None:
    before = {"http": {0.001: 0.0, 0.02: 0.0, float("inf"): 0.0}}
    after = {"http": {0.001: 50.0, 0.02: 50.0, float("inf"): 100.0}}
    figures = loop_lag_figures(before, after)
    assert figures == {"http": {"samples": 100, "p99_ms_at_most": None, "over_20ms": 50, "max_ms_at_most": None}}
    assert "p99 > 5 s" in (loop_lag_line("x", figures) or "")


def test_no_scrape_no_figures() -> None:
    assert loop_lag_figures(None, {"http": {float("inf"): 1.0}}) is None
    assert loop_lag_figures({}, {"idle": {0.001: 0.0, float("inf"): 0.0}}) == {}
    assert loop_lag_line("x", {}) is None
