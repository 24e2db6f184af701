"""The job-posting saga: upload the logo, insert the posting, charge the card, publish, email a receipt."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import BaseModel, EmailStr, Field, StringConstraints, field_validator

from saga import RetryPolicy, SagaType
from tasks import emails, payments, postings, storage

MAX_LOGO_BYTES = 1024 * 1024
# Currencies Stripe charges in (ISO 4217, lowercase as Stripe writes them).
CURRENCIES = frozenset(
    ["usd", "eur", "gbp", "chf", "sek", "nok", "dkk", "pln", "czk", "huf", "ron", "bgn", "cad", "aud", "nzd", "jpy", "sgd", "hkd", "mxn", "brl", "inr", "zar", "ils", "aed"]
)
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class JobPosting(BaseModel):
    """What a client submits; every field is checked before the saga is accepted."""

    company: Text
    title: Text
    description: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000)]
    contact_email: EmailStr
    logo: str = Field(description="base64 of a PNG or JPEG image, at most 1 MiB")
    amount_cents: int = Field(gt=0, le=99_999_999)
    currency: str = Field(description="ISO 4217 code, e.g. usd")
    payment_method: Annotated[str, StringConstraints(pattern=r"^pm_[A-Za-z0-9_]+$")]

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
        if code not in CURRENCIES:
            raise ValueError(f"{value!r} is not a currency we charge in ({', '.join(sorted(CURRENCIES))})")
        return code


job_posting = SagaType(
    "job_posting", JobPosting,
    default_retry=RetryPolicy(max_attempts=6, initial_delay=0.5, multiplier=2.0, max_delay=10.0),
    default_time_limit=15,
)

upload_logo = job_posting.step(storage.upload_logo, kind="compensable", retry=storage.RETRY)
upload_logo.compensate_with(storage.delete_logo, retry=storage.RETRY)

create_posting = job_posting.step(postings.create_posting, kind="compensable", transactional=True)
create_posting.compensate_with(postings.delete_posting, transactional=True)

charge_payment = job_posting.step(payments.charge_payment, kind="pivot", retry=payments.RETRY,
                                  time_limit=payments.TIME_LIMIT)
charge_payment.compensate_with(payments.refund_payment, retry=payments.RETRY, time_limit=payments.TIME_LIMIT)

publish_posting = job_posting.step(postings.publish_posting, kind="retriable", transactional=True)

send_confirmation = job_posting.step(emails.send_confirmation, kind="retriable", retry=emails.RETRY)
