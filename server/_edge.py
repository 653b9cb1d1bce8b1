"""The HTTP edge under the ASGI app: what Hypercorn does with a connection before and after a
request. It owns four guarantees Hypercorn 0.18 does not give, and must never look into a
request's meaning (that is the app's).

- **HTTP/1.1 only.** Hypercorn speaks cleartext HTTP/2 (prior knowledge, and ``Upgrade: h2c``)
  without a switch to turn it off, and its HTTP/2 path has crashed the whole process on one
  unauthenticated request (a ``KeyError`` in ``protocol/h2.py`` escaping the connection task).
  TLS offers only ``http/1.1`` by ALPN (``edge_config``); in cleartext, ``Upgrade: h2c`` is
  ignored (RFC 9110 7.8 lets a server ignore it: the request is answered as HTTP/1.1) and a
  request line of any other version, such as the HTTP/2 preface ``PRI * HTTP/2.0``, gets
  ``505`` and the connection is closed. A request head over ``HEADER_BYTES_MAX`` gets ``431``
  (h11's own limit counts only a head that has not fully arrived).
- **One connection's failure is its own.** An exception out of the protocol code closes that
  connection with one warning line; it never reaches the worker's task group (which would end
  the process).
- **Connections are capped**, in total and per client address (``ConnectionLimits``); one over a
  cap gets ``503`` and is closed at once, before it is read. With one request at a time per
  HTTP/1.1 connection, a total cap under ``--max-in-flight`` means held connections alone can
  never make the admission control refuse everyone.
- **A graceful shutdown answers what it accepted.** Two races in Hypercorn's keep-alive handling
  once the worker is terminating, both seen under load: (a) a request that arrives on a
  connection after its last response chose to close makes h11 pause (the previous cycle is
  never recycled), and the reading task waits for ``can_read`` forever, which held the drain
  for the whole graceful timeout; (b) a request parsed as the idle connection was being closed
  was still handed to the app, which committed it and had nowhere to send the answer. Here a
  closing connection stops reading (``_ReadGate``), and a request whose head is parsed once the
  worker is terminating gets ``503`` with ``Connection: close`` and never reaches the app.

``BodyDeadline`` (an ASGI middleware) bounds the time to receive a whole request body
(``--body-timeout``): a body still incomplete then raises ``BodyTimeout``, which the app answers
``408 request_timeout`` with ``Connection: close``.

These hooks replace Hypercorn's ``ProtocolWrapper`` in its trio and asyncio workers
(``install``), since both build it by name per connection and take no factory; the import-time
checks below fail loudly if a Hypercorn upgrade moves what they rely on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import h11
import hypercorn.asyncio.tcp_server
import hypercorn.protocol
import hypercorn.trio.tcp_server
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol

from server._limits import BODY_TIMEOUT_S, CONNECTIONS_MAX, CONNECTIONS_PER_ADDRESS_MAX, BodyTimeout

log = logging.getLogger("server.edge")

HEADER_BYTES_MAX = 16 * 1024  # the request line and every header line, as received
HTTP_VERSIONS = (b"1.0", b"1.1")

# What this module relies on in Hypercorn (pinned in pyproject.toml): fail at import, not in
# production, if it moved.
assert hypercorn.trio.tcp_server.ProtocolWrapper is hypercorn.protocol.ProtocolWrapper
assert hypercorn.asyncio.tcp_server.ProtocolWrapper is hypercorn.protocol.ProtocolWrapper
assert callable(getattr(H11Protocol, "_check_protocol", None))
assert callable(getattr(H11Protocol, "_maybe_recycle", None))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStatistics:
    open: int
    addresses: int
    refused: int
    failed: int


class ConnectionLimits:
    """Open connections, in total and per client address. Not thread-safe: one event loop."""

    def __init__(self, *, total_max: int = CONNECTIONS_MAX,
                 per_address_max: int = CONNECTIONS_PER_ADDRESS_MAX) -> None:
        assert total_max >= 1
        assert per_address_max >= 1
        self.total_max = total_max
        self.per_address_max = per_address_max
        self._open = 0
        self._by_address: dict[str, int] = {}
        self._refused = 0
        self.failed = 0  # connections closed because the protocol code raised

    def acquire(self, address: str) -> bool:
        """Counts a new connection from ``address``; False (and nothing counted) over a cap."""
        count = self._by_address.get(address, 0)
        if self._open >= self.total_max or count >= self.per_address_max:
            self._refused += 1
            return False
        self._open += 1
        self._by_address[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._by_address[address]
        assert count >= 1
        assert self._open >= count
        self._open -= 1
        if count == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = count - 1

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(open=self._open, addresses=len(self._by_address), refused=self._refused,
                                    failed=self.failed)


class EdgeConfig(Config):
    """Hypercorn's config, carrying the limits every connection of this server shares."""

    connection_limits: ConnectionLimits | None = None


