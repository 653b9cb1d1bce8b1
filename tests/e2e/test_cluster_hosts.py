"""A cluster laid out as on several hosts (README *Cluster mode*), every process started by a
``wallet`` command in the foreground on a directory of its own, with the test as the process
manager: three ``wallet cluster node`` (the log), two ``wallet cluster member`` and a ``wallet
cluster worker``. The owner is SIGKILLed and started again as a process manager would: the
other member takes over, the worker reaches it with nothing reconfigured, every acknowledged
transfer is there, and a webhook endpoint created through the worker gets every event once, from
the first owner and then from the second (endpoints and cursors are in the cluster's bucket); the
worker's ``GET /v1/admin/cluster`` follows it from NATS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from server._cluster import status_dir
from server._natsnodes import node_problem
from tests.e2e._cluster import subscribe
from tests.e2e._server import ADMIN_TOKEN, free_port
from tests.e2e.test_webhooks import WebhookSim

ROOT = Path(__file__).resolve().parents[2]
TAKEOVER_LIMIT_S = 15.0
# The test's webhook receiver is on this host; retries come quickly.
HOOKS = ["--allow-private-webhooks", "--webhook-backoff-base", "0.05", "--webhook-backoff-max", "0.3"]


class Host:
    """One ``wallet cluster ...`` process on a data directory of its own (one host's)."""

    def __init__(self, base: Path, name: str, command: list[str]) -> None:
        self.data = base / name
        self.name = name
        self.command = [sys.executable, "-m", "server.cli", "cluster", *command, "--data", str(self.data)]
        self.log_path = base / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                            env=dict(os.environ, WALLET_ADMIN_TOKEN=ADMIN_TOKEN))

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def status(self) -> dict[str, Any] | None:
        """This member's status line (``server._member.write_status``), None before the first."""
        for path in status_dir(self.data).glob("*.json"):
            try:
                return dict(json.loads(path.read_text()))
            except (OSError, ValueError):
                return None
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[dict[str, Host]]:
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]  # client, monitoring, route
    routes = ",".join(f"nats-route://127.0.0.1:{route}" for _, _, route in ports)
    made = {f"n{index}": Host(tmp_path, f"node-{index}", [
        "node", "--name", f"n{index}", "--port", str(client), "--http-port", str(monitor),
        "--cluster-port", str(route), "--routes", routes]) for index, (client, monitor, route) in enumerate(ports)}
    servers = ",".join(f"nats://127.0.0.1:{client}" for client, _, _ in ports)
    port = free_port()
    made |= {
        "a": Host(tmp_path, "host-a", ["member", "--servers", servers, "--member", "a", *HOOKS]),
        "b": Host(tmp_path, "host-b", ["member", "--servers", servers, "--member", "b", *HOOKS]),
        "w": Host(tmp_path, "host-w", ["worker", "--servers", servers, "--port", str(port), *HOOKS]),
    }
    made["w"].port = port  # type: ignore[attr-defined]
    try:
        for index in range(3):
            made[f"n{index}"].start()
        _until(lambda: all(node_problem(f"n{index}", f"http://127.0.0.1:{monitor}") is None
                           for index, (_, monitor, _) in enumerate(ports)), 30, "three nodes with a meta leader", made)
        for key in ("a", "b", "w"):
            made[key].start()
        yield made
    finally:
        for host in made.values():
            host.stop()


def _until(predicate: Any, timeout_s: float, what: str, hosts: dict[str, Host]) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {host.name}\n{host.log()[-3000:]}" for host in hosts.values())
            raise AssertionError(f"{what} not within {timeout_s} s\n{logs}")
        time.sleep(0.1)


def _owner(hosts: dict[str, Host]) -> Host | None:
    for key in ("a", "b"):
        line = hosts[key].status()
        process = hosts[key].process
        if line and line["role"] == "owner" and process is not None and process.poll() is None \
                and line["pid"] == process.pid:
            return hosts[key]
    return None


