"""An HTTP server on this machine that webhooks are delivered to in the tests: it records every request."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # 0 until answered
    sent: int = 0  # bytes of the answer's body the sender took before it stopped reading

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on this machine that records every request and answers what `answer()` says."""

    answer: Callable[[], int] = lambda: 200
    headers: dict[str, str] = field(default_factory=dict)  # sent with every answer
    reply: bytes = b"ok"  # the body of every answer
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks?from=test"

    def delivered(self) -> list[Received]:
        """The requests it answered 2xx, in the order they came."""
        return [r for r in list(self.requests) if 200 <= r.status < 300]

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received = Received({k.lower(): v for k, v in self.headers.items()}, body, status=0)
                receiver.requests.append(received)  # as it comes; its status once answered
                status = received.status = receiver.answer()
                try:
                    self.send_response(status)
                    for name, value in receiver.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(receiver.reply)))
                    self.end_headers()
                    for at in range(0, len(receiver.reply), CHUNK):
                        self.wfile.write(receiver.reply[at:at + CHUNK])
                        received.sent = at + CHUNK
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender is gone: it stopped reading, or a test killed it mid-delivery

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
