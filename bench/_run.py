"""``wallet bench``: one invocation from flags to verdict.

    plan (check the flags) -> set up (a temporary data directory; the asset, the wallets and
    their deposits, all durable before any measured request) -> warm-up -> measured window
    (probes of /metrics or the WAL statistics and of the server's CPU at both edges) -> wait
    until the ledger is at rest -> conservation check -> [the same load on the echo server]
    -> table, JSON, chart. Exit 0, or 1 when money was not conserved, or 2 when the run could
    not be made (bad flags, a server that did not start, a missing API).

Every run gets its own asset and wallet ids (``B<run>``, ``b<run>-<n>``), so a run against a
long-lived server (``--url``) checks conservation over exactly its own money.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import trio

from bench import _wrk
from bench._drive import (
    CoreTarget,
    CpuWindow,
    PrebuiltOps,
    WorkerSpec,
    connections_share,
    drive,
    has_transfer_batch,
    prebuilt_default,
    run_http_worker,
    workload_rng,
)
from bench._http import Client, HttpError, split_url
from bench._loop import Recorder
from bench._options import SHARDS_DEFAULT, WORKERS_DEFAULT
from bench._report import (
    chart,
    conservation_line,
    git_revision,
    machine,
    recorder_figures,
    say,
    server_figures,
    show,
    table,
    write_json,
    wrk_figures,
)
from bench._scenario import Scenario, Workload, wallet_ids
from bench._service import (
    DEPOSIT,
    ServerProcess,
    SetupError,
    conservation_http,
    conservation_ledger,
    echo_command,
    free_port,
    scrape,
    seed_http,
    seed_ledger,
    serve_command,
    start_process,
    tree_cpu_seconds,
    wait_quiet,
    wait_ready,
)
from ledger import Ledger, open_ledger
from server._admin_token import find_admin_token, where_to_look
from server._gc import tune_gc
from wallet_client import AsyncWalletClient, RetryPolicy, WalletClientError

START_SLACK_S = 0.5  # between "everyone is ready" and the first request
# A generator process busier than this may be what limits the run (the note says so).
GENERATOR_BUSY_SHARE = 0.8
WORKER_READY_TIMEOUT_S = 60.0
EXIT_NOT_CONSERVED = 1
EXIT_REFUSED = 2

Probe = Callable[[], Awaitable[dict[str, Any]]]


class Refused(Exception):
    """The run cannot be made as asked; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    mode: str
    driver: str  # "wrk", "python" or "core"
    scenario: Scenario
    url: str | None
    token: str
    server_pid: int | None
    loop: str | None
    connections: int
    rate: float | None
    processes: int
    warmup_s: float
    duration_s: float
    batch_endpoint: bool
    packed: bool
    seed: int
    run_id: str
    baseline_echo: bool
    workers: int | None = None  # `wallet serve --workers`; None: the server's default (no flag)
    baseline_one_process: bool = False  # also the same load on `wallet serve --workers 0`
    history: bool = True  # core mode: feed the history read model (off: the ledger alone)
    prebuilt: int = 0  # core mode: transfers built before the run
    memory_keys: int | None = None  # --idempotency-memory-keys (None: the target's default)

    @property
    def asset(self) -> str:
        return f"B{self.run_id.upper()}"

    @property
    def wallet_prefix(self) -> str:
        return f"b{self.run_id}-"

    @property
    def key_prefix(self) -> str:
        return f"bench-{self.run_id}-"

    def ids(self) -> list[str]:
        return wallet_ids(self.wallet_prefix, self.scenario.wallets)


