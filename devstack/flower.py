"""Flower under `make run`: on 127.0.0.1 only, its pages and API behind basic auth with a password made for the data
directory. Whoever reaches Flower can send any task to the workers, so it never runs open."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from saga.testing.processes import Process

USER = "flower"
PASSWORD_FILE = "flower-password"


def password(path: Path) -> str:
    """The password kept in `path` (mode 0600), made the first time, so a browser that saved it keeps working."""
    if path.exists():
        kept = path.read_text().strip()
        if kept:
            path.chmod(0o600)
            return kept
    made = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(made + "\n")
    return made


def spawn(env: dict[str, str], logs: Path, port: int, secret: str, cwd: Path) -> Process:
    """`python -m service flower` on 127.0.0.1:`port`, user `USER` with password `secret`; an open API is refused
    even if the caller's environment asks for one."""
    return Process.spawn("flower", [sys.executable, "-m", "service", "flower", f"--port={port}",
                                    "--address=127.0.0.1"],
                         {**env, "FLOWER_BASIC_AUTH": f"{USER}:{secret}", "FLOWER_UNAUTHENTICATED_API": "false"},
                         logs, cwd=cwd)
