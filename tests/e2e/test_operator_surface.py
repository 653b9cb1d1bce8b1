"""What a newcomer and an operator meet first, on the real server: ``GET /`` points to the
documentation, every OpenAPI operation has a resource tag and a summary, every panel of the
Grafana dashboard queries metrics the server exports (payouts, batches and snapshot failures
included), and the snapshot age is absent, not ``-1``, before the first snapshot."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from tests.e2e._server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created")}


def exported_names(text: str) -> set[str]:
    """Every series name ``/metrics`` can produce, from its samples and its TYPE lines (a
    labelled counter with no sample yet still has its TYPE line)."""
    names = set()
    for line in text.splitlines():
        if match := re.match(r"# TYPE (\w+) (\w+)", line):
            # prometheus_client names a counter's family with or without its _total
            names.update(match[1] + suffix for suffix in ("", *SUFFIXES.get(match[2], ())))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][\w:]*", line)[0])  # type: ignore[index]
    return names


def test_root_points_to_the_documentation(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/", timeout=30)  # no token needed
    assert response.status_code == 200
    body = response.json()
    assert body["docs"] == "/docs" and body["openapi"] == "/openapi.json"


def test_every_operation_has_a_resource_tag_and_a_summary(server: ServerProcess) -> None:
    with server.client() as http:
        document = http.get("/openapi.json").json()
    declared = {tag["name"] for tag in document["tags"]}
    operations = [(path, method, operation) for path, item in document["paths"].items()
                  for method, operation in item.items()]
    assert len(operations) >= 25
    for path, method, operation in operations:
        assert operation.get("summary", "").strip(), (method, path)
        tags = operation.get("tags", [])
        assert len(tags) == 1 and tags[0] in declared and tags[0] != "default", (method, path, tags)
        if path.startswith("/v1/"):
            resource = path.split("/")[2]
            # A sub-resource (``/v1/wallets/{id}/alerts``) is tagged by its own name.
            assert tags[0].startswith(resource[:5]) or tags[0] in ("admin", path.rsplit("/", 1)[-1]), (path, tags)
    assert "/" in document["paths"]


def test_every_dashboard_panel_queries_exported_metrics(tmp_path: Path) -> None:
    # A webhook endpoint (on this host: the flag allows it) for the per-endpoint lag series.
    server = ServerProcess(tmp_path / "data", extra_args=["--allow-private-webhooks"])
    server.start()
    try:
        _panels_query_exported_metrics(server)
    finally:
        server.kill()


def _panels_query_exported_metrics(server: ServerProcess) -> None:
    with server.client() as http:
        # Give the labelled families a sample each: a batch item and a payout attempt.
        http.post("/v1/assets", json={"code": "USD", "scale": 2}).raise_for_status()
        for owner in ("a", "b"):
            http.post("/v1/wallets", json={"id": owner, "owner_id": owner, "asset": "USD"}).raise_for_status()
        http.post("/v1/deposits", headers={"Idempotency-Key": "d"},
                  json={"wallet_id": "a", "amount": 500}).raise_for_status()
        http.post("/v1/transfers/batch", json={"atomic": False, "transfers": [
            {"idempotency_key": "b1", "from_wallet_id": "a", "to_wallet_id": "b", "amount": 1}]}).raise_for_status()
        http.post("/v1/withdrawals", headers={"Idempotency-Key": "w"},
                  json={"wallet_id": "a", "amount": 1, "destination": {"account": "x"}}).raise_for_status()
        assert http.post("/v1/admin/snapshots").status_code == 201  # the snapshot age shows after one
        assert http.get("/v1/wallets/nobody").status_code == 404  # a rejection, for its counter
        assert http.post("/v1/webhooks", json={"url": "http://127.0.0.1:1/hook", "events": ["*"]}).status_code == 201
        for _ in range(200):  # the dispatcher sets the endpoint's lag once it has seen it
            text = http.get("/metrics").text
            if "wallet_webhook_lag_records{" in text:
                break
            time.sleep(0.05)
    names = exported_names(text)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set()
    for panel in dashboard["panels"]:
        exprs = [target["expr"] for target in panel.get("targets", [])]
        assert exprs, panel["title"]
        for expr in exprs:
            used = set(re.findall(r"\b((?:wallet|process)_\w+)", expr))
            assert used, expr
            assert used <= names, (panel["title"], used - names)
            queried |= used
    for needed in ("wallet_payout_attempts_total", "wallet_payout_results_total", "wallet_payout_queue_depth",
                   "wallet_batch_transfers_total", "wallet_snapshot_failures_total",
                   "wallet_webhook_deliveries_total", "wallet_webhook_lag_records"):
        assert needed in queried, needed


def test_snapshot_age_is_absent_before_the_first_snapshot(server: ServerProcess) -> None:
    with server.client() as http:
        before = http.get("/metrics").text
        assert "wallet_snapshot_lsn" in before  # the snapshotter is there...
        assert not re.search(r"^wallet_snapshot_age_seconds ", before, flags=re.MULTILINE)  # ...no age yet
        http.post("/v1/assets", json={"code": "USD", "scale": 2}).raise_for_status()
        assert http.post("/v1/admin/snapshots").status_code == 201
        after = http.get("/metrics").text
    (age,) = re.findall(r"^wallet_snapshot_age_seconds (\S+)$", after, flags=re.MULTILINE)
    assert float(age) >= 0
