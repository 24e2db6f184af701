"""The HTTP API as a child process (`python -m service dev`, tests, the benchmark), returned once it answers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from saga.testing.processes import Process

ROOT = Path(__file__).resolve().parent.parent


def spawn(name: str, env: dict[str, str], log_dir: Path, host: str = "127.0.0.1", port: int = 8000,
          extra: tuple[str, ...] = (), timeout: float = 60.0) -> Process:
    """Start `python -m service api` as a child process in its own process group; returns once it answers HTTP."""
    argv = [sys.executable, "-m", "service", "api", "--host", host, "--port", str(port), *extra]
    process = Process.spawn(name, argv, env, log_dir, cwd=ROOT)
    url = f"http://{host}:{port}/healthz"
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise RuntimeError(f"API {name} exited: {process.log_text()[-2000:]}")
        try:
            httpx.get(url, timeout=5)  # any answer, even 503 (a dependency down), means it serves
            return process
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.stop()
                raise TimeoutError(f"API {name} did not answer on {url} within {timeout:.0f}s") from None
            time.sleep(0.1)
