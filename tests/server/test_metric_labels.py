"""Metric labels come from closed sets (issue "Hardening", item 8; the real server's /metrics is
checked in ``tests/e2e/test_hardening_input.py``): every problem code the server can answer is
in ``CODES``, and methods or paths a client invents add no series."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx

from server._errors import CODES, code_label
from server.api import Deps, build_app

SERVER = Path(__file__).resolve().parents[2] / "server"


def test_every_code_the_server_answers_with_is_in_codes() -> None:
    used = set()
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            position = {"ApiError": 1, "path_id": 2}.get(name or "")
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    used.add(argument.value)
    assert {"invalid_request", "not_found", "wallet_not_found", "withdrawal_not_found"} <= used
    assert used <= CODES, used - CODES
    assert code_label("invalid_request") == "invalid_request" and code_label("M00000X") == "other"


async def test_invented_methods_and_paths_add_no_series() -> None:
    transport = httpx.ASGITransport(app=build_app(Deps.build(admin_token="admin")))

    async def series(count: int, start: int) -> set[str]:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            for number in range(start, start + count):
                assert (await http.request(f"M{number:05d}X", "/health")).status_code == 405
                assert (await http.get(f"/nope/{number}")).status_code == 404
            await http.get("/metrics")  # the scrape's own series, from the second one on
            text = (await http.get("/metrics")).text
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("wallet_")}

    before = await series(3, 0)
    after = await series(100, 3)
    assert after == before, sorted(after - before)[:5]
    assert not any("M00050X" in line or "/nope/" in line for line in after)
