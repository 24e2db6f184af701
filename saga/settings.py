"""The engine's settings: the ledger's database and the timings of recovery, from `SAGA_*` variables."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, TypeVar

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from saga.errors import ConfigurationError

S = TypeVar("S", bound=BaseSettings)


class Settings(BaseSettings):
    """What the engine reads: `Sagas(app, database_url=...)` arguments first, then `SAGA_*` variables."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/saga"
    # Tenant of sagas started without one (`saga.start`, the CLI).
    tenant: str = "default"
    # How long a dispatched step may wait in the queue before recovery dispatches it again.
    pickup_timeout: float = 60.0
    # Extra seconds a step's lease outlives its time limit, so a hard time limit fires before the lease ends.
    lease_margin: float = 5.0
    recovery_interval: float = 5.0
    # A saga recovery re-sent that still has not moved waits as long as it has been stuck, up to this, before the
    # next re-send: a queue backlog is not flooded with duplicates, and a lost message is still re-sent.
    recovery_backoff_max: float = 300.0
    recovery_batch: int = 200
    # Beat deletes sagas that ended (completed or compensated) this many days ago, a batch per recovery pass.
    retention_days: float | None = None
    # RabbitMQ closes the channel of a consumer that holds a message unacked longer than its consumer_timeout
    # (30 minutes by default); say so here if yours differs, and workers refuse steps that could outlast it.
    consumer_timeout: float = 1800.0
    # "json": workers write one JSON object per log line (with the saga id, step, attempt and tenant).
    log_format: Literal["text", "json"] = "text"
    # A worker serves its Prometheus metrics on this port (with PROMETHEUS_MULTIPROC_DIR set); none if unset.
    # Needs the `metrics` extra.
    metrics_port: int | None = None
    # OpenTelemetry: one trace per saga, exported over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT); the `tracing` extra.
    tracing: bool = False
    # Continuation: a task that committed a step runs the saga's next step itself while it has both budgets left.
    # Seconds bound how long one saga holds a worker process past its first step, so the steps of other sagas
    # queued behind it wait at most that much longer; steps bound how far a redelivered message walks the ledger.
    continuation_seconds: float = 5.0
    continuation_steps: int = 50
    # Circuit breakers (`saga.breakers`), per dependency, over what `Sagas.dependency` declared: a JSON object
    # such as {"stripe": {"failures": 5, "cooldown": 30, "max_cooldown": 300}}.
    breakers: dict[str, dict[str, float]] = {}
    # What `start` does while a breaker of a step before the saga type's point of no return is open: "refuse"
    # (raise DependencyUnavailable; the API answers 503 with Retry-After), or "hold" (accept; the step waits).
    breaker_admission: Literal["refuse", "hold"] = "refuse"
    # Sagas of one tenant in flight at once (`saga.tenant_slots`); more wait `pending`, in order, and start as
    # others end. None: no limit. `tenant_limits` sets it per tenant (a JSON object, tenant -> limit).
    tenant_max_active: int | None = None
    tenant_limits: dict[str, int] = {}

    @field_validator("breakers")
    @classmethod
    def _breaker_settings(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        known = {"failures", "cooldown", "max_cooldown"}
        for name, options in value.items():
            unknown = sorted(set(options) - known)
            if unknown:
                raise ValueError(f"dependency {name!r}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return value

    @field_validator("tenant_max_active")
    @classmethod
    def _positive_limit(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1 (leave it unset for no limit)")
        return value

    @field_validator("tenant_limits")
    @classmethod
    def _positive_limits(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [tenant for tenant, limit in value.items() if limit < 1]
        if bad:
            raise ValueError(f"tenant {bad[0]!r}: a limit must be at least 1")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str) -> str:
        if not url.startswith("postgresql"):
            raise ValueError("must be a PostgreSQL URL, e.g. postgresql+psycopg://user@host:5432/db")
        return url.replace("postgresql://", "postgresql+psycopg://", 1)


_overrides: dict[str, Any] = {}


def configure(**values: Any) -> Settings:
    """Set engine settings in code (what `Sagas(...)` does); they win over the environment."""
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        raise TypeError(f"unknown engine setting {unknown[0]!r} (known: {', '.join(Settings.model_fields)})")
    _overrides.update({k: v for k, v in values.items() if v is not None})
    get_settings.cache_clear()
    return get_settings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide engine settings; a bad one raises `ConfigurationError` naming it."""
    return load(Settings, **_overrides)


def load(cls: type[S], **values: Any) -> S:
    """Settings of any layer (from `values`, then the environment), or `ConfigurationError` naming every bad or
    missing variable, one line each."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigurationError("\n".join(
            f"bad setting {_variable(cls, e['loc'])}: {e['msg']}" for e in exc.errors())) from None


def _variable(cls: type[BaseSettings], loc: tuple[Any, ...]) -> str:
    """The environment variable behind a settings field."""
    field = str(loc[0]) if loc else ""
    if field not in cls.model_fields:  # already the variable's own name (a field's validation alias)
        return field
    info = cls.model_fields[field]
    if info.validation_alias:
        return str(info.validation_alias)
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()
