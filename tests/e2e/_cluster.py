"""``wallet cluster up`` in a subprocess, for end-to-end tests and the cluster crash loop: its
command, the cluster view (``GET /v1/admin/cluster``) and waiting for a state of it."""

from __future__ import annotations

import sys
import time
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
    """The group has an owner and a standby."""
    group = view["groups"][0]
    return group["owner"] is not None and len(group["standbys"]) == 1


def all_up(view: dict[str, Any]) -> bool:
    """Healthy, and every one of the three log nodes runs."""
    nodes = view["log"]["nodes"]
    return healthy(view) and len(nodes) == 3 and all(node["pid"] and pid_alive(node["pid"]) for node in nodes)
