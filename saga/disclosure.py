"""How the engine words a failure, and what a tenant is told of it: its kind and its step, never a third party's
own words.

The engine records an exception as `Kind: text`, followed by each exception it was raised from
(`raise PermanentError("card declined") from stripe_error`) as `\ncaused by Kind: text`. A third party's text can
carry host names, SQL or another system's internals. The ledger keeps it whole for operators (the CLI on the
database, the workers' logs); a tenant-facing surface (the HTTP API and its console) shows the classified form: the
exception's kind, with its text only where the saga's author wrote it for the client (the message of a
`PermanentError` or `TransientError`, never its cause; `NeedsInput`'s reason) or the engine did (which step,
"cancelled", "attempts ended without an outcome").

A saga's reason quotes step errors in one of two forms, both written here and parsed here: `step X failed: <error>`
(the whole rest is the error), or `[rewind to X: ]compensation of A gave up: <error>` with one line per step that
gave up, where an error's own line breaks are followed by two spaces, so that no error can start a line of its own.
"""

from __future__ import annotations

import re
from typing import Any

# An error as the engine records an exception: its class name, then its text.
_EXCEPTION = re.compile(r"(?P<kind>[A-Za-z_][A-Za-z0-9_]*): (?P<text>.*)", re.DOTALL)
# Exceptions whose words the saga's author (PermanentError, TransientError) or the engine and Celery (a value that
# cannot be stored, a time limit) wrote: nothing of a third party's in them.
SHOWN = frozenset({"PermanentError", "TransientError", "Unstorable", "SoftTimeLimitExceeded", "TimeLimitExceeded"})
# Between an exception and the one it was raised from: everything after it is for operators only.
CAUSE = "\ncaused by "
# How many causes deep the engine records (a chain can loop).
_MAX_CAUSES = 8
# The saga reasons that quote step errors (see the module's docstring); step names are Python identifiers.
_STEP_FAILED = re.compile(r"step (?P<step>\S+) failed: (?P<error>.*)", re.DOTALL)
_REWIND = re.compile(r"rewind to (?P<step>\S+): (?P<rest>.*)", re.DOTALL)
_GAVE_UP = re.compile(r"compensation of (?P<step>\S+) gave up: (?P<error>.*)", re.DOTALL)
_CONTINUED = "\n  "
_NEXT_STEP = re.compile(r"\n(?!  )")
WITHHELD = "details withheld; operators see them in the logs and the CLI"


def as_recorded(exc: BaseException) -> str:
    """An exception as the engine records it: `Kind: text`, then `\ncaused by Kind: text` for each exception it
    was raised from (`raise ... from cause`), the third party's text a tenant never sees."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) <= _MAX_CAUSES:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__
    return CAUSE.join(parts)


def step_failed(step: str, error: str) -> str:
    """A saga's reason when its forward step `step` failed with `error` (as recorded)."""
    return f"step {step} failed: {error}"


def gave_up(stuck: list[tuple[str, str]], rewind_to: str | None) -> str:
    """A saga's reason when the compensations of `stuck` ((step, error as recorded), in order) gave up, during a
    rewind to `rewind_to` if any: one line per step, an error's own line breaks indented."""
    lines = [f"compensation of {step} gave up: {error.replace(chr(10), _CONTINUED)}" for step, error in stuck]
    return (f"rewind to {rewind_to}: " if rewind_to else "") + "\n".join(lines)


def classified(error: str | None) -> str | None:
    """A step's error as a tenant sees it: `Kind (details withheld...)`, or the author's or engine's words
    without the causes they were raised from."""
    if error is None:
        return None
    shown = error.partition(CAUSE)[0]  # a message that holds the marker itself loses more, never less
    match = _EXCEPTION.fullmatch(shown)
    if match is None or match["kind"] in SHOWN:
        return shown
    return f"{match['kind']} ({WITHHELD})"


def classified_reason(reason: str | None) -> str | None:
    """A saga's reason (which may quote the errors of the steps that failed) as a tenant sees it. Only the forms
    the engine writes are parsed, from their start: a step error's own text never counts as a separator."""
    if reason is None:
        return None
    if failed := _STEP_FAILED.fullmatch(reason):
        return step_failed(failed["step"], str(classified(failed["error"])))
    rewind = _REWIND.fullmatch(reason)
    lines = _NEXT_STEP.split(rewind["rest"] if rewind else reason)
    stuck = [_GAVE_UP.fullmatch(line) for line in lines]
    if all(stuck):
        return gave_up([(m["step"], str(classified(m["error"].replace(_CONTINUED, "\n")))) for m in stuck if m],
                       rewind["step"] if rewind else None)
    if rewind or any(stuck):
        return f"({WITHHELD})"  # not a form the engine writes: nothing of it is shown
    return reason  # the engine's own words: "cancelled", "no input for step X by <when>: <the author's reason>"


def saga_for_tenant(saga: dict[str, Any]) -> dict[str, Any]:
    """A saga's JSON (`SagaRecord.to_dict()`) with its errors classified."""
    return saga | {"error": classified_reason(saga["error"]),
                   "steps": [step | {"error": classified(step["error"])} for step in saga["steps"]]}


def event_for_tenant(event: dict[str, Any], tenant: str) -> dict[str, Any]:
    """An audit event's JSON (`Event.to_dict()`) as `tenant` sees it: the errors in its detail classified, and who
    asked (`by`) named only when it was one of the tenant's own keys; anyone else is an operator, whose login and
    host stay with the operators."""
    detail = event["detail"]
    if not isinstance(detail, dict) or not ({"error", "reason", "by"} & detail.keys()):
        return event
    shown = dict(detail)
    if isinstance(shown.get("error"), str):
        shown["error"] = classified(shown["error"])
    if isinstance(shown.get("reason"), str):
        shown["reason"] = classified_reason(shown["reason"])
    if "by" in shown:
        by = shown["by"]
        ours = isinstance(by, dict) and by.get("via") == "api" and by.get("tenant") == tenant
        shown["by"] = {k: by[k] for k in ("via", "tenant", "key") if k in by} if ours else OPERATOR
    return event | {"detail": shown}


# Who asked, as a tenant is told of anyone but its own keys.
OPERATOR: dict[str, str] = {"via": "operator"}
