"""Refusing request bodies over a size limit with 413, before anything parses them."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

# A job posting carries a logo of at most 1 MiB, which base64 makes about 1.4 MiB.
DEFAULT_MAX_BODY = 2 * 1024 * 1024


class BodySizeLimit:
    """ASGI middleware: a declared `Content-Length` over the limit is refused at once; a streamed body is
    counted as it arrives and refused as soon as it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            too_large = declared.isdigit()
            response = error_response(
                413 if too_large else 400, "payload_too_large" if too_large else "bad_request",
                f"request body over {self.max_bytes} bytes" if too_large else "bad Content-Length header")
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, counted, send)
