"""``wallet cluster up``: a complete cluster on this host (ADR 0013), for development, demos and
the tests, run in the foreground like ``wallet serve --workers N``.

    cluster supervisor ─┬─ nats-server x 3     the replicated log (JetStream, R3, fsync always);
                        │                      ``server._natsnodes``, stores in <data>/nats
                        ├─ member x 2 a group  standby, then owner (``server._member``); each
                        │                      with its own data directory <data>/g<g>-<a|b>
                        └─ HTTP worker x N     as in ``--workers N``, reaching the group's owner
                                               by NATS request/reply on ``wallet.g<g>.rpc``,
                                               whichever member owns it (``server._natsport``)

It restarts whatever exits (a member always comes back as a standby), writes the table of
processes like the supervisor of ``--workers N`` does (it is one, with other children), and
``cluster.json`` in the run folder: the log's nodes, for ``GET /v1/admin/cluster``; each member
writes its own line next to it (``server._member.write_status``). On several hosts the same
processes run under a process manager each: the NATS nodes with routes to each other, members
and HTTP workers pointing at the NATS URLs (workers need nothing else of the members, so they
may run on any host); README *Cluster mode*.

With ``--groups G`` above 1 each group has its members, and the workers reach every group's owner
(``server._groups``): transfers between groups are ADR 0013's two-phase commit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc

from server._supervisor import (
    POLL_S,
    RESTART_DELAY_S,
    Child,
    Supervisor,
    _wait,
    bind,
    child_command,
    prepare_run_dir,
    run_dir,
)

log = logging.getLogger("server.cluster")

MEMBERS = ("a", "b")
CLUSTER_FILE = "cluster.json"
STATUS_DIR = "members"
# How long a member's status line published on NATS counts (``ClusterWatch``).
FRESH_S = 3.0


def status_dir(data_dir: Path) -> Path:
    return run_dir(data_dir) / STATUS_DIR


class ClusterSupervisor(Supervisor):
    def __init__(self, options: Any, *, groups: int, nodes: int, workers: int) -> None:
        from server._natsnodes import NatsCluster

        options = dataclasses.replace(options, groups=groups)
        super().__init__(options, workers=workers)
        assert 1 <= groups
        self.groups = groups
        self.nats = NatsCluster(self.data_dir / "nats", nodes=nodes)
        self.members = [Child("member", group * len(MEMBERS) + index, extra={"group": group, "member": name})
                        for group in range(groups) for index, name in enumerate(MEMBERS)]

    def _children(self) -> list[Child]:
        return [*self.members, *self.http]

    def _spawn(self, child: Child) -> None:
        if child.role != "member":
            super()._spawn(child)
            return
        group, name = child.extra["group"], child.extra["member"]
        options = dataclasses.replace(self.options, data_dir=self.data_dir / f"g{group}-{name}")
        command = [*child_command("member", options, supervisor=os.getpid(), socket_path=None),
                   "--group", str(group), "--member", name, "--servers", ",".join(self.nats.urls),
                   "--status-dir", str(status_dir(self.data_dir))]
        if child.process is not None:
            child.restarts += 1
        # Its own process group, as the supervisor's other children (``Supervisor._spawn``).
        child.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=self._child_env(), process_group=0)
        child.started_at = time.time()
        child.exited_at = None
        log.info("started member %s of group %d (pid %d)", name, group, child.process.pid)
        self._write_table()

    def _socket_of(self, child: Child) -> str | None:
        return None  # the workers reach the owner over NATS, the members serve no shared socket

    def _worker_args(self) -> list[str]:
        return ["--servers", ",".join(self.nats.urls), "--group", "0"]  # (all groups when --groups > 1)

    def _write_cluster(self) -> None:
        directory = run_dir(self.data_dir)
        temporary = directory / (CLUSTER_FILE + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"groups": self.groups, "supervisor": os.getpid(),
                                     "nodes": self.nats.describe()}))
        os.replace(temporary, directory / CLUSTER_FILE)

    def run(self) -> int:
        from ledger import prepare_data_dir
        from server._serve import admin_token

        self._started = time.time()
        prepare_data_dir(self.data_dir)
        prepare_run_dir(self.data_dir)
        status = status_dir(self.data_dir)
        status.mkdir(mode=0o700, exist_ok=True)
        for stale in status.glob("*.json"):  # a previous run's members
            stale.unlink()
        admin_token(self.data_dir)
        self._fresh_metrics_dir()
        self._listener = bind(self.options.host, self.options.port)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("starting the NATS nodes (JetStream, fsync always) in %s", self.nats.base_dir)
        self.nats.start()
        self._write_cluster()
        for child in self._children():
            self._spawn(child)
        while not self._signalled:
            changed = False
            for index in self.nats.exited():
                if not self._signalled:
                    log.error("NATS node %d exited; starting it again", index)
                    self.nats.restart(index)
                    self._write_cluster()
            for child in self._children():
                assert child.process is not None
                code = child.process.poll()
                if code is None:
                    continue
                now = time.time()
                if child.exited_at is None:
                    child.exited_at = now
                    changed = True
                    self._mark_dead(child)
                    log.error("%s %d (pid %d) exited with status %s; starting another",
                              child.role, child.slot, child.process.pid, code)
                if now - child.exited_at >= RESTART_DELAY_S and not self._signalled:
                    self._spawn(child)
            if changed:
                self._write_table()
            time.sleep(POLL_S)
        return self._stop_cluster()

    def _stop_cluster(self) -> int:
        deadline = time.monotonic() + self.options.shutdown_timeout_s
        for child in self.http:
            if child.alive:
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
        for child in self.http:
            _wait(child, deadline)
        if self._listener is not None:
            self._listener.close()
        # Standbys first, so that none takes over from an owner that is stopping.
        owners = _owners(self.data_dir)
        ordered = sorted(self.members, key=lambda child: child.process is not None and child.process.pid in owners)
        status = 0
        for child in ordered:
            if child.alive:
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
                code = _wait(child, deadline + 1.0)
                if code not in (0, -signal.SIGTERM):
                    log.error("member %d stopped with status %s", child.slot, code)
        self.nats.stop()
        for name in ("processes.json", CLUSTER_FILE):
            (run_dir(self.data_dir) / name).unlink(missing_ok=True)
        log.info("cluster stopped (status %d)", status)
        return status


def _owners(data_dir: Path) -> set[int]:
    pids = set()
    for path in status_dir(data_dir).glob("*.json"):
        try:
            line = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if line.get("role") == "owner":
            pids.add(int(line["pid"]))
    return pids


def cluster_view(data_dir: Path) -> dict[str, Any] | None:
    """``GET /v1/admin/cluster``: None when this process is not part of a cluster."""
    try:
        cluster = json.loads((run_dir(data_dir) / CLUSTER_FILE).read_text())
    except (OSError, ValueError):
        return None
    lines = []
    for path in sorted(status_dir(data_dir).glob("*.json")):
        try:
            lines.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    alive = [line for line in lines if _alive(int(line.get("pid", 0)))]
    groups, leaders = groups_view(alive, int(cluster["groups"]))
    nodes = [{"pid": node["pid"], "url": node["url"], "leader": node["name"] in leaders}
             for node in cluster["nodes"]]
    return {"groups": groups, "log": {"nodes": nodes}}


def groups_view(lines: list[dict[str, Any]], groups: int) -> tuple[list[dict[str, Any]], set[str]]:
    """The ``groups`` of ``GET /v1/admin/cluster`` from the members' status lines (of live
    processes), and the names of the log nodes that lead a group's stream."""
    leaders = {line.get("leader") for line in lines if line.get("role") == "owner"} - {None}
    view = []
    for group in range(groups):
        mine = [line for line in lines if line.get("group") == group]
        owners = sorted((line for line in mine if line.get("role") == "owner"), key=lambda line: -line["epoch"])
        owner = owners[0] if owners else None
        view.append({
            "group": group,
            "owner": None if owner is None else {"pid": owner["pid"], "node": owner["node"], "epoch": owner["epoch"]},
            "standbys": [{"pid": line["pid"], "node": line["node"], "lsn": line["lsn"]}
                         for line in mine if line.get("role") == "standby"],
            "lsn": 0 if owner is None else owner["lsn"],
        })
    return view, {str(leader) for leader in leaders}


