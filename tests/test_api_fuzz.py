"""Fuzzing every operation of the OpenAPI document with schemathesis (its `st run` command, against a real
`python -m service api` process): no answer is a 5xx, and every answer matches the document (status codes, content
types, headers, bodies); requests without a key are refused."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from api import keys as apikeys
from saga.testing import Stack
from tests.test_api import serve, settle, start

CONFIG = """
[parameters]
# A real saga of the fuzzing tenant, already completed, so the operations on one saga get past the 404
# (and its event stream ends at once).
"path.saga_id" = "{saga_id}"
# And a webhook endpoint of that tenant (until an operation deletes it: then 404).
"path.endpoint_id" = "{endpoint_id}"

[[operations]]
include-operation-id = "createWebhook"
# The URL must resolve to an address webhooks may go to (422 naming why not), and a tenant has at most 20.
checks.positive_data_acceptance.expected-statuses = [201, 422]

[[operations]]
include-operation-id = "listSagas"
# `cursor` is opaque: a string of the right shape that this API did not hand out is refused (422).
checks.positive_data_acceptance.expected-statuses = [200, 422]

[[operations]]
include-operation-id = "startSaga"
# The document says `input` is an object; what it must hold depends on the saga type (404 for a type
# nobody declared, 422 for input the type's model refuses).
checks.positive_data_acceptance.expected-statuses = [200, 202, 404, 422]

[[operations]]
include-operation-id = "restartSaga"
# As for startSaga: the fields to replace must be ones the type's model has and accepts, and text the ledger can
# store (no NUL); the fuzzing saga is completed, so most answers are 409.
checks.positive_data_acceptance.expected-statuses = [200, 202, 404, 409, 422]

[[operations]]
include-operation-id = "provideInput"
# The fuzzing saga is completed, so it awaits no input: 409 (or 422 for text the ledger cannot store).
checks.positive_data_acceptance.expected-statuses = [200, 404, 409, 422]

[[operations]]
include-operation-id = "rewindSaga"
# `to` must name one of the type's steps and the fields be ones its model accepts (else 422); the fuzzing saga
# is a completed demo, past its pivot, so a rewind that gets that far is refused (409).
checks.positive_data_acceptance.expected-statuses = [200, 404, 409, 422]
"""


def test_fuzzing_the_openapi_document_finds_no_5xx_and_no_departure_from_it(
    workers: Stack, tmp_path: Path,
) -> None:
    api = serve(workers, "api-fuzz")
    try:
        _, key = apikeys.create_key(f"fuzz-{uuid.uuid4().hex[:8]}")
        client = api.client(key=key)
        done = settle(client, start(client, "demo", {"customer": "f", "amount_cents": 1, "step_seconds": 0})
                      .json()["id"])
        config = tmp_path / "schemathesis.toml"
        endpoint = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hooks"}).json()
        config.write_text(CONFIG.format(saga_id=done["id"], endpoint_id=endpoint["id"]))
        run = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "--no-color", "run",
             f"{api.url}/openapi.json", "--header", f"Authorization: Bearer {key}",
             "--checks", "all", "--max-examples", "100", "--request-timeout", "30", "--seed", "1",
             "--generation-database", "none", "--report-dir", str(tmp_path / "report")],
            capture_output=True, text=True, timeout=600, check=False,
        )
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
        assert "5xx" not in run.stdout.split("SUMMARY")[-1]
    finally:
        api.close()
