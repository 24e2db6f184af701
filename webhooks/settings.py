"""The webhooks' settings (`SAGA_WEBHOOK_*`): how deliveries are made, retried and where they may go."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.settings import load_or_exit


class WebhookSettings(BaseSettings):
    """Read from `SAGA_WEBHOOK_*` variables."""

    model_config = SettingsConfigDict(env_prefix="SAGA_WEBHOOK_", extra="ignore")

    # Networks an endpoint may resolve to although they are not public (loopback, private, link-local, metadata...),
    # comma-separated CIDRs: "127.0.0.0/8,::1/128" lets a receiver on this machine in (the tests, `make run`).
    allowed_networks: str = ""
    # Seconds a receiver has to answer one delivery before it is cut off and retried.
    timeout: float = Field(default=10.0, gt=0)
    # The most of a receiver's answer that is read (the rest is never downloaded).
    max_response_bytes: int = Field(default=64 * 1024, ge=0)
    # Retries: exponential from `retry_base` seconds, at most `retry_max` apart, each 50-100% of that (jitter),
    # until `give_up_after` seconds after the first attempt; then the endpoint is disabled, its events kept.
    retry_base: float = Field(default=5.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    give_up_after: float = Field(default=3 * 24 * 3600.0, gt=0)
    # Seconds a rotated-out secret still signs beside the new one.
    rotation_overlap: float = Field(default=24 * 3600.0, ge=0)
    # How often beat's dispatcher looks for endpoints with deliveries due.
    dispatch_interval: float = Field(default=0.5, gt=0)
    # Seconds one delivering task works an endpoint before it lets the next one take over.
    run_seconds: float = Field(default=20.0, gt=0)
    # Days a delivered event (and its attempts) is kept for the console and the API.
    keep_days: int = Field(default=30, ge=1)

    @property
    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n.strip(), strict=False) for n in self.allowed_networks.split(",") if n.strip()]

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for item in filter(None, (n.strip() for n in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network (CIDR such as 127.0.0.0/8)") from None
        return value


@lru_cache(maxsize=1)
def webhook_settings() -> WebhookSettings:
    """The process-wide webhook settings; a bad one stops start-up with one line naming it."""
    return load_or_exit(WebhookSettings)
