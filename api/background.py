"""The API's own background reads (the stored keys, the health of its dependencies), on a thread and a database
connection of their own: busy routes, which may hold every thread of FastAPI's pool and every pooled connection
(a locked table, a slow query), never delay a key's revocation or a health check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TypeVar

from anyio import CapacityLimiter, to_thread
from sqlalchemy import Connection, Engine, create_engine

from saga.settings import get_settings

T = TypeVar("T")

# Seconds a background read waits for its connection before it counts as failed.
CONNECTION_WAIT = 2.0


@lru_cache(maxsize=1)
def _engine() -> Engine:
    return create_engine(get_settings().database_url, pool_size=1, max_overflow=1, pool_timeout=CONNECTION_WAIT,
                         pool_pre_ping=True, connect_args={"connect_timeout": 5})


@contextmanager
def transaction() -> Iterator[Connection]:
    """A connection of the background reads, in one transaction."""
    with _engine().begin() as conn:
        yield conn


class Thread:
    """One worker thread of its own for a kind of background read (made in the event loop, on first use)."""

    def __init__(self) -> None:
        self._limiter: CapacityLimiter | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        if self._limiter is None:
            self._limiter = CapacityLimiter(1)
        return await to_thread.run_sync(fn, limiter=self._limiter)
