"""The token bucket: a burst, then one request per 1/rate seconds, with an honest Retry-After."""

from __future__ import annotations

from server.api import RateLimiter


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.check(b"t") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.check(b"t")
    assert 0 < wait <= 0.5
    assert limiter.check(b"other") == 0.0  # buckets are per token
    now[0] += 0.5
    assert limiter.check(b"t") == 0.0
    assert limiter.check(b"t") > 0
    now[0] += 100  # a long pause refills to the burst, not beyond
    assert [limiter.check(b"t") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check(b"t") > 0
