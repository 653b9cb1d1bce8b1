"""The cluster crash loop: ``wallet cluster up`` under concurrent load, and at a random moment of
each iteration one of its processes is broken for real, chosen by the seed (with ``--groups``
above 1, of a group chosen by the seed; the load's transfers then cross groups about half the
time):

    owner      SIGKILL of the group's owner (most often); the standby must take over
    pause      SIGSTOP of the owner until another member took over and served, then SIGCONT:
               it must exit fenced (status 75) without another reply
    standby    SIGKILL of the standby (it comes back and copies the stream again)
    node       SIGKILL of a NATS node, the stream's leader half the time; never more than one is
               down: the next iteration starts once the supervisor restarted it and the view
               shows all three up
    worker     SIGKILL of an HTTP worker

The clients keep their own record (``tests.e2e._load.Ledgerbook``): after each iteration, once
``/ready`` answers and the group has an owner and a standby again, every unanswered request is
retried with its key, and balances, conservation, the history and the set of acknowledged
transaction ids must equal the record exactly; the stream itself is read too (``StreamAudit``):
no message of a replaced owner after its successor's epoch record. Each iteration records what was broken and how
long until the group served again: the first acknowledgement of a request sent after the
signal (for the owner, the takeover time as clients see it).

    make crashloop-cluster ITERATIONS=20        # CRASHLOOP_SEED=n repeats one run
    make crashloop-cluster GROUPS=2             # two ledger groups

With several groups a credit the worker could not finish (its receiver's group had no owner, or
the worker died) is finished by the owners within seconds, so the check against the record is
repeated until it holds, for up to ``SETTLE_S``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import trio

from server._member import EXIT_FENCED, KIND, stream_name
from tests.e2e._cluster import ClusterProcess, all_up, healthy
from tests.e2e._load import Ledgerbook
from tests.e2e._supervised import pid_alive, processes
from tests.e2e.crashloop import iterate, seed_from_environment
from wal import StreamClient

# What is broken, and how often (weights).
ACTIONS = {"owner": 45, "pause": 12, "standby": 13, "node": 15, "worker": 15}
SERVED_TIMEOUT_S = 60.0  # no acknowledgement for this long after a failure: the loop found a hang
SETTLE_S = 30.0  # several groups: the owners finish what the workers left within this
BACK_TIMEOUT_S = 60.0  # for a killed process to be back in the view, a paused owner to exit


async def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(function, *args, **kwargs))


async def _served(book: Ledgerbook, started: float, what: str) -> float:
    """Seconds from ``started`` until a request sent after it was acknowledged."""
    with trio.move_on_after(SERVED_TIMEOUT_S):
        while book.served_at is None:
            await trio.sleep(0.02)
        return book.served_at - started
    raise AssertionError(f"after the {what}, no request was acknowledged for {SERVED_TIMEOUT_S} s")


class StreamAudit:
    """Reads a group's stream as it grows and checks that the fence held: epoch records only
    grow, and every other message (a group commit's frames, a read's barrier) carries the epoch
    of the latest epoch record before it, so no replaced owner appended anything after its
    successor's record (what a paused owner must not do)."""

    def __init__(self, client: Any, group: int = 0) -> None:
        self.client = client  # a connected wal.StreamClient (or a FakeStreamClient)
        self.group = group
        self.seq = 0
        self.epoch = 0
        self.counts: Counter[str] = Counter()

    def check(self) -> None:
        stream = stream_name(self.group)
        last = self.client.last_sequence(stream)
        deadline = time.monotonic() + BACK_TIMEOUT_S
        while self.seq < last:
            if time.monotonic() > deadline:
                raise AssertionError(f"the stream's messages {self.seq + 1}..{last} could not be read")
            for message in self.client.fetch(stream, self.seq + 1, max_messages=1000, wait_s=1.0):
                kind = message.headers.get(KIND, "?")
                if kind == "epoch":
                    epoch = int(msgpack.unpackb(message.data)[0])
                    if epoch <= self.epoch:
                        raise AssertionError(f"stream sequence {message.seq}: epoch {epoch} after epoch {self.epoch}")
                    self.epoch = epoch
                else:
                    found = re.match(rf"g{self.group}-e(\d+)-", message.headers.get("Nats-Msg-Id", ""))
                    if found is None or int(found.group(1)) != self.epoch:
                        raise AssertionError(f"stream sequence {message.seq}: a {kind} message "
                                             f"{message.headers.get('Nats-Msg-Id')!r} after the record of epoch "
                                             f"{self.epoch}: a replaced owner appended")
                self.counts[kind] += 1
                self.seq = message.seq

    def close(self) -> None:
        self.client.close()


