"""``wallet seed``: demo data through the public API of a running server (with the admin token):
an asset, a few owners with wallets and their own tokens, deposits and transfers. It prints what
it made and curl commands to try.

Safe to run again: fixed ids and idempotency keys make the money moves once. Tokens are
revoke-and-replace: a token is shown only once (the server keeps its hash), so a new run cannot
print the old ones; it revokes every live token of the demo owners it finds in the event feed
(``token.created`` without a later ``token.revoked``), then makes one new token each. So after any
number of runs each demo owner has exactly one live token, the one printed last. (Tokens made
before the oldest kept log segment are no longer in the feed and are not found.)"""

from __future__ import annotations

from typing import Any

import httpx

OWNERS = ["alice", "bob", "carol"]
EVENTS_PAGE = 1000


def live_tokens(http: httpx.Client, owners: list[str]) -> dict[str, str]:
    """Prefix -> owner of every token of ``owners`` created and not revoked, from the event feed."""
    live: dict[str, str] = {}
    after = 0
    while True:
        response = http.get("/v1/events", params={"after": after, "limit": EVENTS_PAGE})
        if response.status_code == 410:  # the feed starts later (compacted log): from there
            after = int(response.json()["oldest_lsn"]) - 1
            continue
        if response.status_code >= 400:
            raise SystemExit(f"wallet seed: GET /v1/events -> {response.status_code} {response.text}")
        page = response.json()
        for item in page["items"]:
            data = item["data"]
            if item["type"] == "token.created" and data["owner_id"] in owners:
                live[data["prefix"]] = data["owner_id"]
            elif item["type"] == "token.revoked":
                live.pop(data["prefix"], None)
        if not page["items"] or page["next_after"] <= after:
            return live
        after = page["next_after"]


def seed(url: str, admin_token: str) -> int:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as http:

        def call(method: str, path: str, key: str | None = None, **options: Any) -> Any:
            headers = {"Idempotency-Key": key} if key else {}
            response = http.request(method, path, headers=headers, **options)
            if response.status_code >= 400:
                raise SystemExit(f"wallet seed: {method} {path} -> {response.status_code} {response.text}")
            return response.json()

        call("POST", "/v1/assets", json={"code": "USD", "scale": 2})
        earlier = live_tokens(http, OWNERS)
        for prefix in sorted(earlier):
            response = http.delete(f"/v1/tokens/{prefix}")
            if response.status_code not in (200, 404):  # 404: revoked meanwhile
                raise SystemExit(f"wallet seed: DELETE /v1/tokens/{prefix} -> {response.status_code} {response.text}")
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
        if earlier:
            print(f"Revoked {len(earlier)} earlier demo token(s); the tokens below replace them.")
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
