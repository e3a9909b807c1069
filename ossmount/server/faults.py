"""Injected faults: latency, a bandwidth cap, error answers and connection resets (seeded).

A `Faults` object is shared by every connection of a server and may be changed while it runs
(from a test's thread too: each decision reads the fields once). Decisions come from one
`random.Random(seed)`, so a run with the same seed and the same request order injects the same
faults; `reseed()` restarts the sequence.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Faults:
    """Fault settings. Shares are probabilities in [0, 1] per request.

    - latency_ms: added before each request is handled.
    - bandwidth_bytes_per_s: a cap shared by all connections, both directions (0: none).
    - conn_bandwidth_bytes_per_s: a cap on each connection, both directions (0: none), as OSS
      serves one connection far slower than its network allows.
    - error_rate: share of requests answered 503 SlowDown or 500 InternalError unhandled.
    - reset_rate: share of requests with a body (either direction) whose connection is reset
      half-way through that body.
    - only_operations: if non-empty, errors and resets hit only these operations (for example
      {"GetObject"}); latency and bandwidth apply to all.
    """

    latency_ms: float = 0.0
    bandwidth_bytes_per_s: float = 0.0
    conn_bandwidth_bytes_per_s: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    seed: int = 0
    only_operations: frozenset[str] = frozenset()
    _random: random.Random = field(init=False, repr=False, compare=False)
    _seeded_with: int = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._seeded_with = self.seed
        self._lock = threading.Lock()

    def reseed(self, seed: int | None = None) -> None:
        """Restart the sequence of decisions (from `seed`, or the current one)."""
        with self._lock:
            if seed is not None:
                self.seed = seed
            self._random = random.Random(self.seed)
            self._seeded_with = self.seed

    def _draw(self) -> float:
        # Assigning `seed` restarts the sequence as reseed() does. Call with the lock held.
        if self.seed != self._seeded_with:
            self._random = random.Random(self.seed)
            self._seeded_with = self.seed
        return self._random.random()

    def clear(self) -> None:
        """No faults from now on."""
        self.latency_ms = 0.0
        self.bandwidth_bytes_per_s = 0.0
        self.conn_bandwidth_bytes_per_s = 0.0
        self.error_rate = 0.0
        self.reset_rate = 0.0
        self.only_operations = frozenset()

    def _applies(self, operation: str) -> bool:
        return not self.only_operations or operation in self.only_operations

    def pick_error(self, operation: str) -> tuple[int, str] | None:
        """(status, code) of an injected error answer for this request, or None."""
        rate = self.error_rate
        if rate <= 0 or not self._applies(operation):
            return None
        with self._lock:
            if self._draw() >= rate:
                return None
            slow_down = self._draw() < 0.5
        return (503, "SlowDown") if slow_down else (500, "InternalError")

    def pick_reset(self, operation: str, body_length: int) -> int | None:
        """After how many bytes of a `body_length` body to reset the connection, or None."""
        rate = self.reset_rate
        if rate <= 0 or body_length <= 1 or not self._applies(operation):
            return None
        with self._lock:
            if self._draw() >= rate:
                return None
        return body_length // 2
