"""The engine's own Celery tasks: the chains' errback, the end of compensation, and recovery."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from saga import compensation, recovery
from saga.dispatch import FINISH_COMPENSATION, ON_ERROR, RECOVER

log = logging.getLogger("saga.engine_tasks")


def register(app: Any) -> None:
    """Register the engine's tasks on `app` (registering them again is harmless)."""

    @app.task(name=ON_ERROR, shared=False)
    def on_error(request: Any, exc: BaseException, traceback: str, saga_id: str) -> None:
        """Errback of every chain; Celery calls it inline in the failing process, possibly twice."""
        if list(request.args or ()) != [saga_id]:  # a message about another saga (or none) says nothing of this one
            log.warning("saga %s: errback of task %s %s whose arguments %r name another saga; ignored", saga_id,
                        request.task, request.id, request.args)
            return
        compensation.on_error(UUID(saga_id), request.task, request.id, exc, request.kwargs or {})

    @app.task(name=FINISH_COMPENSATION, shared=False)
    def finish_compensation(saga_id: str) -> None:
        """Last link of a compensation chain: settles the saga as `compensated` or `failed`."""
        compensation.finish(UUID(saga_id))

    @app.task(name=RECOVER, shared=False)
    def recover() -> int:
        """Run by beat: wakes sagas whose progress deadline passed."""
        return recovery.run_once()
