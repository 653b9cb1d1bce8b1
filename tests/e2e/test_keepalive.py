"""A response given before the request body was read (here a 401) leaves the keep-alive
connection usable: the server reads and drops the rest of the body first, so the client's next
request on the same connection is answered. Past the body limit it says ``Connection: close``
instead of closing without a word. The body is sent after the headers, apart, which is what made
Hypercorn close the connection silently (on every loop; often on uvloop even without a pause)."""

from __future__ import annotations

import socket
import time

from tests.e2e._server import ServerProcess, on_each_loop


def _response_head(sock: socket.socket) -> bytes:
    """One whole response (its body by Content-Length); returns the status line and headers."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    assert len(rest) == length, (head, rest)  # nothing of the next response arrived early
    return head


def _post_headers(length: int) -> bytes:
    return (
        b"POST /v1/assets HTTP/1.1\r\nHost: test\r\nAuthorization: Basic eDp5\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length
    )


@on_each_loop
def test_an_early_401_keeps_the_connection_for_the_next_request(server: ServerProcess) -> None:
    body = b'{"code": "USD", "scale": 2}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_post_headers(len(body)))
        time.sleep(0.2)  # the app has answered 401 by now, with the body still unread
        sock.sendall(body)
        first = _response_head(sock)
        assert first.startswith(b"HTTP/1.1 401"), first
        assert b"connection: close" not in first.lower()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        second = _response_head(sock)
        assert second.startswith(b"HTTP/1.1 200"), second


def test_an_early_answer_to_a_body_past_the_limit_says_connection_close(server: ServerProcess) -> None:
    length = 2 * 1024 * 1024  # over the 1 MiB body limit
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_post_headers(length))
        try:
            sock.sendall(b" " * length)
        except OSError:
            pass  # the server may stop reading once it decided
        head = _response_head(sock)
        assert head.startswith(b"HTTP/1.1 401"), head
        assert b"connection: close" in head.lower()