class ClusterWatch:
    """``GET /v1/admin/cluster`` for a worker that has no ``wallet cluster up`` on its host (a
    ``wallet cluster worker`` of a cluster on several hosts): what NATS tells it. Every member
    publishes its status line on ``STATUS_SUBJECT`` each time it writes it (every
    ``STATUS_EVERY_S``); the watch keeps the newest line of each member process and shows those
    heard in the last ``FRESH_S``, so a member killed drops out within that (the file view of
    ``cluster up`` sees a dead process at once). The log's nodes are the worker's NATS URLs, each
    asked for its name by the ``INFO`` line a NATS server sends first on a connection; a node's
    pid lives on another host and is ``null`` here."""

    def __init__(self, servers: list[str], groups: int) -> None:
        self._servers = servers
        self._groups = groups
        self._lines: dict[tuple[int, str, int], tuple[dict[str, Any], float]] = {}
        self.heard = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # With the NATS client: only cluster workers load them.
        from server._member import STATUS_SUBJECT
        from wal import StreamClient

        task_status.started()
        while True:
            client = StreamClient(self._servers, name=f"wallet-watch-{os.getpid()}")
            try:
                await anyio.to_thread.run_sync(client.connect)
                await anyio.to_thread.run_sync(client.subscribe_core, STATUS_SUBJECT, self._on_status)
                await anyio.sleep_forever()
            except Exception as error:
                log.warning("cluster watch: NATS at %s: %s; trying again", ",".join(self._servers), error)
                await anyio.sleep(1.0)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(client.close)

    def _on_status(self, data: bytes) -> None:  # the NATS client's thread: a dict store
        try:
            line = json.loads(data)
            key = (int(line["group"]), str(line["node"]), int(line["pid"]))
        except (ValueError, KeyError, TypeError):
            return
        self._lines[key] = (line, time.monotonic())
        self.heard += 1

    async def view(self) -> dict[str, Any]:
        now = time.monotonic()
        fresh = [line for line, heard in list(self._lines.values())
                 if now - heard <= FRESH_S and line.get("role") in ("owner", "standby")]
        groups, leaders = groups_view(fresh, self._groups)
        names = [await node_name_at(url) for url in self._servers]
        nodes = [{"pid": None, "url": url, "leader": name is not None and name in leaders}
                 for url, name in zip(self._servers, names, strict=True)]
        return {"groups": groups, "log": {"nodes": nodes}}


