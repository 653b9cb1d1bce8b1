"""``wallet seed``: demo data through the public API of a running server (with the admin token):
an asset, a few owners with wallets and their own tokens, deposits and transfers. It prints what
it made and curl commands to try. Safe to run twice: fixed ids and idempotency keys."""

from __future__ import annotations

from typing import Any

import httpx

OWNERS = ["alice", "bob", "carol"]


def seed(url: str, admin_token: str) -> int:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as http:

        def call(method: str, path: str, key: str | None = None, **options: Any) -> Any:
            headers = {"Idempotency-Key": key} if key else {}
            response = http.request(method, path, headers=headers, **options)
            if response.status_code >= 400:
                raise SystemExit(f"wallet seed: {method} {path} -> {response.status_code} {response.text}")
            return response.json()

        call("POST", "/v1/assets", json={"code": "USD", "scale": 2})
        tokens = {}
        for owner in OWNERS:
            call("POST", "/v1/wallets", json={"id": f"{owner}-usd", "owner_id": owner, "asset": "USD"})
            call("POST", "/v1/deposits", key=f"seed-deposit-{owner}",
                 json={"wallet_id": f"{owner}-usd", "amount": 100_00, "description": "welcome bonus"})
            tokens[owner] = call("POST", "/v1/tokens", json={"owner_id": owner})["token"]
        moves = [("alice", "bob", 12_50), ("bob", "carol", 5_00), ("carol", "alice", 1_99)]
        for number, (source, target, amount) in enumerate(moves):
            call("POST", "/v1/transfers", key=f"seed-transfer-{number}",
                 json={"from_wallet_id": f"{source}-usd", "to_wallet_id": f"{target}-usd", "amount": amount,
                       "description": f"{source} pays {target}"})
        print(f"Seeded {url}: asset USD (scale 2); wallets " + ", ".join(f"{o}-usd" for o in OWNERS) + ".")
        for owner in OWNERS:
            wallet = call("GET", f"/v1/wallets/{owner}-usd")
            print(f"  {owner:6} {wallet['id']:10} balance {wallet['balance']:>6}  token {tokens[owner]}")
        alice = tokens["alice"]
        print("\nTry (as alice, whose token acts for her wallets only):")
        print(f"  curl -s -H 'Authorization: Bearer {alice}' {url}/v1/wallets/alice-usd")
        print(f"  curl -s -H 'Authorization: Bearer {alice}' {url}/v1/wallets/alice-usd/transactions")
        print(f"  curl -s -X POST -H 'Authorization: Bearer {alice}' -H 'Content-Type: application/json' \\\n"
              f"       -H 'Idempotency-Key: try-1' -d '{{\"from_wallet_id\":\"alice-usd\",\"to_wallet_id\":\"bob-usd\",\"amount\":100}}' \\\n"
              f"       {url}/v1/transfers")
        print(f"  curl -s -H 'Authorization: Bearer {admin_token}' '{url}/v1/events?after=0'")
    return 0
