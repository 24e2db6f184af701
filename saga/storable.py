"""What the ledger can store: JSON that PostgreSQL's jsonb accepts."""

from __future__ import annotations

import math
import re
from typing import Any

# What PostgreSQL cannot keep in text or jsonb: NUL characters and halves of surrogate pairs.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAX_DEPTH = 32


class Unstorable(ValueError):
    """A value the ledger cannot store; `path` names the part of it that is wrong (e.g. `title`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'value'} {problem}")
        self.path = path


def storable(value: Any) -> Any:
    """`value`, or Unstorable naming the first part of it the ledger could not store: a string (key or value)
    with a NUL character or half a surrogate pair, a number that is not finite, or nesting past MAX_DEPTH."""
    pending: list[tuple[Any, str, int]] = [(value, "", 0)]
    while pending:
        item, path, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise Unstorable(path, f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                raise Unstorable(path, "holds a NUL character or an unpaired surrogate")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Unstorable(path, "is not a finite number")
        elif isinstance(item, dict):
            for key, inner in item.items():
                pending.append((key, f"{path}[key {key!r}]", depth + 1))
                pending.append((inner, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(item, (list, tuple)):
            pending.extend((inner, f"{path}.{index}", depth + 1) for index, inner in enumerate(item))
    return value
