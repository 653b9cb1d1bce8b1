"""Webhooks in process: the real ledger, the routes over httpx's ASGI transport, the dispatcher
delivering to ``wallet webhook-sim``'s app through ``server.testing.Receivers``. Retries keep
their ``webhook-id`` and valid signatures; a slow or dead endpoint delays nobody else; the
failure period disables and ``enable`` resumes at the cursor; unsubscribed types are skipped;
cursors survive a restart of the dispatcher; a compacted log is a reported gap, never a silent
skip; SSRF refusals at creation and at delivery; every validation error of the routes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ledger import Event, Gone, Ledger, recover
from server._openapi import SCHEMAS
from server._port import LocalPort, Status
from server._webhook_store import AnyWebhookStore, SharedWebhookStore, WebhookStore
from server._webhooks import Dispatcher, WebhookConfig
from server._webhooksim import WebhookSimulator, build_webhook_app
from server.api import Deps, build_app
from server.api._render import EVENT_TYPES
from server.testing import Receivers
from wal import LogUnavailable

ADMIN = "admin-token"
FAST = WebhookConfig(allow_private=True, timeout_s=1.0, backoff_base_s=0.01, backoff_max_s=0.05)


@dataclass
class Harness:
    http: httpx.AsyncClient
    port: LocalPort
    sims: dict[str, WebhookSimulator]
    nursery: trio.Nursery
    ledger: Ledger
    data_dir: Path
    transport: Receivers
    dispatcher: Dispatcher | None = None
    scope: trio.CancelScope | None = None
    store: Callable[[], AnyWebhookStore] | None = None

    async def start_dispatcher(self, config: WebhookConfig = FAST, source: Any = None) -> Dispatcher:
        dispatcher = Dispatcher(self.data_dir, source or self.port, config, transport=self.transport,
                                open_store=self.store)
        self.scope = trio.CancelScope()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            assert self.scope is not None
            with self.scope:
                await dispatcher.run(task_status=task_status)

        await self.nursery.start(run)
        self.dispatcher = dispatcher
        return dispatcher

    async def stop_dispatcher(self) -> None:
        assert self.scope is not None
        self.scope.cancel()
        await trio.sleep(0.05)

    async def create(self, host: str, events: list[str] | None = None) -> dict[str, Any]:
        response = await self.http.post("/v1/webhooks", json={"url": f"http://{host}/hook", "events": events or ["*"]})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        if host in self.sims:
            self.sims[host].secrets.append(created["secret"])
        await self.noticed()
        return created

    async def noticed(self) -> None:
        """Waits until the dispatcher has looked at the endpoints after now."""
        if self.dispatcher is not None:
            for _ in range(2):
                await self.dispatcher.changed.wait()

    async def deposit(self, key: str, amount: int = 5, wallet: str = "a") -> dict[str, Any]:
        response = await self.http.post("/v1/deposits", json={"wallet_id": wallet, "amount": amount},
                                         headers={"Idempotency-Key": key})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def deliveries(self, endpoint_id: str, count: int) -> list[dict[str, Any]]:
        """The endpoint's logged attempts, newest first, once there are ``count`` of them."""
        with trio.fail_after(5):
            while True:
                response = await self.http.get(f"/v1/webhooks/{endpoint_id}/deliveries", params={"limit": "100"})
                items: list[dict[str, Any]] = response.json()["items"]
                if len(items) >= count:
                    return items
                await trio.sleep(0.02)

    async def events_after(self, after: int) -> list[dict[str, Any]]:
        response = await self.http.get("/v1/events", params={"after": str(after), "limit": "1000"})
        assert response.status_code == 200
        items: list[dict[str, Any]] = response.json()["items"]
        return items


@pytest.fixture(params=["file", "bucket"])
def store(request: pytest.FixtureRequest) -> Iterator[Callable[[], AnyWebhookStore] | None]:
    """Where the endpoints are: ``<data>/webhooks.sqlite3`` (None), or, as in cluster mode, a
    JetStream bucket (of this test's own) on the module's NATS nodes; each store opened on it (the
    routes', the dispatcher's) is closed after the test, its NATS connection with it."""
    if request.param == "file":
        yield None
        return
    nodes = request.getfixturevalue("nats_nodes")
    bucket = f"test_{uuid.uuid4().hex[:16]}"
    opened: list[SharedWebhookStore] = []

    def open_store() -> SharedWebhookStore:
        opened.append(SharedWebhookStore.open(nodes.urls, bucket=bucket))
        return opened[-1]

    yield open_store
    for each in opened:
        each.close()


