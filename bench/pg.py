"""The PostgreSQL row-lock design under the ledger's benchmark loads, measured with pgbench.

    python -m bench.pg [--duration 20] [--warmup 3] [--runs 3] [--clients 64] [--jobs 2]
                       [--accounts 10000] [--balance N] [--scenarios uniform,hot] [--json PATH]
                       [--run-as USER] [--check]

A transfer is one PostgreSQL transaction (``bench/postgres/uniform.sql`` and ``hot.sql``): both
accounts locked with ``SELECT ... FOR UPDATE`` in id order, the sender's funds checked, both
balances updated, a ``transfers`` row inserted, commit. The script creates a throwaway cluster in
a temporary directory (``initdb``; the server on a free loopback port, run as an unprivileged
user when we are root, since PostgreSQL refuses root), with ``fsync`` and ``synchronous_commit``
on: a commit is answered after its WAL is flushed, as the ledger answers after its fsync.

Each run reloads the schema and ``--accounts`` accounts (``schema.sql``), runs pgbench
(prepared statements, TCP to 127.0.0.1) for ``--warmup`` + ``--duration`` + 1 seconds with a
per-transaction log, and takes throughput and latency percentiles from that log over the
``--duration`` seconds after the warm-up (pgbench itself prints only the mean latency). Then it
checks that the accounts still hold exactly what they were given and counts the transactions
that found too little money and rolled back ("refused": none with the default balances, but
they would count in the throughput). Runs alternate between the scenarios, ``--runs``
rounds; the table shows medians. The cluster is stopped and removed at the end, also on errors
and Ctrl-C. Exit status: 0, 1 (a run failed or money was not conserved), 2 (PostgreSQL not
found or not startable), 130 (interrupted).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import math
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench._report import git_revision, machine, say, show, write_json
from bench._service import tree_cpu_seconds

SCRIPTS = Path(__file__).resolve().parent / "postgres"
SCENARIOS = {"uniform": SCRIPTS / "uniform.sql", "hot": SCRIPTS / "hot.sql"}
SCHEMA = SCRIPTS / "schema.sql"
OPENING_BALANCE = 10**9  # per account (default): far more than a run moves out of either hot account
SUPERUSER = "bench"
DATABASE = "postgres"
SERVER_ACCOUNTS = ("postgres", "nobody")  # tried in this order when we are root
TOOLS = ("initdb", "pg_ctl", "postgres", "pgbench", "psql")
SEARCH_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/pgsql-*/bin")
TAIL_S = 1  # pgbench runs this much past the measured window, which ends before its last second
CPU_SHOWN = ("server_cores", "pgbench_cores", "other_cores", "steal_cores")  # medians in the table
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99.9": 0.999}

# The server's settings (appended to postgresql.conf): durability as the ledger's (every commit
# flushed before it is answered), PostgreSQL's defaults otherwise, set explicitly so the report
# says what they were. `port` is added per cluster.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "100",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "'128MB'",
    "max_wal_size": "'1GB'",
    "checkpoint_timeout": "'5min'",
}


class PgError(RuntimeError):
    """PostgreSQL could not be found or started; the message says what to do."""


class RunFailed(PgError):
    """psql or pgbench failed during a run."""


# -- finding PostgreSQL -----------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    initdb: Path
    pg_ctl: Path
    postgres: Path
    pgbench: Path
    psql: Path


def _version_key(directory: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> (15,), so the newest installed version comes first."""
    return tuple(int(part) for part in re.findall(r"\d+", str(directory))) or (0,)


