"""``wallet seed`` against the real server: it makes what it says, can run again, and leaves each
demo owner one live token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e._server import ADMIN_TOKEN, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
WALLET = Path(sys.executable).with_name("wallet")


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


def seed_tokens(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^  (\w+)\s+\S+-usd\s+balance\s+-?\d+\s+token (\S+)$", stdout, flags=re.MULTILINE))


def test_seed_replaces_the_demo_tokens_and_finds_the_admin_token_in_data(server: ServerProcess,
                                                                           tmp_path: Path) -> None:
    # No --token and no WALLET_ADMIN_TOKEN: the token comes from DATA/admin.token.
    data = tmp_path / "elsewhere"
    data.mkdir()
    (data / "admin.token").write_text(ADMIN_TOKEN + "\n")
    environ = {name: value for name, value in os.environ.items() if name != "WALLET_ADMIN_TOKEN"}
    wallet = [str(WALLET)] if WALLET.exists() else [sys.executable, "-m", "server.cli"]
    runs = []
    for _ in range(3):
        result = subprocess.run([*wallet, "seed", "--url", server.url, "--data", str(data)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60, env=environ)
        assert result.returncode == 0, result.stdout + result.stderr
        tokens = seed_tokens(result.stdout)
        assert set(tokens) == {"alice", "bob", "carol"}, result.stdout
        runs.append((tokens, result.stdout))
    assert "Revoked" not in runs[0][1] and "Revoked 3 earlier demo token(s)" in runs[2][1]
    for number, (tokens, _) in enumerate(runs):
        for owner, token in tokens.items():
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
                status = http.get(f"/v1/wallets/{owner}-usd").status_code
            assert status == (200 if number == len(runs) - 1 else 401), (number, owner)
    missing = subprocess.run([*wallet, "seed", "--url", server.url, "--data", str(tmp_path / "nothing")],
                             capture_output=True, text=True, cwd=ROOT, timeout=60, env=environ)
    assert missing.returncode == 2 and "admin.token" in missing.stderr