def _post(http: httpx.Client, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response | None:
    try:
        response = http.post(path, json=body, headers={"Idempotency-Key": key} if key else {})
    except httpx.TransportError:
        return None
    return None if response.status_code == 503 else response


@contextmanager
def _stopping(receiver: WebhookSim) -> Iterator[WebhookSim]:
    try:
        yield receiver
    finally:
        receiver.stop()


def _cluster_view(http: httpx.Client, owner: Host, standby: Host) -> dict[str, Any] | None:
    """``GET /v1/admin/cluster`` of the worker once it shows ``owner`` and ``standby`` (the
    members' lines reach it over NATS), else None."""
    response = http.get("/v1/admin/cluster")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    (group,) = view["groups"]
    owner_pid = None if owner.process is None else owner.process.pid
    standby_pid = None if standby.process is None else standby.process.pid
    if group["owner"] is None or group["owner"]["pid"] != owner_pid:
        return None
    if [line["pid"] for line in group["standbys"]] != [standby_pid] or group["lsn"] == 0:
        return None  # (the owner's line of before its first commit)
    if not any(node["leader"] for node in view["log"]["nodes"]):
        return None  # (the owner has not yet learnt its stream's leader)
    return view


def test_members_and_a_worker_started_apart_serve_and_survive_the_owners_sigkill(hosts: dict[str, Host],
                                                                                 tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{hosts['w'].port}"  # type: ignore[attr-defined]
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
    receiver = WebhookSim(tmp_path / "webhook-sim.log", free_port())
    with http, _stopping(receiver):
        first = _until(lambda: _owner(hosts), 30, "an owner", hosts)
        answered = _until(lambda: _post(http, "/v1/assets", {"code": "USD", "scale": 2}), 30, "the asset", hosts)
        assert answered.status_code == 201, answered.text
        # A webhook endpoint created through the worker (on "its" host), delivered by the owner
        # (on another), kept in the cluster's bucket: no file is shared.
        start = subscribe(http, receiver)
        for wallet in ("alice", "bob"):
            created = http.post("/v1/wallets", json={"id": wallet, "owner_id": wallet, "asset": "USD"})
            assert created.status_code == 201, created.text
        deposit = http.post("/v1/deposits", json={"wallet_id": "alice", "amount": 1000},
                            headers={"Idempotency-Key": "deposit"})
        assert deposit.status_code == 201, deposit.text
        moved = 0
        for number in range(10):
            response = http.post("/v1/transfers", json={"from_wallet_id": "alice", "to_wallet_id": "bob",
                                                        "amount": 7}, headers={"Idempotency-Key": f"t{number}"})
            assert response.status_code == 201, response.text
            moved += 7
        # The worker has no ``cluster up`` on its host: its view of the cluster comes from NATS.
        other = hosts["b" if first is hosts["a"] else "a"]
        view = _until(lambda: _cluster_view(http, first, other), 15, "the worker's view of the cluster", hosts)
        (group,) = view["groups"]
        assert group["group"] == 0 and group["owner"]["epoch"] >= 1 and group["lsn"] > 0, view
        assert group["owner"]["node"].endswith("/a" if first is hosts["a"] else "/b"), view
        nodes = view["log"]["nodes"]
        assert sorted(node["url"] for node in nodes) == sorted(hosts["w"].command[hosts["w"].command.index(
            "--servers") + 1].split(",")), view
        assert [node["leader"] for node in nodes].count(True) == 1 and all(node["pid"] is None for node in nodes), view

        killed = first.process
        assert killed is not None
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        started = time.monotonic()
        first.start()  # the process manager: it comes back as a standby
        answered = _until(lambda: _post(http, "/v1/transfers", {"from_wallet_id": "alice", "to_wallet_id": "bob",
                                                                  "amount": 5}, "after"),
                          TAKEOVER_LIMIT_S + 10, "a transfer served after the owner's SIGKILL", hosts)
        assert answered.status_code == 201, answered.text
        served_s = time.monotonic() - started
        moved += 5
        # Usually the standby that was current takes over; on a loaded host the restarted member
        # (a standby again once it copied the stream) may win the fenced race instead. Either
        # way a newer epoch owns the group and the other member is its standby.
        second = _owner(hosts)
        assert second is not None, "no owner after the takeover"
        line = second.status()
        assert line is not None and line["epoch"] >= 2, line
        other = hosts["b" if second is hosts["a"] else "a"]
        assert served_s < TAKEOVER_LIMIT_S + 10, served_s
        balances = {wallet: http.get(f"/v1/wallets/{wallet}").json()["balance"] for wallet in ("alice", "bob")}
        assert balances == {"alice": 1000 - moved, "bob": moved}
        # Every event since the endpoint's creation, delivered once each across the takeover
        # (the new owner went on from the cursor the old one saved), verified, in feed order.
        expected = http.get("/v1/events", params={"after": start, "limit": 1000}).json()["items"]
        assert len([item for item in expected if item["type"] == "transfer.posted"]) == 11, expected
        accepted, bodies = receiver.delivered(len(expected))
        assert all(entry["verified"] for entry in accepted)
        assert bodies == expected
        _until(lambda: (other.status() or {}).get("role") == "standby", 30, "the other member as a standby",
               hosts)
        # The dead owner's line ages out of the worker's view; the new owner's comes in.
        _until(lambda: _cluster_view(http, second, other), 15, "the worker's view after the takeover", hosts)
    assert hosts["w"].stop() == 0, hosts["w"].log()[-3000:]
    config = (hosts["n0"].data / "nats.conf").read_text()
    assert "sync_interval: always" in config and "server_name: n0" in config, config
