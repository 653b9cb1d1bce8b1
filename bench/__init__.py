"""The benchmark harness, ``wallet bench`` (see the README's *Benchmarks* section).

``add_arguments`` adds its flags to an argparse parser and ``run`` runs it. The modules behind
them: ``_scenario`` (what the load is made of), ``_loop`` (closed and open loops, the recorder),
``_histogram`` (mergeable latency histograms), ``_drive`` and ``_worker`` (the Python driver and
its child processes), ``_wrk`` (the wrk driver), ``_service`` (servers, setup, conservation),
``_report`` (table, JSON, chart) and ``echo`` (the baseline server). ``make_ledger``,
``history_latency`` and ``observe_cost`` are separate measurement scripts.
"""

from __future__ import annotations

import argparse

from bench._options import add_arguments

__all__ = ["add_arguments", "run"]


def run(arguments: argparse.Namespace) -> int:
    """Runs ``wallet bench`` with parsed arguments; the exit status."""
    from bench._run import run as run_bench  # trio, the ledger and friends only when benching

    return run_bench(arguments)