@asynccontextmanager
async def harness(tmp_path: Path, *hosts: str, allow_private: bool = True,
                  store: Callable[[], AnyWebhookStore] | None = None) -> AsyncIterator[Harness]:
    sims = {host: WebhookSimulator() for host in hosts}
    transport = Receivers({host: build_webhook_app(sim) for host, sim in sims.items()})
    ledger = Ledger(await trio.to_thread.run_sync(recover, tmp_path), tmp_path, shards=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        port = LocalPort(ledger)
        deps = Deps.build(admin_token=ADMIN, port=port, data_dir=tmp_path, allow_private_webhooks=allow_private,
                          webhook_store=store)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app(deps)), base_url="http://test",
                                     headers={"Authorization": f"Bearer {ADMIN}"}) as http:
            assert (await http.post("/v1/assets", json={"code": "USD", "scale": 2})).status_code == 201
            for wallet in ("a", "b"):
                response = await http.post("/v1/wallets", json={"id": wallet, "owner_id": "o", "asset": "USD"})
                assert response.status_code == 201
            yield Harness(http=http, port=port, sims=sims, nursery=nursery, ledger=ledger, data_dir=tmp_path,
                          transport=transport, store=store)
        nursery.cancel_scope.cancel()
    await ledger.stop()


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


def accepted(sim: WebhookSimulator) -> list[dict[str, Any]]:
    return [entry for entry in sim.received if entry["answered"] < 300]


# -- delivery ----------------------------------------------------------------------------------


async def test_a_receiver_answering_500_gets_retries_with_the_same_webhook_id_and_valid_signatures(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, "r.test") as h:
        await h.start_dispatcher()
        sim = h.sims["r.test"]
        sim.fail_first = 2
        endpoint = await h.create("r.test", ["deposit.posted"])
        first, second = await h.deposit("d1", 5), await h.deposit("d2", 7)
        await until(lambda: len(accepted(sim)) == 2)
        calls = sim.received
        assert [entry["answered"] for entry in calls] == [500, 500, 200, 500, 500, 200]
        ids = [entry["webhook_id"] for entry in calls]
        assert ids[:3] == [ids[0]] * 3 and ids[3:] == [ids[3]] * 3 and ids[0] != ids[3]
        assert all(entry["verified"] for entry in calls)
        # Each body is the event as /v1/events shows it.
        feed = [item for item in await h.events_after(0) if item["type"] == "deposit.posted"]
        assert [entry["body"] for entry in accepted(sim)] == feed
        assert [entry["body"]["data"]["id"] for entry in accepted(sim)] == [first["id"], second["id"]]
        log = await h.deliveries(endpoint["id"], 6)
        assert [(item["attempt"], item["status_code"]) for item in reversed(log)] == [
            (1, 500), (2, 500), (3, 200), (1, 500), (2, 500), (3, 200)]
        assert {item["event_id"] for item in log} == set(ids)


async def test_a_slow_and_a_dead_endpoint_delay_neither_another_endpoint_nor_transfers(tmp_path: Path) -> None:
    async with harness(tmp_path, "slow.test", "ok.test") as h:
        h.sims["slow.test"].delay_ms = 60_000
        await h.start_dispatcher(WebhookConfig(allow_private=True, timeout_s=30.0, backoff_base_s=0.01))
        await h.create("slow.test")
        await h.create("dead.test")  # no app: every connection is refused
        await h.create("ok.test")
        await h.deposit("fund", 1000)
        started = trio.current_time()
        for number in range(20):
            response = await h.http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b",
                                                                "amount": 1}, headers={"Idempotency-Key": f"t{number}"})
            assert response.status_code == 201
        await until(lambda: len(accepted(h.sims["ok.test"])) == 21, timeout_s=5)
        assert trio.current_time() - started < 5
        assert [entry["body"]["type"] for entry in accepted(h.sims["ok.test"])] == ["deposit.posted"] + [
            "transfer.posted"] * 20
        assert h.sims["slow.test"].received == []  # its first delivery is still waiting for an answer
        assert h.dispatcher is not None and h.dispatcher.stats.results.get("error", 0) >= 1  # dead.test retried


