"""Serving the API with uvicorn in this process (`python -m service api`)."""

from __future__ import annotations

import uvicorn


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, access_log: bool = True,
          log_level: str = "info") -> None:
    """Run the API until interrupted; `workers` > 1 starts that many processes on one socket."""
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers,
                access_log=access_log, log_level=log_level.lower(), proxy_headers=False,
                timeout_graceful_shutdown=5)