def make_plan(arguments: argparse.Namespace, *, ledger_class: Any = Ledger) -> Plan:
    """Checks the flags against each other; raises ``Refused`` with every problem found."""
    problems = []
    http = arguments.mode == "http"
    if not http:
        for flag, given in (("--url", arguments.url), ("--token", arguments.token),
                            ("--server-pid", arguments.server_pid), ("--loop", arguments.loop),
                            ("--msgpack", arguments.msgpack), ("--baseline-echo", arguments.baseline_echo),
                            ("--driver", arguments.driver), ("--processes", arguments.processes != 1),
                            ("--workers", arguments.workers is not None),
                            ("--baseline-one-process", arguments.baseline_one_process)):
            if given:
                problems.append(f"{flag} is for --mode http (core mode runs the ledger and the clients "
                                "in this process)")
    prebuilt = getattr(arguments, "prebuilt", None)
    if prebuilt is not None and http:
        problems.append("--prebuilt is for --mode core (http load is built in the generator processes)")
    if prebuilt is not None and prebuilt < 0:
        problems.append("--prebuilt must be 0 or more")
    if prebuilt is None:
        prebuilt = 0 if http else prebuilt_default(batch=arguments.batch is not None, warmup_s=arguments.warmup,
                                                   duration_s=arguments.duration)
    if arguments.msgpack and arguments.batch is None:
        problems.append("--msgpack needs --batch (only the batch endpoint speaks MessagePack)")
    if http and arguments.url is not None:
        for flag, given in (("--workers", arguments.workers is not None),
                            ("--baseline-one-process", arguments.baseline_one_process),
                            ("--idempotency-memory-keys", getattr(arguments, "idempotency_memory_keys", None)
                             is not None)):
            if given:
                problems.append(f"{flag} is for a server the harness starts (not --url)")
    if arguments.server_pid is not None and arguments.url is None:
        problems.append("--server-pid is for --url (a server the harness starts is measured anyway)")
    driver = "core"
    if http:
        single_closed = arguments.batch is None and arguments.rate is None
        driver = arguments.driver or ("wrk" if single_closed and _wrk.available() else "python")
        if driver == "wrk":
            if not _wrk.available():
                problems.append("--driver wrk: wrk is not installed (apt-get install wrk)")
            if arguments.batch is not None:
                problems.append("--driver wrk sends single transfers: use --driver python with --batch")
            if arguments.rate is not None:
                problems.append("--driver wrk is a closed loop: use --driver python with --rate")
    if http and driver == "python" and arguments.processes > arguments.connections:
        problems.append("--processes may not exceed --connections (each process needs a connection)")
    # The same places as `wallet seed`; DATA/admin.token only for a server it did not start.
    token = find_admin_token(explicit=arguments.token, data_dir=arguments.data if arguments.url else None)
    if http and arguments.url is not None:
        if token is None:
            problems.append(f"--url needs the admin token ({where_to_look(arguments.data)}): "
                            "the setup creates wallets and deposits")
        try:
            split_url(arguments.url)
        except ValueError as error:
            problems.append(str(error))
    if token is None:
        token = "wb_" + secrets.token_urlsafe(24)
    if not http and arguments.batch is not None and not has_transfer_batch(ledger_class):
        problems.append(
            "Ledger.transfer_batch does not exist in this build (the batch API is being built): "
            "core mode with --batch cannot run yet"
        )
    shards = arguments.shards
    if shards is None and http and arguments.url is not None and not problems:
        shards = trio.run(_shards_of, arguments.url)
    scenario = Scenario(
        wallets=arguments.wallets, shards=shards or SHARDS_DEFAULT, hot_share=arguments.hot_share,
        hot_wallets=arguments.hot_wallets, zipf_s=arguments.zipf, cross_shard=arguments.cross_shard,
        read_share=arguments.read_share, batch=arguments.batch or 1, amount=arguments.amount,
    )
    problems.extend(scenario.problems())
    if scenario.wallets * DEPOSIT > 2**63 - 1:
        problems.append(f"--wallets at most {(2**63 - 1) // DEPOSIT:,} (every wallet gets {DEPOSIT:,})")
    if problems:
        raise Refused("\n".join(problems))
    try:  # the draws that cannot be made (a shard with one wallet and --cross-shard 0...) show now
        Workload(scenario, wallet_ids("b", scenario.wallets), workload_rng(arguments.seed, 0))
    except ValueError as error:
        raise Refused(str(error)) from None
    return Plan(
        mode=arguments.mode, driver=driver, scenario=scenario, url=arguments.url, token=token,
        server_pid=arguments.server_pid, loop=arguments.loop, connections=arguments.connections,
        rate=arguments.rate, processes=arguments.processes, warmup_s=arguments.warmup,
        duration_s=arguments.duration, batch_endpoint=arguments.batch is not None, packed=arguments.msgpack,
        seed=arguments.seed, run_id=secrets.token_hex(4), baseline_echo=arguments.baseline_echo,
        workers=arguments.workers, baseline_one_process=arguments.baseline_one_process,
        history=not arguments.no_history,
        prebuilt=prebuilt,
        memory_keys=getattr(arguments, "idempotency_memory_keys", None),
    )