async def test_after_the_failure_period_the_endpoint_is_disabled_and_enable_resumes_from_its_cursor(
    tmp_path: Path, store: Callable[[], AnyWebhookStore] | None,
) -> None:
    async with harness(tmp_path, "r.test", store=store) as h:
        sim = h.sims["r.test"]
        await h.start_dispatcher(WebhookConfig(allow_private=True, timeout_s=1.0, disable_after_s=0.3,
                                               backoff_base_s=0.01, backoff_max_s=0.05))
        endpoint = await h.create("r.test")
        await h.deposit("ok-1")
        await until(lambda: len(accepted(sim)) == 1)
        sim.status = 500
        for number in range(3):
            await h.deposit(f"d{number}")

        async def status() -> dict[str, Any]:
            body: dict[str, Any] = (await h.http.get(f"/v1/webhooks/{endpoint['id']}")).json()
            return body

        with trio.fail_after(10):
            while (await status())["status"] != "disabled":
                await trio.sleep(0.02)
        shown = await status()
        assert shown["disabled_reason"] == "failing" and shown["failing_since"] is not None
        calls = len(sim.received)
        sim.status = None
        await h.deposit("d3")
        await trio.sleep(0.5)
        assert len(sim.received) == calls  # disabled: its events wait
        response = await h.http.post(f"/v1/webhooks/{endpoint['id']}/enable")
        assert response.status_code == 200 and response.json()["status"] == "enabled"
        await until(lambda: len(accepted(sim)) == 5)
        kinds = [entry["body"]["data"]["amount"] for entry in accepted(sim)]
        assert kinds == [5] * 5
        ids = [entry["webhook_id"] for entry in accepted(sim)]
        assert len(set(ids)) == 5 and ids == sorted(ids, key=lambda text: [int(part) for part in text[4:].split("_")])
        with trio.fail_after(5):  # the 2xx ended the streak of failures
            while (await status())["failing_since"] is not None:
                await trio.sleep(0.02)


async def test_unsubscribed_types_advance_the_cursor_without_a_post_and_a_deleted_endpoint_stops(
    tmp_path: Path, store: Callable[[], AnyWebhookStore] | None,
) -> None:
    async with harness(tmp_path, "r.test", store=store) as h:
        sim = h.sims["r.test"]
        await h.start_dispatcher()
        endpoint = await h.create("r.test", ["transfer.posted"])
        await h.deposit("fund", 100)
        assert (await h.http.post("/v1/wallets/b/freeze")).status_code == 200
        response = await h.http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 3},
                                     headers={"Idempotency-Key": "t"})
        assert response.status_code == 201
        await until(lambda: len(sim.received) == 1)
        assert sim.received[0]["body"]["type"] == "transfer.posted"
        durable = (await h.port.status()).durable_lsn

        async def acknowledged() -> int:
            value: int = (await h.http.get(f"/v1/webhooks/{endpoint['id']}")).json()["acknowledged_lsn"]
            return value

        with trio.fail_after(5):
            while await acknowledged() != durable:
                await trio.sleep(0.02)
        assert (await h.http.delete(f"/v1/webhooks/{endpoint['id']}")).json() == {"id": endpoint["id"], "deleted": True}
        await h.noticed()
        await h.http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 3},
                          headers={"Idempotency-Key": "t2"})
        await trio.sleep(0.3)
        assert len(sim.received) == 1
        assert (await h.http.get(f"/v1/webhooks/{endpoint['id']}")).status_code == 404


async def test_the_cursor_survives_a_restart_of_the_dispatcher(tmp_path: Path, store: Callable[[], AnyWebhookStore] | None) -> None:
    async with harness(tmp_path, "r.test", store=store) as h:
        sim = h.sims["r.test"]
        await h.start_dispatcher()
        await h.create("r.test", ["deposit.posted"])
        for number in range(3):
            await h.deposit(f"before-{number}")
        await until(lambda: len(accepted(sim)) == 3)
        await h.stop_dispatcher()
        for number in range(2):
            await h.deposit(f"between-{number}")
        await h.start_dispatcher()
        await h.deposit("after")
        await until(lambda: len(accepted(sim)) == 6)
        await trio.sleep(0.2)
        ids = [entry["webhook_id"] for entry in accepted(sim)]
        assert len(ids) == len(set(ids)) == 6  # nothing again, nothing skipped


