"""Metrics, request ids and response headers on the real server."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.e2e._server import ServerProcess


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_metrics_request_ids_and_headers(server: ServerProcess) -> None:
    with server.client() as http:
        created = http.post("/v1/assets", json={"code": "USD", "scale": 2}, headers={"X-Request-ID": "req-42"})
        assert created.headers["x-request-id"] == "req-42"
        assert created.headers["x-content-type-options"] == "nosniff"
        generated = http.get("/v1/assets")
        assert re.fullmatch(r"[0-9a-f]{16}", generated.headers["x-request-id"])
        assert http.get("/v1/wallets/nope").status_code == 404
        for wallet_id in ("m-a", "m-b"):
            http.post("/v1/wallets", json={"id": wallet_id, "owner_id": wallet_id, "asset": "USD"})
        http.post("/v1/deposits", json={"wallet_id": "m-a", "amount": 5}, headers={"Idempotency-Key": "m1"})
        text = http.get("/metrics").text
    assert metric(text, 'wallet_http_requests_total{method="POST",route="/v1/assets",status="201"}') == 1
    assert metric(text, 'wallet_http_requests_total{method="GET",route="/v1/wallets/{wallet_id}",status="404"}') == 1
    assert metric(text, 'wallet_rejections_total{code="wallet_not_found"}') == 1
    assert metric(text, "wallet_wal_durable_lsn") == 4
    assert metric(text, "wallet_wal_records_total") == 4
    assert metric(text, "wallet_wal_fsync_seconds_count") == metric(text, "wallet_wal_group_commits_total")
    assert metric(text, "wallet_wal_records_per_commit_sum") == 4
    assert metric(text, 'wallet_shard_mailbox_depth{mailbox="external",shard="0"}') == 0
    # One process: unlabelled; under a supervisor: one series per process (role, slot).
    resident = re.findall(r"^process_resident_memory_bytes(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    assert resident and all(float(value) > 0 for value in resident)
    assert "req-42" in server.log() and "authorization" not in server.log().lower()


def test_a_user_token_over_its_rate_gets_429_and_admin_is_exempt(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", extra_args=["--rate-limit", "1", "--rate-burst", "3"])
    server.start()
    try:
        with server.client() as admin:
            token = admin.post("/v1/tokens", json={"owner_id": "rl"}).json()["token"]
            assert all(admin.get("/v1/assets").status_code == 200 for _ in range(10))  # admin exempt
        with server.client(token) as user:
            statuses = [user.get("/v1/assets") for _ in range(6)]
        assert [response.status_code for response in statuses[:3]] == [200, 200, 200]
        limited = [response for response in statuses if response.status_code == 429]
        assert limited and limited[0].json()["code"] == "rate_limited"
        assert int(limited[0].headers["retry-after"]) >= 1
    finally:
        server.kill()


def test_the_grafana_dashboard_uses_only_metrics_the_server_exports(tmp_path: Path) -> None:

    # A webhook endpoint (on this host: the flag allows it) for the per-endpoint lag series.
    server = ServerProcess(tmp_path / "data", extra_args=["--allow-private-webhooks"])
    server.start()
    try:
        _dashboard_metrics_are_exported(server)
    finally:
        server.kill()


def _dashboard_metrics_are_exported(server: ServerProcess) -> None:
    import json

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(?:wallet|process)_[a-z_]+\b", target["expr"]))
    with server.client() as http:
        http.post("/v1/assets", json={"code": "USD", "scale": 2})
        http.get("/v1/wallets/nope")
        # A sample in each family the dashboard graphs: a snapshot (its age is absent before
        # one), a batch item and a withdrawal (labelled payout and batch counters).
        http.post("/v1/wallets", json={"id": "o1", "owner_id": "o", "asset": "USD"})
        http.post("/v1/deposits", headers={"Idempotency-Key": "od"}, json={"wallet_id": "o1", "amount": 5})
        http.post("/v1/transfers/batch", json={"atomic": False, "transfers": [
            {"idempotency_key": "ob", "from_wallet_id": "o1", "to_wallet_id": "o1", "amount": 1}]})
        http.post("/v1/withdrawals", headers={"Idempotency-Key": "ow"},
                  json={"wallet_id": "o1", "amount": 1, "destination": {"account": "x"}})
        http.post("/v1/admin/snapshots")
        http.post("/v1/webhooks", json={"url": "http://127.0.0.1:1/hook", "events": ["*"]})
        for _ in range(200):  # the bank call takes its simulated latency: wait for its outcome
            text = http.get("/metrics").text
            if "wallet_payout_attempts_total{" in text and "wallet_webhook_lag_records{" in text:
                break
            time.sleep(0.05)
        exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                    if line and not line.startswith("#")}
    assert used and used <= exported, used - exported
