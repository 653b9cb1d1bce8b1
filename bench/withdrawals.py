"""Payout throughput: how many withdrawals per second the payout workers complete against a bank
with a given latency.

    python -m bench.withdrawals --withdrawals 3000 --bank-latency-ms 50 --workers 16

Starts ``wallet bank-sim`` and ``wallet serve --bank-url`` on a temporary data directory,
funds ``--wallets`` wallets, submits the withdrawals from ``--connections`` concurrent clients,
and reads ``wallet_payout_results_total`` from ``/metrics`` until every one has ended. Reports
the acceptance rate, the completion rate over the whole run and after the last acceptance (the
payout workers alone), and checks that the bank paid each once and that the treasury
moved by exactly what the bank paid.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from wallet_client import AsyncWalletClient

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _completed(metrics: str) -> tuple[int, int, int]:
    """(completed, failed, dead) from the payout results counter."""
    found = {"completed": 0, "failed": 0, "dead": 0}
    for line in metrics.splitlines():
        if line.startswith("wallet_payout_results_total{"):
            for status in found:
                if f'status="{status}"' in line:
                    found[status] = int(float(line.rsplit(" ", 1)[1]))
    return found["completed"], found["failed"], found["dead"]


async def _drive(url: str, wallets: int, count: int, connections: int) -> tuple[float, float, list[float]]:
    limits = httpx.Limits(max_connections=connections)
    # Setup and the metric polls through wallet_client; the measured requests below go through
    # its httpx client directly (the figure is the payout rate, bound by the bank, but the
    # harness keeps the client's own cost out of the measured loop all the same).
    async with AsyncWalletClient(url, token=TOKEN, limits=limits, timeout_s=60) as client:
        http = client.http
        await client.create_asset("USD", 2)
        ids = [f"payout-{index}" for index in range(wallets)]
        for wallet_id in ids:
            await client.create_wallet("bench", "USD", id=wallet_id)
            await client.deposit(wallet_id, 10**12, idempotency_key=f"fund-{wallet_id}")
        base = _completed(await client.metrics())[0]
        queue = trio.Semaphore(connections)
        started = time.perf_counter()

        async def one(index: int) -> None:
            async with queue:
                response = await http.post(
                    "/v1/withdrawals",
                    json={"wallet_id": ids[index % wallets], "amount": 1 + index % 1000,
                          "destination": {"account": f"acct-{index}"}},
                    headers={"Idempotency-Key": f"wd-{index}"},
                )
                assert response.status_code == 202, response.text

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)
        accepted = time.perf_counter()
        marks: list[float] = []  # time at which each 1% of the completions was seen
        while True:
            done = _completed(await client.metrics())[0] - base
            now = time.perf_counter()
            while len(marks) < 100 and done >= (len(marks) + 1) * count / 100:
                marks.append(now)
            if done >= count:
                break
            await trio.sleep(0.05)
        return started, accepted, marks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--withdrawals", type=int, default=3000)
    parser.add_argument("--wallets", type=int, default=100)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--bank-latency-ms", type=float, default=50.0)
    parser.add_argument("--loop", default=None)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wallet-payouts-") as temp:
        bank_port, port = _free_port(), _free_port()
        bank_url, url = f"http://127.0.0.1:{bank_port}", f"http://127.0.0.1:{port}"
        env = dict(os.environ, WALLET_ADMIN_TOKEN=TOKEN)
        with open(Path(temp) / "bank.log", "wb") as bank_log, open(Path(temp) / "server.log", "wb") as log:
            bank = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "bank-sim", "--port", str(bank_port),
                 "--latency-ms", str(arguments.bank_latency_ms), "--log-level", "WARNING"],
                stdout=bank_log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
            command = [sys.executable, "-m", "server.cli", "serve", "--data", str(Path(temp) / "data"),
                       "--port", str(port), "--bank-url", bank_url + "/payouts",
                       "--payout-workers", str(arguments.workers), "--log-level", "WARNING"]
            if arguments.loop:
                command += ["--loop", arguments.loop]
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            try:
                _wait_http(bank_url, bank, "/health")
                _wait_http(url, server, "/ready")
                started, accepted, marks = trio.run(
                    _drive, url, arguments.wallets, arguments.withdrawals, arguments.connections
                )
                headers = {"Authorization": f"Bearer {TOKEN}"}
                treasury = httpx.get(url + "/v1/wallets/treasury:USD", headers=headers).json()["balance"]
                report = httpx.get(bank_url + "/payouts", timeout=30).json()
            finally:
                server.terminate()
                bank.terminate()
                server.wait(30)
                bank.wait(30)
    count = arguments.withdrawals
    funded = arguments.wallets * 10**12
    paid = report["total_paid"].get("USD", 0)
    # Payouts alone: the completions after the last withdrawal was accepted, over that time.
    done_before = sum(1 for mark in marks if mark <= accepted) * count / 100
    after_s = marks[-1] - accepted
    after = (count - done_before) / after_s if after_s > 0 else float("nan")
    print(f"withdrawals: {count}, workers: {arguments.workers}, bank latency: {arguments.bank_latency_ms} ms")
    print(f"accepted:    {count / (accepted - started):8.0f} /s  ({accepted - started:.2f} s)")
    print(f"completed:   {count / (marks[-1] - started):8.0f} /s  over the whole run ({marks[-1] - started:.2f} s)")
    print(f"payouts:     {after:8.0f} /s  after the last acceptance ({count - done_before:.0f} completions in {after_s:.2f} s)")
    print(f"ceiling:     {arguments.workers / (arguments.bank_latency_ms / 1000):8.0f} /s  (workers / bank latency)")
    conserved = treasury == -funded + paid and len(report["items"]) == count
    print(f"bank paid {len(report['items'])} ids, {paid} in total; treasury moved by exactly that: {conserved}")
    return 0 if conserved else 1


if __name__ == "__main__":
    sys.exit(main())
