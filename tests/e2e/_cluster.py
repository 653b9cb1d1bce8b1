"""``wallet cluster up`` in a subprocess, for end-to-end tests and the cluster crash loop: its
command, the cluster view (``GET /v1/admin/cluster``) and waiting for a state of it."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any

import httpx

from tests.e2e._server import ServerProcess
from tests.e2e._supervised import pid_alive


class ClusterProcess(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-m", "server.cli", "cluster", "up", "--data", str(self.data_dir),
                "--port", str(self.port), "--shards", str(self.shards), "--workers", "2", "--loop", self.loop, *self.extra_args]

    def view(self) -> dict[str, Any]:
        with self.client() as client:
            response = client.get("/v1/admin/cluster")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def owner_pid(self) -> int:
        owner = self.view()["groups"][0]["owner"]
        assert owner is not None
        return int(owner["pid"])

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                view = self.view()
                if predicate(view):
                    return view
            except (httpx.HTTPError, AssertionError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"cluster never reached the state; last view {view}\n{self.log_tail()}")


def healthy(view: dict[str, Any]) -> bool:
    """Every group has an owner and a standby."""
    return all(group["owner"] is not None and len(group["standbys"]) == 1 for group in view["groups"])


def all_up(view: dict[str, Any]) -> bool:
    """Healthy, and every one of the three log nodes runs."""
    nodes = view["log"]["nodes"]
    return healthy(view) and len(nodes) == 3 and all(node["pid"] and pid_alive(node["pid"]) for node in nodes)


class Clients:
    """Keyed transfers from a few threads between ``pairs`` (sender, receiver), each key retried
    until it is answered (as the client library does): the record of what the service
    acknowledged, key -> (from, to, amount, transaction id, monotonic time of the answer)."""

    def __init__(self, cluster: ClusterProcess, pairs: list[tuple[str, str]], threads: int = 4) -> None:
        self.cluster = cluster
        self.pairs = pairs
        self.acknowledged: dict[str, tuple[str, str, int, str, float]] = {}
        self.unavailable = 0  # 503 answers (each retried)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(threads)]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)
        assert not any(thread.is_alive() for thread in self.threads), "a client never got its answer"

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)

    def wait(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count() < count:
            assert all(thread.is_alive() for thread in self.threads), "a client thread died"
            assert time.monotonic() < deadline, f"only {self.count()} of {count} transfers acknowledged"
            time.sleep(0.05)

    def _run(self, seed: int) -> None:
        n = seed
        with self.cluster.client() as client:
            while not self.stop.is_set():
                n += len(self.threads)
                sender, receiver = self.pairs[n % len(self.pairs)]
                key, amount = str(uuid.uuid4()), 1 + n % 7
                body = {"from_wallet_id": sender, "to_wallet_id": receiver, "amount": amount}
                while True:
                    try:
                        response = client.post("/v1/transfers", json=body, headers={"Idempotency-Key": key})
                    except httpx.HTTPError:
                        time.sleep(0.05)
                        continue
                    if response.status_code == 503:
                        assert response.headers.get("Retry-After"), response.text
                        with self.lock:
                            self.unavailable += 1
                        time.sleep(0.05)
                        continue
                    assert response.status_code == 201, response.text
                    with self.lock:
                        self.acknowledged[key] = (sender, receiver, amount, response.json()["id"], time.monotonic())
                    break


def subscribe(client: httpx.Client, receiver: Any) -> int:
    """Creates a webhook endpoint for every event, delivering to ``receiver`` (a ``WebhookSim``
    not yet started: it starts here with the endpoint's secret); returns the position the
    endpoint starts after."""
    created = client.post("/v1/webhooks", json={"url": receiver.url + "/hook", "events": ["*"]})
    assert created.status_code == 201, created.text
    endpoint = created.json()
    receiver.start("--secret", endpoint["secret"])
    return int(client.get(f"/v1/webhooks/{endpoint['id']}").json()["acknowledged_lsn"])
