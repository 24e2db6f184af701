"""Logs a person can follow a saga by: every line written while a step runs (by its body, the engine or a
library) carries the saga id, type, step, mode, attempt and tenant; `SAGA_LOG_FORMAT=json` writes JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger

FIELDS = ("saga_id", "saga_type", "step", "mode", "attempt", "tenant")
_CURRENT: ContextVar[dict[str, Any] | None] = ContextVar("saga_step", default=None)


@contextmanager
def step_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Tag every log line written inside with `fields` (`tag` adds more as they become known); yields them."""
    current = dict(fields)
    token = _CURRENT.set(current)
    try:
        yield current
    finally:
        _CURRENT.reset(token)


def tag(**fields: Any) -> None:
    """Add fields to the running step's log lines (its attempt and tenant, once claimed)."""
    current = _CURRENT.get()
    if current is not None:
        current.update(fields)


class StepFields(logging.Filter):
    """Puts the running step's fields on each record (as attributes, for any format to use)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_CURRENT.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the step's fields, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "process": record.process,
        }
        line |= {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def install(json_lines: bool) -> None:
    """Tag (and with `json_lines`, format as JSON) the lines of every handler Celery sets up in a worker."""

    def adjust(logger: logging.Logger | None = None, **_: Any) -> None:
        for handler in (logger.handlers if logger else []):
            handler.addFilter(StepFields())
            if json_lines:
                handler.setFormatter(JsonLines())

    after_setup_logger.connect(adjust, weak=False)
    after_setup_task_logger.connect(adjust, weak=False)
