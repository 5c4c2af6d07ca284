"""A circuit breaker for a dependency that stops answering: fail fast instead of queueing.

A Redis that is stopped (SIGSTOP, a failover, a full network buffer) accepts connections and
answers nothing: every read waits out the client's timeout (50 ms). At 200 calls a second,
that is ten reads waiting at any moment, more than the threads that carry them, so calls queue
behind the waits and miss their deadlines although each would have been answered, degraded,
50 ms later. The breaker turns the first failure into a short pause of the dependency:
`cooldown_s` during which callers are told at once that it is unavailable (they degrade, as
they would after the timeout), then one probe call at a time goes through; its success
closes the breaker, its failure starts another pause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

COOLDOWN_S = 1.0


class Breaker:
    """Closed (calls go through) until `failed()`; then open for `cooldown_s`, then
    half-open: one probe at a time goes through, the others are refused until it returns.
    Safe from several threads (the stores are called on threads and on the event loop)."""

    def __init__(self, name: str, cooldown_s: float = COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.trips = 0
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._open_until is None

    @property
    def paused(self) -> bool:
        """Open and within its cooldown: a call that was let through earlier and waited (on
        a thread's queue) should not go to the dependency now either."""
        until = self._open_until
        return until is not None and self.clock() < until

    def allow(self) -> bool:
        """Whether a call may go to the dependency now (False: answer without it)."""
        if self._open_until is None:  # the usual case: no lock taken
            return True
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or self.clock() < self._open_until:
                return False
            self._probing = True
            return True

    def succeeded(self) -> None:
        if self._open_until is None:
            return
        with self._lock:
            if self._open_until is not None:
                log.warning("%s answers again: calls go to it", self.name)
            self._open_until = None
            self._probing = False

    def failed(self) -> None:
        with self._lock:
            if self._open_until is None:
                self.trips += 1
                log.warning("%s did not answer: calls answer without it for %.1f s, then one "
                            "at a time probes it", self.name, self.cooldown_s)
            self._open_until = self.clock() + self.cooldown_s
            self._probing = False
