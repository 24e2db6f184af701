"""Limits on requests that stay open (event streams and long polls): per tenant, in all, and in time.

An open request costs a connection and a waiter, not a query; still, one key must not hold thousands, and a stream
must not outlive its key. `StreamSlots.take` refuses the request over a cap with 429 before anything is sent.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable

from api.errors import ApiError
from api.metrics import OPEN_STREAMS


class Slot:
    """One open request's place; given back once, by whichever comes first: its end or its garbage collection."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def give_back(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def outlive(self, owner: object) -> None:
        """Give the slot back when `owner` (a stream's generator, which may never start) is collected."""
        weakref.finalize(owner, self.give_back)


class StreamSlots:
    """Counts open streams and long polls by tenant, and refuses one over `per_tenant` or `total`."""

    def __init__(self, per_tenant: int, total: int) -> None:
        self.per_tenant = per_tenant
        self.total = total
        self._open: Counter[str] = Counter()

    def take(self, tenant: str, kind: str) -> Slot:
        """A slot for one more open request of `tenant`, or 429 naming the cap it would pass."""
        if self._open[tenant] >= self.per_tenant:
            raise ApiError(429, "too_many_requests", f"this tenant already has {self.per_tenant} streams and long "
                           "polls open, the most allowed; close one or poll without `wait`",
                           headers={"Retry-After": "5"})
        if sum(self._open.values()) >= self.total:
            raise ApiError(429, "too_many_requests", f"the API already holds {self.total} streams and long polls "
                           "open, the most it allows; try again shortly", headers={"Retry-After": "5"})
        self._open[tenant] += 1
        OPEN_STREAMS.labels(kind).inc()

        def release() -> None:
            self._open[tenant] -= 1
            if self._open[tenant] <= 0:
                del self._open[tenant]
            OPEN_STREAMS.labels(kind).dec()

        return Slot(release)
