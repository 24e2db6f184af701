"""Waking long polls and event streams when a saga changes, with one query per tick for all of them.

Every transition of a saga bumps its `updated_at`; the watcher reads `updated_at` of every saga somebody
waits on, every `interval` seconds, in one query, and wakes the waiters whose saga moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from uuid import UUID

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from saga import db
from saga.ledger import sagas

log = logging.getLogger("api.watch")


class ChangeWatcher:
    """Lets requests wait for a saga's `updated_at` to move past the value they saw."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._waiting: dict[UUID, set[tuple[datetime, asyncio.Future[None]]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def changed(self, saga_id: UUID, seen: datetime, timeout: float) -> bool:
        """True once the saga's `updated_at` differs from `seen`; False if `timeout` seconds pass first."""
        self._ensure_running()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (seen, future)
        self._waiting.setdefault(saga_id, set()).add(entry)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiting.get(saga_id)
            if waiters is not None:
                waiters.discard(entry)
                if not waiters:
                    del self._waiting[saga_id]

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="saga-change-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._waiting:
                continue
            try:
                current = await run_in_threadpool(_updated_at, list(self._waiting))
            except Exception:  # a database hiccup only delays the waiters
                log.warning("could not read saga versions; retrying", exc_info=True)
                continue
            for saga_id, updated_at in current.items():
                for seen, future in list(self._waiting.get(saga_id, ())):
                    if updated_at != seen and not future.done():
                        future.set_result(None)


def _updated_at(ids: list[UUID]) -> dict[UUID, datetime]:
    with db.transaction() as conn:
        rows = conn.execute(select(sagas.c.id, sagas.c.updated_at).where(sagas.c.id.in_(ids)))
        return {row.id: row.updated_at for row in rows}