async def _shards_of(url: str) -> int | None:
    client = Client(url, None)
    try:
        sample = await scrape(client)
    finally:
        await client.aclose()
    return sample.shards if sample is not None and sample.shards else None


def describe(plan: Plan) -> str:
    s = plan.scenario
    if s.zipf_s is not None:
        spread = f"zipf {s.zipf_s:g} over {s.wallets:,} wallets"
    else:
        spread = f"uniform over {s.wallets:,} wallets"
    if s.hot_share > 0:
        spread += f", {s.hot_share:.0%} on {s.hot_wallets} hot wallets"
    if s.cross_shard is not None:
        spread += f", {s.cross_shard:.0%} cross-shard"
    if s.read_share > 0:
        spread += f", {s.read_share:.0%} reads"
    if plan.mode == "core":
        unit = f"{s.batch} per message (transfer_batch)" if plan.batch_endpoint else "1 per message"
        what = f"core (shards + WAL in process{'' if plan.history else ', no history read model'}), {unit}"
    else:
        unit = (f"batches of {s.batch} ({'msgpack' if plan.packed else 'json'})" if plan.batch_endpoint
                else "single transfers")
        what = f"http {unit}, driver {plan.driver}" + (f", {plan.processes} processes" if plan.processes > 1 else "")
        if plan.url is None:
            what += f", wallet serve --workers {workers_of(plan)}"
    loop = f"open loop at {plan.rate:g}/s" if plan.rate is not None else "closed loop"
    return (f"wallet bench: {what}; {plan.connections} clients, {loop}; {spread}; {s.shards} shards; "
            f"{plan.duration_s:g} s measured after {plan.warmup_s:g} s warm-up")


def workers_of(plan: Plan) -> int:
    """The HTTP worker processes of the server the harness starts (0: one process)."""
    return WORKERS_DEFAULT if plan.workers is None else plan.workers


# -- probes and windows -----------------------------------------------------------------


def http_probe(url: str, pid: int | None, roles: dict[int, str] | None = None, child_role: str = "child") -> Probe:
    """``/metrics`` and the CPU of ``pid`` and every process below it (the supervisor, the
    ledger process and the HTTP workers of ``--workers N``), by pid, named by ``roles`` (any
    other by ``child_role``)."""

    async def probe() -> dict[str, Any]:
        client = Client(url, None)
        try:
            sample = await scrape(client)
        finally:
            await client.aclose()
        cpu = by_pid = None
        if pid is not None:
            try:
                by_pid = tree_cpu_seconds(pid)
                cpu = sum(by_pid.values())
            except OSError:
                cpu = by_pid = None
        return {
            "at": time.monotonic(), "server_cpu_s": cpu, "cpu_by_pid": by_pid, "roles": roles, "child_role": child_role,
            "cpu_of": None if by_pid is None else "the server's processes, summed",
            "wal_records": None if sample is None else sample.wal_records,
            "wal_group_commits": None if sample is None else sample.wal_group_commits,
            "loop_lag": None if sample is None else sample.loop_lag,
        }

    return probe


async def process_roles(url: str, token: str) -> dict[int, str]:
    """``{pid: role}`` from ``GET /v1/admin/processes`` (empty when the server has no such
    route or refuses): ``supervisor``, ``ledger``, ``http``; one process is ``ledger`` there."""
    try:
        async with AsyncWalletClient(url, token=token, retry=RetryPolicy.never()) as client:
            processes = await client.processes()
    except (WalletClientError, ValueError, KeyError, TypeError):
        return {}
    roles = {process.pid: process.role for process in processes}
    if len(roles) == 1:  # one process: it serves HTTP and runs the ledger
        roles = {pid: "server (one process)" for pid in roles}
    return roles