class ClusterChaos:
    """``disrupt`` and ``mend`` for ``crashloop.iterate`` against one ``ClusterProcess``."""

    def __init__(self, cluster: ClusterProcess, audits: list[StreamAudit], *,
                 actions: list[str] | None = None) -> None:
        self.cluster = cluster
        self.audits = audits  # one per group
        self.actions = actions  # a fixed sequence (the CI test), else drawn by the seed

    async def view(self) -> dict[str, Any]:
        return dict(await _in_thread(self.cluster.view))

    async def wait_for(self, predicate: Any, timeout_s: float = BACK_TIMEOUT_S) -> dict[str, Any]:
        return dict(await _in_thread(self.cluster.wait_for, predicate, timeout_s))

    async def disrupt(self, iteration: int, rng: random.Random, book: Ledgerbook) -> dict[str, Any]:
        if self.actions is not None:
            action = self.actions[iteration % len(self.actions)]
        else:
            action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        view = await self.view()
        number = rng.randrange(len(view["groups"])) if len(view["groups"]) > 1 else 0
        group = view["groups"][number]
        if action in ("owner", "pause"):
            record = await self._owner(number, group["owner"], book, pause=action == "pause")
        elif action == "standby":
            record = await self._standby(number, group["standbys"][0]["pid"], book)
        elif action == "node":
            record = await self._node(number, view["log"]["nodes"], rng, book)
        else:
            assert action == "worker", action
            record = await self._worker(rng, book)
        if len(view["groups"]) > 1 and action != "worker":
            record["group"] = number
        return record

    async def _owner(self, number: int, owner: dict[str, Any], book: Ledgerbook, *, pause: bool) -> dict[str, Any]:
        pid = owner["pid"]
        started = book.watch()
        os.kill(pid, signal.SIGSTOP if pause else signal.SIGKILL)
        view = await self.wait_for(lambda view: view["groups"][number]["owner"] is not None
                                   and view["groups"][number]["owner"]["pid"] != pid)
        record = {"killed": "owner (SIGSTOP)" if pause else "owner", "pid": pid,
                  "owner_s": round(time.monotonic() - started, 3)}
        record["served_s"] = round(await _served(book, started, record["killed"]), 3)
        new = view["groups"][number]["owner"]
        assert new["epoch"] > owner["epoch"], (owner, new)
        if pause:
            os.kill(pid, signal.SIGCONT)
            record["exit"] = await self._exit_status(pid)
            if record["exit"] != EXIT_FENCED:
                raise AssertionError(f"the paused owner {pid} exited with {record['exit']}, not {EXIT_FENCED}")
        return record

    async def _exit_status(self, pid: int) -> int:
        """The status the cluster supervisor logged for ``pid`` (it is not our child)."""
        pattern = re.compile(rf"\(pid {pid}\) exited with status (-?\d+)")
        with trio.move_on_after(BACK_TIMEOUT_S):
            while True:
                found = pattern.search(self.cluster.log())
                if found is not None:
                    return int(found.group(1))
                await trio.sleep(0.1)
        raise AssertionError(f"the resumed owner {pid} did not exit within {BACK_TIMEOUT_S} s "
                             f"(alive: {pid_alive(pid)})")

    async def _standby(self, number: int, pid: int, book: Ledgerbook) -> dict[str, Any]:
        started = book.watch()
        os.kill(pid, signal.SIGKILL)
        await self.wait_for(lambda view: healthy(view) and view["groups"][number]["standbys"][0]["pid"] != pid)
        back = time.monotonic() - started
        return {"killed": "standby", "pid": pid, "back_s": round(back, 3),
                "served_s": round(await _served(book, started, "standby's SIGKILL"), 3)}

    async def _node(self, number: int, nodes: list[dict[str, Any]], rng: random.Random,
                    book: Ledgerbook) -> dict[str, Any]:
        # The group's stream's leader as the stream says it now (the view's flag is the owner's
        # last status line, up to half a second old); nodes are listed in order, n0 n1 n2.
        name = await _in_thread(self.audits[number].client.stream_leader, stream_name(number))
        leader = None if name is None else int(name.removeprefix("n"))
        if rng.random() < 0.5 and leader is not None:
            index = leader
        else:
            index = rng.choice([i for i in range(len(nodes)) if i != leader])
        node = nodes[index]
        started = book.watch()
        os.kill(node["pid"], signal.SIGKILL)
        await self.wait_for(lambda view: all_up(view) and view["log"]["nodes"][index]["pid"] != node["pid"])
        back = time.monotonic() - started
        return {"killed": "node (stream leader)" if index == leader else "node", "pid": node["pid"],
                "back_s": round(back, 3), "served_s": round(await _served(book, started, "node's SIGKILL"), 3)}

    async def _worker(self, rng: random.Random, book: Ledgerbook) -> dict[str, Any]:
        workers = [item["pid"] for item in await _in_thread(processes, self.cluster) if item["role"] == "http"]
        pid = rng.choice(workers)
        started = book.watch()
        os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            now = [item["pid"] for item in processes(self.cluster) if item["role"] == "http"]
            return len(now) == len(workers) and pid not in now and all(pid_alive(other) for other in now)

        with trio.move_on_after(BACK_TIMEOUT_S):
            while not await _in_thread(replaced):
                await trio.sleep(0.1)
        if not await _in_thread(replaced):
            raise AssertionError(f"the HTTP worker {pid} was not replaced within {BACK_TIMEOUT_S} s")
        return {"killed": "worker", "pid": pid, "back_s": round(time.monotonic() - started, 3),
                "served_s": round(await _served(book, started, "worker's SIGKILL"), 3)}

    async def mend(self, record: dict[str, Any]) -> None:
        """Until ``/ready`` answers and the group has an owner and a standby, all nodes up;
        then the stream's new messages are audited."""
        await _in_thread(self.cluster.wait_ready, BACK_TIMEOUT_S)
        await self.wait_for(all_up)
        for audit in self.audits:
            await _in_thread(audit.check)


