"""Cluster mode against the embedded server, and a takeover under load (issue 14's targets).

    python -m bench.cluster --runs 3                 # make bench-cluster
    python -m bench.cluster --takeover --runs 3      # make bench-takeover
    python -m bench.cluster --history 500000         # history reads after a takeover

The comparison starts, for each run, ``wallet serve --workers W`` and then ``wallet cluster up
--workers W`` (three NATS nodes, one group with an owner and a standby) on fresh temporary data
directories, and loads each with the same ``wallet bench --url`` invocations: single transfers
(64 connections) and MessagePack batches of 1000 (8 connections). The two kinds alternate so a
drift of the machine's speed falls on both; the medians and the cluster/embedded ratios are
printed at the end.

The takeover run loads a cluster with single transfers, SIGKILLs the group's owner (the pid in
``GET /v1/admin/cluster``) ``--kill-after`` seconds into the measured window, and reports how
long the group had no owner (until the view names another pid) and the bench's figures over the
whole window: its p99, p99.9 and max, and the ``503 ledger_unavailable`` answers of the gap
(the bench does not retry them). Everything shares this host's cores: read ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench._service import free_port

ROOT = Path(__file__).resolve().parents[1]
WALLET = [sys.executable, "-m", "server.cli"]
LOADS = {
    "single": ["--connections", "64"],
    "batch": ["--connections", "8", "--batch", "1000", "--msgpack"],
}


class Server:
    """``wallet serve`` or ``wallet cluster up`` on a data directory of its own."""

    def __init__(self, mode: str, data: Path, workers: int, extra: list[str] | None = None, groups: int = 1) -> None:
        self.mode, self.data, self.port = mode, data, free_port()
        if mode == "cluster" and groups > 1:
            extra = [*(extra or []), "--groups", str(groups)]
        self.url = f"http://127.0.0.1:{self.port}"
        command = ["cluster", "up"] if mode == "cluster" else ["serve"]
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log = open(data.with_suffix(".log"), "wb")  # closed in stop
        self.process = subprocess.Popen(
            [*WALLET, *command, "--data", str(data), "--port", str(self.port), "--workers", str(workers),
             *(extra or [])],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{mode} exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{mode} not ready in 120 s; see {self.log.name}")

    def owner_pid(self) -> int | None:
        token = (self.data / "admin.token").read_text().strip()
        try:
            response = httpx.get(f"{self.url}/v1/admin/cluster", headers={"Authorization": f"Bearer {token}"},
                                 timeout=2)
            owner = response.json()["groups"][0]["owner"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return None
        return int(owner["pid"]) if owner else None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _bench(server: Server, load: list[str], duration: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*WALLET, "bench", "--url", server.url, "--data", str(server.data), "--duration", str(duration),
         *load, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _figures(out: Path) -> dict[str, Any]:
    service = json.loads(out.read_text())["service"]
    latency = service["latency_ms"]
    return {"transfers_per_s": service["throughput"]["transfers_per_s"], "p99_ms": latency["p99"],
            "p999_ms": latency["p99.9"], "max_ms": latency["max"], "errors": service["errors"]}


def compare(runs: int, duration: float, workers: int, work: Path, *, groups: int = 1,
            loads: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {}
    for run in range(1, runs + 1):
        for name, load in LOADS.items():
            if loads and name not in loads:
                continue
            for mode in ("embedded", "cluster"):
                data = work / f"{mode}-{name}-{run}"
                server = Server(mode, data, workers, groups=groups)
                try:
                    out = data.with_suffix(".json")
                    bench = _bench(server, load, duration, out)
                    output = bench.communicate()[0].decode(errors="replace")
                    if bench.returncode != 0:
                        raise RuntimeError(f"wallet bench failed against {mode}:\n{output[-2000:]}")
                finally:
                    server.stop()
                figures = _figures(out)
                print(f"run {run} {name:6} {mode:8} {figures['transfers_per_s']:>10,.0f} transfers/s  "
                      f"p99 {figures['p99_ms']:7.1f} ms  errors {figures['errors'] or 'none'}", flush=True)
                results.setdefault(name, {}).setdefault(mode, []).append(figures["transfers_per_s"])
    print("\nmedians (transfers/s)")
    for name, modes in results.items():
        embedded, cluster = statistics.median(modes["embedded"]), statistics.median(modes["cluster"])
        print(f"  {name:6} embedded {embedded:>10,.0f}  cluster {cluster:>10,.0f}  ratio {cluster / embedded:.2f}")
    return results


def _watch(stream: Any, lines: list[str], loading: threading.Event) -> None:
    """Collects the bench's output; sets ``loading`` once its measured load begins."""
    for raw in stream:
        line = raw.decode(errors="replace")
        lines.append(line)
        if line.startswith("load:"):
            loading.set()


