"""The short cluster crash loop CI runs (``make crashloop-cluster`` runs a long one, drawing what
it breaks from the seed): the owner SIGKILLed, a NATS node SIGKILLed, the owner SIGSTOPped past
the takeover and resumed, each under load and checked against the clients' record."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.crashloop_cluster import cluster_crash_loop


async def test_cluster_crash_loop_short(tmp_path: Path) -> None:
    totals = await cluster_crash_loop(tmp_path / "data", iterations=3, seed=7, actions=["owner", "node", "pause"])
    records = totals["records"]
    assert [record["killed"].split(" ")[0] for record in records] == ["owner", "node", "owner"]
    assert records[2]["exit"] == 75
    assert all(record["served_s"] > 0 for record in records)
    assert totals["acknowledged"] > 0
    assert totals["retried"] > 0, "no request was in flight at any failure: the loop proved nothing"
