"""``wallet serve --workers N`` (N >= 1): the supervisor process. It owns no state and runs no
event loop; it starts the children, watches them and stops them.

    supervisor ─┬─ ledger process   shard actors, WAL group commit, snapshots, hold timer,
                │                   payout workers; serves the ledger port on a Unix socket
                │                   (``server._port``)
                ├─ projector        the history read model: tails the log into SQLite, syncs
                │                   with the ledger over the port (``ledger._projector``)
                ├─ webhooks         the webhook dispatcher: reads the event feed over the port,
                │                   POSTs to endpoints (``server._webhooks``)
                └─ HTTP worker x N  Hypercorn + Starlette on the one listening socket the
                                    supervisor bound and handed down; no money state; history
                                    reads straight from SQLite, read-only

What it promises (the README's *Processes*):
- The listening socket is bound here, before any child starts: a busy port fails at once, and
  a worker that dies and comes back serves the same socket (no connection is refused while
  the others keep accepting).
- An HTTP worker that exits is started again within ``RESTART_DELAY_S`` (the others keep
  serving). The ledger process likewise; until it has recovered, workers answer ``503``
  with ``Retry-After`` (their port raises ``Unavailable``). The projector likewise; while it is
  down, history reads wait for it (bounded, then ``503 history_lagging``) and writes go on.
- SIGTERM or SIGINT: the workers and the webhook dispatcher are stopped first (the workers stop
  accepting and answer what they accepted; the dispatcher saves its cursors), then the ledger (it drains, flushes the log and writes its final snapshot), then
  the projector (crash-only: it resumes from its stored LSN); the supervisor exits 0 when the
  ledger did. A second signal kills everything at once (safe: the
  log is the truth).
- Children die with the supervisor: each sets ``PR_SET_PDEATHSIG`` to SIGKILL as it starts
  (``server._child``), so a SIGKILLed supervisor leaves no orphan holding the data directory.

The table of processes (``GET /v1/admin/processes``) is written atomically (0600) to
``processes.json`` in the run folder (``run_dir``) whenever it changes; workers read it there.

Metrics: every child gets ``PROMETHEUS_MULTIPROC_DIR=<run folder>/metrics`` in its environment,
so prometheus-client writes its values there from its first import; the directory is emptied
here at each start (a previous run's counters must not add to this one's), and a child that
exits is marked dead there (``server._scrape`` says what that means for each kind of series).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("server.supervisor")

RESTART_DELAY_S = 0.5
POLL_S = 0.05
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, with room for the terminator
PROCESSES_FILE = "processes.json"
UP_PREFIX = "up-"  # an HTTP worker's marker in the run folder, once it reached the ledger
EXIT_CHILD_FAILED = 1
PROJECTOR_STOP_S = 5.0  # then it is killed (safe: it is crash-only)


def run_dir(data_dir: Path) -> Path:
    """Where the processes of one data directory meet: the ledger's Unix socket and the table of
    processes. A private folder in the temporary directory named after the data directory, not
    inside it: a socket file left by a killed process would break a plain copy of the data
    directory (a backup), and Unix socket paths are short (``SOCKET_PATH_MAX``)."""
    digest = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=10).hexdigest()
    return Path(tempfile.gettempdir()) / f"wallet-{digest}"


def metrics_dir(data_dir: Path) -> Path:
    """prometheus-client's multiprocess directory: one set of files per child process."""
    return run_dir(data_dir) / "metrics"


def ledger_socket_path(data_dir: Path) -> str:
    path = str(run_dir(data_dir) / "ledger.sock")
    assert len(path.encode()) <= SOCKET_PATH_MAX, path
    return path


def prepare_run_dir(data_dir: Path) -> Path:
    """Creates the run folder 0700, or checks that an existing one is this user's alone."""
    directory = run_dir(data_dir)
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{directory} belongs to another user or is not private (mode "
                              f"{oct(info.st_mode & 0o777)}): refusing to put the ledger's socket there")
    return directory


def options_to_json(options: Any) -> str:
    values = {}
    for item in dataclasses.fields(options):
        value = getattr(options, item.name)
        values[item.name] = str(value) if isinstance(value, Path) else value
    return json.dumps(values)


def child_command(role: str, options: Any, *, supervisor: int, socket_path: str | None) -> list[str]:
    """The command line of a ``server._child`` process of ``role`` (``server._child``'s arguments
    after these are the role's own). A cluster's members and workers have no socket path."""
    command = [sys.executable, "-m", "server._child", role, options_to_json(options), "--supervisor", str(supervisor)]
    return command if socket_path is None else [*command, "--socket", socket_path]


