"""The job-posting saga: upload the logo, insert the posting, charge the card, publish, email a receipt."""

from __future__ import annotations

import base64
import binascii
import unicodedata
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, ValidationInfo, field_validator

from saga import RetryPolicy
from tasks import emails, payments, postings, storage
from workers.app import sagas

MAX_LOGO_BYTES = 1024 * 1024
# Currencies Stripe charges in (ISO 4217, lowercase as Stripe writes them), each with the least Stripe charges
# in it, in its smallest unit (stripe.com/docs/currencies#minimum-and-maximum-charge-amounts; ILS and ZAR,
# which settle in another currency, at what comes to 50 US cents).
MINIMUM_CHARGE = {
    "usd": 50, "eur": 50, "gbp": 30, "chf": 50, "sek": 300, "nok": 300, "dkk": 250, "pln": 200, "czk": 1500,
    "huf": 17500, "ron": 200, "bgn": 100, "cad": 50, "aud": 50, "nzd": 50, "jpy": 50, "sgd": 50, "hkd": 400,
    "mxn": 1000, "brl": 50, "inr": 50, "zar": 1000, "ils": 200, "aed": 200,
}
# Stripe takes at most eight digits in the smallest unit.
MAXIMUM_CHARGE = 99_999_999
# Characters no single-line field may hold: it goes into an email header (the title into the Subject), and
# a line break there is refused when the message is built, long after the card was charged.
_LINE_BREAKS = frozenset("\u2028\u2029")


def _refuse_control(value: str, allowed: str, rule: str) -> str:
    bad = next((c for c in value if (unicodedata.category(c) == "Cc" or c in _LINE_BREAKS) and c not in allowed),
               None)
    if bad is not None:
        raise ValueError(f"{rule} (found {bad!r})")
    return value


def _single_line(value: str) -> str:
    return _refuse_control(value, "", "must be one line of text without control characters")


def _plain_text(value: str) -> str:
    return _refuse_control(value, "\n\r\t\u2028\u2029", "must not hold control characters other than line breaks and tabs")


Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
                 AfterValidator(_single_line)]
Paragraphs = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000),
                       AfterValidator(_plain_text)]


class JobPosting(BaseModel):
    """What a client submits. Every field is checked before the saga is accepted, against what every later
    step needs of it (S3, the postings table, Stripe, the email), so nothing fails after the charge."""

    company: Line
    title: Line
    description: Paragraphs
    contact_email: str = Field(description="an email address with an ASCII local part")
    logo: str = Field(description="base64 of a PNG or JPEG image, at most 1 MiB")
    currency: str = Field(description="ISO 4217 code, e.g. usd")
    amount_cents: int = Field(ge=1, le=MAXIMUM_CHARGE, description="in the currency's smallest unit, at least "
                                                             "Stripe's minimum charge for it (50 for usd)")
    payment_method: Annotated[str, StringConstraints(pattern=r"^pm_[A-Za-z0-9_]+$")]

    @field_validator("contact_email")
    @classmethod
    def _deliverable_address(cls, value: str) -> str:
        try:
            address = validate_email(value.strip(), check_deliverability=False)
        except EmailNotValidError as exc:
            raise ValueError(f"is not a valid email address: {exc}") from None
        if address.ascii_email is None:
            # Such an address needs SMTPUTF8, which a mail server need not offer: refused now, not after the charge.
            raise ValueError("must have an ASCII part before the @ (internationalized addresses are not sent)")
        return address.ascii_email

    @field_validator("logo")
    @classmethod
    def _png_or_jpeg(cls, value: str) -> str:
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not valid base64") from None
        if len(data) > MAX_LOGO_BYTES:
            raise ValueError(f"is {len(data)} bytes; the limit is {MAX_LOGO_BYTES} (1 MiB)")
        if storage.image_type(data) is None:
            raise ValueError("is neither a PNG nor a JPEG image")
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        code = value.strip().lower()
        if code not in MINIMUM_CHARGE:
            raise ValueError(f"{value!r} is not a currency we charge in ({', '.join(sorted(MINIMUM_CHARGE))})")
        return code

    @field_validator("amount_cents")
    @classmethod
    def _at_least_the_minimum_charge(cls, value: int, info: ValidationInfo) -> int:
        currency = info.data.get("currency")
        minimum = MINIMUM_CHARGE.get(currency or "", 1)
        if value < minimum:
            raise ValueError(f"is {value}; Stripe charges at least {minimum} in {currency or 'any currency'}")
        return value


job_posting = sagas.saga_type(
    "job_posting", JobPosting,
    default_retry=RetryPolicy(max_attempts=6, initial_delay=0.5, multiplier=2.0, max_delay=10.0),
    default_time_limit=15,
    large_fields=("logo",),  # up to 1.3 MB of base64: stored apart, read by upload_logo alone
)

# Each third party has a circuit breaker shared by the fleet (`saga.breakers`): while S3, Stripe or the mail
# server is down, the steps that call it (and their undos) wait for it instead of spending their attempts.
upload_logo = job_posting.step(storage.upload_logo, kind="compensable", retry=storage.RETRY, needs=("logo",),
                               depends_on="s3")
upload_logo.compensate_with(storage.delete_logo, retry=storage.RETRY)

create_posting = job_posting.step(postings.create_posting, kind="compensable", transactional=True)
create_posting.compensate_with(postings.delete_posting, transactional=True)

charge_payment = job_posting.step(payments.charge_payment, kind="pivot", retry=payments.RETRY,
                                  time_limit=payments.TIME_LIMIT, depends_on="stripe")
charge_payment.compensate_with(payments.refund_payment, retry=payments.RETRY, time_limit=payments.TIME_LIMIT)

publish_posting = job_posting.step(postings.publish_posting, kind="retriable", transactional=True)

send_confirmation = job_posting.step(emails.send_confirmation, kind="retriable", retry=emails.RETRY,
                                     depends_on="smtp")