async def sample_window(probe: Probe, window_start: float, window_end: float, into: dict[str, Any]) -> None:
    await trio.sleep(max(0.0, window_start - time.monotonic()))
    into["before"] = await probe()
    await trio.sleep(max(0.0, window_end - time.monotonic()))
    into["after"] = await probe()


# -- http ---------------------------------------------------------------------------------


async def measure_http(plan: Plan, url: str, pid: int | None, work: Path, label: str,
                       roles: dict[int, str] | None = None, child_role: str = "child") -> dict[str, Any]:
    """The warm-up and the measured window against ``url``; the run's figures."""
    probe = http_probe(url, pid, roles, child_role)
    if plan.driver == "wrk":
        return await _measure_wrk(plan, url, probe, work, label)
    spec = WorkerSpec(
        url=url, token=plan.token, scenario=asdict(plan.scenario), wallet_prefix=plan.wallet_prefix,
        key_prefix=f"{plan.key_prefix}{label}-", seed=plan.seed, process=0, processes=plan.processes,
        connections=plan.connections, rate=plan.rate, warmup_s=plan.warmup_s, duration_s=plan.duration_s,
        batch_endpoint=plan.batch_endpoint, packed=plan.packed,
    )
    samples: dict[str, Any] = {}
    if plan.processes == 1:
        start = time.monotonic() + START_SLACK_S
        window = (start + plan.warmup_s, start + plan.warmup_s + plan.duration_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_window, probe, *window, samples)
            results = [await run_http_worker(spec, start)]
    else:
        results = await _run_children(plan, spec, probe, samples)
    recorder = Recorder.from_json(results[0]["recorder"])
    for result in results[1:]:
        recorder.merge(Recorder.from_json(result["recorder"]))
    figures = recorder_figures(recorder, duration_s=plan.duration_s)
    figures.update(server_figures(samples["before"], samples["after"]))
    figures["generator_cpu"] = [result["cpu"] for result in results]
    figures["driver"] = "python"
    return figures


async def _run_children(plan: Plan, spec: WorkerSpec, probe: Probe, samples: dict[str, Any]) -> list[dict[str, Any]]:
    processes = []
    for index in range(plan.processes):
        child = replace(spec, process=index, connections=connections_share(plan.connections, plan.processes, index))
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench._worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        await process.stdin.send_all(child.to_json().encode() + b"\n")
        processes.append(process)
    readers = [_LineReader(process.stdout) for process in processes]
    try:
        with trio.fail_after(WORKER_READY_TIMEOUT_S):
            for reader in readers:
                line = await reader.line()
                if line != "ready":
                    raise SetupError(f"a generator process did not start: {line!r}")
        start = time.monotonic() + START_SLACK_S
        for process in processes:
            assert process.stdin is not None
            await process.stdin.send_all(f"go {start!r}\n".encode())
        results: list[dict[str, Any]] = [{} for _ in processes]
        window = (start + plan.warmup_s, start + plan.warmup_s + plan.duration_s)

        async def collect(index: int) -> None:
            line = await readers[index].line()
            if not line:
                raise SetupError(f"generator process {index} ended without a result (exit {await processes[index].wait()})")
            results[index] = json.loads(line)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_window, probe, *window, samples)
            for index in range(len(processes)):
                nursery.start_soon(collect, index)
        for process in processes:
            await process.wait()
        return results
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