def edge_config(limits: ConnectionLimits) -> EdgeConfig:
    config = EdgeConfig()
    config.connection_limits = limits
    config.alpn_protocols = ["http/1.1"]  # never h2 over TLS either
    config.h11_max_incomplete_size = HEADER_BYTES_MAX
    return config


def _problem(status: int, reason: bytes, code: str, detail: str, extra: list[tuple[bytes, bytes]]) -> tuple[
        list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"type": "about:blank", "title": reason.decode(), "status": status, "code": code,
                       "detail": detail}).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    return headers, body


class _Refused(Exception):
    """A request the edge answers itself, then closes the connection."""

    def __init__(self, status: int, reason: bytes, code: str, detail: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.code = code
        self.detail = detail
        self.headers = headers or []


class _Closing(Exception):
    """The connection is closing: the reading task stops handling what it received."""


class _ReadGate:
    """Hypercorn's ``can_read`` event (h11 paused until the response is done), which lets the
    reading task out once the connection is closing instead of waiting for a recycle that will
    never come."""

    def __init__(self, event: Any) -> None:
        self._event = event
        self.closing = False

    async def clear(self) -> None:
        await self._event.clear()

    async def set(self) -> None:
        await self._event.set()

    def is_set(self) -> bool:
        return bool(self._event.is_set())

    async def wait(self) -> None:
        if self.closing:
            raise _Closing
        await self._event.wait()
        if self.closing:
            raise _Closing


class _Http11(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol without the switch to HTTP/2, with a bound on the whole
    request head, and which refuses new requests once the worker is terminating."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = _ReadGate(self.can_read)
        self.can_read = self.gate

    async def _check_protocol(self, event: h11.Request) -> None:
        # Called for each request head, after Hypercorn stopped the connection's idle timer: from
        # here on, a terminating worker can no longer close this connection under the request,
        # so if it is not terminating yet, the request will be answered.
        if self.context.terminated.is_set():
            raise _Refused(503, b"Service Unavailable", "shutting_down",
                           "the server is shutting down; retry on a new connection",
                           [(b"retry-after", b"1")])
        if event.http_version not in HTTP_VERSIONS:
            raise _Refused(505, b"HTTP Version Not Supported", "http_version_not_supported",
                           "this server speaks HTTP/1.1 only")
        size = len(event.method) + len(event.target) + 12
        for name, value in event.headers.raw_items():
            size += len(name) + len(value) + 4
        if size > HEADER_BYTES_MAX:
            raise _Refused(431, b"Request Header Fields Too Large", "headers_too_large",
                           f"the request line and headers are limited to {HEADER_BYTES_MAX} bytes")
        # ``Upgrade: h2c`` is not acted on: the request is answered as HTTP/1.1.

    async def _maybe_recycle(self) -> None:
        if (self.context.terminated.is_set() or self.connection.our_state is not h11.DONE
                or self.connection.their_state is not h11.DONE):
            # Hypercorn closes instead of recycling: a reader paused on the next request's bytes
            # would otherwise wait for ``can_read`` forever.
            self.gate.closing = True
        await super()._maybe_recycle()

    async def refuse(self, refused: _Refused) -> None:
        headers, body = _problem(refused.status, refused.reason, refused.code, refused.detail, refused.headers)
        self.gate.closing = True
        if self.connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send_h11_event(h11.Response(status_code=refused.status, headers=headers,
                                                    reason=refused.reason))
            await self._send_h11_event(h11.Data(data=body))
            await self._send_h11_event(h11.EndOfMessage())


class EdgeProtocol(hypercorn.protocol.ProtocolWrapper):
    """Hypercorn's per-connection protocol, HTTP/1.1 only, counted against the connection caps,
    and never letting an exception out of one connection."""

    def __init__(self, app: Any, config: Config, context: Any, task_group: Any, state: Any, ssl: bool,
                 client: tuple[str, int] | None, server: tuple[str, int] | None,
                 send: Callable[[Any], Awaitable[None]], alpn_protocol: str | None = None) -> None:
        # Built as HTTP/1.1 whatever ALPN said (only http/1.1 is offered).
        super().__init__(app, config, context, task_group, state, ssl, client, server, send, "http/1.1")
        self.protocol = _Http11(app, config, context, task_group, state, ssl, client, server, send)
        self._limits = getattr(config, "connection_limits", None)
        self._address = client[0] if client else ""
        self._counted = False
        self._done = False

    async def initiate(self) -> None:
        if self._limits is not None:
            if not self._limits.acquire(self._address):
                self._done = True
                headers, body = _problem(503, b"Service Unavailable", "too_many_connections",
                                         "too many connections; retry shortly", [(b"retry-after", b"1")])
                head = b"HTTP/1.1 503 Service Unavailable\r\n" + b"".join(
                    name + b": " + value + b"\r\n" for name, value in headers)
                await self.send(RawData(data=head + b"\r\n" + body))
                await self.send(Closed())
                return
            self._counted = True
        await self.protocol.initiate()

    async def handle(self, event: Any) -> None:
        if isinstance(event, Closed):
            self._release()
        if self._done and not isinstance(event, Closed):
            return  # refused or failed: what else arrives is dropped
        protocol = self.protocol
        assert isinstance(protocol, _Http11)
        try:
            if isinstance(event, Closed):
                # Whoever closes (the client, a failed send, the idle timer on shutdown), a
                # reader paused on the next request's bytes must leave, not wait for a recycle.
                protocol.gate.closing = True
                await protocol.gate.set()
            await protocol.handle(event)
        except _Closing:
            pass
        except _Refused as refused:
            self._done = True
            await protocol.refuse(refused)
            await self.send(Closed())
        except Exception as error:  # the point: one connection's bug stays its own
            self._done = True
            if self._limits is not None:
                self._limits.failed += 1
            log.warning("closing a connection from %s after a protocol error: %s: %s",
                        self._address, type(error).__name__, error)
            protocol.gate.closing = True
            await self.send(Closed())

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            assert self._limits is not None
            self._limits.release(self._address)


def install() -> None:
    """Makes Hypercorn's trio and asyncio workers build ``EdgeProtocol`` for each connection."""
    hypercorn.trio.tcp_server.ProtocolWrapper = EdgeProtocol  # type: ignore[misc]
    hypercorn.asyncio.tcp_server.ProtocolWrapper = EdgeProtocol  # type: ignore[misc]



class BodyDeadline:
    """ASGI middleware: the whole request body must arrive within ``timeout_s`` of the request
    head. A ``receive()`` still waiting for body bytes then raises ``BodyTimeout``. Once the body
    is complete, ``receive()`` is not bounded (a streaming response waits there for the client
    to leave)."""

    def __init__(self, app: Any, *, timeout_s: float = BODY_TIMEOUT_S) -> None:
        assert timeout_s > 0
        self._app = app
        self._timeout_s = timeout_s

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        deadline = anyio.current_time() + self._timeout_s
        body_done = False

        async def bounded_receive() -> Any:
            nonlocal body_done
            if body_done:
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    body_done = True
                return message
            raise BodyTimeout(self._timeout_s)

        await self._app(scope, bounded_receive, send)
