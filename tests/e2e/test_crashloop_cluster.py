"""The short cluster crash loop CI runs (``make crashloop-cluster`` runs a long one, drawing what
it breaks from the seed): the owner SIGKILLed, a NATS node SIGKILLed, the owner SIGSTOPped past
the takeover and resumed, each under load and checked against the clients' record; with two
ledger groups under ``make test-long``."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from server._member import KIND, log_subject, stream_name
from tests._budget import LONG
from tests.e2e.crashloop_cluster import StreamAudit, cluster_crash_loop
from wal.testing import FakeStream


async def test_cluster_crash_loop_short(tmp_path: Path) -> None:
    totals = await cluster_crash_loop(tmp_path / "data", iterations=3, seed=7, actions=["owner", "node", "pause"])
    records = totals["records"]
    assert [record["killed"].split(" ")[0] for record in records] == ["owner", "node", "owner"]
    assert records[2]["exit"] == 75
    assert all(record["served_s"] > 0 for record in records)
    assert totals["epochs"] >= 3, totals  # the first owner's, then one per takeover, nothing else
    assert totals["acknowledged"] > 0
    assert totals["retried"] > 0, "no request was in flight at any failure: the loop proved nothing"


@pytest.mark.skipif(not LONG, reason="make test-long: about a minute on a loaded 2-core host; CI keeps the "
                                     "one-group loop, the two-group owner kill of test_cluster_groups and the "
                                     "simulation of several groups")
async def test_cluster_crash_loop_two_groups(tmp_path: Path) -> None:
    """Two ledger groups, transfers between them about half the time: an owner SIGKILLed, an
    owner SIGSTOPped past its takeover and resumed, an HTTP worker and a standby SIGKILLed, each
    in a group the seed picks; checked against the clients' record once the owners have finished
    what the workers left (``make crashloop-cluster GROUPS=2``: longer)."""
    actions = ["owner", "pause", "worker", "standby"]
    totals = await cluster_crash_loop(tmp_path / "data", iterations=len(actions), seed=11, groups=2,
                                      actions=actions)
    records = totals["records"]
    assert [record["killed"].split(" ")[0] for record in records] == [
        "owner", "owner", "worker", "standby"][:len(actions)]
    assert records[1]["exit"] == 75
    assert {record.get("group") for record in records[:2]} <= {0, 1}
    assert totals["epochs"] >= 4, totals  # each group's first owner, then one per takeover
    assert totals["acknowledged"] > 0 and totals["retried"] > 0


def test_the_stream_audit_finds_an_append_of_a_replaced_owner() -> None:
    client = FakeStream().client()
    client.ensure_stream(stream_name(0), log_subject(0))
    audit = StreamAudit(client)

    def append(kind: str, msg_id: str, data: bytes = b"") -> None:
        client.publish(log_subject(0), data, expected_last_seq=client.last_sequence(stream_name(0)),
                       msg_id=msg_id, headers={KIND: kind})

    append("epoch", "g0-epoch-1", msgpack.packb([1, "a", 1]))
    append("frames", "g0-e1-l1")
    append("epoch", "g0-epoch-2", msgpack.packb([2, "b", 2]))
    append("barrier", "g0-e2-b1")
    audit.check()
    assert audit.epoch == 2 and audit.counts == {"epoch": 2, "frames": 1, "barrier": 1}
    append("frames", "g0-e1-l2")  # the first owner, replaced, appends after all
    with pytest.raises(AssertionError, match="a replaced owner appended"):
        audit.check()
