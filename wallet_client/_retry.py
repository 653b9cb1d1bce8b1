"""When the client tries a call again, and after how long: pure decisions over an attempt's
outcome, the call's safety and the time spent so far (no clock, no sleep, no I/O; the
randomness of the jitter comes from the ``random.Random`` passed in).

A call is *repeatable* when doing it twice is the same as doing it once: reads, ``PUT`` /
``DELETE``, a ``POST`` that carries an ``Idempotency-Key`` (every money-moving call does: the
client makes one and keeps it for all attempts), and the few ``POST`` routes the contract makes
idempotent by themselves (creating an asset with the same scale, freezing a frozen wallet).

    | outcome of attempt n                        | repeatable | not repeatable |
    |---------------------------------------------|------------|----------------|
    | an answer whose status is not in statuses   | done       | done           |
    | 429 / 503 (``statuses``) with Retry-After   | wait that  | raise          |
    | 429 / 503 without Retry-After               | backoff    | raise          |
    | connect failure (nothing was sent)          | backoff    | backoff        |
    | other transport error (sent, no answer)     | backoff    | raise          |
    | an error that retrying cannot fix           | raise      | raise          |
    |   (unsupported protocol, bad URL)           |            |                |

and in every row that waits: raise instead when ``n`` is already ``attempts_max``, when the
wait would end past ``total_s`` after the first attempt started, or when Retry-After asks for
more than ``retry_after_max_s``. "backoff" is full jitter: uniform in ``[0, min(backoff_max_s,
backoff_base_s * 2**(n-1))]``; a Retry-After wait gets up to 10% added so that many clients
told the same moment do not all come back at once.

A not-repeatable call is never sent twice unless the first attempt provably never reached the
server (the connection was not established): that is what keeps, say, ``create_token`` from
making two tokens. Its 429 and 503 are raised (``RateLimited``, ``Overloaded``, with
``retry_after_s``) for the caller to decide.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

RETRY_AFTER_JITTER = 0.1  # a Retry-After wait is stretched by up to this share
RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How hard the client tries. ``attempts_max`` counts the first attempt (1 = never retry);
    ``total_s`` bounds the time from the first attempt's start to the start of the last one.

    Example::

        WalletClient(url, token=token, retry=RetryPolicy(attempts_max=8, total_s=120))
        WalletClient(url, token=token, retry=RetryPolicy.never())
    """

    attempts_max: int = 5
    total_s: float = 30.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 5.0
    retry_after_max_s: float = 30.0
    statuses: frozenset[int] = field(default=RETRY_STATUSES)

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("attempts_max counts the first attempt: at least 1")
        if self.total_s < 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.retry_after_max_s < 0:
            raise ValueError("times must not be negative")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(attempts_max=1)

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Full jitter after attempt ``attempt`` (1-based)."""
        assert attempt >= 1
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempt - 1, 60))
        return rng.uniform(0, ceiling)

    def delay_after_status(
        self, *, status: int, retry_after: str | None, attempt: int, elapsed_s: float, repeatable: bool,
        rng: random.Random, now: datetime | None = None,
    ) -> float | None:
        """The wait before attempt ``attempt + 1`` after an answer with ``status``; ``None``:
        no retry (the answer is the call's outcome)."""
        if status not in self.statuses or not repeatable:
            return None
        wanted = parse_retry_after(retry_after, now=now)
        if wanted is None:
            delay = self.backoff_s(attempt, rng)
        elif wanted > self.retry_after_max_s:
            return None
        else:
            delay = wanted * (1 + rng.uniform(0, RETRY_AFTER_JITTER))
        return self._within_budget(delay, attempt, elapsed_s)

    def delay_after_error(
        self, *, error: Exception, attempt: int, elapsed_s: float, repeatable: bool, rng: random.Random,
    ) -> float | None:
        """The wait before attempt ``attempt + 1`` after a transport error; ``None``: raise."""
        if not retryable_error(error):
            return None
        if not repeatable and not never_sent(error):
            return None
        return self._within_budget(self.backoff_s(attempt, rng), attempt, elapsed_s)

    def _within_budget(self, delay: float, attempt: int, elapsed_s: float) -> float | None:
        if attempt >= self.attempts_max or elapsed_s + delay > self.total_s:
            return None
        return delay


def never_sent(error: Exception) -> bool:
    """Whether the request certainly did not reach the server: the connection was never made
    (refused, unreachable, timed out while connecting, no free connection in the pool)."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def retryable_error(error: Exception) -> bool:
    """Transport errors that another attempt may not meet (not a wrong URL or scheme)."""
    return isinstance(error, httpx.TransportError) and not isinstance(
        error, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds (``"2"``; a decimal is accepted too) or an
    HTTP-date (the seconds from ``now`` to it, at least 0). ``None`` when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
