"""The crash-test kit's `Stack` running the service's own app, with the service's tables beside the ledger: what
the tests, the benchmark and the soak run on."""

from __future__ import annotations

from dataclasses import dataclass

import migrations
from saga.testing import Stack


@dataclass
class ServiceStack(Stack):
    """A `Stack` of `workers.app` (broker in SAGA_BROKER_URL), migrated with the service's tables too."""

    app: str = "workers.app"
    broker_env: str = "SAGA_BROKER_URL"

    def start(self) -> ServiceStack:
        super().start()
        migrations.upgrade(self.database_url)
        return self
