"""The confirmation email, over SMTP, with a Message-ID derived from the step so receivers can drop repeats."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from saga import PermanentError, RetryPolicy, StepContext, TransientError
from tasks.settings import JobPostingSettings, job_posting_settings

RETRY = RetryPolicy(max_attempts=6, initial_delay=0.5, multiplier=2.0, max_delay=8.0,
                    transient=(TransientError,))


# Currencies whose smallest unit is the whole unit, as Stripe counts them (of those the job posting takes).
ZERO_DECIMAL = frozenset({"jpy"})


def _amount(smallest_units: int, currency: str) -> str:
    return str(smallest_units) if currency in ZERO_DECIMAL else f"{smallest_units / 100:.2f}"


def message_id(ctx: StepContext[Any]) -> str:
    domain = job_posting_settings().mail_from.rpartition("@")[2] or "localhost"
    return f"<{ctx.saga_id}.{ctx.step}@{domain}>"


class MailServerError(Exception):
    """What is wrong with the mail server in an operator's terms (its address, the setting involved): the cause of
    the error a tenant sees, kept in the ledger for operators."""


def _secure(smtp: smtplib.SMTP, settings: JobPostingSettings) -> None:
    """STARTTLS (the server's certificate checked for `smtp_host`) and the login, as configured, before the mail
    goes; a server that does not offer STARTTLS is sent nothing more, in clear or otherwise."""
    if not settings.smtp_starttls:
        return
    server = f"SMTP server {settings.smtp_host}:{settings.smtp_port}"
    smtp.ehlo()
    if not smtp.has_extn("starttls"):
        raise PermanentError("the mail server does not offer STARTTLS: nothing was sent") from MailServerError(
            f"{server} does not offer STARTTLS, which SAGA_SMTP_STARTTLS requires")
    context = ssl.create_default_context(cafile=settings.smtp_ca_file)
    try:
        smtp.starttls(context=context)
    except ssl.SSLCertVerificationError as exc:
        raise PermanentError("the mail server's certificate does not verify: nothing was sent") from MailServerError(
            f"{server}: its certificate does not verify ({exc.verify_message}; SAGA_SMTP_CA_FILE sets the CAs)")
    if settings.smtp_username is not None and settings.smtp_password is not None:
        smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())


def send_confirmation(ctx: StepContext[Any]) -> dict[str, str]:
    """Send the receipt. At least once: a crash between send and commit sends it again, same Message-ID."""
    settings, data = job_posting_settings(), ctx.input
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = data.contact_email
    msg["Subject"] = f"Your job posting is live: {data.title}"
    msg["Message-ID"] = message_id(ctx)
    msg["Date"] = formatdate(localtime=False)
    charge = ctx.results.get("charge_payment", {})
    msg.set_content(
        f"Hello {data.company},\n\nyour posting \"{data.title}\" is live.\n"
        f"We charged {_amount(data.amount_cents, data.currency)} {data.currency.upper()} "
        f"(payment {charge.get('payment_intent', '?')}).\n"
    )
    try:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10)
        try:
            _secure(smtp, settings)
            smtp.send_message(msg)
        finally:
            # No QUIT: the reply to the message decided its fate. A QUIT sent while an interruption unwinds (a
            # pool process stopped mid-send) reads that reply late and would replace the interruption with it.
            smtp.close()
    except smtplib.SMTPResponseException as exc:  # the reply code alone for the tenant, the server's words in the cause
        if 500 <= exc.smtp_code < 600:
            raise PermanentError(f"the mail server refused the message ({exc.smtp_code})") from exc
        raise TransientError(f"the mail server deferred the message ({exc.smtp_code})") from exc
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise TransientError("the mail server is unreachable") from exc
    return {"message_id": msg["Message-ID"]}