def _replayed(log_path: Path, after: int, killed: float) -> tuple[str, float | None]:
    """The new owner's recovery (records replayed, seconds, the snapshot it started from) in the
    cluster's log past byte ``after``, and the seconds from ``killed`` (``time.time()``) to its
    ``ready`` line: when it serves, which is later than when the cluster view names it."""
    text = log_path.read_bytes()[after:].decode(errors="replace")
    snapshot = re.search(r"recovery: snapshot \S+ at LSN ([0-9]+)", text)
    ready = re.search(r'"time": "([^"]+)"[^\n]*ready: ([0-9]+) records replayed in ([0-9.]+) s', text)
    if ready is None:
        return "recovery line not found", None
    start = f"from the snapshot at LSN {snapshot.group(1)}" if snapshot else "from the start of the log"
    at = datetime.fromisoformat(ready.group(1)).replace(tzinfo=UTC).timestamp()
    return (f"recovery replayed {int(ready.group(2)):,} records {start} in {float(ready.group(3)):.2f} s; "
            f"serving {at - killed:.2f} s after the kill"), at - killed


def takeover(runs: int, duration: float, kill_after: float, workers: int, work: Path, *, load: str = "single",
             extra: list[str] | None = None, groups: int = 1) -> None:
    gaps: list[float] = []
    servings: list[float] = []
    for run in range(1, runs + 1):
        data = work / f"takeover-{run}"
        server = Server("cluster", data, workers, extra, groups=groups)
        try:
            out = data.with_suffix(".json")
            bench = _bench(server, LOADS[load], duration, out)
            assert bench.stdout is not None
            loading = threading.Event()
            lines: list[str] = []
            reader = threading.Thread(target=_watch, args=(bench.stdout, lines, loading), daemon=True)
            reader.start()
            if not loading.wait(300):
                raise RuntimeError("the bench never started its load:\n" + "".join(lines[-20:]))
            time.sleep(2.0 + kill_after)  # bench's default warm-up, then into the measured window
            owner = server.owner_pid()
            assert owner is not None, "no owner before the kill"
            server.log.flush()
            logged = data.with_suffix(".log").stat().st_size
            killed_at = time.time()
            os.kill(owner, signal.SIGKILL)
            killed = time.monotonic()
            while True:
                now_owner = server.owner_pid()
                if now_owner is not None and now_owner != owner:
                    break
                if time.monotonic() - killed > 60:
                    raise RuntimeError("no new owner 60 s after the kill")
                time.sleep(0.05)
            gap = time.monotonic() - killed
            bench.wait()
            reader.join(5)
            if bench.returncode != 0:
                raise RuntimeError("wallet bench failed:\n" + "".join(lines[-30:]))
        finally:
            server.stop()
        figures = _figures(out)
        gaps.append(gap)
        recovery, serving = _replayed(data.with_suffix(".log"), logged, killed_at)
        if serving is not None:
            servings.append(serving)
        print(f"run {run}: new owner {gap:.2f} s after the SIGKILL ({recovery}); "
              f"over the {duration:g} s window {figures['transfers_per_s']:,.0f} transfers/s, "
              f"p99 {figures['p99_ms']:.1f} ms, p99.9 {figures['p999_ms']:.1f} ms, max {figures['max_ms']:.1f} ms, "
              f"errors {figures['errors']}", flush=True)
    print(f"\ntakeover: median {statistics.median(gaps):.2f} s (min {min(gaps):.2f}, max {max(gaps):.2f})")
    if servings:
        print(f"serving again: median {statistics.median(servings):.2f} s after the kill "
              f"(min {min(servings):.2f}, max {max(servings):.2f})")


