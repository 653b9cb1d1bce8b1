"""Where the client-side tools (``wallet seed``, ``wallet bench --url``) find the admin token of
a running server, in one order: an explicit ``--token``, else ``WALLET_ADMIN_TOKEN``, else the
file the server writes on its first start, ``<data>/admin.token``. It never makes a token: only
``wallet serve`` does (``server._serve.admin_token``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ADMIN_TOKEN_ENV = "WALLET_ADMIN_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"


def find_admin_token(
    *, explicit: str | None, data_dir: Path | None, environ: Mapping[str, str] = os.environ
) -> str | None:
    """The admin token, or None when none of the three places has one."""
    if explicit:
        return explicit
    if environ.get(ADMIN_TOKEN_ENV):
        return environ[ADMIN_TOKEN_ENV]
    if data_dir is not None:
        try:
            token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        except OSError:
            return None
        return token or None
    return None


def where_to_look(data_dir: Path | None) -> str:
    """For the error message when ``find_admin_token`` found nothing."""
    places = f"no --token, no {ADMIN_TOKEN_ENV}"
    return places + (f" and no {data_dir / ADMIN_TOKEN_FILE}" if data_dir is not None else "")
