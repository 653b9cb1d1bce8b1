"""A small keep-alive HTTP/1.1 client over trio sockets, for the Python driver and the harness's
own setup and checks.

Why not httpx: a load generator must cost much less CPU per request than the server it loads,
and httpx costs several hundred microseconds per request (about as much as a bare Starlette
route). This client sends pre-rendered bytes and parses only the status line, the framing
headers and the body: enough for the service's and the echo server's answers (Content-Length
or chunked bodies; no gzip, since it never sends Accept-Encoding). Not a general client.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import trio

RESPONSE_HEAD_BYTES_MAX = 64 * 1024
REQUEST_TIMEOUT_S = 60.0


class HttpError(Exception):
    """The connection failed or the answer was not HTTP/1.1 we can read."""


def split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http://host:port URLs are supported, not {url!r}")
    return parts.hostname, parts.port or 80


def render(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive connection, reopened after the server closes it or an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.host_header = f"{host}:{port}"
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()

    async def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()
        self._buffer.clear()

    async def request(self, raw: bytes, *, timeout_s: float = REQUEST_TIMEOUT_S) -> Response:
        """Sends one rendered request and reads its answer. Raises ``HttpError``."""
        try:
            with trio.fail_after(timeout_s):
                return await self._exchange(raw)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, HttpError) as error:
            await self.close()
            raise HttpError(f"{type(error).__name__}: {error}") from None

    async def _exchange(self, raw: bytes) -> Response:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
        await self._stream.send_all(raw)
        head_end = await self._fill_until(b"\r\n\r\n")
        head = bytes(self._buffer[:head_end]).decode("latin-1")
        del self._buffer[: head_end + 4]
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self._take(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            body = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, body)

    async def _receive(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(65536)
        if not data:
            raise HttpError("the server closed the connection")
        self._buffer += data

    async def _fill_until(self, marker: bytes) -> int:
        while (found := self._buffer.find(marker)) < 0:
            if len(self._buffer) > RESPONSE_HEAD_BYTES_MAX:
                raise HttpError("response head too large")
            await self._receive()
        return found

    async def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._receive()
        body = bytes(self._buffer[:size])
        del self._buffer[:size]
        return body

    async def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line_end = await self._fill_until(b"\r\n")
            size = int(bytes(self._buffer[:line_end]).split(b";")[0], 16)
            del self._buffer[: line_end + 2]
            if size == 0:
                await self._fill_until(b"\r\n")  # no trailers are sent to us
                del self._buffer[:2]
                return b"".join(parts)
            parts.append(await self._take(size))
            await self._take(2)


class Client:
    """Convenience over one ``Connection`` for setup and checks (JSON in, ``Response`` out)."""

    def __init__(self, url: str, token: str | None) -> None:
        host, port = split_url(url)
        self.connection = Connection(host, port)
        self.base_headers = {} if token is None else {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Response:
        all_headers = dict(self.base_headers)
        payload = b""
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        raw = render(method, path, self.connection.host_header, all_headers, payload)
        return await self.connection.request(raw)

    async def aclose(self) -> None:
        await self.connection.close()
