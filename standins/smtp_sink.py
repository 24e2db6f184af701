"""An SMTP server for tests and `make run` that accepts every message and keeps it in a Maildir.

The product reaches it only through smtplib at `SAGA_SMTP_HOST`:`SAGA_SMTP_PORT`. Each message is stored as
received, with `X-Envelope-From` / `X-Envelope-To` headers added in front (what the SMTP envelope said,
which can differ from the `To` header, e.g. for Bcc) and `X-Sink-Received-At` (when the sink accepted it, in
seconds since the epoch), one file per delivery: a message sent twice is kept twice. `read_messages` lists what
arrived.

Run: python -m standins.smtp_sink --port P --maildir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import mailbox
import signal
import time
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class MaildirHandler:
    """aiosmtpd handler: every accepted message goes into the Maildir (written atomically: tmp/ then new/)."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        trace = (f"X-Envelope-From: {envelope.mail_from}\r\n"
                 f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
                 f"X-Sink-Received-At: {time.time():.6f}\r\n").encode()
        self.maildir.add(trace + content)
        return "250 Message accepted for delivery"


def _reading_policy() -> email.policy.EmailPolicy[EmailMessage]:
    # The default policy parses Message-ID strictly and cuts "<a:b@c>" (':' is not allowed there) to "<a";
    # tests must see what was actually sent.
    registry = HeaderRegistry()
    registry.map_to_type("message-id", UnstructuredHeader)  # type: ignore[arg-type]
    return email.policy.default.clone(header_factory=registry)


def read_messages(maildir: Path | str) -> list[EmailMessage]:
    """Every message the sink has stored, oldest first, headers exactly as received."""
    if not Path(maildir).exists():
        return []
    box = mailbox.Maildir(maildir, create=False)
    parser = BytesParser(policy=_reading_policy())
    messages = [parser.parsebytes(box.get_bytes(k)) for k in box.iterkeys()]
    return sorted(messages, key=received_at)


def received_at(message: EmailMessage) -> float:
    """When the sink accepted `message` (seconds since the epoch)."""
    return float(message["X-Sink-Received-At"] or 0)


async def serve(host: str, port: int, maildir: Path) -> None:
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="smtp-sink.local"), host, port,
                                      reuse_address=True)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    print(f"smtp sink ready on {host}:{port}, storing in {maildir}", flush=True)
    await stopped.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SMTP sink storing every message in a Maildir")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--maildir", type=Path, required=True)
    args: Any = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.maildir))


if __name__ == "__main__":
    main()
