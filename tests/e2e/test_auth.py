"""Authentication and authorization against a real ``wallet serve``: 401 without a valid bearer
token on every /v1 route, user tokens that act for their owner only (403 otherwise, nothing
changed), admin-only operations, revocation, tokens surviving a restart, and the admin token
file written when ``WALLET_ADMIN_TOKEN`` is not set."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import _server
from tests.e2e._server import ADMIN_TOKEN, ServerProcess

PROBLEM_FIELDS = {"type", "title", "status", "code", "detail"}
INT64_MAX = 2**63 - 1


# -- fixtures and helpers --------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Two owners with a funded USD wallet each, and their tokens."""

    alice: str
    bob: str
    alice_token: str
    bob_token: str
    alice_wallet: str
    bob_wallet: str
    deposit_id: str  # treasury -> alice_wallet


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(Path(tmp_path_factory.mktemp("auth")) / "data")
    process.start()
    try:
        with process.client() as http:
            assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
            assert http.post("/v1/assets", json={"code": "EUR", "scale": 2}).status_code == 201
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def admin(auth_server: ServerProcess) -> Iterator[httpx.Client]:
    with auth_server.client() as client:
        yield client


@pytest.fixture(scope="module")
def anonymous(auth_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth_server.url, timeout=30.0) as client:
        yield client


def key() -> str:
    return "k-" + uuid.uuid4().hex


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_token(admin: httpx.Client, owner: str) -> dict[str, Any]:
    response = admin.post("/v1/tokens", json={"owner_id": owner})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["owner_id"] == owner
    assert isinstance(body["token"], str) and len(body["token"]) >= 20
    assert body["token"].startswith(body["prefix"])
    return body


def make_wallet(admin: httpx.Client, owner: str, *, asset: str = "USD", funds: int = 0) -> str:
    wallet_id = uid("w")
    response = admin.post("/v1/wallets", json={"id": wallet_id, "owner_id": owner, "asset": asset})
    assert response.status_code == 201, response.text
    if funds:
        response = admin.post(
            "/v1/deposits", json={"wallet_id": wallet_id, "amount": funds}, headers={"Idempotency-Key": key()}
        )
        assert response.status_code == 201, response.text
    return wallet_id


@pytest.fixture
def world(admin: httpx.Client) -> World:
    alice, bob = uid("alice"), uid("bob")
    alice_wallet = uid("w")
    assert admin.post("/v1/wallets", json={"id": alice_wallet, "owner_id": alice, "asset": "USD"}).status_code == 201
    deposited = admin.post(
        "/v1/deposits", json={"wallet_id": alice_wallet, "amount": 1000}, headers={"Idempotency-Key": key()}
    )
    assert deposited.status_code == 201, deposited.text
    return World(
        alice=alice, bob=bob,
        alice_token=make_token(admin, alice)["token"], bob_token=make_token(admin, bob)["token"],
        alice_wallet=alice_wallet, bob_wallet=make_wallet(admin, bob, funds=1000),
        deposit_id=deposited.json()["id"],
    )


@pytest.fixture
def as_alice(auth_server: ServerProcess, world: World) -> Iterator[httpx.Client]:
    with auth_server.client(world.alice_token) as client:
        yield client


def check_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    assert PROBLEM_FIELDS <= set(body), body
    assert (body["status"], body["code"]) == (status, code), body


def state(admin: httpx.Client, *wallet_ids: str) -> list[tuple[int, int, str]]:
    views = [admin.get(f"/v1/wallets/{wallet_id}").json() for wallet_id in (*wallet_ids, "treasury:USD")]
    return [(view["balance"], view["held"], view["status"]) for view in views]


def transfer(client: httpx.Client, source: str, target: str, amount: int) -> httpx.Response:
    return client.post(
        "/v1/transfers", json={"from_wallet_id": source, "to_wallet_id": target, "amount": amount},
        headers={"Idempotency-Key": key()},
    )


