"""A limit on failed attempts per client: guessing tokens gets a 429, not a thousand tries.

Each app process counts, per client address, the failed attempts of the last
``window_s`` seconds; past ``limit`` the client is refused until the oldest
failure leaves the window. Bounded memory: the least recently failing clients
are forgotten first when too many are tracked.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from geo.core.errors import TooManyRequests

__all__ = ["FailureThrottle"]


class FailureThrottle:
    """Refuses a client with ``limit`` failures within ``window_s`` seconds (0: no limit).

    >>> now = [0.0]
    >>> throttle = FailureThrottle(limit=2, window_s=60, clock=lambda: now[0])
    >>> throttle.failed("10.0.0.1"); throttle.failed("10.0.0.1")
    >>> throttle.retry_after("10.0.0.1"), throttle.retry_after("10.0.0.2")
    (60, 0)
    >>> now[0] = 61.0
    >>> throttle.retry_after("10.0.0.1")
    0
    """

    def __init__(
        self,
        *,
        limit: int,
        window_s: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str) -> deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        cutoff = self.clock() - self.window_s
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again (0: now)."""
        if self.limit <= 0:
            return 0
        failures = self._recent(client)
        if len(failures) < self.limit:
            return 0
        return max(1, math.ceil(failures[0] + self.window_s - self.clock()))

    def check(self, client: str) -> None:
        """Raise :class:`TooManyRequests` while ``client`` is over the limit."""
        wait = self.retry_after(client)
        if wait:
            raise TooManyRequests(
                f"too many failed token attempts from this address; try again in {wait} s",
                retry_after_s=wait,
            )

    def failed(self, client: str) -> None:
        """Count one failed attempt by ``client``."""
        if self.limit <= 0:
            return
        failures = self._failures.setdefault(client, deque())
        failures.append(self.clock())
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
