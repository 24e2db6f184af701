"""The service's settings: its broker, the saga types it loads, and its HTTP API, from the environment."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from saga.errors import ConfigurationError
from saga.settings import load

S = TypeVar("S", bound=BaseSettings)


class ServiceSettings(BaseSettings):
    """Read from `SAGA_*` variables; the engine's own (`SAGA_DATABASE_URL`...) are `saga.settings`."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    # The Celery app whose saga types the API serves, as `celery -A` takes it: the job board's, or a shop's own.
    app: str = "workers.app"
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Comma-separated modules that declare saga types; workers, beat, the API and the CLI import them.
    modules: str = "tasks.demo,tasks.job_posting"
    # Redis redelivers an unacked message after this many seconds; must exceed any step's run plus backoff.
    visibility_timeout: int = 3600
    log_level: str = "INFO"
    # HTTP API: development keys as "tenant:key,tenant:key" (production keys live hashed in the database).
    api_keys: str = ""
    # Event streams and long polls one tenant, and the API process in all, may hold open at once (429 beyond).
    api_streams_per_tenant: int = Field(default=100, ge=1)
    api_streams: int = Field(default=1000, ge=1)
    # Seconds an event stream stays open at most; the client reconnects (EventSource does so by itself).
    api_stream_seconds: float = Field(default=3600.0, gt=0)
    flower_basic_auth: str | None = Field(default=None, validation_alias="FLOWER_BASIC_AUTH")
    # Where operators reach Flower; the console links each step to its task there.
    flower_url: str | None = None

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

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "amqp://", "pyamqp://")):
            raise ValueError("must be a redis:// or amqp:// URL")
        return url


def load_or_exit(cls: type[S]) -> S:
    """Settings of a layer of the service; bad or missing ones stop the process with one line naming each."""
    try:
        return load(cls)
    except ConfigurationError as exc:
        sys.exit("\n".join(f"saga: {line}" for line in str(exc).splitlines()))


# What a worker, beat or the API checks before it starts serving: each module of saga types adds the settings its
# steps need, so a process missing one refuses to start instead of failing saga by saga.
STARTUP_CHECKS: list[Callable[[], object]] = []


def check_startup() -> None:
    """Run every startup check (each exits naming what is missing)."""
    for check in STARTUP_CHECKS:
        check()


@lru_cache(maxsize=1)
def service_settings() -> ServiceSettings:
    """The process-wide service settings; a bad one stops start-up with one line naming it."""
    return load_or_exit(ServiceSettings)
