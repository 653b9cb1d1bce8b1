"""The scenario generators draw what they claim, and the same seed draws the same workload."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench._options import SHARDS_DEFAULT
from bench._scenario import Read, Scenario, Transfers, Workload, _Flat, wallet_ids
from ledger import SHARDS_DEFAULT as LEDGER_SHARDS_DEFAULT
from ledger import shard_of

DRAWS = 20_000


def workload(seed: int = 7, **options: object) -> Workload:
    fields: dict[str, object] = {"wallets": 1000, "shards": 4}
    fields.update(options)
    scenario = Scenario(**fields)  # type: ignore[arg-type]
    return Workload(scenario, wallet_ids("w", scenario.wallets), random.Random(seed))


def pairs(w: Workload, count: int = DRAWS) -> list[tuple[str, str]]:
    return [w.pair() for _ in range(count)]


def test_the_harness_default_shard_count_is_the_service_default() -> None:
    assert SHARDS_DEFAULT == LEDGER_SHARDS_DEFAULT


def test_the_same_seed_draws_the_same_workload_and_another_seed_does_not() -> None:
    options = {"zipf_s": 1.1, "hot_share": 0.3, "hot_wallets": 4, "cross_shard": 0.4, "read_share": 0.2, "batch": 3}
    a, b, c = workload(11, **options), workload(11, **options), workload(12, **options)
    first = [a.op() for _ in range(2000)]
    assert first == [b.op() for _ in range(2000)]
    assert first != [c.op() for _ in range(2000)]


def test_a_transfer_never_has_the_same_wallet_on_both_sides() -> None:
    for options in ({}, {"zipf_s": 2.0}, {"hot_share": 1.0}, {"cross_shard": 0.0}, {"cross_shard": 1.0},
                    {"hot_share": 0.5, "hot_wallets": 3, "cross_shard": 0.5, "zipf_s": 1.5}):
        assert all(a != b for a, b in pairs(workload(**options), 5000)), options


def test_uniform_spreads_senders_and_receivers_evenly() -> None:
    w = workload(wallets=10)
    drawn = pairs(w)
    for side in (0, 1):
        counts = Counter(pair[side] for pair in drawn)
        assert set(counts) == set(w.ids)
        for count in counts.values():
            assert abs(count - DRAWS / 10) < 0.1 * DRAWS / 10


def test_hot_share_one_puts_every_transfer_on_the_hot_wallets() -> None:
    drawn = pairs(workload(hot_share=1.0, hot_wallets=2))
    assert {frozenset(pair) for pair in drawn} == {frozenset({"w0", "w1"})}


def test_hot_share_is_the_share_of_transfers_inside_the_hot_set() -> None:
    hot = {"w0", "w1", "w2"}
    drawn = pairs(workload(hot_share=0.7, hot_wallets=3))
    inside = sum(1 for a, b in drawn if a in hot and b in hot) / DRAWS
    assert 0.68 < inside < 0.72  # 0.7 plus the tiny chance that a uniform pair falls in the set


def test_zipf_weighs_rank_r_as_one_over_r_to_the_s() -> None:
    wallets = 100
    drawn = pairs(workload(wallets=wallets, zipf_s=1.0), 50_000)
    senders = Counter(a for a, _ in drawn)
    harmonic = sum(1 / rank for rank in range(1, wallets + 1))
    assert abs(senders["w0"] / 50_000 - 1 / harmonic) < 0.01
    assert 1.8 < senders["w0"] / senders["w1"] < 2.2
    assert 3.5 < senders["w0"] / senders["w3"] < 4.5
    assert senders["w0"] > senders["w9"] > senders["w99"]


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9, 1.0])
def test_cross_shard_ratio_is_the_share_of_pairs_on_different_shards(ratio: float) -> None:
    drawn = pairs(workload(cross_shard=ratio))
    cross = sum(1 for a, b in drawn if shard_of(a, 4) != shard_of(b, 4)) / DRAWS
    if ratio in (0.0, 1.0):
        assert cross == ratio
    else:
        assert abs(cross - ratio) < 0.02


def test_cross_shard_ratio_holds_with_zipf_and_a_hot_set() -> None:
    drawn = pairs(workload(cross_shard=0.25, zipf_s=1.2, hot_share=0.5, hot_wallets=2))
    cross = sum(1 for a, b in drawn if shard_of(a, 4) != shard_of(b, 4)) / DRAWS
    assert abs(cross - 0.25) < 0.02


def test_without_a_cross_shard_ratio_uniform_pairs_cross_as_often_as_chance() -> None:
    w = workload()
    shards = Counter(shard_of(wallet, 4) for wallet in w.ids)
    expected = 1 - sum(n * (n - 1) for n in shards.values()) / (1000 * 999)
    drawn = pairs(w)
    cross = sum(1 for a, b in drawn if shard_of(a, 4) != shard_of(b, 4)) / DRAWS
    assert abs(cross - expected) < 0.02


def test_read_share_is_the_share_of_reads_and_batches_carry_batch_transfers() -> None:
    w = workload(read_share=0.25, batch=5)
    ops = [w.op() for _ in range(DRAWS)]
    reads = [op for op in ops if isinstance(op, Read)]
    assert abs(len(reads) / DRAWS - 0.25) < 0.015
    assert all(isinstance(op, Transfers) and len(op.pairs) == 5 for op in ops if not isinstance(op, Read))


def test_excluding_a_member_draws_the_others_in_proportion_to_their_weights() -> None:
    flat = _Flat([0, 1, 2, 3], [1.0, 100.0, 1.0, 2.0])
    rng = random.Random(3)
    drawn = Counter(flat.sample(rng, 1) for _ in range(40_000))
    assert 1 not in drawn
    assert abs(drawn[0] / 40_000 - 0.25) < 0.015
    assert abs(drawn[3] / 40_000 - 0.5) < 0.015
    assert _Flat([5], [0.0] * 5 + [1.0]).sample(rng, 5) is None  # weights are indexed by wallet


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wallets": 1}, "--wallets"),
        ({"hot_share": 0.5, "hot_wallets": 1}, "--hot-wallets"),
        ({"cross_shard": 0.5, "shards": 1}, "2 shards"),
        ({"read_share": 1.5}, "--read-share"),
        ({"zipf_s": 0.0}, "--zipf"),
    ],
)
def test_impossible_scenarios_are_refused_with_a_reason(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        workload(**options)


def test_cross_shard_below_one_needs_two_wallets_per_shard() -> None:
    ids = wallet_ids("w", 3)
    if len({shard_of(wallet, 3) for wallet in ids}) == 3:  # one wallet per shard
        with pytest.raises(ValueError, match="2 wallets on every shard"):
            Workload(Scenario(wallets=3, shards=3, cross_shard=0.5), ids, random.Random(1))
