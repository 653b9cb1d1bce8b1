"""The generated wrk script, run for real: wrk against a small recording HTTP server for 1 s
(skipped when wrk is not installed). Checks that Lua loads, that every transfer carries a unique
Idempotency-Key and a body drawn from the scenario, that reads are balance GETs, and that
``done`` writes the figures the harness reads. Also the harness's own HTTP client."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench import _wrk
from bench._http import Client
from bench._report import wrk_figures
from bench._scenario import Scenario, Workload, wallet_ids


class Recorded:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []


def handler_for(recorded: Recorded) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes, chunked: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in (body[:3], body[3:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self) -> bytes:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            with recorded.lock:
                recorded.requests.append((self.command, self.path, dict(self.headers), body))
            return body

        def do_POST(self) -> None:
            self._record()
            if self.path == "/refuse":
                self._answer(422, b'{"status":422,"code":"insufficient_funds"}')
            else:
                self._answer(201, b'{"id":"tx_1"}')

        def do_GET(self) -> None:
            self._record()
            self._answer(200, b'{"balance":1}', chunked=self.path == "/chunked")

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def recording_server() -> Iterator[tuple[str, Recorded]]:
    recorded = Recorded()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(recorded))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorded
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not _wrk.available(), reason="wrk is not installed (apt-get install wrk)")
def test_the_generated_script_runs_in_wrk_with_unique_keys(tmp_path: Path, recording_server: tuple[str, Recorded]) -> None:
    url, recorded = recording_server
    ids = wallet_ids("bx-", 50)
    workload = Workload(Scenario(wallets=50, shards=4, read_share=0.2), ids, random.Random(5))
    ops = tmp_path / "ops.txt"
    _wrk.write_ops(ops, workload, 300)  # short, so the threads wrap around it: keys must stay unique
    drawn = ops.read_text().splitlines()
    script = tmp_path / "run.lua"
    script.write_text(_wrk.render_lua(ops_path=ops, out_path=tmp_path / "out.json", key_prefix="kp-",
                                      threads=2, token="secret", amount=3))
    run = _wrk.run(url=url, script=script, threads=2, connections=4, duration_s=1)

    posts = [r for r in recorded.requests if r[0] == "POST"]
    gets = [r for r in recorded.requests if r[0] == "GET"]
    assert posts and gets
    keys = [headers["Idempotency-Key"] for _, _, headers, _ in posts]
    assert len(keys) == len(set(keys)), "an Idempotency-Key was sent twice"
    assert all(key.startswith("kp-") for key in keys)
    pairs = {tuple(line.split()[1:]) for line in drawn if line.startswith("T ")}
    readable = {line.split()[1] for line in drawn if line.startswith("R ")}
    for _, path, headers, body in posts:
        assert path == "/v1/transfers"
        assert headers["Authorization"] == "Bearer secret"
        assert headers["Content-Type"] == "application/json"
        document = json.loads(body)
        assert set(document) == {"from_wallet_id", "to_wallet_id", "amount"}
        assert (document["from_wallet_id"], document["to_wallet_id"]) in pairs
        assert document["amount"] == 3
    for _, path, headers, _ in gets:
        assert headers["Authorization"] == "Bearer secret"
        assert path.startswith("/v1/wallets/") and path.endswith("/balance")
        assert path.split("/")[3] in readable

    figures = run.figures
    assert set(figures["statuses"]) <= {"200", "201"}
    assert figures["statuses"].get("201", 0) <= len(posts)
    assert figures["requests"] == sum(figures["statuses"].values())
    assert set(figures["latency_us"]) == {"p50", "p90", "p99", "p99.9", "min", "max", "mean"}
    assert sum(figures["responses_per_second"].values()) == figures["requests"]
    assert run.cpu_s > 0
    summary = wrk_figures(figures, started_epoch_s=run.started_epoch_s)
    assert summary["transfers_ok"] == figures["statuses"].get("201", 0)
    assert sum(row["requests"] for row in summary["timeseries"]) == figures["requests"]


def test_rendering_refuses_text_that_would_break_the_lua_string(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        _wrk.render_lua(ops_path=tmp_path / "o", out_path=tmp_path / "x", key_prefix='a"b', threads=1,
                        token="t", amount=1)


async def test_the_client_reads_lengths_chunks_and_problems(recording_server: tuple[str, Recorded]) -> None:
    url, recorded = recording_server
    client = Client(url, "tok")
    try:
        plain = await client.call("GET", "/plain")
        chunked = await client.call("GET", "/chunked")
        refused = await client.call("POST", "/refuse", {"a": 1})
        again = await client.call("GET", "/plain")  # the same keep-alive connection, still in step
    finally:
        await client.aclose()
    assert (plain.status, plain.json()) == (200, {"balance": 1})
    assert (chunked.status, chunked.json()) == (200, {"balance": 1})
    assert (refused.status, refused.json()["code"]) == (422, "insufficient_funds")
    assert again.status == 200
    assert recorded.requests[2][3] == b'{"a":1}'
