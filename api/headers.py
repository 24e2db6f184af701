"""Headers on every answer: browsers never guess a content type, and nothing the API says is cached.

The console's and the docs' static files may be cached (they change only with a release); everything else (saga
data, errors, OpenAPI, metrics) is `no-store`, since a shared cache or a browser must not keep a tenant's sagas.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths whose answers are static files, cacheable by whoever fetches them.
STATIC_PREFIXES = ("/ui/assets/", "/docs-assets/")


class SecurityHeaders:
    """ASGI middleware adding `X-Content-Type-Options: nosniff` everywhere and `Cache-Control: no-store` to every
    answer but static files (a route that sets its own `Cache-Control` keeps it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(STATIC_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if not static and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