def options_from_json(text: str) -> Any:
    from server._serve import ServeOptions

    values = json.loads(text)
    for item in dataclasses.fields(ServeOptions):
        if item.name in values and isinstance(values[item.name], str) and "Path" in str(item.type):
            values[item.name] = Path(values[item.name])
    return ServeOptions(**values)


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Child:
    role: str  # "ledger", "projector", "webhooks" or "http"
    slot: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    exited_at: float | None = None
    stopping: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


BIND_WAIT_S = 5.0


def bind(host: str, port: int, backlog: int = 1024, *, wait_s: float = BIND_WAIT_S) -> socket.socket:
    """The listening socket every worker serves, inheritable by the children. A port in use is
    tried again for ``wait_s``: the workers of a supervisor that was just SIGKILLed hold it
    until they die a moment later (PR_SET_PDEATHSIG)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _bind(host, port, backlog)
        except OSError as error:
            if error.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, options: Any, *, workers: int) -> None:
        assert workers >= 1
        self.options = options
        self.workers = workers
        self.data_dir: Path = options.data_dir
        self.socket_path = ledger_socket_path(self.data_dir)
        self.ledger = Child("ledger", 0)
        self.projector = Child("projector", 0)
        self.webhooks = Child("webhooks", 0)
        self.http = [Child("http", slot) for slot in range(workers)]
        self._signalled = 0
        self._listener: socket.socket | None = None

    # -- children ------------------------------------------------------------------------

    def _children(self) -> list[Child]:
        return [self.ledger, self.projector, self.webhooks, *self.http]

    def _spawn(self, child: Child) -> None:
        command = child_command(child.role, self.options, supervisor=os.getpid(), socket_path=self._socket_of(child))
        pass_fds: tuple[int, ...] = ()
        if child.role == "http":
            assert self._listener is not None
            command += ["--fd", str(self._listener.fileno()), "--slot", str(child.slot), *self._worker_args()]
            pass_fds = (self._listener.fileno(),)
        if child.process is not None:
            child.restarts += 1
        # A process group of its own: a signal to the supervisor's group (Ctrl-C in a terminal,
        # ``timeout``) reaches the supervisor alone, which stops the children in its order;
        # otherwise each child began its own stop and the supervisor's SIGTERM arrived as a
        # second signal (exit at once). PR_SET_PDEATHSIG still ends the child with the supervisor.
        child.process = subprocess.Popen(command, pass_fds=pass_fds, stdin=subprocess.DEVNULL,
                                         env=self._child_env(), process_group=0)
        child.started_at = time.time()
        child.exited_at = None
        log.info("started %s process %d (pid %d)", child.role, child.slot, child.process.pid)
        self._write_table()

    def _socket_of(self, child: Child) -> str | None:
        """The ledger process's socket, as ``child`` is told it (every child of ``--workers N``)."""
        return self.socket_path

    def _worker_args(self) -> list[str]:
        """What an HTTP worker's command adds to reach the ledger (nothing: the socket)."""
        return []

    def _child_env(self) -> dict[str, str]:
        return dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir(self.data_dir)))

    def _fresh_metrics_dir(self) -> None:
        from ledger import DATA_DIR_MODE

        directory = metrics_dir(self.data_dir)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=DATA_DIR_MODE)

    def _mark_dead(self, child: Child) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        assert child.process is not None
        mark_process_dead(child.process.pid, str(metrics_dir(self.data_dir)))
        (run_dir(self.data_dir) / f"{UP_PREFIX}{child.process.pid}").unlink(missing_ok=True)

    def _write_table(self) -> None:
        items = []
        for child in self._children():
            if child.process is None:
                continue
            items.append({
                "role": child.role, "pid": child.process.pid, "started_at": _timestamp(child.started_at),
                "restarts": child.restarts, "alive": child.alive,
            })
        items.insert(0, {"role": "supervisor", "pid": os.getpid(), "started_at": _timestamp(self._started),
                         "restarts": 0, "alive": True})
        directory = run_dir(self.data_dir)
        temporary = directory / (PROCESSES_FILE + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps({"items": items}))
        os.replace(temporary, directory / PROCESSES_FILE)

    # -- the loop ------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled += 1
        if self._signalled > 1:
            log.warning("second signal: killing every child at once (the log is the truth)")
            for child in self._children():
                if child.alive:
                    assert child.process is not None
                    child.process.kill()
            os._exit(1)
        log.info("received %s: stopping the HTTP workers, then the ledger", signal.Signals(signum).name)

    def run(self) -> int:
        from ledger import prepare_data_dir
        from server._serve import admin_token

        self._started = time.time()
        prepare_data_dir(self.data_dir)
        prepare_run_dir(self.data_dir)
        admin_token(self.data_dir)  # made now, so that every worker reads the same one
        self._fresh_metrics_dir()
        for marker in run_dir(self.data_dir).glob(f"{UP_PREFIX}*"):  # a previous run's (pids recur)
            marker.unlink(missing_ok=True)
        self._listener = bind(self.options.host, self.options.port)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._spawn(self.ledger)
        self._spawn(self.projector)
        self._spawn(self.webhooks)
        for child in self.http:
            self._spawn(child)
        while not self._signalled:
            changed = False
            for child in self._children():
                assert child.process is not None
                status = child.process.poll()
                if status is None:
                    continue
                now = time.time()
                if child.exited_at is None:
                    child.exited_at = now
                    changed = True
                    self._mark_dead(child)
                    log.error("%s process %d (pid %d) exited with status %s; starting another",
                              child.role, child.slot, child.process.pid, status)
                    if child.role == "ledger" and status == 2:
                        # The ledger refused to start (a damaged log, a locked data directory):
                        # starting it again would refuse again.
                        return self._stop(refused=True)
                if now - child.exited_at >= RESTART_DELAY_S and not self._signalled:
                    self._spawn(child)
            if changed:
                self._write_table()
            time.sleep(POLL_S)
        return self._stop()

    def _stop(self, *, refused: bool = False) -> int:
        budget = self.options.shutdown_timeout_s
        deadline = time.monotonic() + budget
        for child in self.http:
            if child.alive:
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
        http_deadline = time.monotonic() + budget / 2
        if self.webhooks.alive:
            assert self.webhooks.process is not None
            self.webhooks.process.send_signal(signal.SIGTERM)
        for child in self.http:
            _wait(child, http_deadline)
        _wait(self.webhooks, time.monotonic() + PROJECTOR_STOP_S)
        if self._listener is not None:
            self._listener.close()
        status = 2 if refused else 0
        if self.ledger.alive:
            assert self.ledger.process is not None
            self.ledger.process.send_signal(signal.SIGTERM)
            code = _wait(self.ledger, deadline + 1.0)
            if code != 0:
                log.error("the ledger process stopped with status %s", code)
                status = EXIT_CHILD_FAILED if code is None or code != 2 else 2
        elif self.ledger.process is not None and self.ledger.process.returncode not in (0, None) and not refused:
            status = EXIT_CHILD_FAILED
        # The projector last: it follows the ledger's final records if it can; it needs no
        # graceful stop (each SQLite transaction carries its LSN).
        if self.projector.alive:
            assert self.projector.process is not None
            self.projector.process.send_signal(signal.SIGTERM)
            _wait(self.projector, time.monotonic() + PROJECTOR_STOP_S)
        try:
            (run_dir(self.data_dir) / PROCESSES_FILE).unlink()
        except FileNotFoundError:
            pass
        log.info("stopped (status %d)", status)
        return status


