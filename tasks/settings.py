"""The job-posting saga's settings: its third parties (S3, SMTP, Stripe), from the environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, FilePath, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.settings import STARTUP_CHECKS, load_or_exit


class JobPostingSettings(BaseSettings):
    """Read from `SAGA_*` (and `STRIPE_*`) variables; the stand-ins in `standins/` speak the same protocols. The
    third parties' bucket, mail server, sender and key have no defaults: a process without them does not start."""

    # An empty variable counts as unset (docker-compose.yml passes optional ones as `${VAR:-}`).
    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore", env_ignore_empty=True)

    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_bucket: str = Field(min_length=1)
    smtp_host: str = Field(min_length=1)
    smtp_port: int = Field(gt=0, lt=65536)
    # STARTTLS before the mail (and the login) is sent: a server that does not offer it, or whose certificate
    # does not verify against `smtp_ca_file` (None: the system's CAs) for `smtp_host`, is sent nothing.
    smtp_starttls: bool = False
    smtp_ca_file: FilePath | None = None
    # Log in (AUTH) after STARTTLS; never without it.
    smtp_username: str | None = Field(default=None, min_length=1)
    smtp_password: SecretStr | None = Field(default=None, min_length=1, validate_default=True)
    mail_from: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    stripe_api_key: str = Field(min_length=1, validation_alias="STRIPE_API_KEY")
    stripe_api_base: str = Field(default="https://api.stripe.com", validation_alias="STRIPE_API_BASE")
    # How long a posting whose card was declined waits for another payment method before it is undone;
    # 0 undoes it at once.
    payment_retry_seconds: float = Field(default=1800.0, ge=0)

    @field_validator("smtp_ca_file", "smtp_username")
    @classmethod
    def _only_with_starttls(cls, value: object, info: ValidationInfo) -> object:
        if value is not None and not info.data.get("smtp_starttls"):
            why = {"smtp_ca_file": "without TLS there is no certificate to check",
                   "smtp_username": "the password is never sent in clear"}[str(info.field_name)]
            raise ValueError(f"needs SAGA_SMTP_STARTTLS=true: {why}")
        return value

    @field_validator("smtp_password")
    @classmethod
    def _with_username(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if "smtp_username" in info.data and (value is None) != (info.data["smtp_username"] is None):
            raise ValueError("SAGA_SMTP_USERNAME and SAGA_SMTP_PASSWORD go together: set both or neither")
        return value


@lru_cache(maxsize=1)
def job_posting_settings() -> JobPostingSettings:
    """The process-wide settings of the job-posting saga; bad or missing ones stop the process naming each."""
    return load_or_exit(JobPostingSettings)


STARTUP_CHECKS.append(job_posting_settings)
