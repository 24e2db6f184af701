"""The job-posting saga's settings: its third parties (S3, SMTP, Stripe), from the environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.settings import load_or_exit


class JobPostingSettings(BaseSettings):
    """Read from `SAGA_*` (and `STRIPE_*`) variables; the stand-ins in `standins/` speak the same protocols."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_bucket: str = "saga-logos"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    mail_from: str = "jobs@example.com"
    stripe_api_key: str = Field(default="sk_test_local", validation_alias="STRIPE_API_KEY")
    stripe_api_base: str = Field(default="https://api.stripe.com", validation_alias="STRIPE_API_BASE")
    # How long a posting whose card was declined waits for another payment method before it is undone;
    # 0 undoes it at once.
    payment_retry_seconds: float = Field(default=1800.0, ge=0)


@lru_cache(maxsize=1)
def job_posting_settings() -> JobPostingSettings:
    """The process-wide settings of the job-posting saga; a bad one stops start-up naming it."""
    return load_or_exit(JobPostingSettings)
