"""The receipt's SMTP conversation, against a real SMTP server: what the step calls sent, refused or unknown."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import uuid4

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from saga import ConfigurationError, PermanentError, StepContext, TransientError
from saga.disclosure import as_recorded, classified
from saga.settings import load
from tasks.emails import send_confirmation
from tasks.job_posting import JobPosting
from tasks.settings import JobPostingSettings, job_posting_settings
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


def serve_smtp(monkeypatch: pytest.MonkeyPatch, handler: object, **server: Any) -> Controller:
    """A real SMTP server (aiosmtpd, with `server`'s options) on a free port, which the job posting's settings
    name; every other setting is unset but the required ones."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port, **server)
    controller.start()
    for name in [n for n in os.environ if n.startswith("SAGA_SMTP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SAGA_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SAGA_SMTP_PORT", str(port))
    monkeypatch.setenv("SAGA_MAIL_FROM", "jobs@example.com")
    monkeypatch.setenv("SAGA_S3_BUCKET", "logos")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_emails")
    job_posting_settings.cache_clear()
    return controller


@pytest.fixture()
def slow_smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowToAccept]:
    handler = SlowToAccept()
    controller = serve_smtp(monkeypatch, handler)
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
    a refusal (the server's late 250 read as the answer to a QUIT), which pauses a saga whose mail went."""

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


# STARTTLS: a real server that offers it with a certificate from a CA made here, which SAGA_SMTP_CA_FILE trusts.

@dataclass
class Certificates:
    ca_file: Path  # the CA's certificate, for SAGA_SMTP_CA_FILE
    server: ssl.SSLContext  # the server's side: a certificate for 127.0.0.1 that the CA signed


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("smtp-tls")
    now = datetime.now(UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test mail CA")).issuer_name(_name("test mail CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return Certificates(ca_file=directory / "ca.pem", server=context)


class Recorder:
    """Keeps what reaches the server: each MAIL command and each message, with whether it came over TLS and
    as whom the client had logged in."""

    def __init__(self) -> None:
        self.mail_commands: list[tuple[str, bool]] = []
        self.messages: list[dict[str, Any]] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.mail_commands.append((address, session.ssl is not None))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
        self.messages.append({"tls": session.ssl is not None, "login": login, "to": envelope.rcpt_tos,
                              "data": envelope.content})
        return "250 Message accepted for delivery"


def only_ops(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    """The server's one account: ops / mail-pw."""
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"ops", b"mail-pw")
    return AuthResult(success=ok, auth_data=auth_data.login if ok else None)


@pytest.fixture()
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Recorder]]:
    """Starts a recording SMTP server with the options given; stopped after the test."""
    started: list[Controller] = []

    def start(**server: Any) -> Recorder:
        recorder = Recorder()
        started.append(serve_smtp(monkeypatch, recorder, **server))
        return recorder

    yield start
    for controller in started:
        controller.stop()
    job_posting_settings.cache_clear()


def _configure(monkeypatch: pytest.MonkeyPatch, **settings: str) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(f"SAGA_SMTP_{name.upper()}", value)
    job_posting_settings.cache_clear()


def test_with_starttls_the_receipt_and_the_login_go_only_over_tls(
        smtp: Callable[..., Recorder], certificates: Certificates, monkeypatch: pytest.MonkeyPatch) -> None:
    server = smtp(tls_context=certificates.server, require_starttls=True, auth_required=True,
                  authenticator=only_ops)
    _configure(monkeypatch, starttls="true", ca_file=str(certificates.ca_file), username="ops", password="mail-pw")
    ctx = _context()
    assert send_confirmation(ctx) == {"message_id": f"<{ctx.saga_id}.send_confirmation@example.com>"}
    [message] = server.messages
    assert message["tls"] and message["login"] == "ops" and message["to"] == ["hr@acme.example"], message
    assert f"<{ctx.saga_id}.send_confirmation@example.com>".encode() in message["data"]


def test_with_starttls_a_server_that_does_not_offer_it_is_sent_nothing(
        smtp: Callable[..., Recorder], certificates: Certificates, monkeypatch: pytest.MonkeyPatch) -> None:
    server = smtp()  # plain SMTP: no STARTTLS in its EHLO answer
    _configure(monkeypatch, starttls="true", ca_file=str(certificates.ca_file), username="ops", password="mail-pw")
    with pytest.raises(PermanentError) as refused:
        send_confirmation(_context())
    assert server.mail_commands == [] and server.messages == []
    assert_told(refused.value, "PermanentError: the mail server does not offer STARTTLS: nothing was sent",
                r"MailServerError: SMTP server 127\.0\.0\.1:\d+ does not offer STARTTLS, which SAGA_SMTP_STARTTLS requires")


def test_with_starttls_a_certificate_the_ca_file_does_not_vouch_for_is_sent_nothing(
        smtp: Callable[..., Recorder], certificates: Certificates, monkeypatch: pytest.MonkeyPatch) -> None:
    server = smtp(tls_context=certificates.server)
    _configure(monkeypatch, starttls="true")  # the system's CAs, which never signed the test CA's certificate
    with pytest.raises(PermanentError) as refused:
        send_confirmation(_context())
    assert server.mail_commands == [] and server.messages == []
    assert_told(refused.value, "PermanentError: the mail server's certificate does not verify: nothing was sent",
                r"SMTP server 127\.0\.0\.1:\d+: its certificate does not verify \(.+; SAGA_SMTP_CA_FILE sets the CAs\)")


class Refusing(Recorder):
    """Refuses every message with a reply naming its own host, as real servers do."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "550 5.7.1 relaying denied by mx1.corp.internal for 10.0.0.7"


def test_a_refused_message_tells_the_tenant_the_reply_code_and_operators_the_servers_words(
        monkeypatch: pytest.MonkeyPatch) -> None:
    controller = serve_smtp(monkeypatch, Refusing())
    try:
        with pytest.raises(PermanentError) as refused:
            send_confirmation(_context())
    finally:
        controller.stop()
        job_posting_settings.cache_clear()
    assert_told(refused.value, "PermanentError: the mail server refused the message (550)",
                r"SMTPDataError: \(550, b'5\.7\.1 relaying denied by mx1\.corp\.internal for 10\.0\.0\.7'\)")


def test_an_unreachable_mail_server_tells_the_tenant_so_and_operators_why(monkeypatch: pytest.MonkeyPatch) -> None:
    serve_smtp(monkeypatch, Recorder()).stop()  # its port, with nobody listening any more
    try:
        with pytest.raises(TransientError) as unreachable:
            send_confirmation(_context())
    finally:
        job_posting_settings.cache_clear()
    assert_told(unreachable.value, "TransientError: the mail server is unreachable",
                r"ConnectionRefusedError: \[Errno 111\] Connection refused")


def assert_told(exc: Exception, tenant: str, operators: str) -> None:
    """What the ledger records of `exc` holds `operators` (a pattern) after its cause marker; a tenant is told
    `tenant`, nothing of the mail server's address or words."""
    recorded = as_recorded(exc)
    assert classified(recorded) == tenant, recorded
    assert re.search(f"\ncaused by .*{operators}", recorded), recorded


@pytest.mark.parametrize("settings, refused", [
    ({"username": "ops", "password": "mail-pw"}, "SAGA_SMTP_USERNAME: Value error, needs SAGA_SMTP_STARTTLS=true"),
    ({"ca_file": __file__}, "SAGA_SMTP_CA_FILE: Value error, needs SAGA_SMTP_STARTTLS=true"),
    ({"starttls": "true", "username": "ops"}, "SAGA_SMTP_PASSWORD: Value error, SAGA_SMTP_USERNAME and"),
    ({"starttls": "true", "ca_file": "/no/such/ca.pem"}, "SAGA_SMTP_CA_FILE: Path does not point to a file"),
])
def test_credentials_and_a_ca_file_without_starttls_are_refused_naming_the_setting(
        smtp: Callable[..., Recorder], monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], refused: str) -> None:
    smtp()
    _configure(monkeypatch, **settings)
    with pytest.raises(ConfigurationError, match=re.escape(f"bad setting {refused}")):
        load(JobPostingSettings)
