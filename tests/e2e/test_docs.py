"""``/docs`` renders the operations in headless Chromium with no network beyond the server:
Swagger UI comes from a package's static files, not a CDN."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e._server import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)")
def test_swagger_ui_renders_every_operation(server: ServerProcess, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
         server.url + "/docs"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    paths = re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', result.stdout)
    assert "/v1/transfers" in paths and "/v1/events/stream" in paths
    with server.client() as http:
        documented = sum(len(item) for item in http.get("/openapi.json").json()["paths"].values())
    assert len(paths) == documented  # one rendered operation per documented operation
