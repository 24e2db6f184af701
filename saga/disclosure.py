"""What a tenant is told of a failure: its kind and its step, never a third party's own words.

The engine records an exception as `Kind: text`, and a third party's text can carry host names, SQL or another
system's internals. The ledger keeps it whole for operators (the CLI on the database, the workers' logs); a
tenant-facing surface (the HTTP API and its console) shows the classified form: the exception's kind, with the
text only where the saga's author wrote it for the client (`PermanentError`, `TransientError`, `NeedsInput`'s
reason) or the engine did (which step, "cancelled", "attempts ended without an outcome").
"""

from __future__ import annotations

import re
from typing import Any

# An error as the engine records an exception: its class name, then its text.
_EXCEPTION = re.compile(r"(?P<kind>[A-Za-z_][A-Za-z0-9_]*): (?P<text>.*)", re.DOTALL)
# Exceptions whose words the saga's author (PermanentError, TransientError) or the engine and Celery (a value that
# cannot be stored, a time limit) wrote: nothing of a third party's in them.
SHOWN = frozenset({"PermanentError", "TransientError", "Unstorable", "SoftTimeLimitExceeded", "TimeLimitExceeded"})
# Where a saga's reason quotes a step's error (`compensation.react` and `compensation.finish` write these).
_QUOTED = re.compile(r"(step \S+ failed: |compensation of \S+ gave up: )")
WITHHELD = "details withheld; operators see them in the logs and the CLI"


def classified(error: str | None) -> str | None:
    """A step's error as a tenant sees it: `Kind (details withheld...)`, or whole where nothing is withheld."""
    if error is None:
        return None
    match = _EXCEPTION.fullmatch(error)
    if match is None or match["kind"] in SHOWN:
        return error
    return f"{match['kind']} ({WITHHELD})"


def classified_reason(reason: str | None) -> str | None:
    """A saga's reason (which quotes the errors of the steps that failed) as a tenant sees it."""
    if reason is None:
        return None
    parts = _QUOTED.split(reason)  # [before, quote, error, quote, error, ...]
    for i in range(2, len(parts), 2):
        error, sep, _ = parts[i].rpartition("; ") if i + 1 < len(parts) else (parts[i], "", "")
        parts[i] = f"{classified(error)}{sep}"
    return "".join(parts)


def saga_for_tenant(saga: dict[str, Any]) -> dict[str, Any]:
    """A saga's JSON (`SagaRecord.to_dict()`) with its errors classified."""
    return saga | {"error": classified_reason(saga["error"]),
                   "steps": [step | {"error": classified(step["error"])} for step in saga["steps"]]}


def event_for_tenant(event: dict[str, Any]) -> dict[str, Any]:
    """An audit event's JSON (`Event.to_dict()`) with the errors in its detail classified."""
    detail = event["detail"]
    if not isinstance(detail, dict) or not ({"error", "reason"} & detail.keys()):
        return event
    shown = dict(detail)
    if isinstance(shown.get("error"), str):
        shown["error"] = classified(shown["error"])
    if isinstance(shown.get("reason"), str):
        shown["reason"] = classified_reason(shown["reason"])
    return event | {"detail": shown}