def _candidate_dirs() -> list[Path]:
    """Where the server's tools may be: next to those on PATH, then the usual install places."""
    found: list[Path] = []
    for name in ("initdb", "pg_ctl", "postgres"):
        if (path := shutil.which(name)) is not None:
            found.append(Path(path).resolve().parent)
    for pattern in SEARCH_DIRS:
        found.extend(sorted((Path(p) for p in glob.glob(pattern)), key=_version_key, reverse=True))
    return list(dict.fromkeys(found))


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binaries(directories: Iterable[Path] | None = None) -> Binaries | None:
    """The first directory holding initdb, pg_ctl and postgres together; pgbench and psql from the
    same directory when there (the same version), else from PATH. None when something is missing."""
    for directory in _candidate_dirs() if directories is None else directories:
        if not all(_executable(directory / name) for name in ("initdb", "pg_ctl", "postgres")):
            continue
        clients: dict[str, Path] = {}
        for name in ("pgbench", "psql"):
            local = directory / name
            on_path = shutil.which(name)
            if _executable(local):
                clients[name] = local
            elif on_path is not None:
                clients[name] = Path(on_path)
        if len(clients) == 2:
            return Binaries(initdb=directory / "initdb", pg_ctl=directory / "pg_ctl",
                            postgres=directory / "postgres", pgbench=clients["pgbench"], psql=clients["psql"])
    return None


def not_found_message() -> str:
    searched = ", ".join([*(str(d) for d in _candidate_dirs()), "PATH"])
    return (f"PostgreSQL not found: need {', '.join(TOOLS)} (searched {searched}). "
            "On Debian: apt-get install postgresql")


