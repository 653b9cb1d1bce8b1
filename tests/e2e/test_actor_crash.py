"""A crash inside a shard actor (a bug) must take the process down with a non-zero status, not
leave a server that accepts connections and never answers. The bug is injected with a
``sitecustomize`` module that breaks one state-machine function in the server process."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.e2e._server import ADMIN_TOKEN, ServerProcess, on_each_loop

BREAK_ASSET_CREATION = """
import ledger._decide as state

def broken(*args, **kwargs):
    raise RuntimeError("injected bug in decide_create_asset")

state.decide_create_asset = broken
"""


class BrokenServer(ServerProcess):
    def __init__(self, data_dir: Path, inject: Path, *, loop: str) -> None:
        # One process: the crash-only rule of the process that holds the actors. Under a
        # supervisor the same exit (70) is the ledger process's, and the supervisor starts
        # another (tests/e2e/test_processes.py).
        super().__init__(data_dir, loop=loop, extra_args=["--workers", "0"])
        self.inject = inject

    def start(self, *, wait: bool = True) -> None:
        previous = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(self.inject) + (os.pathsep + previous if previous else "")
        try:
            super().start(wait=wait)
        finally:
            if previous is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = previous


@on_each_loop
def test_a_crashed_actor_exits_the_process_with_status_70(tmp_path: Path, loop: str) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(BREAK_ASSET_CREATION)
    server = BrokenServer(tmp_path / "data", inject, loop=loop)
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            try:
                http.post("/v1/assets", json={"code": "USD", "scale": 2}, timeout=10)
            except httpx.TransportError:
                pass  # the process died under the request: expected
        assert server.wait_exit(timeout_s=15) == 70
        assert "injected bug" in server.log()
    finally:
        server.kill()
