"""The one retry policy of the OSS client.

An attempt that fails with a transient error (:func:`ossmount.oss.errors.is_transient`) is
retried after a delay drawn with "full jitter" from ``[0, min(max_delay_s, base_delay_s * 2**n)]``
(n = number of failures so far), so that many clients failing together do not retry together.
A ``Retry-After`` the server sent is a floor for that delay. The policy gives up, re-raising the
last error, after ``max_attempts`` attempts or when the next attempt would start after
``deadline_s`` from the first.

Time comes from trio (``trio.current_time`` / ``trio.sleep``), so tests run the policy on
trio's ``MockClock`` with autojump and never really sleep.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ossmount.oss.errors import OssError, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, Retry-After as a floor, and an overall deadline."""

    max_attempts: int = 8
    base_delay_s: float = 0.1
    max_delay_s: float = 10.0
    deadline_s: float = 120.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_s(self, failures: int, error: BaseException) -> float:
        """The pause before the attempt that follows the ``failures``-th failure (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * (2 ** (failures - 1)))
        delay = self.rng.uniform(0.0, ceiling)
        if isinstance(error, OssError) and error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        return delay

    async def call(self, attempt: Callable[[], Awaitable[T]], *, what: str = "request") -> T:
        """Run ``attempt()`` until it succeeds, fails for good, or the policy gives up."""
        started = trio.current_time()
        failures = 0
        while True:
            try:
                return await attempt()
            except Exception as exc:
                failures += 1
                if not is_transient(exc) or failures >= self.max_attempts:
                    raise
                delay = self.delay_s(failures, exc)
                if trio.current_time() + delay - started > self.deadline_s:
                    log.warning(
                        "%s: giving up after %d attempts (deadline): %s", what, failures, exc
                    )
                    raise
                log.info(
                    "%s: attempt %d failed (%s); retrying in %.2fs", what, failures, exc, delay
                )
                await trio.sleep(delay)


NO_RETRY = RetryPolicy(max_attempts=1)
