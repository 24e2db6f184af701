"""The one settings object: every knob the service reads from the environment."""

from __future__ import annotations

import sys
from functools import lru_cache

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration, read from `SAGA_*` environment variables (and `.env` if present)."""

    # `.saga/env` is written by `saga dev` while it runs, so the CLI finds its embedded servers.
    model_config = SettingsConfigDict(env_prefix="SAGA_", env_file=(".env", ".saga/env"), extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/saga"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Comma-separated modules that declare saga types; workers, beat and the CLI import them.
    modules: str = "tasks.demo,tasks.job_posting"
    tenant: str = "default"
    # Redis redelivers an unacked message after this many seconds; must exceed any step's run plus backoff.
    visibility_timeout: int = 3600
    # How long a dispatched step may wait in the queue before recovery dispatches it again.
    pickup_timeout: float = 60.0
    # Extra seconds a step's lease outlives its time limit, so a hard time limit fires before the lease ends.
    lease_margin: float = 5.0
    recovery_interval: float = 5.0
    recovery_batch: int = 200
    log_level: str = "INFO"

    # Third parties of the job-posting saga (the local stand-ins in `standins/` speak the same protocols).
    s3_endpoint_url: str | None = None  # None: AWS itself
    s3_bucket: str = "saga-logos"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    mail_from: str = "jobs@example.com"
    stripe_api_key: str = Field(default="sk_test_local", validation_alias="STRIPE_API_KEY")
    stripe_api_base: str = Field(default="https://api.stripe.com", validation_alias="STRIPE_API_BASE")

    # HTTP API: development keys as "tenant:key,tenant:key" (production keys live hashed in the database).
    api_keys: str = ""
    api_url: str = "http://127.0.0.1:8000"
    flower_basic_auth: str | None = Field(default=None, validation_alias="FLOWER_BASIC_AUTH")

    @property
    def module_list(self) -> list[str]:
        return [m.strip() for m in self.modules.split(",") if m.strip()]

    @property
    def api_key_pairs(self) -> list[tuple[str, str]]:
        """(tenant, key) pairs from SAGA_API_KEYS."""
        return [tuple(i.strip().split(":", 1)) for i in self.api_keys.split(",") if i.strip()]  # type: ignore[misc]

    @field_validator("api_keys")
    @classmethod
    def _tenant_key_pairs(cls, value: str) -> str:
        for item in filter(None, (i.strip() for i in value.split(","))):
            tenant, sep, key = item.partition(":")
            if not sep or not tenant or not key:
                raise ValueError(f"entry {item!r} is not tenant:key")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str) -> str:
        if not url.startswith("postgresql"):
            raise ValueError("must be a PostgreSQL URL, e.g. postgresql+psycopg://user@host:5432/db")
        return url.replace("postgresql://", "postgresql+psycopg://", 1)

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "amqp://", "pyamqp://")):
            raise ValueError("must be a redis:// or amqp:// URL")
        return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; a bad setting stops start-up with one line naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
        name = str(alias) if alias else f"SAGA_{field.upper()}"
        sys.exit(f"saga: bad setting {name}: {first['msg']}")
