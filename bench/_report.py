"""What ``wallet bench`` tells: the figures of a run (from the Python driver's recorder or from
wrk), the table on stdout, the JSON file and the PNG chart. The only module of the harness
that prints.

Throughput counts transfers committed (201s, or committed batch items) and requests completed
in the measured window, divided by its length. Latency percentiles come from one histogram
merged over every generator process (never from averaged percentiles), or from wrk's own
exact percentiles. Records per fsync is the growth of the WAL's record and group-commit
counters over the window (``/metrics`` or ``Ledger.wal.statistics()``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from bench._histogram import Histogram
from bench._loop import Recorder

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def show(text: str) -> None:
    """The report itself, on stdout."""
    print(text, flush=True)


def say(message: str) -> None:
    """Progress and warnings, on stderr so the table on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


# -- figures ----------------------------------------------------------------------------


def _delta(before: dict[str, Any], after: dict[str, Any], key: str) -> float | None:
    a, b = before.get(key), after.get(key)
    return None if a is None or b is None else b - a


def server_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """WAL and server CPU over the window, from two probes (see ``bench._run``). With
    ``cpu_by_pid`` in both probes (a server and its child processes), ``server_cpu`` is their sum
    and ``processes`` has each one's share."""
    wall = after["at"] - before["at"]
    records = _delta(before, after, "wal_records")
    commits = _delta(before, after, "wal_group_commits")
    cpu = _delta(before, after, "server_cpu_s")
    by_pid_before, by_pid_after = before.get("cpu_by_pid"), after.get("cpu_by_pid")
    processes = None
    if by_pid_before is not None and by_pid_after is not None:
        processes = process_cpu(by_pid_before, by_pid_after, after.get("roles") or {}, wall,
                                child_role=after.get("child_role") or "child")
        cpu = sum(item["seconds"] for item in processes)
    return {
        "loop_lag": loop_lag_figures(before.get("loop_lag"), after.get("loop_lag")),
        "wal_records": records,
        "wal_group_commits": commits,
        "records_per_fsync": records / commits if records is not None and commits else None,
        "server_cpu": None if cpu is None else {
            "seconds": cpu, "wall_s": wall, "share_of_one_core": cpu / wall if wall > 0 else None,
            "what": after.get("cpu_of"), "processes": processes,
        },
    }


LOOP_STALL_S = 0.02  # the limit the issue sets on any stall (server/_loop_lag.py)


def loop_lag_figures(before: dict[str, dict[float, float]] | None,
                     after: dict[str, dict[float, float]] | None) -> dict[str, Any] | None:
    """Per process role, from the ``wallet_event_loop_lag_seconds`` buckets of two scrapes: the
    samples in the window, the bucket bound under which 99% of them fell (a histogram knows no
    finer), how many were over 20 ms, and the bucket bound of the largest. None without both."""
    if before is None or after is None:
        return None
    figures: dict[str, Any] = {}
    for role, buckets in sorted(after.items()):
        earlier = before.get(role, {})
        window = sorted((le, count - earlier.get(le, 0.0)) for le, count in buckets.items())
        total = window[-1][1] if window else 0.0
        if total <= 0:
            continue
        p99 = next(le for le, count in window if count >= 0.99 * total)
        largest = next(le for le, count in window if count >= total)
        under_stall = next((count for le, count in window if le >= LOOP_STALL_S), total)
        figures[role] = {
            "samples": int(total),
            "p99_ms_at_most": None if p99 == float("inf") else p99 * 1000,
            "over_20ms": int(total - under_stall),
            "max_ms_at_most": None if largest == float("inf") else largest * 1000,
        }
    return figures


def loop_lag_line(name: str, figures: dict[str, Any] | None) -> str | None:
    if not figures:
        return None

    def bound(ms: float | None) -> str:
        return "> 5 s" if ms is None else f"<= {ms:g} ms"

    return f"event loop lag ({name}): " + "; ".join(
        f"{role} p99 {bound(item['p99_ms_at_most'])}, max {bound(item['max_ms_at_most'])}, "
        f"{item['over_20ms']:,} of {item['samples']:,} samples over 20 ms"
        for role, item in figures.items())


def process_cpu(before: dict[int, float], after: dict[int, float], roles: dict[int, str],
                wall_s: float, *, child_role: str = "child") -> list[dict[str, Any]]:
    """Per process, the CPU used between two readings of ``bench._service.tree_cpu_seconds``
    (``{pid: seconds}``): one item per pid seen at the end (a process that started inside the
    window counts from 0; one that exited is lost, and says so by its absence), the busiest
    first."""
    items: list[dict[str, Any]] = []
    for pid, seconds in after.items():
        used = seconds - before.get(pid, 0.0)
        items.append({
            "pid": pid, "role": roles.get(pid, child_role), "seconds": used,
            "share_of_one_core": used / wall_s if wall_s > 0 else None, "whole_window": pid in before,
        })
    items.sort(key=lambda item: -item["seconds"])
    return items