async def test_a_log_compacted_past_the_cursor_disables_the_endpoint_and_enable_reports_the_gap(
    tmp_path: Path, store: Callable[[], AnyWebhookStore] | None,
) -> None:
    class Compacted:
        """The port's feed, except that everything before ``oldest`` is gone for a while."""

        def __init__(self, port: LocalPort) -> None:
            self.port = port
            self.oldest: int | None = None

        async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
            if self.oldest is not None and after < self.oldest - 1:
                raise Gone(self.oldest)
            return await self.port.events(after, limit, wait_s)

        async def status(self) -> Status:
            return await self.port.status()

    async with harness(tmp_path, "r.test", store=store) as h:
        sim = h.sims["r.test"]
        source = Compacted(h.port)
        endpoint = await h.create("r.test", ["deposit.posted"])
        await h.deposit("lost-1")
        await h.deposit("lost-2")
        source.oldest = (await h.port.status()).durable_lsn + 1
        await h.start_dispatcher(source=source)
        await h.deposit("kept")
        with trio.fail_after(5):
            while (shown := (await h.http.get(f"/v1/webhooks/{endpoint['id']}")).json())["status"] != "disabled":
                await trio.sleep(0.02)
        assert shown["disabled_reason"] == "events_compacted"
        assert shown["oldest_available_lsn"] == source.oldest
        assert sim.received == []
        enabled = (await h.http.post(f"/v1/webhooks/{endpoint['id']}/enable")).json()
        assert enabled["status"] == "enabled" and enabled["acknowledged_lsn"] == source.oldest - 1
        log = (await h.http.get(f"/v1/webhooks/{endpoint['id']}/deliveries")).json()["items"]
        assert log[0]["event_type"] == "gap" and "compacted away" in log[0]["error"]
        await until(lambda: len(accepted(sim)) == 1)
        assert accepted(sim)[0]["body"]["data"]["amount"] == 5


# -- SSRF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook", "http://10.1.2.3/hook",
    "http://192.168.0.7/hook", "http://169.254.169.254/latest/meta-data", "http://0.0.0.0/hook",
    "https://[::ffff:127.0.0.1]/hook", "http://[fe80::1]/hook",
])
async def test_urls_that_reach_this_host_or_its_network_are_refused_without_the_flag(tmp_path: Path, url: str) -> None:
    async with harness(tmp_path, allow_private=False) as h:
        response = await h.http.post("/v1/webhooks", json={"url": url, "events": ["*"]})
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "webhook_url_forbidden"
        assert (await h.http.get("/v1/webhooks")).json() == {"items": []}


async def test_a_public_address_is_accepted_and_an_unresolvable_name_refused(tmp_path: Path) -> None:
    async with harness(tmp_path, allow_private=False) as h:
        response = await h.http.post("/v1/webhooks", json={"url": "https://93.184.216.34/hook", "events": ["*"]})
        assert response.status_code == 201, response.text
        response = await h.http.post("/v1/webhooks", json={"url": "https://no-such-host.invalid/", "events": ["*"]})
        assert response.status_code == 422 and response.json()["code"] == "webhook_url_unresolvable"


async def test_the_dispatcher_checks_the_address_again_at_delivery(tmp_path: Path) -> None:
    async with harness(tmp_path, "127.0.0.1") as h:  # the routes allow it, the dispatcher does not
        await h.start_dispatcher(WebhookConfig(allow_private=False, backoff_base_s=0.01, backoff_max_s=0.02))
        endpoint = await h.create("127.0.0.1")
        await h.deposit("d")
        log = await h.deliveries(endpoint["id"], 1)
        assert log[0]["status_code"] is None and log[0]["error"].startswith("refused: 127.0.0.1 is a loopback")
        assert h.sims["127.0.0.1"].received == []


# -- the routes ----------------------------------------------------------------------------------


