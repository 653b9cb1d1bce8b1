"""``make demo`` as a newcomer runs it: the token table prints cleanly (the server's logs go to a
file), SIGTERM stops it with exit 0 after a graceful shutdown, and a port or data directory in
use makes it fail before it seeds anything."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import httpx

from tests.e2e._server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
TABLE_ROW = re.compile(r"^  (alice|bob|carol)\s+\1-usd\s+balance\s+\d+\s+token wt_\S+$")


def make_demo(port: int, data: Path) -> subprocess.Popen[str]:
    environ = {name: value for name, value in os.environ.items() if not name.startswith(("MAKE", "MFLAGS"))}
    return subprocess.Popen(
        ["make", "--no-print-directory", "demo", f"PORT={port}", f"DATA={data}"], cwd=ROOT, env=environ,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_make_demo_prints_a_clean_table_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "demo"
    demo = make_demo(port, data)
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Serving "):
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving.wait(120), "\n".join(lines) + (demo.stderr.read() if demo.poll() is not None and demo.stderr else "")
        # What `kill <pid>` or a supervisor does to the demo (make's own child, not make).
        (child,) = children(demo.pid)
        os.kill(child, signal.SIGTERM)
        status = demo.wait(timeout=90)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    reader.join(10)
    assert demo.stderr is not None and demo.stdout is not None
    stderr = demo.stderr.read()
    demo.stderr.close()
    demo.stdout.close()
    assert status == 0, stderr
    assert "Error" not in stderr and "Terminated" not in stderr
    rows = [line for line in lines if TABLE_ROW.match(line)]
    assert [row.split()[0] for row in rows] == ["alice", "bob", "carol"], "\n".join(lines)
    # No server log line in the output: they are in the file.
    assert not any('"path"' in line or ("/ready" in line and "GET" in line) for line in lines), "\n".join(lines)
    server_log = (data / "demo-server.log").read_text()
    assert "/ready" in server_log and "stopped cleanly" in server_log
    assert lines[-1] == "stopped"
    # The server stopped gracefully: a final snapshot, and its port is free.
    assert list((data / "snapshots").glob("*.snap"))
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_make_demo_refuses_a_port_or_data_directory_in_use_before_seeding(tmp_path: Path) -> None:
    other = ServerProcess(tmp_path / "other")
    other.start()
    try:
        for port, data, said in ((other.port, tmp_path / "mine", f"port {other.port}"),
                                 (free_port(), other.data_dir, "in use")):
            demo = make_demo(port, data)
            stdout, stderr = demo.communicate(timeout=120)
            assert demo.returncode != 0, stdout
            assert said in stderr, stderr
            assert "Seeded" not in stdout
            assert not (tmp_path / "mine" / "wal").exists()  # no server of its own was started
        with other.client() as http:  # the other server was left alone
            assert http.get("/v1/wallets/alice-usd").status_code == 404
            assert http.get("/v1/assets").json()["items"] == []
        assert httpx.get(other.url + "/ready").status_code == 200
    finally:
        other.kill()