def _wait(child: Child, deadline: float) -> int | None:
    """The child's exit status, killing it once ``deadline`` (monotonic) has passed."""
    process = child.process
    if process is None:
        return None
    try:
        return process.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        log.warning("%s process %d (pid %d) did not stop in time: killing it", child.role, child.slot, process.pid)
        process.kill()
        return process.wait()


def processes(data_dir: Path) -> list[dict[str, Any]]:
    """The supervisor's table of processes (empty when there is none: one-process mode)."""
    try:
        table = json.loads((run_dir(data_dir) / PROCESSES_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    items: list[dict[str, Any]] = table.get("items", [])
    # Only the table of the supervisor this process runs under (a SIGKILLed supervisor leaves
    # its table behind; one-process mode has no supervisor).
    if not any(item.get("role") == "supervisor" and item.get("pid") == os.getppid() for item in items):
        return []
    return items


def mark_worker_up(data_dir: Path) -> None:
    """Said by an HTTP worker once it first reached the ledger process: ``/ready`` waits for
    every worker's (``workers_not_up``)."""
    try:
        (run_dir(data_dir) / f"{UP_PREFIX}{os.getpid()}").touch(mode=0o600)
    except FileNotFoundError:  # not under a supervisor (no run folder): nobody waits for it
        pass


def workers_not_up(data_dir: Path) -> str | None:
    """Why ``/ready`` must wait for the other HTTP workers (one that is starting or restarting,
    whose connections would be refused 503), or None when each live one has reached the ledger
    (or there is no supervisor: one-process mode)."""
    directory = run_dir(data_dir)
    for item in processes(data_dir):
        if item.get("role") == "http" and item.get("alive") and not (directory / f"{UP_PREFIX}{item['pid']}").exists():
            return f"HTTP worker {item['pid']} has not reached the ledger process yet"
    return None


def run(options: Any, *, workers: int) -> int:
    return Supervisor(options, workers=workers).run()