class _LineReader:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def line(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(1 << 20)
            if not data:
                text = self.buffer.decode(errors="replace")
                self.buffer.clear()
                return text
            self.buffer += data
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line.decode()


async def _measure_wrk(plan: Plan, url: str, probe: Probe, work: Path, label: str) -> dict[str, Any]:
    threads = min(plan.processes, plan.connections)
    ops = work / f"{label}-ops.txt"
    workload = Workload(plan.scenario, plan.ids(), workload_rng(plan.seed, 0))
    _wrk.write_ops(ops, workload, _wrk.OPS_MAX)

    def script(phase: str) -> Path:
        path = work / f"{label}-{phase}.lua"
        path.write_text(_wrk.render_lua(
            ops_path=ops, out_path=work / f"{label}-{phase}.json", key_prefix=f"{plan.key_prefix}{label}-{phase}-",
            threads=threads, token=plan.token, amount=plan.scenario.amount,
        ))
        os.chmod(path, 0o600)  # it holds the token
        return path

    if plan.warmup_s > 0:
        warmup = script("warmup")
        await trio.to_thread.run_sync(lambda: _wrk.run(
            url=url, script=warmup, threads=threads, connections=plan.connections, duration_s=plan.warmup_s))
    measured = script("measured")
    before = await probe()
    run = await trio.to_thread.run_sync(lambda: _wrk.run(
        url=url, script=measured, threads=threads, connections=plan.connections, duration_s=plan.duration_s))
    after = await probe()
    figures = wrk_figures(run.figures, started_epoch_s=run.started_epoch_s)
    figures.update(server_figures(before, after))
    figures["generator_cpu"] = [{
        "process": 0, "threads": threads, "cpu_s": run.cpu_s, "wall_s": run.wall_s,
        "share_of_one_core": run.cpu_s / run.wall_s if run.wall_s > 0 else None,
    }]
    figures["driver"] = "wrk"
    return figures


async def http_main(plan: Plan, work: Path) -> dict[str, Any]:
    notes: list[str] = []
    service, conservation = await _measure_service(plan, work, plan.workers, "service", notes)
    one_process = None
    if plan.baseline_one_process:
        say("baseline: the same load against wallet serve --workers 0 (one process)")
        one_process, conserved_too = await _measure_service(plan, work, 0, "one-process", notes)
        if conserved_too.get("conserved") is not True:
            notes.append(f"one-process baseline: {conservation_line(conserved_too)}")
            conservation = conservation | {"conserved": False, "one_process": conserved_too}
    if plan.batch_endpoint and any(key.startswith("404 ") for key in service["errors"]):
        notes.append("POST /v1/transfers/batch answered 404: this server has no batch endpoint yet")
    if service["wal_records"] is None and plan.url is None and workers_of(plan) > 0:
        notes.append("records per fsync: an HTTP worker's /metrics has no WAL series (--workers N)")
    echo = None
    if plan.baseline_echo:
        echo = await _measure_echo(plan, work)
    return {"service": service, "baseline_echo": echo, "baseline_one_process": one_process,
            "conservation": conservation, "notes": notes}


async def _measure_service(plan: Plan, work: Path, workers: int | None, label: str,
                           notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sets up (a server it starts on a fresh data directory, or ``--url``), loads, measures
    and checks conservation; the figures and the verdict."""
    ids = plan.ids()
    server: ServerProcess | None = None
    url = plan.url
    roles: dict[int, str] | None = None
    try:
        if url is None:
            data = work / f"{label}-data"
            say(f"setting up: {len(ids):,} wallets created and funded in process on {data}")
            started = time.monotonic()
            await _seed_data_dir(data, plan.scenario.shards, plan.asset, ids)
            say(f"  done in {time.monotonic() - started:.1f} s; starting wallet serve")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = start_process(
                serve_command(data_dir=data, port=port, shards=plan.scenario.shards, loop=plan.loop,
                              workers=workers, memory_keys=plan.memory_keys),
                log_path=work / f"{label}-server.log", url=url, env={"WALLET_ADMIN_TOKEN": plan.token},
            )
            await wait_ready(server)
            roles = await process_roles(url, plan.token)
        else:
            say(f"setting up: {len(ids):,} wallets created and funded through {url}")
            await seed_http(url, plan.token, plan.asset, ids)
        pid = server.pid if server is not None else plan.server_pid
        say(f"load: {plan.warmup_s:g} s warm-up, then {plan.duration_s:g} s measured")
        figures = await measure_http(plan, url, pid, work, label, roles)
        say("checking that money is conserved")
        client = Client(url, None)
        try:
            if not await wait_quiet(client):
                notes.append("the server did not come to rest within 30 s before the conservation check")
        finally:
            await client.aclose()
        conservation = await conservation_http(url, plan.token, plan.asset, ids)
    finally:
        if server is not None:
            status = await trio.to_thread.run_sync(server.stop)
            if status not in (0, None):
                notes.append(f"wallet serve ({label}) exited with status {status}; log tail:\n{server.log_tail()}")
    return figures, conservation


async def _seed_data_dir(data: Path, shards: int, asset: str, ids: list[str]) -> None:
    ledger = await trio.to_thread.run_sync(lambda: open_ledger(data, shards=shards))
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        await seed_ledger(ledger, asset, ids)
        await ledger.stop()


async def _measure_echo(plan: Plan, work: Path) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # As many Hypercorn processes as the service has HTTP workers (one process for --workers 0).
    workers = workers_of(plan) if plan.url is None else 0
    echo = start_process(echo_command(port=port, loop=plan.loop, workers=workers), log_path=work / "echo.log",
                         url=url)
    try:
        await wait_ready(echo, "/health")
        say(f"baseline: the same load against the echo route ({url}, "
            f"{f'{workers} worker processes' if workers else 'one process'})")
        roles = {echo.pid: "echo" if workers == 0 else "echo parent"}
        return await measure_http(plan, url, echo.pid, work, "echo", roles, "echo worker")
    finally:
        await trio.to_thread.run_sync(echo.stop)


# -- core ---------------------------------------------------------------------------------


async def core_main(plan: Plan, work: Path, *, wrap: Callable[[Ledger], Any] | None = None) -> dict[str, Any]:
    ids = plan.ids()
    data = work / "data"
    # The garbage collector's thresholds of the server's processes: core mode measures the
    # ledger as it runs there.
    tune_gc()
    ledger = await trio.to_thread.run_sync(
        lambda: open_ledger(data, shards=plan.scenario.shards, memory_keys=plan.memory_keys or None)
    )
    if not plan.history:
        # The ledger alone: durable records go to the event feed only, not to the SQLite read
        # model (whose projector would otherwise bound the rate and push back with overloaded).
        ledger.wal._on_durable = ledger.events.feed
    target_ledger = ledger if wrap is None else wrap(ledger)
    if plan.batch_endpoint and not has_transfer_batch(target_ledger):
        raise Refused("Ledger.transfer_batch does not exist in this build: core mode with --batch cannot run yet")
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        say(f"setting up: {len(ids):,} wallets created and funded in process on {data}")
        await seed_ledger(ledger, plan.asset, ids)
        target = CoreTarget(target_ledger, key_prefix=plan.key_prefix, amount=plan.scenario.amount,
                            batch=plan.batch_endpoint)
        workload = Workload(plan.scenario, ids, workload_rng(plan.seed, 0))
        say(f"input: building {plan.prebuilt:,} transfers before the run")
        ops = PrebuiltOps(target, workload, plan.prebuilt)
        start = time.monotonic() + START_SLACK_S
        window = (start + plan.warmup_s, start + plan.warmup_s + plan.duration_s)
        recorder = Recorder(*window)
        samples: dict[str, Any] = {}

        async def probe() -> dict[str, Any]:
            stats = ledger.wal.statistics()
            return {"at": time.monotonic(), "server_cpu_s": time.process_time(), "wal_records": stats.records_written,
                    "wal_group_commits": stats.batches, "cpu_of": "this process (the ledger and the clients)"}

        say(f"load: {plan.warmup_s:g} s warm-up, then {plan.duration_s:g} s measured")
        cpu = CpuWindow()
        async with trio.open_nursery() as inner:
            inner.start_soon(sample_window, probe, *window, samples)
            inner.start_soon(cpu.run, *window)
            await drive([target.execute] * plan.connections, ops, recorder, start=start,
                        warmup_s=plan.warmup_s, duration_s=plan.duration_s, rate=plan.rate, processes=1, process=0)
        say("checking that money is conserved")
        conservation = await conservation_ledger(ledger, plan.asset, ids)
        await ledger.stop()
    figures = recorder_figures(recorder, duration_s=plan.duration_s)
    figures.update(server_figures(samples["before"], samples["after"]))
    figures["generator_cpu"] = [cpu.to_json(0) | {"what": "the same process as the ledger"}]
    figures["driver"] = "core"
    figures["input"] = ops.to_json()
    figures["gc_thresholds"] = list(gc.get_threshold())
    notes = [f"input: {ops.prebuilt:,} transfers built before the run ({ops.build_s:.1f} s), "
             f"{ops.built_inline:,} built during it (in the measured process)"]
    return {"service": figures, "baseline_echo": None, "baseline_one_process": None, "conservation": conservation,
            "notes": notes}


# -- entry ----------------------------------------------------------------------------------


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups, as raised by trio's nurseries."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def throughput_ratio(service: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """The service's throughput over a baseline's, per figure (None when the baseline is 0)."""
    return {
        key: (service["throughput"][key] / baseline["throughput"][key]) if baseline["throughput"][key] else None
        for key in ("transfers_per_s", "requests_per_s")
    }


def run(arguments: argparse.Namespace, *, wrap: Callable[[Ledger], Any] | None = None) -> int:
    """``wallet bench``; ``wrap`` lets tests put a fake around the core ledger."""
    started_at = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    try:
        plan = make_plan(arguments, ledger_class=Ledger if wrap is None else wrap)
    except Refused as refused:
        say(f"wallet bench: {refused}")
        return EXIT_REFUSED
    title = describe(plan)
    say(title)
    revision = git_revision()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="wallet-bench-"))
    try:
        if plan.mode == "core":
            outcome = trio.run(lambda: core_main(plan, work, wrap=wrap))
        else:
            outcome = trio.run(http_main, plan, work)
    except BaseException as error:
        leaves = list(_leaves(error))
        if not all(isinstance(leaf, Refused | SetupError | HttpError) for leaf in leaves):
            raise
        for leaf in leaves:
            reason = f"could not talk to the server: {leaf}" if isinstance(leaf, HttpError) else str(leaf)
            say(f"wallet bench: {reason}")
        return EXIT_REFUSED
    finally:
        shutil.rmtree(work, ignore_errors=True)
    service, echo, one_process = outcome["service"], outcome["baseline_echo"], outcome["baseline_one_process"]
    notes = outcome["notes"]
    for name, figures in (("service", service), ("echo", echo), ("one-process", one_process)):
        for cpu in (figures or {}).get("generator_cpu", []):
            share = cpu.get("share_of_one_core")
            if plan.driver != "core" and share is not None and share > GENERATOR_BUSY_SHARE:
                notes.append(
                    f"{name} run: generator process {cpu['process']} used {share:.0%} of a core and may be "
                    "the bottleneck (add --processes, or use the wrk driver)"
                )
    ratio = None if echo is None else throughput_ratio(service, echo)
    ratio_one = None if one_process is None else throughput_ratio(service, one_process)
    result: dict[str, Any] = {
        "schema": 1,
        "title": title,
        "started_at": started_at,
        "git_revision": revision["revision"],
        "git_dirty": revision["dirty"],
        "machine": info,
        "parameters": {
            **{key: (str(value) if isinstance(value, Path) else value) for key, value in vars(arguments).items()
               if key not in {"command", "token"}},
            "token": "(given)" if arguments.token else None,
            "driver": plan.driver, "shards": plan.scenario.shards, "run_id": plan.run_id, "asset": plan.asset,
            "wallet_prefix": plan.wallet_prefix, "deposit_per_wallet": DEPOSIT,
            "scenario": asdict(plan.scenario),
        },
        "service": service,
        "baseline_echo": echo,
        "ratio_to_echo": ratio,
        "baseline_one_process": one_process,
        "ratio_to_one_process": ratio_one,
        "conservation": outcome["conservation"],
        "notes": notes,
        "chart": None,
    }
    chart_path = arguments.chart or (arguments.out.with_suffix(".png") if arguments.out else None)
    if chart_path is not None:
        why_not = chart(chart_path, result)
        if why_not is None:
            result["chart"] = str(chart_path)
        else:
            result["notes"].append(why_not)
    show(table(result))
    if arguments.out is not None:
        write_json(arguments.out, result)
        say(f"results written to {arguments.out}" + (f" and {chart_path}" if result["chart"] else ""))
    conserved = outcome["conservation"].get("conserved") is True
    if not conserved:
        say(conservation_line(outcome["conservation"]))
    return 0 if conserved else EXIT_NOT_CONSERVED