async def cluster_crash_loop(data_dir: Path, *, iterations: int, seed: int, clients: int = 16, groups: int = 1,
                             actions: list[str] | None = None, verbose: bool = False) -> dict[str, Any]:
    """Runs the loop on a cluster of its own in ``data_dir``; returns the totals and the
    iterations' records. Raises AssertionError (with the seed) at the first difference."""
    cluster = ClusterProcess(data_dir, extra_args=["--groups", str(groups)] if groups > 1 else None)
    cluster.start()
    client = None
    audits: list[StreamAudit] = []
    try:
        view = dict(await _in_thread(cluster.wait_for, all_up, BACK_TIMEOUT_S))
        client = StreamClient([node["url"] for node in view["log"]["nodes"]], name=f"crashloop-audit-{os.getpid()}")
        client.connect()
        audits = [StreamAudit(client, group) for group in range(groups)]
        chaos = ClusterChaos(cluster, audits, actions=actions)
        book, records = await iterate(
            cluster, iterations=iterations, seed=seed, clients=clients, disrupt=chaos.disrupt, mend=chaos.mend,
            pause_unanswered_s=0.05, history_every_iteration=True, settle_s=SETTLE_S if groups > 1 else 0.0,
            batch_share=0.1 if groups > 1 else 0.0,
            report=(lambda record: print(f"  {record}", flush=True)) if verbose else None,
        )
        for audit in audits:
            await _in_thread(audit.check)
    except BaseException:
        if verbose:
            print(cluster.log_tail(), file=sys.stderr)
        cluster.kill()
        raise
    finally:
        if client is not None:
            client.close()
    status = await _in_thread(cluster.terminate)
    if status != 0:
        raise AssertionError(f"wallet cluster up exited with {status} at SIGTERM\n{cluster.log_tail()}")
    counts: Counter[str] = Counter()
    for audit in audits:
        counts.update(audit.counts)
    return {"iterations": len(records), "acknowledged": len(book.acknowledged),
            "retried": sum(record["retried"] for record in records), "records": records,
            "stream": dict(counts), "epochs": sum(audit.epoch for audit in audits),
            "settle_s": [record["settle_s"] for record in records if "settle_s" in record]}


def summary(totals: dict[str, Any]) -> str:
    records = totals["records"]
    lines = [f"{totals['iterations']} iterations, {totals['acknowledged']} transfers acknowledged, "
             f"{totals['retried']} requests retried after a failure; the stream audited: "
             f"{totals['stream']}, {totals['epochs']} epochs"]

    def spread(times: list[float]) -> str:
        return (f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, max {max(times):.2f} s "
                f"(n={len(times)})")

    takeovers = [record["served_s"] for record in records if record["killed"].startswith("owner")]
    if takeovers and not any("group" in record for record in records):
        lines.append(f"takeover, owner SIGKILL or SIGSTOP to the first write served: {spread(takeovers)}")
    owners = [record["owner_s"] for record in records if "owner_s" in record]
    if owners:
        lines.append(f"owner SIGKILL or SIGSTOP to the new owner in the view: {spread(owners)}")
    if any("group" in record for record in records):
        # Several groups: any request served (the other groups' keep going) counts as served.
        converged = [record for record in records if record.get("checks", 1) > 1]
        lines.append(f"the record matched at the first check after {len(records) - len(converged)} iterations; "
                     f"after waiting for the owners' finishing in {len(converged)} iterations"
                     + (f" (up to {max(record['settle_s'] for record in converged):.1f} s)" if converged else ""))
    lines.append("served again after each kind of failure:")
    for killed in sorted({record["killed"] for record in records}):
        lines.append(f"  {killed}: {spread([record['served_s'] for record in records if record['killed'] == killed])}")
    return "\n".join(lines)


def main() -> int:
    iterations = int(os.environ.get("ITERATIONS", "20"))
    groups = int(os.environ.get("CLUSTER_GROUPS") or "1")  # (GROUPS is a variable of bash)
    seed = seed_from_environment()
    temp = Path(tempfile.mkdtemp(prefix="crashloop-cluster-"))
    print(f"cluster crash loop seed {seed}, {iterations} iterations, {groups} group(s), in {temp}", flush=True)
    try:
        totals = trio.run(lambda: cluster_crash_loop(temp / "data", iterations=iterations, seed=seed, groups=groups,
                                                     verbose=True))
    except BaseException:
        print(f"cluster crash loop seed {seed} FAILED; the data and the log are kept in {temp}", flush=True)
        raise
    shutil.rmtree(temp, ignore_errors=True)
    print(f"cluster crash loop seed {seed}:\n{summary(totals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