def version(binaries: Binaries) -> str:
    """``postgres --version``'s answer, e.g. "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"."""
    return subprocess.run([str(binaries.postgres), "--version"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


# -- who runs the server ----------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def server_account(requested: str | None = None) -> Account | None:
    """The unprivileged account to run initdb and the server as; None to run them as ourselves
    (we are not root). PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        if requested is not None:
            raise PgError("--run-as needs root (to switch users)")
        return None
    for name in [requested] if requested is not None else SERVER_ACCOUNTS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid)
    wanted = " or ".join(repr(n) for n in ([requested] if requested is not None else SERVER_ACCOUNTS))
    raise PgError(f"running as root, which PostgreSQL refuses, and no unprivileged user {wanted} to run "
                  "it as: create one (useradd --system postgres) or pass --run-as USER")


# -- the cluster ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Cluster:
    """A throwaway cluster: its data directory under ``root``/cluster, owned by ``account``."""

    binaries: Binaries
    account: Account | None
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "cluster" / "data"

    @property
    def log(self) -> Path:
        return self.root / "cluster" / "server.log"

    def connection(self) -> list[str]:
        """Flags psql and pgbench share: TCP to the loopback port, as the superuser."""
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]

    def as_server(self, command: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        """Runs an initdb or pg_ctl command as the server's account."""
        identity: dict[str, Any] = {}
        if self.account is not None:
            identity = {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.root / "cluster")}
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=self.root / "cluster", **identity)

    def create(self) -> None:
        home = self.root / "cluster"
        home.mkdir(mode=0o700)
        if self.account is not None:
            os.chown(home, self.account.uid, self.account.gid)
        done = self.as_server([str(self.binaries.initdb), "-D", str(self.data), "-U", SUPERUSER,
                               "--auth=trust", "--encoding=UTF8", "--no-locale"], timeout=120)
        if done.returncode != 0:
            who = f" as {self.account.name!r}" if self.account else ""
            raise PgError(f"initdb{who} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
        settings = {**SETTINGS, "port": str(self.port)}
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# bench.pg\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))

    def start(self) -> None:
        done = self.as_server([str(self.binaries.pg_ctl), "-D", str(self.data), "-l", str(self.log),
                               "-w", "-t", "60", "-s", "start"], timeout=90)
        if done.returncode != 0:
            raise PgError(f"the server did not start ({done.returncode}): {done.stderr.strip()}\n{_tail(self.log)}")

    def stop(self) -> None:
        """Fast shutdown; immediate if that fails; SIGKILL to the postmaster as a last resort."""
        if not (self.data / "postmaster.pid").exists():
            return
        for mode in ("fast", "immediate"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                command = [str(self.binaries.pg_ctl), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "-s", "stop"]
                if self.as_server(command, timeout=45).returncode == 0:
                    return
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(self.postmaster(), signal.SIGKILL)

    def postmaster(self) -> int:
        """The server's process id (the first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def psql(self, *arguments: str, timeout: float = 300) -> str:
        """psql (as ourselves: it is only a client) with ``arguments``; its stdout."""
        command = [str(self.binaries.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", *self.connection(),
                   "-d", DATABASE, *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RunFailed(f"psql {' '.join(arguments)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


@contextlib.contextmanager
def cluster(binaries: Binaries, account: Account | None) -> Iterator[Cluster]:
    """A started cluster in a new temporary directory; stopped and removed however the block ends."""
    root = Path(tempfile.mkdtemp(prefix="wallet-pg-"))
    root.chmod(0o711)  # the server's account must reach root/cluster, not list root
    running = Cluster(binaries=binaries, account=account, root=root, port=free_port())
    try:
        running.create()
        running.start()
        yield running
    finally:
        try:
            running.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


# -- data: load and check ---------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    accounts: int
    balance_sum: int
    negative: int
    transfers: int


def load(running: Cluster, accounts: int, balance: int) -> None:
    running.psql("-v", f"accounts={accounts}", "-v", f"balance={balance}", "-f", str(SCHEMA))


def totals(running: Cluster) -> Totals:
    row = running.psql("-A", "-t", "-F", " ", "-c",
                       "SELECT count(*), coalesce(sum(balance), 0), count(*) FILTER (WHERE balance < 0), "
                       "(SELECT count(*) FROM transfers) FROM accounts").split()
    accounts, balance_sum, negative, transfers = (int(value) for value in row)
    return Totals(accounts=accounts, balance_sum=balance_sum, negative=negative, transfers=transfers)


def conservation(after: Totals, *, accounts: int, balance: int, processed: int) -> dict[str, Any]:
    """Money conserved (the accounts hold what they were given, none negative), and every
    transaction pgbench counted either inserted one transfer row or was refused (rolled back)."""
    expected = accounts * balance
    refused = processed - after.transfers
    conserved = after.accounts == accounts and after.balance_sum == expected and after.negative == 0
    return {"conserved": conserved, "accounts": after.accounts, "balance_sum": after.balance_sum,
            "expected_sum": expected, "negative_accounts": after.negative, "transfer_rows": after.transfers,
            "refused": refused, "ok": conserved and refused >= 0}


# -- pgbench: command, summary and per-transaction log ----------------------------------


def pgbench_command(binaries: Binaries, running: Cluster, script: Path, *, seconds: int, clients: int,
                    jobs: int, accounts: int, log_prefix: Path) -> list[str]:
    return [str(binaries.pgbench), "--no-vacuum", "--protocol=prepared", f"--client={clients}", f"--jobs={jobs}",
            f"--time={seconds}", f"--file={script}", f"--define=accounts={accounts}", "--log",
            f"--log-prefix={log_prefix}", *running.connection(), DATABASE]


def parse_summary(text: str) -> dict[str, Any]:
    """What pgbench prints at the end: transactions processed, failed, and its own tps (over the
    whole run, warm-up included, without connection time)."""
    def number(pattern: str) -> str | None:
        match = re.search(pattern, text)
        return match.group(1) if match else None

    processed = number(r"number of transactions actually processed: (\d+)")
    if processed is None:
        raise ValueError("no 'number of transactions actually processed' in pgbench's output")
    failed = number(r"number of failed transactions: (\d+)")  # pgbench 15 and later
    tps = number(r"tps = ([\d.]+) \(without initial connection time\)")
    return {"processed": int(processed), "failed": int(failed) if failed else 0,
            "tps": float(tps) if tps else None}


@dataclass(frozen=True)
class Transaction:
    """One line of pgbench's per-transaction log."""

    end_s: float  # when it finished, Unix time
    latency_us: int | None  # None: failed (or skipped)


def parse_log_line(line: str) -> Transaction | None:
    """``client_id transaction_no time script_no time_epoch time_us [schedule_lag] [retries]``,
    where ``time`` is the latency in microseconds, or ``failed`` / ``serialization`` / ``deadlock``
    / ``skipped``. None for a blank line; ValueError for anything else that does not parse."""
    fields = line.split()
    if not fields:
        return None
    if len(fields) < 6:
        raise ValueError(f"not a pgbench log line: {line!r}")
    latency = int(fields[2]) if fields[2].isdigit() else None
    if latency is None and fields[2] not in ("failed", "serialization", "deadlock", "skipped"):
        raise ValueError(f"not a pgbench log line: {line!r}")
    return Transaction(end_s=int(fields[4]) + int(fields[5]) / 1e6, latency_us=latency)


def read_logs(prefix: Path) -> list[Transaction]:
    """Every transaction in the logs pgbench wrote as ``prefix.<pid>`` and ``prefix.<pid>.<thread>``."""
    transactions: list[Transaction] = []
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        with open(path) as log:
            transactions.extend(t for t in map(parse_log_line, log) if t is not None)
    return transactions


def percentile(ordered: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of sorted values (the smallest value with at least ``fraction``
    of them at or below it); None for no values."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def window_figures(transactions: list[Transaction], *, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Throughput and latency of the transactions that finished in the measured window: from
    ``warmup_s`` after the first transaction began, for ``duration_s``."""
    if not transactions:
        raise ValueError("pgbench logged no transactions")
    began = min(t.end_s - (t.latency_us or 0) / 1e6 for t in transactions)
    low, high = began + warmup_s, began + warmup_s + duration_s
    inside = [t for t in transactions if low <= t.end_s < high]
    latencies = sorted(t.latency_us for t in inside if t.latency_us is not None)
    latency_ms: dict[str, float | None] = {}
    for name, fraction in PERCENTILES.items():
        value = percentile(latencies, fraction)
        latency_ms[name] = None if value is None else value / 1000
    latency_ms["max"] = latencies[-1] / 1000 if latencies else None
    latency_ms["mean"] = statistics.fmean(latencies) / 1000 if latencies else None
    return {"duration_s": duration_s, "transactions": len(latencies), "failed": len(inside) - len(latencies),
            "throughput": len(latencies) / duration_s, "latency_ms": latency_ms}


# -- one run, many runs -----------------------------------------------------------------


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu_s(postmaster: int) -> float:
    """CPU seconds of the server so far: the postmaster and the processes below it, plus what its
    children that already exited used (its cutime + cstime: backends exit when pgbench ends)."""
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return sum(tree_cpu_seconds(postmaster).values()) + reaped


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, from /proc/stat's ``cpu`` line:
    busy is user + nice + system + irq + softirq; stolen is what the hypervisor gave elsewhere."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


@dataclass(frozen=True)
class CpuReading:
    at_s: float
    server_s: float
    generator_s: float
    ours_s: float
    busy_s: float
    steal_s: float


def cpu_reading(postmaster: int) -> CpuReading:
    ours = resource.getrusage(resource.RUSAGE_SELF)
    busy, steal = _machine_cpu_s()
    return CpuReading(at_s=time.monotonic(), server_s=_server_cpu_s(postmaster), generator_s=_children_cpu_s(),
                      ours_s=ours.ru_utime + ours.ru_stime, busy_s=busy, steal_s=steal)


def cpu_figures(before: CpuReading, after: CpuReading) -> dict[str, float]:
    """Cores used over the run (CPU seconds over wall seconds): by the server, by pgbench, by
    every other process on the machine (busy minus those two and this script), and stolen."""
    wall = after.at_s - before.at_s
    server, generator = after.server_s - before.server_s, after.generator_s - before.generator_s
    busy = after.busy_s - before.busy_s
    others = max(0.0, busy - server - generator - (after.ours_s - before.ours_s))
    return {"wall_s": round(wall, 3), "server_cores": round(server / wall, 3),
            "pgbench_cores": round(generator / wall, 3), "other_cores": round(others / wall, 3),
            "machine_busy_cores": round(busy / wall, 3),
            "steal_cores": round((after.steal_s - before.steal_s) / wall, 3)}


def measure(binaries: Binaries, running: Cluster, scenario: str, arguments: argparse.Namespace,
            round_index: int) -> dict[str, Any]:
    """One run of one scenario on freshly loaded accounts: the figures and the checks."""
    load(running, arguments.accounts, arguments.balance)
    prefix = running.root / f"{scenario}-{round_index}"
    seconds = arguments.warmup + arguments.duration + TAIL_S
    command = pgbench_command(binaries, running, SCENARIOS[scenario], seconds=seconds, clients=arguments.clients,
                              jobs=arguments.jobs, accounts=arguments.accounts, log_prefix=prefix)
    load_average, started_at = list(os.getloadavg()), time.time()
    postmaster = running.postmaster()
    cpu_before = cpu_reading(postmaster)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, cwd=running.root)
    cpu = cpu_figures(cpu_before, cpu_reading(postmaster))
    if done.returncode != 0:
        raise RunFailed(f"pgbench ({scenario}) exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    summary = parse_summary(done.stdout)
    figures = window_figures(read_logs(prefix), warmup_s=arguments.warmup, duration_s=arguments.duration)
    for path in prefix.parent.glob(prefix.name + ".*"):
        path.unlink()
    checks = conservation(totals(running), accounts=arguments.accounts, balance=arguments.balance,
                          processed=summary["processed"])
    return {"scenario": scenario, "round": round_index, "started_at": started_at, "load_average": load_average,
            **figures,
            "pgbench": summary, "cpu": cpu, "checks": checks}


def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return {"throughput": median([r["throughput"] for r in runs]),
            "p50_ms": median([r["latency_ms"]["p50"] for r in runs]),
            "p99_ms": median([r["latency_ms"]["p99"] for r in runs]),
            **{key: median([r["cpu"][key] for r in runs]) for key in CPU_SHOWN}}


def _figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return (f"{value:,.0f}" if value >= 100 else f"{value:.1f}") + unit


def _others(values: list[float | None], median: float | None) -> str:
    """The runs' values other than (one occurrence of) the median, as " [a, b]"."""
    rest = list(values)
    if median in rest:
        rest.remove(median)
    return f" [{', '.join(_figure(v) for v in rest)}]" if rest else ""


def table(result: dict[str, Any]) -> str:
    parameters = result["parameters"]
    lines = [
        f"{result['postgres']['version']}: row-lock transfers, pgbench --protocol=prepared, "
        f"{parameters['clients']} clients, {parameters['jobs']} threads, {parameters['accounts']:,} accounts, "
        f"{parameters['duration_s']} s measured after {parameters['warmup_s']} s, {parameters['runs']} run(s); "
        "median [other runs]",
        f"{'scenario':<9} {'transfers/s':<26} {'p50 ms':<8} {'p99 ms':<24} {'refused':<8} {'conserved':<10} "
        "cores: server / pgbench / other processes / stolen",
    ]
    for name, scenario in result["scenarios"].items():
        runs, middle = scenario["runs"], scenario["median"]
        rate = _figure(middle["throughput"]) + _others([r["throughput"] for r in runs], middle["throughput"])
        p99 = _figure(middle["p99_ms"]) + _others([r["latency_ms"]["p99"] for r in runs], middle["p99_ms"])
        refused = sum(r["checks"]["refused"] for r in runs)
        conserved = "yes" if all(r["checks"]["conserved"] for r in runs) else "NO"
        cores = " / ".join(f"{middle[key]:.2f}" for key in CPU_SHOWN)
        lines.append(f"{name:<9} {rate:<26} {_figure(middle['p50_ms']):<8} {p99:<24} {refused:<8,} {conserved:<10} {cores}")
    scenarios = result["scenarios"]
    if "uniform" in scenarios and "hot" in scenarios:
        uniform, hot = scenarios["uniform"]["median"]["throughput"], scenarios["hot"]["median"]["throughput"]
        if uniform and hot is not None:
            lines.append(f"hot / uniform: {hot / uniform:.2f}")
    loads = [f"{r['load_average'][0]:.2f}" for r in sorted(
        (r for s in scenarios.values() for r in s["runs"]), key=lambda r: r["started_at"])]
    lines.append(f"1-minute load average before the cluster started: {result['machine']['load_average'][0]:.2f}; "
                 f"at each run's start, in order: {', '.join(loads)} (counting this benchmark's own processes)")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _scenarios(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SCENARIOS)}")
    return names


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.pg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=_positive_int, default=20, help="measured seconds per run (default 20)")
    parser.add_argument("--warmup", type=_non_negative_int, default=3,
                        help="seconds before the measured window (default 3)")
    parser.add_argument("--runs", type=_positive_int, default=3, help="rounds of every scenario (default 3)")
    parser.add_argument("--clients", type=_positive_int, default=64, help="pgbench --client (default 64)")
    parser.add_argument("--jobs", type=_positive_int, default=2, help="pgbench --jobs, its threads (default 2)")
    parser.add_argument("--accounts", type=_positive_int, default=10_000, help="accounts (default 10000)")
    parser.add_argument("--balance", type=_positive_int, default=OPENING_BALANCE,
                        help=f"each account's opening balance (default {OPENING_BALANCE:,}: funds never run out)")
    parser.add_argument("--scenarios", type=_scenarios, default=list(SCENARIOS),
                        help="comma-separated, from uniform,hot (default both)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--run-as", default=None, metavar="USER",
                        help=f"the unprivileged user to run the server as (default when root: the first of "
                        f"{', '.join(SERVER_ACCOUNTS)} that exists)")
    parser.add_argument("--check", action="store_true",
                        help="only say which PostgreSQL binaries would be used (exit 2 if none)")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(arguments: argparse.Namespace) -> int:
    binaries = find_binaries()
    if binaries is None:
        raise PgError(not_found_message())
    if arguments.check:
        show("\n".join(f"{name}: {getattr(binaries, name)}" for name in TOOLS))
        return 0
    account = server_account(arguments.run_as)
    started_at = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    revision = git_revision()
    result: dict[str, Any] = {
        "schema": 1, "title": "PostgreSQL row-lock transfers (pgbench)", "started_at": started_at,
        "git_revision": revision["revision"], "git_dirty": revision["dirty"], "machine": machine(),
        "postgres": {"version": version(binaries), "binaries": {n: str(getattr(binaries, n)) for n in TOOLS},
                     "run_as": account.name if account else None, "settings": SETTINGS},
        "parameters": {"duration_s": arguments.duration, "warmup_s": arguments.warmup, "runs": arguments.runs,
                       "clients": arguments.clients, "jobs": arguments.jobs, "accounts": arguments.accounts,
                       "opening_balance": arguments.balance, "protocol": "prepared"},
        "scenarios": {name: {"runs": [], "median": {}} for name in arguments.scenarios},
    }
    with cluster(binaries, account) as running:
        say(f"{result['postgres']['version']} on 127.0.0.1:{running.port}, data in {running.data}"
            + (f", run as {account.name}" if account else ""))
        for round_index in range(1, arguments.runs + 1):
            for name in arguments.scenarios:
                figures = measure(binaries, running, name, arguments, round_index)
                result["scenarios"][name]["runs"].append(figures)
                say(f"run {round_index} {name}: {figures['throughput']:,.0f} transfers/s, "
                    f"p50 {_figure(figures['latency_ms']['p50'])} ms, p99 {_figure(figures['latency_ms']['p99'])} ms "
                    f"(load {figures['load_average'][0]:.2f}; checks {'ok' if figures['checks']['ok'] else 'FAILED'})")
    for scenario in result["scenarios"].values():
        scenario["median"] = medians(scenario["runs"])
    runs = [r for s in result["scenarios"].values() for r in s["runs"]]
    result["ok"] = all(r["checks"]["ok"] and r["failed"] == 0 and r["pgbench"]["failed"] == 0 for r in runs)
    show(table(result))
    if arguments.json is not None:
        write_json(arguments.json, result)
        say(f"JSON: {arguments.json}")
    if not result["ok"]:
        say("FAILED: money not conserved, a transaction failed, or transfer rows do not match (see the JSON)")
    return 0 if result["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up as Ctrl-C does
    try:
        return run(arguments)
    except RunFailed as error:
        say(f"bench.pg: {error}")
        return 1
    except PgError as error:
        say(f"bench.pg: {error}")
        return 2
    except KeyboardInterrupt:
        say("bench.pg: interrupted (the cluster was stopped and removed)")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
