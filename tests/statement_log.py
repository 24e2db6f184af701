"""Loaded by a test's worker (`--include tests.statement_log`): every SQL statement a pool process sends that
touches the ledger's tables is appended to the file `SAGA_STATEMENT_LOG` names, with the step it ran for (from the
engine's log context), so a test can count what each step costs the ledger. Transaction control (BEGIN, COMMIT)
is not a statement here: psycopg sends it without a cursor."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import psycopg

from saga import logs

LOG_ENV = "SAGA_STATEMENT_LOG"
_LEDGER = re.compile(r"(?<![\w])(sagas|saga_steps|saga_events)(?![\w])")


def _install(path: str) -> None:
    execute = psycopg.Cursor.execute

    def counted(self: psycopg.Cursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        sql = query if isinstance(query, str) else str(query)
        if _LEDGER.search(sql):
            fields = logs._CURRENT.get() or {}
            line = {"pid": os.getpid(), "saga_id": fields.get("saga_id"), "step": fields.get("step"),
                    "mode": fields.get("mode"), "sql": " ".join(sql.split())[:120]}
            with open(path, "a") as out:
                out.write(json.dumps(line) + "\n")
        return execute(self, query, *args, **kwargs)

    psycopg.Cursor.execute = counted  # type: ignore[method-assign]


if os.environ.get(LOG_ENV):
    _install(os.environ[LOG_ENV])
