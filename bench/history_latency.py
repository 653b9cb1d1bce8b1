"""Latency of statement pages on a running server: the first page and pages at random cursors.

    python -m bench.history_latency --url http://127.0.0.1:8080 --token T --wallet w0 --requests 500
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import sys
import time

import httpx


def cursor(lsn: int) -> str:
    return base64.urlsafe_b64encode(f"t:{lsn}".encode()).decode().rstrip("=")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--wallet", required=True)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args(argv)
    rng = random.Random(arguments.seed)
    headers = {"Authorization": f"Bearer {arguments.token}"}
    with httpx.Client(base_url=arguments.url, headers=headers, timeout=60) as http:
        top = http.get(f"/v1/wallets/{arguments.wallet}/transactions", params={"limit": "1"}).json()["items"]
        newest = top[0]["lsn"] if top else 1
        for label, random_cursor in (("first page", False), ("random cursor", True)):
            latencies = []
            for _ in range(arguments.requests):
                params = {"limit": str(arguments.limit)}
                if random_cursor:
                    params["cursor"] = cursor(rng.randint(1, newest))
                started = time.perf_counter()
                response = http.get(f"/v1/wallets/{arguments.wallet}/transactions", params=params)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            latencies.sort()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
            print(f"{arguments.wallet} {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(latencies)} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
