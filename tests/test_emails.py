"""The receipt's SMTP conversation, against a real SMTP server: what the step calls sent, refused or unknown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any
from uuid import uuid4

import pytest
from aiosmtpd.controller import Controller

from saga import StepContext
from tasks.emails import send_confirmation
from tasks.job_posting import JobPosting
from tasks.settings import job_posting_settings
from tests.jobs import posting


class SlowToAccept:
    """Takes a second to answer a message's data, as a busy server may; `in_flight` is set once the data has
    arrived and the sender waits for the answer."""

    def __init__(self) -> None:
        self.accepted = 0
        self.in_flight = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_flight.set()
        await asyncio.sleep(1.0)
        self.accepted += 1
        return "250 Message accepted for delivery"


@pytest.fixture()
def slow_smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowToAccept]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = SlowToAccept()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("SAGA_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SAGA_SMTP_PORT", str(port))
    job_posting_settings.cache_clear()
    try:
        yield handler
    finally:
        controller.stop()
        job_posting_settings.cache_clear()


def _context() -> StepContext[Any]:
    saga_id = uuid4()
    return StepContext(saga_id=saga_id, saga_type="job_posting", step="send_confirmation",
                       input=JobPosting.model_validate(posting()), results={},
                       idempotency_key=f"{saga_id}:send_confirmation", attempt=1,
                       attempt_key=f"{saga_id}:send_confirmation:1")


def test_a_receipt_interrupted_while_the_server_answers_stays_an_interruption(slow_smtp: SlowToAccept) -> None:
    """Celery stops running steps with SIGTERM when its broker connection drops, and billiard turns that into
    SystemExit in the pool process. Mid-send, that must end the attempt with its outcome unknown, never become
    'SMTP refused' (the server's late 250 read as the answer to a QUIT), which pauses a saga whose mail went."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(-(256 - signum))

    answered: list[int] = []

    def terminate_in_flight() -> None:
        """SIGTERM once the server holds the message's data and the sender waits for its answer."""
        if slow_smtp.in_flight.wait(timeout=10):
            answered.append(slow_smtp.accepted)
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminate)
    stopper = threading.Thread(target=terminate_in_flight, daemon=True)
    stopper.start()
    try:
        with pytest.raises(SystemExit):
            send_confirmation(_context())
    finally:
        stopper.join(timeout=15)
        signal.signal(signal.SIGTERM, previous)
    assert answered == [0], "the SIGTERM came before the message reached the server, or after its answer"


def test_a_receipt_the_server_accepts_is_sent(slow_smtp: SlowToAccept) -> None:
    ctx = _context()
    assert send_confirmation(ctx) == {"message_id": f"<{ctx.saga_id}.send_confirmation@example.com>"}
    assert slow_smtp.accepted == 1
