"""HTTPS when a certificate is given, and gzip for large JSON responses when accepted."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e._server import ADMIN_TOKEN, ServerProcess


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_serves_https_with_a_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server = ServerProcess(tmp_path / "data", extra_args=["--certfile", str(cert), "--keyfile", str(key)])
    server.start(wait=False)
    try:
        url = f"https://127.0.0.1:{server.port}"
        trust = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(url + "/ready", verify=trust, timeout=2)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        with httpx.Client(base_url=url, verify=trust, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            assert http.post("/v1/assets", json={"code": "USD", "scale": 2}).status_code == 201
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=2)  # plain HTTP is not served
    finally:
        server.kill()


def test_large_json_is_gzipped_when_accepted(server: ServerProcess) -> None:
    with server.client() as http:
        http.post("/v1/assets", json={"code": "USD", "scale": 2})
        for index in range(30):
            http.post("/v1/wallets", json={"id": f"gz{index}", "owner_id": "gz", "asset": "USD"})
        large = http.get("/v1/wallets", params={"limit": "100"}, headers={"Accept-Encoding": "gzip"})
        assert large.headers.get("content-encoding") == "gzip"
        assert len(large.json()["items"]) == 30  # httpx decompresses
        plain = http.get("/v1/wallets", params={"limit": "100"}, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        small = http.get("/health", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in small.headers  # not worth it under 1 KiB
