"""Serving the API with uvicorn: in this process (`saga api`), or as a child process (`saga dev`, tests)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import uvicorn

from saga.processes import Process


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, access_log: bool = True,
          log_level: str = "info") -> None:
    """Run the API until interrupted; `workers` > 1 starts that many processes on one socket."""
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers,
                access_log=access_log, log_level=log_level.lower(), proxy_headers=False,
                timeout_graceful_shutdown=5)


def spawn(name: str, env: dict[str, str], log_dir: Path, host: str = "127.0.0.1", port: int = 8000,
          extra: tuple[str, ...] = (), timeout: float = 60.0) -> Process:
    """Start `saga api` as a child process in its own process group; returns once it answers HTTP."""
    argv = [sys.executable, "-m", "saga.cli", "api", "--host", host, "--port", str(port), *extra]
    process = Process.spawn(name, argv, env, log_dir)
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
