"""What the load is made of: which wallets each transfer moves money between, and how many
requests are reads. Pure and deterministic: every choice comes from the ``random.Random`` it is
given, so a seed replays the same workload (the wrk driver pre-generates its sequence from it).

Scenarios (they combine):

- **uniform** over ``wallets`` wallets (the default);
- **zipf** (``zipf_s``): wallet of rank r (1-based, in id order) weighs ``1 / r**s``;
- **hot** (``hot_share``, ``hot_wallets``): that share of transfers has both sides among the
  first ``hot_wallets`` wallets (uniformly); the rest follow the population (uniform or zipf);
- **cross-shard ratio** (``cross_shard``): that share of transfers has its two wallets on
  different shards (``ledger.shard_of`` with the server's shard count). The receiver is drawn
  from the same distribution restricted to the wanted shards; when the hot set has no wallet
  there, it is drawn from the whole population (the ratio wins over the hot share, since it is
  the figure the run is about). None: whatever the distribution gives (about (S-1)/S uniform);
- **read mix** (``read_share``): that share of requests is ``GET /v1/wallets/{id}/balance`` of a
  wallet drawn like a sender.

A transfer never has the same wallet on both sides.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

from ledger import shard_of


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    wallets: int
    shards: int
    hot_share: float = 0.0
    hot_wallets: int = 2
    zipf_s: float | None = None
    cross_shard: float | None = None
    read_share: float = 0.0
    batch: int = 1  # transfers per request (HTTP) or per message (core)
    amount: int = 1

    def problems(self) -> list[str]:
        """What makes this scenario impossible, as sentences (empty when it is fine)."""
        found = []
        if self.wallets < 2:
            found.append("--wallets must be at least 2")
        if self.shards < 1:
            found.append("--shards must be at least 1")
        if not 0 <= self.hot_share <= 1:
            found.append("--hot-share must be between 0 and 1")
        if self.hot_share > 0 and not 2 <= self.hot_wallets <= self.wallets:
            found.append("--hot-wallets must be between 2 and --wallets")
        if self.zipf_s is not None and self.zipf_s <= 0:
            found.append("--zipf must be positive")
        if self.cross_shard is not None and not 0 <= self.cross_shard <= 1:
            found.append("--cross-shard must be between 0 and 1")
        if self.cross_shard is not None and self.cross_shard > 0 and self.shards < 2:
            found.append("--cross-shard above 0 needs at least 2 shards")
        if not 0 <= self.read_share <= 1:
            found.append("--read-share must be between 0 and 1")
        if self.batch < 1:
            found.append("--batch must be at least 1")
        if self.amount < 1:
            found.append("--amount must be at least 1")
        return found


def wallet_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index}" for index in range(count)]


@dataclass(frozen=True, slots=True)
class Read:
    wallet_id: str


@dataclass(frozen=True, slots=True)
class Transfers:
    pairs: tuple[tuple[str, str], ...]  # (from_wallet_id, to_wallet_id), ``batch`` of them


Op = Read | Transfers


class _Weighted:
    """Sampling by weight from a fixed list of wallet indices, whole or one shard at a time,
    optionally excluding one member (exactly: its weight is cut out of the range drawn from)."""

    def __init__(self, members: list[int], weights: list[float], shard: list[int]) -> None:
        assert members
        self.all = _Flat(members, weights)
        by_shard: dict[int, list[int]] = {}
        for member in members:
            by_shard.setdefault(shard[member], []).append(member)
        self.shards = sorted(by_shard)
        self.by_shard = {s: _Flat(ids, weights) for s, ids in by_shard.items()}

    def sample(self, rng: random.Random, exclude: int | None = None) -> int | None:
        return self.all.sample(rng, exclude)

    def sample_same_shard(self, rng: random.Random, shard: int, exclude: int) -> int | None:
        flat = self.by_shard.get(shard)
        return None if flat is None else flat.sample(rng, exclude)

    def sample_other_shard(self, rng: random.Random, shard: int) -> int | None:
        others = [s for s in self.shards if s != shard]
        if not others:
            return None
        totals = list(itertools.accumulate(self.by_shard[s].total for s in others))
        point = rng.random() * totals[-1]
        chosen = others[min(bisect.bisect_right(totals, point), len(others) - 1)]
        return self.by_shard[chosen].sample(rng, None)


class _Flat:
    def __init__(self, members: list[int], weights: list[float]) -> None:
        self.members = members
        self.cumulative = list(itertools.accumulate(weights[m] for m in members))
        self.position = {member: place for place, member in enumerate(members)}
        self.weight = {member: weights[member] for member in members}

    @property
    def total(self) -> float:
        return self.cumulative[-1]

    def sample(self, rng: random.Random, exclude: int | None) -> int | None:
        members, cumulative, position = self.members, self.cumulative, self.position
        total = cumulative[-1]
        if exclude is not None and exclude in position:
            if len(members) == 1:
                return None
            cut = self.weight[exclude]
            place = position[exclude]
            start = cumulative[place - 1] if place else 0.0  # where the excluded member's range begins
            point = rng.random() * (total - cut)
            if point >= start:
                point += cut
        else:
            point = rng.random() * total
        place = min(bisect.bisect_right(cumulative, point), len(members) - 1)
        chosen = members[place]
        if chosen == exclude:  # float rounding at a range edge: step to a neighbour
            chosen = members[place + 1] if place + 1 < len(members) else members[place - 1]
        return chosen


class Workload:
    """Draws requests for one generator (one process or one wrk script) from ``rng``."""

    def __init__(self, scenario: Scenario, ids: list[str], rng: random.Random) -> None:
        problems = scenario.problems()
        if problems:
            raise ValueError("; ".join(problems))
        assert len(ids) == scenario.wallets
        self.scenario = scenario
        self.ids = ids
        self.rng = rng
        self.shard = [shard_of(wallet_id, scenario.shards) for wallet_id in ids]
        if scenario.zipf_s is None:
            weights = [1.0] * len(ids)
        else:
            weights = [1.0 / (rank ** scenario.zipf_s) for rank in range(1, len(ids) + 1)]
        self.population = _Weighted(list(range(len(ids))), weights, self.shard)
        self.hot: _Weighted | None = None
        if scenario.hot_share > 0:
            self.hot = _Weighted(list(range(scenario.hot_wallets)), [1.0] * len(ids), self.shard)
        if scenario.cross_shard is not None:
            per_shard: dict[int, int] = {}
            for shard in self.shard:
                per_shard[shard] = per_shard.get(shard, 0) + 1
            if scenario.cross_shard < 1 and min(per_shard.values()) < 2:
                raise ValueError("--cross-shard below 1 needs at least 2 wallets on every shard in use")
            if scenario.cross_shard > 0 and len(per_shard) < 2:
                raise ValueError("--cross-shard above 0 needs wallets on at least 2 shards")

    def _pool(self) -> _Weighted:
        if self.hot is not None and self.rng.random() < self.scenario.hot_share:
            return self.hot
        return self.population

    def pair_indices(self) -> tuple[int, int]:
        pool = self._pool()
        sender = pool.sample(self.rng)
        assert sender is not None
        cross = self.scenario.cross_shard
        receiver: int | None
        if cross is None:
            receiver = pool.sample(self.rng, exclude=sender)
            if receiver is None:
                receiver = self.population.sample(self.rng, exclude=sender)
        elif self.rng.random() < cross:
            receiver = pool.sample_other_shard(self.rng, self.shard[sender])
            if receiver is None:
                receiver = self.population.sample_other_shard(self.rng, self.shard[sender])
        else:
            receiver = pool.sample_same_shard(self.rng, self.shard[sender], sender)
            if receiver is None:
                receiver = self.population.sample_same_shard(self.rng, self.shard[sender], sender)
        assert receiver is not None
        assert receiver != sender
        return sender, receiver

    def pair(self) -> tuple[str, str]:
        sender, receiver = self.pair_indices()
        return self.ids[sender], self.ids[receiver]

    def op(self) -> Op:
        if self.scenario.read_share > 0 and self.rng.random() < self.scenario.read_share:
            wallet = self._pool().sample(self.rng)
            assert wallet is not None
            return Read(self.ids[wallet])
        return Transfers(tuple(self.pair() for _ in range(self.scenario.batch)))