async def node_name_at(url: str, timeout_s: float = 1.0) -> str | None:
    """The ``server_name`` of the NATS server at ``url`` (``nats://host:port``), from the
    ``INFO`` line it sends first; None when it does not answer in time."""
    parts = urlsplit(url)
    try:
        with anyio.fail_after(timeout_s):
            stream = await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 4222)
            async with stream:
                data = b""
                while b"\r\n" not in data and len(data) < 65536:
                    data += await stream.receive()
    except (OSError, TimeoutError, anyio.EndOfStream):
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        name = json.loads(line[5:]).get("server_name")
    except ValueError:
        return None
    return str(name) if name else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(options: Any, *, groups: int, nodes: int, workers: int) -> int:
    return ClusterSupervisor(options, groups=groups, nodes=nodes, workers=workers).run()


# -- one process of a cluster on a host of its own -----------------------------------------------
#
# ``wallet cluster member`` and ``wallet cluster worker``: what ``cluster up`` runs as its
# children, started alone in the foreground, for a process manager (systemd, a container
# runtime) on each host of a cluster whose NATS nodes run elsewhere. Neither needs a supervisor:
# the process manager restarts a member that exits (75 when it was replaced or lost the log:
# it comes back as a standby) and a worker that dies.


def run_member_alone(options: Any, *, member: str, servers: list[str], group: int = 0) -> int:
    """One member of ``group`` (standby, then owner), its copy of the log in
    ``<data>/g<group>-<member>`` (wiped at every start: only the stream is trusted) and its
    status line in this data directory's run folder, as under ``cluster up``."""
    from server._member import run_member

    data_dir: Path = options.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    prepare_run_dir(data_dir)
    mine = dataclasses.replace(options, data_dir=data_dir / f"g{group}-{member}")
    return run_member(mine, group=group, slot=member, servers=servers, status_dir=status_dir(data_dir))


def run_worker_alone(options: Any, *, servers: list[str]) -> int:
    """One HTTP worker on ``--host``/``--port`` of its own, reaching the groups' owners over
    NATS wherever they run. Workers on several hosts must share the admin token
    (``WALLET_ADMIN_TOKEN``)."""
    from server._serve import serve_worker_process

    data_dir: Path = options.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    prepare_run_dir(data_dir)
    fd = bind(options.host, options.port).detach()  # Hypercorn's from here on: it closes it
    return serve_worker_process(options, "", fd=fd, slot=0, servers=servers, group=0)
