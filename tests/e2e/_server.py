"""A real ``wallet serve`` in a subprocess, for end-to-end tests: start, wait until ready,
SIGKILL, SIGTERM, restart on the same data directory.

Each server runs on an event loop (``wallet serve --loop``): trio unless the test asks for
another, or ``WALLET_TEST_LOOP`` names one for the whole run (``WALLET_TEST_LOOP=uvloop pytest
tests/e2e`` runs every end-to-end test on uvloop). ``on_each_loop`` runs a test that uses the
``server`` fixture on each of ``TEST_LOOPS``: the crash, conservation, graceful-shutdown and
happy-path tests, not the whole suite, to keep its time down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._budget import loops
from wallet_client import WalletClient

ADMIN_TOKEN = "test-admin-token"
READY_TIMEOUT_S = 30.0
DEFAULT_LOOP = os.environ.get("WALLET_TEST_LOOP", "trio")
# trio is the default; uvloop is the fast alternative (plain asyncio shares its code path in
# Hypercorn and anyio, so it is left to ``WALLET_TEST_LOOP=asyncio``).
TEST_LOOPS = ["trio", "uvloop"]
on_each_loop = pytest.mark.parametrize("loop", TEST_LOOPS)
# The heaviest of those: on each loop under ``make test-long``, on the default loop in CI (the
# lighter crash, shutdown and happy-path tests still run on both there).
on_each_loop_long = pytest.mark.parametrize("loop", loops(TEST_LOOPS))
# HTTP workers of a test's server unless it passes ``--workers`` itself: one, not one per core.
# Still the supervised processes of ``--workers N`` (the ledger process behind its socket, the
# projector, the dispatcher); each process costs about 0.9 CPU-s to start, which under four
# test processes on two cores decided much of the suite's time. The tests of several workers
# (tests/e2e/test_processes.py, test_metrics_processes.py, the conftest's ``workers_server``)
# ask for them.
TEST_WORKERS = os.environ.get("WALLET_TEST_HTTP_WORKERS", "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(
        self, data_dir: Path, *, shards: int = 4, extra_args: list[str] | None = None, loop: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.shards = shards
        self.loop = loop or DEFAULT_LOOP
        self.extra_args = extra_args or []
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        workers = [] if "--workers" in self.extra_args else ["--workers", TEST_WORKERS]
        return [
            sys.executable, "-m", "server.cli", "serve", "--data", str(self.data_dir),
            "--port", str(self.port), "--shards", str(self.shards), "--loop", self.loop, *workers, *self.extra_args,
        ]

    def start(self, *, wait: bool = True) -> None:
        assert self.process is None or self.process.poll() is not None
        env = dict(os.environ, WALLET_ADMIN_TOKEN=ADMIN_TOKEN, PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab")  # closed below: the child keeps its own copy
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1.0).status_code == 200:
                    # The server names the loop it really runs on (not just the flag it got).
                    assert f"(event loop: {self.loop})" in self.log(), self.log_tail()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.log_tail()}")

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log(self) -> str:
        """The whole server log so far (every start of this process object appends to it)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self) -> str:
        return self.log()[-5000:]

    def client(self, token: str = ADMIN_TOKEN, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0, **options)

    def async_client(self, token: str = ADMIN_TOKEN, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0, **options
        )


def started_with_assets(data_dir: Path, *codes: str, **options: Any) -> ServerProcess:
    """A started server on ``data_dir`` with the assets ``codes`` (scale 2) created."""
    process = ServerProcess(data_dir, **options)
    process.start()
    try:
        with WalletClient(process.url, token=ADMIN_TOKEN) as client:
            for code in codes:
                client.create_asset(code, 2)
    except BaseException:
        process.kill()
        raise
    return process
