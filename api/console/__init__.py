"""The saga console at `/ui`: one page and its script, which read and act through the `/v1` API with a key the
person enters once (kept in the browser tab's session storage). No build step, nothing from the internet."""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from workers.settings import service_settings

HERE = Path(__file__).parent


def install(app: FastAPI) -> None:
    """Serve the console's page at `/ui` and its script and styles under `/ui/assets`."""
    flower = html.escape(service_settings().flower_url or "", quote=True)
    page = (HERE / "index.html").read_text().replace("{flower}", flower)
    app.mount("/ui/assets", StaticFiles(directory=HERE / "assets"), name="console-assets")

    @app.get("/ui", include_in_schema=False)
    async def console() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "X-Frame-Options": "DENY"})


# Only this origin's script and styles may run; no inline script, no framing.
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
