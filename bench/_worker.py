"""A child generator process of ``wallet bench --processes P`` (Python driver).

Protocol on stdin/stdout, one line each: the coordinator sends the ``WorkerSpec`` as JSON; the
child imports and prepares, answers ``ready``; the coordinator sends ``go <start>`` (a
``time.monotonic()`` instant, system-wide on Linux) once every child is ready; the child runs
and answers its result as one JSON line (its recorder and its own CPU figures).
"""

from __future__ import annotations

import json
import sys

import trio

from bench._drive import WorkerSpec, run_http_worker


def main() -> int:
    spec = WorkerSpec.from_json(sys.stdin.readline())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    command, start = sys.stdin.readline().split()
    assert command == "go", command
    result = trio.run(run_http_worker, spec, float(start))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