async def test_create_shows_the_secret_once_and_the_routes_list_get_and_delete(tmp_path: Path, store: Callable[[], AnyWebhookStore] | None) -> None:
    async with harness(tmp_path, store=store) as h:
        response = await h.http.post("/v1/webhooks", json={"url": "http://r.test/x", "events": ["transfer.posted",
                                                                                              "alert.triggered"]})
        assert response.status_code == 201
        created = response.json()
        assert created["id"].startswith("wh_") and created["secret"].startswith("whsec_")
        assert created["status"] == "enabled" and created["events"] == ["transfer.posted", "alert.triggered"]
        shown = (await h.http.get(f"/v1/webhooks/{created['id']}")).json()
        assert "secret" not in shown and shown == {key: value for key, value in created.items() if key != "secret"}
        assert (await h.http.get("/v1/webhooks")).json() == {"items": [shown]}
        assert (await h.http.get(f"/v1/webhooks/{created['id']}/deliveries")).json() == {"items": []}
        assert (await h.http.post(f"/v1/webhooks/{created['id']}/enable")).json() == shown  # already enabled
        assert (await h.http.delete(f"/v1/webhooks/{created['id']}")).status_code == 200
        for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/enable"), ("GET", "/deliveries")):
            response = await h.http.request(method, f"/v1/webhooks/{created['id']}{path}")
            assert response.status_code == 404 and response.json()["code"] == "webhook_not_found", (method, path)
        assert (await h.http.get("/v1/webhooks/not-an-id")).json()["code"] == "webhook_not_found"


INVALID = [
    ({"events": ["*"]}, "url", "is required"),
    ({"url": "http://r.test/"}, "events", "is required"),
    ({"url": "http://r.test/", "events": ["*"], "secret": "x"}, "secret", "unknown field"),
    ({"url": 7, "events": ["*"]}, "url", "must be a string"),
    ({"url": "ftp://r.test/", "events": ["*"]}, "url", "http:// or https://"),
    ({"url": "http:///path", "events": ["*"]}, "url", "must name a host"),
    ({"url": "http://user:pw@r.test/", "events": ["*"]}, "url", "credentials"),
    ({"url": "http://r.test/#x", "events": ["*"]}, "url", "fragment"),
    ({"url": "http://r.test:99999/", "events": ["*"]}, "url", "not a valid URL"),
    ({"url": "http://r.test/ x", "events": ["*"]}, "url", "without spaces"),
    ({"url": "http://r.test/" + "x" * 2040, "events": ["*"]}, "url", "1 to 2048 characters"),
    ({"url": "", "events": ["*"]}, "url", "1 to 2048 characters"),
    ({"url": "http://r.test/", "events": []}, "events", "non-empty array"),
    ({"url": "http://r.test/", "events": "*"}, "events", "non-empty array"),
    ({"url": "http://r.test/", "events": ["transfer.sent"]}, "events[0]", "unknown event type"),
    ({"url": "http://r.test/", "events": [1]}, "events[0]", "must be a string"),
    ({"url": "http://r.test/", "events": ["transfer.posted", "transfer.posted"]}, "events", "repeat"),
    ({"url": "http://r.test/", "events": ["*", "transfer.posted"]}, "events", "stands alone"),
    ({"url": "http://r.test/", "events": list(EVENT_TYPES) * 2}, "events", "at most 32"),
]


@pytest.mark.parametrize(("body", "field", "message"), INVALID)
async def test_every_bad_body_is_a_400_naming_its_field_and_creates_nothing(
    tmp_path: Path, body: dict[str, Any], field: str, message: str,
) -> None:
    async with harness(tmp_path) as h:
        response = await h.http.post("/v1/webhooks", json=body)
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["code"] == "invalid_request"
        assert any(error["field"] == field and message in error["message"] for error in problem["errors"]), problem
        assert (await h.http.get("/v1/webhooks")).json() == {"items": []}


async def test_an_unreachable_store_is_a_503_and_the_next_call_opens_it_again(tmp_path: Path) -> None:
    """Cluster mode: the bucket's nodes not answering is ``503 webhooks_unavailable`` with
    ``Retry-After``, never a 500; the store is opened again on the next call."""
    opened: list[int] = []

    def unreachable() -> AnyWebhookStore:
        opened.append(1)
        if len(opened) == 1:
            raise LogUnavailable("no answer within 4 s")
        return WebhookStore.open(tmp_path)

    async with harness(tmp_path, store=unreachable) as h:
        response = await h.http.post("/v1/webhooks", json={"url": "http://r.test/", "events": ["*"]})
        assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
        assert response.json()["code"] == "webhooks_unavailable"
        assert (await h.http.get("/v1/webhooks")).json() == {"items": []}
        assert len(opened) == 2


