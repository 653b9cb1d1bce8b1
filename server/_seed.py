"""``wallet seed``: demo data through the public API of a running server (with the admin token):
an asset, a few owners with wallets and their own tokens, deposits and transfers. It prints what
it made and curl commands to try.

Safe to run again: fixed ids and idempotency keys make the money moves once. Tokens are
revoke-and-replace: a token is shown only once (the server keeps its hash), so a new run cannot
print the old ones; it revokes every live token of the demo owners it finds in the event feed
(``token.created`` without a later ``token.revoked``), then makes one new token each. So after any
number of runs each demo owner has exactly one live token, the one printed last. (Tokens made
before the oldest kept log segment are no longer in the feed and are not found.)

Every call goes through ``wallet_client``, the project's Python client."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from server._admin_token import find_admin_token
from wallet_client import Gone, NotFound, WalletClient, WalletClientError

OWNERS = ["alice", "bob", "carol"]
EVENTS_PAGE = 1000


def live_tokens(client: WalletClient, owners: list[str]) -> dict[str, str]:
    """Prefix -> owner of every token of ``owners`` created and not revoked, from the event feed."""
    live: dict[str, str] = {}
    after = 0
    while True:
        try:
            for event in client.iter_events(after=after, limit=EVENTS_PAGE):
                data = event.data
                if event.type == "token.created" and data["owner_id"] in owners:
                    live[data["prefix"]] = data["owner_id"]
                elif event.type == "token.revoked":
                    live.pop(data["prefix"], None)
                after = event.lsn
            return live
        except Gone as error:  # the feed starts later (compacted log): from there
            if error.oldest_lsn is None or error.oldest_lsn - 1 <= after:
                raise
            after = error.oldest_lsn - 1


def seed(url: str, admin_token: str) -> int:
    """Through ``wallet_client``: its keys make the money moves once however often this runs
    (fixed keys), and its retries ride out a server that is still warming up (503)."""
    try:
        with WalletClient(url, token=admin_token) as client:
            return _seed(client, url, admin_token)
    except WalletClientError as error:
        raise SystemExit(f"wallet seed: {error}") from None


def _seed(client: WalletClient, url: str, admin_token: str) -> int:
    client.create_asset("USD", scale=2)
    earlier = live_tokens(client, OWNERS)
    for prefix in sorted(earlier):
        try:
            client.revoke_token(prefix)
        except NotFound:  # revoked meanwhile
            pass
    tokens = {}
    for owner in OWNERS:
        client.create_wallet(owner, "USD", id=f"{owner}-usd")
        client.deposit(f"{owner}-usd", 100_00, description="welcome bonus", idempotency_key=f"seed-deposit-{owner}")
        tokens[owner] = client.create_token(owner).token
    moves = [("alice", "bob", 12_50), ("bob", "carol", 5_00), ("carol", "alice", 1_99)]
    for number, (source, target, amount) in enumerate(moves):
        client.transfer(f"{source}-usd", f"{target}-usd", amount, description=f"{source} pays {target}",
                        idempotency_key=f"seed-transfer-{number}")
    print(f"Seeded {url}: asset USD (scale 2); wallets " + ", ".join(f"{o}-usd" for o in OWNERS) + ".")
    if earlier:
        print(f"Revoked {len(earlier)} earlier demo token(s); the tokens below replace them.")
    for owner in OWNERS:
        wallet = client.get_wallet(f"{owner}-usd")
        print(f"  {owner:6} {wallet.id:10} balance {wallet.balance:>6}  token {tokens[owner]}")
    alice = tokens["alice"]
    print("\nTry (as alice, whose token acts for her wallets only):")
    print(f"  curl -s -H 'Authorization: Bearer {alice}' {url}/v1/wallets/alice-usd")
    print(f"  curl -s -H 'Authorization: Bearer {alice}' {url}/v1/wallets/alice-usd/transactions")
    print(f"  curl -s -X POST -H 'Authorization: Bearer {alice}' -H 'Content-Type: application/json' \\\n"
          f"       -H 'Idempotency-Key: try-1' -d '{{\"from_wallet_id\":\"alice-usd\",\"to_wallet_id\":\"bob-usd\",\"amount\":100}}' \\\n"
          f"       {url}/v1/transfers")
    print(f"  curl -s -H 'Authorization: Bearer {admin_token}' '{url}/v1/events?after=0'")
    print("\nOr from Python (the wallet_client package ships with the server):")
    print(f"  python -c \"from wallet_client import WalletClient; "
          f"print(WalletClient('{url}', token='{alice}').get_wallet('alice-usd'))\"")
    return 0


# -- wallet demo (make demo) ---------------------------------------------------------------------

DEMO_READY_TIMEOUT_S = 60.0
DEMO_STOP_TIMEOUT_S = 60.0  # the server's own --shutdown-timeout (10 s) plus a margin


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def demo(*, data_dir: Path, host: str, port: int, log_path: Path | None) -> int:
    """``wallet demo``: ``wallet serve`` on ``data_dir`` with its logs in a file, ``wallet seed``
    once it is ready, then wait; SIGTERM or SIGINT stops the server gracefully and exits 0.

    It checks first that the port and the data directory are free (so it never seeds someone
    else's server), and while waiting that its own child is alive. The server runs in its own
    session, so a terminal's Ctrl-C reaches only this process, which forwards a SIGTERM."""
    from server._lock import DataDirLocked, lock_data_dir

    url = f"http://{host}:{port}"
    if _port_taken(host, port):
        print(f"wallet demo: port {port} on {host} is in use (another server?); pick another: "
              f"PORT=9000 make demo", file=sys.stderr)
        return 2
    try:
        probe = lock_data_dir(data_dir)
        del probe  # released at once (CPython closes its descriptor): only a probe
    except DataDirLocked as error:
        print(f"wallet demo: {error}; pick another: DATA=/tmp/demo make demo", file=sys.stderr)
        return 2
    log_path = log_path or data_dir / "demo-server.log"
    stop = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--data", str(data_dir), "--host", host,
             "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        if not _wait_ready(server, url, lambda: stop):
            if stop:
                return _stop(server)
            print(f"wallet demo: the server did not get ready (exit status {server.poll()}); "
                  f"see {log_path}", file=sys.stderr)
            return 1
        token = find_admin_token(explicit=None, data_dir=data_dir)
        assert token is not None  # the server wrote DATA/admin.token, or took WALLET_ADMIN_TOKEN
        try:
            seed(url, token)
        except SystemExit as error:
            print(error, file=sys.stderr)
            return _stop(server) or 1
        print(f"\nServing {url} (data {data_dir}, server log {log_path}). Stop with Ctrl-C.", flush=True)
        while not stop and server.poll() is None:
            try:
                server.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        if not stop:
            print(f"wallet demo: the server exited with {server.returncode}; see {log_path}", file=sys.stderr)
            return 1
        return _stop(server)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_ready(server: subprocess.Popen[bytes], url: str, stopping: Callable[[], bool]) -> bool:
    """True once *our* server answers /ready: its process must still be alive when it does."""
    deadline = time.monotonic() + DEMO_READY_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        if server.poll() is not None:
            return False
        try:
            if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                return server.poll() is None
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _stop(server: subprocess.Popen[bytes]) -> int:
    """SIGTERM (a graceful shutdown with a final snapshot) and wait: 0 when it exited cleanly."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=DEMO_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            print("wallet demo: the server did not stop in time; killed", file=sys.stderr)
            return 1
    print("stopped", flush=True)
    return 0 if server.returncode == 0 else 1