def recorder_figures(recorder: Recorder, *, duration_s: float) -> dict[str, Any]:
    seconds = max(1, math.ceil(duration_s - 1e-9))
    timeseries = []
    for index in range(seconds):
        bucket = recorder.seconds.get(index)
        histogram = bucket.histogram if bucket is not None else Histogram()
        latency = histogram.summary_ms()
        timeseries.append({
            "second": index,
            "requests": 0 if bucket is None else bucket.requests,
            "transfers_ok": 0 if bucket is None else bucket.transfers_ok,
            "p50_ms": latency["p50"], "p90_ms": latency["p90"], "p99_ms": latency["p99"], "max_ms": latency["max"],
            "partial": index + 1 > duration_s + 1e-9,  # the last second of a window that is not whole
        })
    return {
        "duration_s": duration_s,
        "requests": recorder.requests,
        "reads": recorder.reads,
        "transfers": recorder.transfers,
        "transfers_ok": recorder.transfers_ok,
        "throughput": {
            "transfers_per_s": recorder.transfers_ok / duration_s,
            "requests_per_s": recorder.requests / duration_s,
        },
        "latency_ms": recorder.histogram.summary_ms(),
        "latency_source": "histogram of every request, merged over the generator processes",
        "statuses": dict(sorted(recorder.statuses.items())),
        "errors": dict(sorted(recorder.errors.items())),
        "missed_sends": recorder.missed_sends,
        "warmup_requests": recorder.warmup_requests,
        "timeseries": timeseries,
        "histogram": recorder.histogram.to_json(),
    }


def wrk_figures(figures: dict[str, Any], *, started_epoch_s: float) -> dict[str, Any]:
    duration_s = figures["duration_us"] / 1_000_000
    statuses = {key: int(value) for key, value in sorted(figures["statuses"].items())}
    created = sum(count for key, count in statuses.items() if key == "201")
    reads = sum(count for key, count in statuses.items() if key == "200")
    errors = {key: count for key, count in statuses.items() if not key.startswith("2")}
    sockets = figures["socket_errors"]
    for kind in ("connect", "read", "write", "timeout"):
        if sockets[kind]:
            errors[f"socket {kind}"] = sockets[kind]
    latency = figures["latency_us"]
    first = int(started_epoch_s)
    per_second: dict[int, int] = {}
    created_per_second: dict[int, int] = {}
    for key, count in figures["responses_per_second"].items():
        per_second[int(key) - first] = per_second.get(int(key) - first, 0) + count
    for key, count in figures["created_per_second"].items():
        created_per_second[int(key) - first] = created_per_second.get(int(key) - first, 0) + count
    # wrk's buckets are wall-clock seconds: the first and the last are cut by the run's edges.
    first_index, last_index = min(per_second, default=0), max(per_second, default=-1)
    timeseries = [
        {"second": index, "requests": per_second.get(index, 0), "transfers_ok": created_per_second.get(index, 0),
         "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None,
         "partial": index in (first_index, last_index)}
        for index in range(first_index, last_index + 1)
    ]
    return {
        "duration_s": duration_s,
        "requests": figures["requests"],
        "reads": reads,
        "transfers": figures["requests"] - reads,
        "transfers_ok": created,
        "throughput": {"transfers_per_s": created / duration_s, "requests_per_s": figures["requests"] / duration_s},
        "latency_ms": {
            "p50": latency["p50"] / 1000, "p90": latency["p90"] / 1000, "p99": latency["p99"] / 1000,
            "p99.9": latency["p99.9"] / 1000, "max": latency["max"] / 1000, "mean": latency["mean"] / 1000,
        },
        "latency_source": "wrk (its exact percentiles, merged over its threads by wrk)",
        "statuses": statuses,
        "errors": errors,
        "missed_sends": 0,
        "warmup_requests": None,
        "timeseries": timeseries,
        "histogram": None,
    }


# -- machine and revision ---------------------------------------------------------------


