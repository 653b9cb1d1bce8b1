"""schemathesis against ``/openapi.json`` of the real server: for every operation, generated
requests never get a 5xx, and every response matches the documented status codes, content types
and schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests._budget import scaled
from tests.e2e._server import ADMIN_TOKEN, ServerProcess


@pytest.fixture(scope="module")
def schemathesis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(Path(tmp_path_factory.mktemp("schemathesis")) / "data")
    server.start()
    with server.client() as http:
        assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        for wallet_id in ("st-a", "st-b"):
            http.post("/v1/wallets", json={"id": wallet_id, "owner_id": wallet_id, "asset": "USD"})
            http.post("/v1/deposits", json={"wallet_id": wallet_id, "amount": 10**6},
                      headers={"Idempotency-Key": f"seed-{wallet_id}"})
    try:
        yield server
    finally:
        server.kill()


OPERATIONS = 42  # every operation in /openapi.json; a new route must be added to the document
ENDLESS = {"GET /v1/events/stream"}  # an endless SSE response: covered by tests/e2e/test_events.py


def _no_long_polls(case: Any) -> Any:
    # A generated `wait` may be up to 30 s per example; keep the long-poll test-sized.
    if isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = 0
    return case


def test_every_operation_keeps_its_contract(schemathesis_server: ServerProcess) -> None:
    # schemathesis's own pytest plugin does not run on this pytest version; drive it directly.
    schema = schemathesis.openapi.from_url(schemathesis_server.url + "/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        checked.append(operation.label)
        if operation.label in ENDLESS:
            continue

        @given(case=operation.as_strategy().map(_no_long_polls))
        @settings(max_examples=scaled(15, 60), deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                        response_schema_conformance],
            )

        run()
    assert len(checked) == OPERATIONS, checked
