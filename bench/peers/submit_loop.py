"""The submitter's side of the drivers' protocol (bench/peers/drivers.py), shared by the peer scripts, each run in
its own virtual environment with this directory on its path: one JSON command a line on stdin, one JSON answer a
line on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def serve(submit: Callable[[str, int, int], None], status: Callable[[str], dict[str, int]]) -> None:
    """Answer commands until `quit` or the end of stdin: `submit` (run_id, n, first) enqueues n units numbered from
    `first`; `status` (run_id) counts the run's units by the peer's own status."""
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        answer: dict[str, Any]
        if command["cmd"] == "submit":
            submit(command["run_id"], command.get("first", 0), command["n"])
            answer = {"submitted": command["n"]}
        elif command["cmd"] == "status":
            answer = status(command["run_id"])
        else:
            answer = {"error": f"unknown command {command['cmd']!r}"}
        print(json.dumps(answer), flush=True)
