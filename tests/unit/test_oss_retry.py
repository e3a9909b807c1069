"""The retry policy, on trio's MockClock (autojump): no test here really sleeps."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from ossmount.oss import errors
from ossmount.oss.retry import RetryPolicy


class Flaky:
    """Fails with the given errors, in order, then returns "ok"; records when it was called."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(trio.current_time())
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def slow_down(retry_after_s: float | None = None) -> errors.OssError:
    return errors.SlowDown("slow", status=503, code="SlowDown", retry_after_s=retry_after_s)


async def test_transient_failures_are_retried_with_growing_jittered_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=3.0, rng=random.Random(7))
    attempt = Flaky(errors.OssConnectionError("reset"), slow_down(), slow_down(), slow_down())
    assert await policy.call(attempt) == "ok"
    gaps = [b - a for a, b in zip(attempt.calls, attempt.calls[1:], strict=False)]
    assert len(gaps) == 4
    ceilings = [1.0, 2.0, 3.0, 3.0]  # base * 2**n, capped at max_delay_s
    assert all(0 <= gap <= ceiling + 1e-9 for gap, ceiling in zip(gaps, ceilings, strict=True))
    assert len(set(gaps)) > 1  # jitter


async def test_retry_after_is_a_floor(autojump_clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=0.01)
    attempt = Flaky(slow_down(retry_after_s=5.0))
    await policy.call(attempt)
    assert attempt.calls[1] - attempt.calls[0] >= 5.0


async def test_permanent_errors_are_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    attempt = Flaky(errors.NoSuchKey("gone", status=404, code="NoSuchKey"))
    with pytest.raises(errors.NoSuchKey):
        await RetryPolicy().call(attempt)
    assert len(attempt.calls) == 1


async def test_gives_up_after_max_attempts(autojump_clock: trio.testing.MockClock) -> None:
    attempt = Flaky(*[slow_down() for _ in range(10)])
    with pytest.raises(errors.SlowDown):
        await RetryPolicy(max_attempts=3).call(attempt)
    assert len(attempt.calls) == 3


async def test_gives_up_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    policy = RetryPolicy(max_attempts=100, base_delay_s=10, max_delay_s=10, deadline_s=30)
    attempt = Flaky(*[slow_down(retry_after_s=10) for _ in range(100)])
    with pytest.raises(errors.SlowDown):
        await policy.call(attempt)
    assert attempt.calls == [0.0, 10.0, 20.0, 30.0]  # a fifth would start at 40, too late