async def test_other_bad_requests(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        created = (await h.http.post("/v1/webhooks", json={"url": "http://r.test/", "events": ["*"]})).json()
        checks = [
            (h.http.post("/v1/webhooks", content=b"{", headers={"content-type": "application/json"}), 400),
            (h.http.post("/v1/webhooks", content=json.dumps({"url": "http://r.test/", "events": ["*"]}),
                         headers={"content-type": "text/plain"}), 415),
            (h.http.get(f"/v1/webhooks/{created['id']}/deliveries", params={"limit": "0"}), 400),
            (h.http.get(f"/v1/webhooks/{created['id']}/deliveries", params={"limit": "101"}), 400),
            (h.http.get("/v1/webhooks", params={"x": "1"}), 400),
            (h.http.post(f"/v1/webhooks/{created['id']}/enable", json={"now": True}), 400),
            (h.http.get("/v1/webhooks", headers={"Authorization": "Bearer nope"}), 401),
        ]
        for request, status in checks:
            response = await request
            assert response.status_code == status, response.text
        token = (await h.http.post("/v1/tokens", json={"owner_id": "o"})).json()["token"]
        for method, path in (("POST", "/v1/webhooks"), ("GET", "/v1/webhooks"), ("GET", f"/v1/webhooks/{created['id']}"),
                             ("DELETE", f"/v1/webhooks/{created['id']}"),
                             ("POST", f"/v1/webhooks/{created['id']}/enable"),
                             ("GET", f"/v1/webhooks/{created['id']}/deliveries")):
            response = await h.http.request(method, path, headers={"Authorization": f"Bearer {token}"},
                                            json={"url": "http://r.test/", "events": ["*"]} if method == "POST" else None)
            assert response.status_code == 403, (method, path)
        assert len((await h.http.get("/v1/webhooks")).json()["items"]) == 1


def test_the_event_types_are_those_of_the_feed_and_the_openapi_document() -> None:
    assert list(EVENT_TYPES) == SCHEMAS["Event"]["properties"]["type"]["enum"]


async def test_a_refusal_record_is_passed_without_a_post_and_without_spinning(tmp_path: Path) -> None:
    """A keyed request the ledger refused leaves a record the feed does not show (final
    outcomes): the lane's cursor moves past it at once, and it long-polls after it instead of
    reading the same record again and again."""

    class Counting:
        def __init__(self, port: LocalPort) -> None:
            self.port = port
            self.reads = 0

        async def events(self, after: int, limit: int, wait_s: float) -> list[tuple[int, Event]]:
            self.reads += 1
            await trio.lowlevel.checkpoint()  # a lane that spins fails the test instead of hanging it
            return await self.port.events(after, limit, wait_s)

        async def status(self) -> Status:
            return await self.port.status()

    async with harness(tmp_path, "r.test") as h:
        sim = h.sims["r.test"]
        source = Counting(h.port)
        await h.start_dispatcher(source=source)
        endpoint = await h.create("r.test")
        refused = await h.http.post("/v1/transfers", json={"from_wallet_id": "a", "to_wallet_id": "b", "amount": 3},
                                    headers={"Idempotency-Key": "broke"})
        assert refused.status_code == 422
        durable = (await h.port.status()).durable_lsn
        with trio.fail_after(5):
            while (await h.http.get(f"/v1/webhooks/{endpoint['id']}")).json()["acknowledged_lsn"] != durable:
                await trio.sleep(0.02)
        reads = source.reads
        await trio.sleep(0.3)
        assert source.reads - reads <= 2  # waiting for the next record, not re-reading this one
        assert sim.received == []


async def test_a_refund_is_delivered_to_an_endpoint_subscribed_to_refund_posted(tmp_path: Path) -> None:
    async with harness(tmp_path, "r.test") as h:
        sim = h.sims["r.test"]
        await h.start_dispatcher()
        await h.create("r.test", ["refund.posted"])
        deposited = await h.deposit("fund", 100)
        refunded = await h.http.post(f"/v1/transactions/{deposited['id']}/refund", json={"amount": 40},
                                     headers={"Idempotency-Key": "r"})
        assert refunded.status_code == 201, refunded.text
        await until(lambda: len(accepted(sim)) == 1)
        body = accepted(sim)[0]["body"]
        assert body["type"] == "refund.posted" and body["lsn"] == refunded.json()["lsn"]
        assert body["data"] == refunded.json()