def history_after_takeover(runs: int, transfers: int, workers: int, work: Path, settle_s: float) -> None:
    """Loads a cluster with ``transfers`` transfers (batches of 1000), waits until its history
    answers and ``settle_s`` more (the standby's projector follows its copy in the host's idle
    time), SIGKILLs the owner right after one more transfer, and reports when a wallet read and
    a history read of that last transfer answer 200 again, counted from the kill."""
    for run in range(1, runs + 1):
        server = Server("cluster", work / f"history-{run}", workers)
        try:
            token = (server.data / "admin.token").read_text().strip()
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                              timeout=60) as client:
                wallets = [f"w{number}" for number in range(100)]
                client.post("/v1/assets", json={"code": "USD", "scale": 2})
                for wallet in wallets:
                    client.post("/v1/wallets", json={"id": wallet, "owner_id": "o", "asset": "USD"})
                    client.post("/v1/deposits", json={"wallet_id": wallet, "amount": 10**12},
                                headers={"Idempotency-Key": f"d-{wallet}"})
                started = time.monotonic()
                for batch in range(transfers // 1000):
                    items = [{"idempotency_key": f"{batch}-{item}", "from_wallet_id": wallets[(batch + item) % 100],
                              "to_wallet_id": wallets[(batch + item + 1) % 100], "amount": 1} for item in range(1000)]
                    response = client.post("/v1/transfers/batch", json={"atomic": False, "transfers": items})
                    response.raise_for_status()
                loaded = time.monotonic() - started
                while client.get(f"/v1/wallets/{wallets[0]}/transactions", params={"limit": 1}).status_code != 200:
                    time.sleep(0.2)
                time.sleep(settle_s)
                last = client.post("/v1/transfers", json={"from_wallet_id": wallets[0], "to_wallet_id": wallets[1],
                                                          "amount": 1}, headers={"Idempotency-Key": "last"})
                last.raise_for_status()
                owner = server.owner_pid()
                assert owner is not None
                killed = time.monotonic()
                os.kill(owner, signal.SIGKILL)
                wallet_s = history_s = None
                while history_s is None or wallet_s is None:
                    if wallet_s is None and client.get(f"/v1/wallets/{wallets[0]}").status_code == 200:
                        wallet_s = time.monotonic() - killed
                    if history_s is None and client.get(f"/v1/transactions/{last.json()['id']}").status_code == 200:
                        history_s = time.monotonic() - killed
                    time.sleep(0.05)
                print(f"run {run}: {transfers:,} transfers loaded in {loaded:.1f} s, {settle_s:g} s idle; after the "
                      "owner's SIGKILL "
                      f"wallet reads answered at {wallet_s:.2f} s, the history read at {history_s:.2f} s", flush=True)
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per bench (default 5; 20 with --takeover)")
    parser.add_argument("--workers", type=int, default=2, help="HTTP workers of both servers (default 2)")
    parser.add_argument("--takeover", action="store_true", help="measure a takeover under load instead")
    parser.add_argument("--kill-after", type=float, default=8.0,
                        help="--takeover: seconds into the measured window at which the owner is killed")
    parser.add_argument("--load", choices=sorted(LOADS), default="single",
                        help="--takeover: the load during the takeover (default single transfers)")
    parser.add_argument("--snapshot-every", type=int, default=None,
                        help="passed to wallet cluster up: records between the owner's snapshots and the "
                             "standby's snapshots of its copy")
    parser.add_argument("--history", type=int, default=None, metavar="TRANSFERS",
                        help="measure instead how soon history reads answer after a takeover, with this "
                             "many transfers in the log")
    parser.add_argument("--groups", type=int, default=1,
                        help="ledger groups of the cluster (default 1; the takeover kills group 0's owner)")
    parser.add_argument("--only", choices=sorted(LOADS), action="append",
                        help="compare this load only (repeatable; default: every load)")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="--history: idle seconds between the load and the kill (default 5)")
    arguments = parser.parse_args(argv)
    # SIGTERM (a Ctrl-C of make, a CI timeout) unwinds like SIGINT, so the servers are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as temporary:
        if arguments.history is not None:
            history_after_takeover(arguments.runs, arguments.history, arguments.workers, Path(temporary),
                                   arguments.settle)
        elif arguments.takeover:
            extra = [] if arguments.snapshot_every is None else ["--snapshot-every", str(arguments.snapshot_every)]
            takeover(arguments.runs, arguments.duration or 20.0, arguments.kill_after, arguments.workers,
                     Path(temporary), load=arguments.load, extra=extra, groups=arguments.groups)
        else:
            compare(arguments.runs, arguments.duration or 5.0, arguments.workers, Path(temporary),
                    groups=arguments.groups, loads=arguments.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
