"""Local stand-ins for the job-posting saga's third parties: Stripe, S3 and SMTP, each a child process.

Tests and `make run` start them with `start_standins(data_dir)` and give workers `StandIns.env`; the product
then reaches them through its normal clients (the `stripe` SDK, boto3, smtplib) and nothing else.
"""

from __future__ import annotations

import json
import smtplib
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self

from saga.testing.processes import Process
from standins.smtp_sink import read_messages, received_at

__all__ = ["DUMMY_CREDENTIALS", "StandIns", "free_port", "read_messages", "received_at", "start_standins"]

HOST = "127.0.0.1"
# moto accepts any credentials; boto3 only needs some to sign with.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class StandIns:
    """The three running stand-ins: where they listen, the environment pointing workers at them, and
    switches and views for tests."""

    data_dir: Path
    stripe_api_base: str
    s3_endpoint_url: str
    smtp_host: str
    smtp_port: int
    maildir: Path
    bucket: str
    processes: dict[str, Process] = field(default_factory=dict, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """Settings for worker processes (and anything else using the product's clients)."""
        return {
            "STRIPE_API_BASE": self.stripe_api_base,
            "STRIPE_API_KEY": "sk_test_local",
            "SAGA_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "SAGA_S3_BUCKET": self.bucket,
            "SAGA_SMTP_HOST": self.smtp_host,
            "SAGA_SMTP_PORT": str(self.smtp_port),
            "SAGA_MAIL_FROM": "jobs@example.com",  # any sender: the sink keeps every message
            **DUMMY_CREDENTIALS,
        }

    # Lifecycle

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=5)

    def stop_smtp(self) -> None:
        """Take email down (connections are refused) until `start_smtp`."""
        self.processes["smtp"].stop(timeout=5)

    def start_smtp(self) -> None:
        """Bring email back on the same port, with the same Maildir."""
        if not self.processes["smtp"].alive():
            self.processes["smtp"] = _spawn_smtp(self.data_dir, self.smtp_port, self.maildir)
            _wait_ready(self.processes["smtp"], lambda: _smtp_answers(self.smtp_port))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # Stripe

    def stripe_faults(self, mode: str, count: int, seconds: float = 0, operation: str | None = None, *,
                      code: str | None = None, add: bool = False, for_seconds: float | None = None) -> None:
        """Make the next `count` Stripe /v1 requests (of `operation` only, e.g. "confirm", if given) fail, or with
        `for_seconds` every such request for that long (an outage): "400" (refused with error `code`), "429",
        "500", "hang" (hold `seconds`, then do it: it completes after the client gave up) or "lost" (do it, then
        hold the answer `seconds`). Replaces the faults set before, unless `add`."""
        self._stripe("POST", "/_control/faults", {"mode": mode, "count": count, "seconds": seconds,
                                                   "operation": operation, "code": code, "add": add,
                                                   "for_seconds": for_seconds})

    def stripe_expire_keys(self) -> int:
        """Forget every stored idempotency key, as Stripe does 24 hours after a key's first use."""
        return int(self._stripe("POST", "/_control/expire_keys", {})["expired"])

    def stripe_reset(self) -> None:
        """Forget every Stripe record, idempotency key, fault and logged request."""
        self._stripe("POST", "/_control/reset", {})

    def payment_intents(self) -> list[dict[str, Any]]:
        """Every PaymentIntent the Stripe stand-in holds, oldest first."""
        return list(self._stripe("GET", "/_control/state")["payment_intents"])

    def refunds(self) -> list[dict[str, Any]]:
        """Every refund the Stripe stand-in holds, oldest first."""
        return list(self._stripe("GET", "/_control/state")["refunds"])

    def charges(self) -> list[dict[str, Any]]:
        """Every charge (an attempt to take money) the Stripe stand-in holds, oldest first."""
        return list(self._stripe("GET", "/_control/state")["charges"])

    def stripe_requests(self) -> list[dict[str, Any]]:
        """Every /v1 request the Stripe stand-in received since start or reset: method, path, operation,
        idempotency_key, status, replayed, fault, at and done_at (when it arrived and when it was done)."""
        return list(self._stripe("GET", "/_control/requests")["requests"])

    def _stripe(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.stripe_api_base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result

    # S3 and email

    def s3_keys(self) -> list[str]:
        """Every object key in the bucket."""
        import boto3

        creds = DUMMY_CREDENTIALS
        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint_url, region_name=creds["AWS_DEFAULT_REGION"],
                          aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def s3_requests(self) -> list[dict[str, Any]]:
        """Every request the S3 stand-in served since it started, oldest first: method, operation (PutObject,
        DeleteObject, ...), bucket, key, query, status, at and done_at (see standins.s3_server)."""
        with urllib.request.urlopen(self.s3_endpoint_url + "/_control/requests", timeout=10) as response:
            return list(json.load(response)["requests"])

    def s3_puts(self, key_part: str) -> list[dict[str, Any]]:
        """Every PutObject the S3 stand-in served (answered 2xx) for a key containing `key_part`, oldest first:
        each upload counts, also one that overwrote the same key."""
        return [r for r in self.s3_requests() if r["operation"] == "PutObject" and key_part in (r["key"] or "")
                and 200 <= r.get("status", 0) < 300]

    def messages(self) -> list[EmailMessage]:
        """Every email the sink received, oldest first: one per delivery, so a message sent twice is there twice."""
        return read_messages(self.maildir)

    def deliveries(self, id_part: str = "") -> list[tuple[str, float]]:
        """(Message-ID, when the sink accepted it) of every delivery whose Message-ID contains `id_part`, oldest
        first; a Message-ID delivered twice is there twice."""
        return [(m["Message-ID"] or "", received_at(m)) for m in self.messages()
                if id_part in (m["Message-ID"] or "")]


def start_standins(data_dir: Path, bucket: str = "saga-logos") -> StandIns:
    """Start Stripe, S3 and SMTP stand-ins on free ports of 127.0.0.1 (logs and Stripe state in
    `data_dir`), wait until each answers, and return them. Stripe records persist in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stripe_port, s3_port, smtp_port = free_port(), free_port(), free_port()
    maildir = data_dir / "maildir"
    py = sys.executable
    processes = {
        "stripe": Process.spawn("stripe", [py, "-m", "standins.stripe_server", "--port", str(stripe_port),
                                           "--state", str(data_dir / "stripe-state.jsonl")], {}, data_dir),
        "s3": Process.spawn("s3", [py, "-m", "standins.s3_server", "--port", str(s3_port), "--bucket", bucket],
                            dict(DUMMY_CREDENTIALS), data_dir),
        "smtp": _spawn_smtp(data_dir, smtp_port, maildir),
    }
    standins = StandIns(data_dir, f"http://{HOST}:{stripe_port}", f"http://{HOST}:{s3_port}", HOST, smtp_port,
                        maildir, bucket, processes)
    try:
        _wait_ready(processes["stripe"], lambda: _http_answers(standins.stripe_api_base + "/_control/state"))
        _wait_ready(processes["smtp"], lambda: _smtp_answers(smtp_port))
        _wait_ready(processes["s3"], lambda: _http_answers(f"{standins.s3_endpoint_url}/{bucket}"))
    except BaseException:
        standins.stop()
        raise
    return standins


def _spawn_smtp(data_dir: Path, port: int, maildir: Path) -> Process:
    return Process.spawn("smtp", [sys.executable, "-m", "standins.smtp_sink", "--port", str(port),
                                  "--maildir", str(maildir)], {}, data_dir)


def _wait_ready(process: Process, answers: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not answers():
        if not process.alive():
            raise RuntimeError(f"{process.name} stand-in exited at start:\n{process.log_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} stand-in did not answer in {START_TIMEOUT:.0f}s "
                               f"(log: {process.log})")
        time.sleep(0.05)


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _smtp_answers(port: int) -> bool:
    try:
        with smtplib.SMTP(HOST, port, timeout=1) as smtp:
            return smtp.noop()[0] == 250
    except OSError:
        return False
