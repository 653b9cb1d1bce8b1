"""Load ``POST /v1/transfers`` on a real ``wallet serve`` with wrk and report what it measured.

    python -m bench.transfers --wallets 10000 --connections 64 --duration 15
    python -m bench.transfers --hot            # every transfer on the same 2 wallets

It starts the server on a temporary data directory (or uses ``--url`` with ``--admin-token``),
creates the wallets and funds them, runs wrk with a generated Lua script (a unique
Idempotency-Key per request), stops the server with SIGTERM and reads the group-commit figures
it logs, then checks through the API that money is conserved. This is the foundation's load
script; the throughput issue grows it into ``wallet bench``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

LUA = r"""
local wallets = {wallets}
local hot = {hot}
local counter = 0
local prefix = ""
function setup(thread)
  thread:set("prefix", string.format("%d-%d-", os.time(), math.random(1, 1000000000)))
end
function init(args)
  math.randomseed(os.time() + math.random(1, 100000))
end
request = function()
  counter = counter + 1
  local a, b
  if hot then
    if counter % 2 == 0 then a, b = 0, 1 else a, b = 1, 0 end
  else
    a = math.random(0, wallets - 1)
    b = math.random(0, wallets - 2)
    if b >= a then b = b + 1 end
  end
  local body = string.format('{{"from_wallet_id":"w%d","to_wallet_id":"w%d","amount":1}}', a, b)
  return wrk.format("POST", "/v1/transfers", {{
    ["Authorization"] = "Bearer {token}",
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. counter,
  }}, body)
end
"""

DEPOSIT = 10**12


async def _seed(url: str, token: str, wallets: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        response = await http.post("/v1/assets", json={"code": "BEN", "scale": 2})
        assert response.status_code in (200, 201), response.text

        async def make(start: int) -> None:
            for index in range(start, wallets, 32):
                wallet_id = f"w{index}"
                r = await http.post("/v1/wallets", json={"id": wallet_id, "owner_id": f"o{index}", "asset": "BEN"})
                assert r.status_code in (200, 201), r.text
                r = await http.post(
                    "/v1/deposits", json={"wallet_id": wallet_id, "amount": DEPOSIT},
                    headers={"Idempotency-Key": f"seed-{wallet_id}"},
                )
                assert r.status_code == 201, r.text

        async with trio.open_nursery() as nursery:
            for start in range(32):
                nursery.start_soon(make, start)


async def _conserved(url: str, token: str, wallets: int) -> tuple[bool, int]:
    headers = {"Authorization": f"Bearer {token}"}
    total = 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        for index in range(wallets):
            total += (await http.get(f"/v1/wallets/w{index}")).json()["balance"]
        treasury = (await http.get("/v1/wallets/treasury:BEN")).json()["balance"]
    return total + treasury == 0 and total == wallets * DEPOSIT, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument("--hot", action="store_true", help="all transfers between 2 wallets")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--shards", type=int, default=None)
    parser.add_argument("--port", type=int, default=18181)
    parser.add_argument("--loop", choices=["trio", "asyncio", "uvloop"], default=None,
                        help="the server's event loop (wallet serve --loop; default: its own, trio)")
    arguments = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    wallets = 2 if arguments.hot else arguments.wallets
    token = "bench-admin-token"
    url = f"http://127.0.0.1:{arguments.port}"
    with tempfile.TemporaryDirectory(prefix="wallet-bench-") as temp:
        data = Path(temp) / "data"
        log_path = Path(temp) / "server.log"
        command = [sys.executable, "-m", "server.cli", "serve", "--data", str(data), "--port", str(arguments.port)]
        if arguments.loop:
            command += ["--loop", arguments.loop]
        if arguments.shards:
            command += ["--shards", str(arguments.shards)]
        env = dict(os.environ, WALLET_ADMIN_TOKEN=token)
        with open(log_path, "wb") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 30
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    print(f"the server did not become ready:\n{log_path.read_text()[-3000:]}", file=sys.stderr)
                    return 2
                try:
                    if httpx.get(url + "/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            started = time.monotonic()
            trio.run(_seed, url, token, wallets)
            print(f"seeded {wallets} wallets in {time.monotonic() - started:.1f} s")
            script = Path(temp) / "transfers.lua"
            script.write_text(LUA.format(wallets=wallets, hot="true" if arguments.hot else "false", token=token))
            before = _cpu_seconds(server.pid)
            result = subprocess.run(
                ["wrk", "-t", str(arguments.threads), "-c", str(arguments.connections),
                 "-d", f"{arguments.duration}s", "--latency", "-s", str(script), url],
                capture_output=True, text=True, check=True,
            )
            cpu = _cpu_seconds(server.pid) - before
            print(result.stdout)
            print(f"server CPU: {cpu:.1f} s over {arguments.duration} s ({100 * cpu / arguments.duration:.0f}% of one core)")
            ok, total = trio.run(_conserved, url, token, wallets)
            print(f"money conserved: {'yes' if ok else 'NO'} (sum of wallets {total})")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        for line in log_path.read_text().splitlines():
            if "stopped cleanly" in line:
                match = re.search(r"stopped cleanly.*", line)
                print("server:", match.group(0) if match else line)
    return 0 if ok else 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


if __name__ == "__main__":
    sys.exit(main())
