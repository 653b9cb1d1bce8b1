"""``wallet seed`` against the real server: it makes what it says and can run twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e._server import ADMIN_TOKEN, ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def test_seed_makes_demo_data_and_is_idempotent(server: ServerProcess) -> None:
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "seed", "--url", server.url, "--token", ADMIN_TOKEN],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert "curl" in result.stdout and "alice-usd" in result.stdout
    with server.client() as http:
        balances = {w: http.get(f"/v1/wallets/{w}").json()["balance"] for w in ("alice-usd", "bob-usd", "carol-usd")}
        treasury = http.get("/v1/wallets/treasury:USD").json()["balance"]
    assert balances == {"alice-usd": 10000 - 1250 + 199, "bob-usd": 10000 + 1250 - 500, "carol-usd": 10000 + 500 - 199}
    assert sum(balances.values()) + treasury == 0