def git_revision() -> dict[str, Any]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"revision": "unknown", "dirty": None}
    return {"revision": head or "unknown", "dirty": dirty}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "implementation": platform.python_implementation(), "cpus": os.cpu_count(), "cpu_model": None,
        "memory_bytes": None, "load_average": list(os.getloadavg()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_bytes"] = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return info


# -- output -----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _share(cpu: dict[str, Any] | None) -> str:
    if not cpu or cpu.get("share_of_one_core") is None:
        return "-"
    return f"{100 * cpu['share_of_one_core']:.0f}% of a core"


def _errors(errors: dict[str, int]) -> str:
    if not errors:
        return "none"
    return ", ".join(f"{key}: {count}" for key, count in sorted(errors.items(), key=lambda kv: -kv[1])[:4]) + (
        f" (+{len(errors) - 4} more)" if len(errors) > 4 else ""
    )


def table(result: dict[str, Any]) -> str:
    parameters = result["parameters"]
    runs = [("service", result["service"])]
    if result.get("baseline_one_process"):
        runs.append(("one process", result["baseline_one_process"]))
    if result.get("baseline_echo"):
        runs.append(("echo", result["baseline_echo"]))
    rows: list[tuple[str, list[str]]] = [
        ("transfers/s", [_rate(run["throughput"]["transfers_per_s"]) for _, run in runs]),
        ("requests/s", [_rate(run["throughput"]["requests_per_s"]) for _, run in runs]),
    ]
    for label in ("p50", "p90", "p99", "p99.9", "max"):
        rows.append((f"latency {label} ms", [_ms(run["latency_ms"][label]) for _, run in runs]))
    rows.append(("requests", [f"{run['requests']:,}" for _, run in runs]))
    rows.append(("transfers ok", [f"{run['transfers_ok']:,}" for _, run in runs]))
    if parameters.get("rate") is not None:
        rows.append(("missed sends", [f"{run['missed_sends']:,}" for _, run in runs]))
    rows.append(("records per fsync", [
        "-" if run["records_per_fsync"] is None else f"{run['records_per_fsync']:.1f}" for _, run in runs
    ]))
    rows.append(("server CPU", [_share(run["server_cpu"]) for _, run in runs]))
    rows.append(("generator CPU", [
        " ".join(_share(cpu) for cpu in run["generator_cpu"]) or "-" for _, run in runs
    ]))
    width = max(len(label) for label, _ in rows) + 2
    columns = [max(12, *(len(cells[i]) for _, cells in rows)) + 2 for i in range(len(runs))]
    lines = [result["title"], ""]
    lines.append(" " * width + "".join(name.rjust(columns[i]) for i, (name, _) in enumerate(runs)))
    for label, cells in rows:
        lines.append(label.ljust(width) + "".join(cell.rjust(columns[i]) for i, cell in enumerate(cells)))
    for name, run in runs:
        lines.append(f"errors ({name}): {_errors(run['errors'])}")
    service = result["service"]
    if service["server_cpu"] and service["server_cpu"].get("what"):
        lines.append(f"server CPU is {service['server_cpu']['what']}")
    for name, run in runs:
        processes = (run["server_cpu"] or {}).get("processes")
        if processes and len(processes) > 1:
            lines.append(f"server CPU by process ({name}): " + ", ".join(
                f"{item['role']} {item['pid']} {_share(item)}" for item in processes))
    for name, run in runs:
        line = loop_lag_line(name, run.get("loop_lag"))
        if line is not None:
            lines.append(line)
    for key_ratio, key_run, label in (("ratio_to_echo", "baseline_echo", "service / echo route"),
                                      ("ratio_to_one_process", "baseline_one_process",
                                       "service / one process (--workers 0)")):
        ratio = result.get(key_ratio)
        if ratio is None:
            continue
        baseline = result[key_run]["throughput"]
        parts = []
        for key, unit in (("transfers_per_s", "transfers/s"), ("requests_per_s", "requests/s")):
            if ratio[key] is not None:
                parts.append(f"{unit} {ratio[key]:.2f} ({_rate(service['throughput'][key])} / {_rate(baseline[key])})")
        lines.append(f"{label}: " + (", ".join(parts) or "-"))
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(conservation_line(result["conservation"]))
    return "\n".join(lines)


def conservation_line(conservation: dict[str, Any]) -> str:
    if not conservation.get("checked"):
        return f"money conserved: NOT CHECKED ({conservation.get('why', 'unknown')})"
    verdict = "yes" if conservation["conserved"] else "NO"
    return (
        f"money conserved: {verdict} ({conservation['wallets']:,} wallets hold {conservation['wallets_sum']:,}, "
        f"deposited {conservation['deposited']:,}, treasury {conservation['treasury']:,})"
    )


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    temporary.replace(path)


def chart(path: Path, result: dict[str, Any]) -> str | None:
    """Writes the PNG; returns why not when it cannot (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[plot]'): no chart"
    service = result["service"]
    series = [row for row in service["timeseries"] if not row.get("partial")] or service["timeseries"]
    seconds = [row["second"] for row in series]
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    top.plot(seconds, [row["transfers_ok"] for row in series], label="service transfers/s", marker=".")
    top.plot(seconds, [row["requests"] for row in series], label="service requests/s", linestyle="--", marker=".")
    echo = result.get("baseline_echo")
    if echo:
        rows = [row for row in echo["timeseries"] if not row.get("partial")] or echo["timeseries"]
        top.plot([row["second"] for row in rows], [row["requests"] for row in rows],
                 label="echo requests/s", linestyle=":", marker=".")
    top.set_ylabel("per second")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.set_title(textwrap.fill(result["title"], 120), fontsize=8)
    plotted = False
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("max_ms", "max")):
        values = [row[key] for row in series]
        if any(value is not None for value in values):
            bottom.plot(seconds, [math.nan if value is None else value for value in values], label=label, marker=".")
            plotted = True
    if plotted:
        bottom.set_yscale("log")
        bottom.legend(loc="upper right")
    else:
        bottom.text(0.5, 0.5, "latency over time is not available with the wrk driver",
                    ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("latency ms (requests started that second)")
    bottom.set_xlabel("second of the measured window (seconds cut by the window's edges left out)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