# -- 401 ------------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/assets", None),
    ("POST", "/v1/assets", {"code": "ZZZ", "scale": 2}),
    ("POST", "/v1/tokens", {"owner_id": "mallory"}),
    ("DELETE", "/v1/tokens/wt_abcdefghi", None),
    ("POST", "/v1/wallets", {"id": "au-x", "owner_id": "mallory", "asset": "USD"}),
    ("GET", "/v1/wallets", None),
    ("GET", "/v1/wallets/au-x", None),
    ("POST", "/v1/wallets/au-x/freeze", None),
    ("POST", "/v1/wallets/au-x/unfreeze", None),
    ("POST", "/v1/wallets/au-x/close", None),
    ("GET", "/v1/wallets/au-x/balance", None),
    ("GET", "/v1/wallets/au-x/transactions", None),
    ("POST", "/v1/deposits", {"wallet_id": "au-x", "amount": 1}),
    ("POST", "/v1/transfers", {"from_wallet_id": "au-x", "to_wallet_id": "au-y", "amount": 1}),
    ("GET", "/v1/transactions/tx_x", None),
]
BAD_AUTHORIZATION: list[tuple[str, str | None]] = [
    ("missing", None),
    ("unknown-token", "Bearer wt_not-a-token"),
    ("basic", "Basic dXNlcjpwYXNz"),
    ("basic-with-admin-token", f"Basic {ADMIN_TOKEN}"),
    ("scheme-only", "Bearer"),
    ("token-without-scheme", ADMIN_TOKEN),
    ("admin-token-with-suffix", f"Bearer {ADMIN_TOKEN}x"),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize(("authorization"), [value for _, value in BAD_AUTHORIZATION],
                         ids=[name for name, _ in BAD_AUTHORIZATION])
def test_every_v1_route_needs_a_valid_bearer_token(
    anonymous: httpx.Client, method: str, path: str, body: dict[str, Any] | None, authorization: str | None
) -> None:
    headers = {"Idempotency-Key": key()}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = anonymous.request(method, path, json=body, headers=headers)
    check_problem(response, 401, "unauthorized")


def test_401_changed_nothing(auth_server: ServerProcess, admin: httpx.Client) -> None:
    assert admin.get("/v1/wallets/au-x").status_code == 404
    assert "ZZZ" not in {asset["code"] for asset in admin.get("/v1/assets").json()["items"]}


# -- user tokens act for their owner only ---------------------------------------------------------


def test_user_creates_wallets_for_itself_only(as_alice: httpx.Client, admin: httpx.Client, world: World) -> None:
    mine = uid("w")
    response = as_alice.post("/v1/wallets", json={"id": mine, "owner_id": world.alice, "asset": "USD"})
    assert response.status_code == 201, response.text
    assert response.json()["owner_id"] == world.alice
    made = as_alice.post("/v1/wallets", json={"owner_id": world.alice, "asset": "EUR"})
    assert made.status_code == 201, made.text

    theirs = uid("w")
    check_problem(as_alice.post("/v1/wallets", json={"id": theirs, "owner_id": world.bob, "asset": "USD"}),
                  403, "forbidden")
    check_problem(admin.get(f"/v1/wallets/{theirs}"), 404, "wallet_not_found")
    # An id another owner already holds is not handed over either.
    response = as_alice.post("/v1/wallets", json={"id": world.bob_wallet, "owner_id": world.alice, "asset": "USD"})
    check_problem(response, 409, "wallet_exists")
    assert admin.get(f"/v1/wallets/{world.bob_wallet}").json()["owner_id"] == world.bob


def test_user_reads_its_own_wallets_only(as_alice: httpx.Client, world: World) -> None:
    response = as_alice.get(f"/v1/wallets/{world.alice_wallet}")
    assert response.status_code == 200, response.text
    assert response.json()["balance"] == 1000
    check_problem(as_alice.get(f"/v1/wallets/{world.bob_wallet}"), 403, "forbidden")
    check_problem(as_alice.get("/v1/wallets/treasury:USD"), 403, "forbidden")
    check_problem(as_alice.get("/v1/wallets/no-such-wallet"), 404, "wallet_not_found")
    assert as_alice.get(f"/v1/wallets/{world.alice_wallet}/balance").json()["balance"] == 1000
    check_problem(as_alice.get(f"/v1/wallets/{world.bob_wallet}/balance"), 403, "forbidden")
    check_problem(
        as_alice.get(f"/v1/wallets/{world.bob_wallet}/balance", params={"as_of": "2026-01-01T00:00:00Z"}),
        403, "forbidden",
    )


def test_user_transfers_from_its_wallet_only(as_alice: httpx.Client, admin: httpx.Client, world: World) -> None:
    response = transfer(as_alice, world.alice_wallet, world.bob_wallet, 100)
    assert response.status_code == 201, response.text
    assert response.json()["from_wallet_id"] == world.alice_wallet
    before = state(admin, world.alice_wallet, world.bob_wallet)
    assert before[:2] == [(900, 0, "active"), (1100, 0, "active")]

    check_problem(transfer(as_alice, world.bob_wallet, world.alice_wallet, 100), 403, "forbidden")
    other = make_wallet(admin, world.alice)
    check_problem(transfer(as_alice, world.bob_wallet, other, 1), 403, "forbidden")
    assert state(admin, world.alice_wallet, world.bob_wallet) == before
    assert state(admin, other) == [(0, 0, "active"), before[2]]


def test_user_lists_its_own_wallets_only(as_alice: httpx.Client, admin: httpx.Client, world: World) -> None:
    second = make_wallet(admin, world.alice, asset="EUR")
    response = as_alice.get("/v1/wallets")
    assert response.status_code == 200, response.text
    assert sorted(item["id"] for item in response.json()["items"]) == sorted([world.alice_wallet, second])
    response = as_alice.get("/v1/wallets", params={"owner_id": world.alice, "asset": "EUR"})
    assert [item["id"] for item in response.json()["items"]] == [second]
    response = as_alice.get("/v1/wallets", params={"asset": "USD", "limit": 1000})
    assert [item["id"] for item in response.json()["items"]] == [world.alice_wallet]
    check_problem(as_alice.get("/v1/wallets", params={"owner_id": world.bob}), 403, "forbidden")


def test_user_reads_history_that_involves_it_only(
    auth_server: ServerProcess, as_alice: httpx.Client, admin: httpx.Client, world: World
) -> None:
    carol = uid("carol")
    carol_wallet = make_wallet(admin, carol, funds=50)
    sent = transfer(as_alice, world.alice_wallet, world.bob_wallet, 10).json()
    with auth_server.client(world.bob_token) as as_bob:
        received = transfer(as_bob, world.bob_wallet, world.alice_wallet, 5).json()
        unrelated = transfer(as_bob, world.bob_wallet, carol_wallet, 1).json()

    statement = as_alice.get(f"/v1/wallets/{world.alice_wallet}/transactions")
    assert statement.status_code == 200, statement.text
    assert [item["transaction_id"] for item in statement.json()["items"]] == [
        received["id"], sent["id"], world.deposit_id,
    ]
    check_problem(as_alice.get(f"/v1/wallets/{world.bob_wallet}/transactions"), 403, "forbidden")
    check_problem(as_alice.get(f"/v1/wallets/{carol_wallet}/transactions"), 403, "forbidden")

    for involved in (sent, received):
        response = as_alice.get(f"/v1/transactions/{involved['id']}")
        assert response.status_code == 200, response.text
        assert response.json() == involved
    assert as_alice.get(f"/v1/transactions/{world.deposit_id}").status_code == 200
    check_problem(as_alice.get(f"/v1/transactions/{unrelated['id']}"), 403, "forbidden")
    check_problem(as_alice.get("/v1/transactions/tx_000000000000000000000000"), 404, "transaction_not_found")


def test_admin_only_operations_are_403_for_a_user(as_alice: httpx.Client, admin: httpx.Client, world: World) -> None:
    before = state(admin, world.alice_wallet, world.bob_wallet)
    assets_before = admin.get("/v1/assets").json()
    for method, path, body in (
        ("POST", "/v1/deposits", {"wallet_id": world.alice_wallet, "amount": 1}),
        ("POST", f"/v1/wallets/{world.alice_wallet}/freeze", None),
        ("POST", f"/v1/wallets/{world.alice_wallet}/unfreeze", None),
        ("POST", f"/v1/wallets/{world.alice_wallet}/close", None),
        ("POST", f"/v1/wallets/{world.bob_wallet}/freeze", None),
        ("POST", "/v1/assets", {"code": "ZZU", "scale": 2}),
        ("POST", "/v1/tokens", {"owner_id": world.alice}),
        ("POST", "/v1/tokens", {"owner_id": world.bob}),
        ("DELETE", f"/v1/tokens/{world.bob_token[:12]}", None),
        ("DELETE", f"/v1/tokens/{world.alice_token[:12]}", None),
    ):
        response = as_alice.request(method, path, json=body, headers={"Idempotency-Key": key()})
        check_problem(response, 403, "forbidden")
    assert state(admin, world.alice_wallet, world.bob_wallet) == before
    assert admin.get("/v1/assets").json() == assets_before
    # Both tokens still work.
    assert as_alice.get(f"/v1/wallets/{world.alice_wallet}").status_code == 200
    with httpx.Client(base_url=as_alice.base_url, headers={"Authorization": f"Bearer {world.bob_token}"}) as as_bob:
        assert as_bob.get(f"/v1/wallets/{world.bob_wallet}").status_code == 200


def test_a_user_cannot_probe_another_wallets_balance(auth_server: ServerProcess, admin: httpx.Client) -> None:
    rich_owner, prober = uid("rich"), uid("prober")
    rich = make_wallet(admin, rich_owner, funds=1_000_000)
    poor = make_wallet(admin, rich_owner, funds=10)
    probe = make_wallet(admin, prober)
    with auth_server.client(make_token(admin, prober)["token"]) as as_prober:
        answers = {
            target: transfer(as_prober, probe, target, INT64_MAX - 100_000).json()["code"] for target in (rich, poor)
        }
    # The prober has nothing: both answers must be the same, and about its own wallet.
    assert answers == {rich: "insufficient_funds", poor: "insufficient_funds"}


def test_no_user_can_act_as_the_treasury_owner_or_read_treasury_data(
    auth_server: ServerProcess, admin: httpx.Client, world: World
) -> None:
    # The treasury's owner id is reserved: no token or wallet can be made for it ...
    check_problem(admin.post("/v1/tokens", json={"owner_id": "system"}), 400, "invalid_request")
    check_problem(
        admin.post("/v1/wallets", json={"owner_id": "system", "asset": "USD"}), 400, "invalid_request"
    )
    # ... and a user never reads a treasury wallet or a deposit it did not receive.
    with auth_server.client(world.alice_token) as as_alice:
        check_problem(as_alice.get("/v1/wallets/treasury:USD"), 403, "forbidden")
        check_problem(as_alice.get("/v1/wallets/treasury:USD/transactions"), 403, "forbidden")
    with auth_server.client(world.bob_token) as as_bob:
        check_problem(as_bob.get(f"/v1/transactions/{world.deposit_id}"), 403, "forbidden")


# -- revocation and restart -----------------------------------------------------------------------


def test_revoked_token_is_401(auth_server: ServerProcess, admin: httpx.Client, world: World) -> None:
    spare = make_token(admin, world.alice)
    with auth_server.client(spare["token"]) as as_spare, auth_server.client(world.alice_token) as as_alice:
        assert as_spare.get(f"/v1/wallets/{world.alice_wallet}").status_code == 200
        response = admin.delete(f"/v1/tokens/{spare['prefix']}")
        assert response.status_code == 200, response.text
        check_problem(as_spare.get(f"/v1/wallets/{world.alice_wallet}"), 401, "unauthorized")
        check_problem(transfer(as_spare, world.alice_wallet, world.bob_wallet, 1), 401, "unauthorized")
        assert as_alice.get(f"/v1/wallets/{world.alice_wallet}").status_code == 200  # the other token lives on
    check_problem(admin.delete(f"/v1/tokens/{spare['prefix']}"), 404, "token_not_found")
    check_problem(admin.delete("/v1/tokens/wt_nosuchone"), 404, "token_not_found")
    assert state(admin, world.alice_wallet)[0] == (1000, 0, "active")


def test_tokens_survive_a_restart(auth_server: ServerProcess) -> None:
    with auth_server.client() as admin:
        owner = uid("dora")
        wallet_id = make_wallet(admin, owner, funds=10)
        kept, revoked = make_token(admin, owner), make_token(admin, owner)
        assert admin.delete(f"/v1/tokens/{revoked['prefix']}").status_code == 200

    auth_server.restart()

    with auth_server.client(kept["token"]) as as_kept:
        response = as_kept.get(f"/v1/wallets/{wallet_id}")
        assert response.status_code == 200, response.text
        assert response.json()["balance"] == 10
    with auth_server.client(revoked["token"]) as as_revoked:
        check_problem(as_revoked.get(f"/v1/wallets/{wallet_id}"), 401, "unauthorized")
    with auth_server.client() as admin:
        check_problem(admin.delete(f"/v1/tokens/{revoked['prefix']}"), 404, "token_not_found")
    # The environment's admin token does not write a token file.
    assert not (auth_server.data_dir / "admin.token").exists()


# -- the admin token file -------------------------------------------------------------------------


class FileTokenServer(ServerProcess):
    """A server started without ``WALLET_ADMIN_TOKEN``: it must make and keep its own."""

    def start(self, *, wait: bool = True) -> None:
        assert self.process is None or self.process.poll() is not None
        env = {name: value for name, value in os.environ.items() if name != "WALLET_ADMIN_TOKEN"}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=Path(_server.__file__).resolve().parents[2],
            )
        if wait:
            self.wait_ready()


def test_admin_token_file_when_no_environment_token(tmp_path: Path) -> None:
    process = FileTokenServer(tmp_path / "data")
    process.start()
    try:
        path = process.data_dir / "admin.token"
        assert path.exists()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert token and token != ADMIN_TOKEN

        with process.client(token) as admin:
            assert admin.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
            assert make_token(admin, "erin")["owner_id"] == "erin"
        with process.client(ADMIN_TOKEN) as stranger:
            check_problem(stranger.get("/v1/assets"), 401, "unauthorized")

        process.restart()

        assert path.read_text().strip() == token
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with process.client(token) as admin:
            response = admin.get("/v1/assets")
            assert response.status_code == 200, response.text
            assert [asset["code"] for asset in response.json()["items"]] == ["USD"]
    finally:
        process.kill()
