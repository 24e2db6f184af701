"""Child processes (workers, beat, servers) for tests and local stacks: each in its own process group, logging
to a file, so one signal reaches a worker and its pool children."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when the thread that started it dies (Linux; elsewhere
    nothing). Children get SIGKILL before exec, so a supervisor or test killed outright leaves no worker
    behind (and a worker's pool children die with it)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, sig)


@dataclass
class Process:
    """A worker, beat or other service process, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def spawn(cls, name: str, argv: list[str], env: dict[str, str], log_dir: Path,
              cwd: Path | None = None) -> Process:
        """Start `argv` (in `cwd`, default this process's) with `env` added to this process's environment."""
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent)  # noqa: PLW1509 - one prctl, no locks
        return cls(name, popen, log)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def send(self, sig: int) -> None:
        """Signal the whole process group (a worker's main process and its pool children)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group and wait for it to exit."""
        self.send(sig)
        self.popen.wait(timeout=30)

    def stop(self, timeout: float = 15) -> None:
        """Ask politely (SIGTERM: a worker finishes its current steps), then SIGKILL."""
        if not self.alive():
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


def stop_all(processes: Iterable[Process], grace: float = 2.0) -> None:
    """SIGTERM every process group at once, then SIGKILL whatever still runs after `grace` seconds."""
    running = [p for p in processes if p.alive()]
    for process in running:
        process.send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(p.alive() for p in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in running:
        if process.alive():
            process.kill()
