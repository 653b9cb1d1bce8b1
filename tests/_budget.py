"""How much work the heaviest tests do. ``make test`` (CI) runs the bounded amount so that the
whole suite stays well under its 12 minutes on the 2-core machine; ``make test-long``
(``WALLET_TEST_LONG=1``) runs the same tests with the full amount. Both run the same
assertions: only repetitions, examples and loop variants change."""

from __future__ import annotations

import os

LONG = os.environ.get("WALLET_TEST_LONG") == "1"


def scaled(ci: int, long: int) -> int:
    """``long`` under ``make test-long``, else ``ci``."""
    return long if LONG else ci


def loops(every: list[str]) -> list[str]:
    """Event loops to parametrize a heavy test over: each of ``every`` in the long run, the first
    (the default loop) in CI."""
    return every if LONG else every[:1]
