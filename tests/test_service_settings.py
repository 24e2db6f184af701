"""The service refuses to start (worker, beat, API) without the third parties' settings its saga types need,
with one line naming each, instead of starting and failing saga by saga; the library raises instead of exiting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from saga import ConfigurationError
from saga.settings import Settings, load
from saga.testing import Stack
from tests.conftest import ROOT

THIRD_PARTIES = ("SAGA_S3_BUCKET", "SAGA_SMTP_HOST", "SAGA_SMTP_PORT", "SAGA_MAIL_FROM", "STRIPE_API_KEY")


def start(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m service COMMAND`, which must exit by itself."""
    return subprocess.run([sys.executable, "-m", "service", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=90, check=False)


@pytest.mark.parametrize("command", ["worker", "beat", "api"])
def test_a_service_process_without_its_third_parties_settings_refuses_to_start_naming_each(
        stack: Stack, command: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in THIRD_PARTIES}
    done = start(command, {**env, "SAGA_SMTP_HOST": "smtp.example.com"})
    said = [line.split("] ")[-1] for line in (done.stdout + done.stderr).splitlines() if "bad setting" in line]
    assert done.returncode != 0, done.stdout + done.stderr
    assert said == [f"saga: bad setting {name}: Field required" for name in THIRD_PARTIES if name != "SAGA_SMTP_HOST"]


def test_a_malformed_setting_is_named(stack: Stack) -> None:
    done = start("api", {**os.environ, "SAGA_SMTP_PORT": "twenty-five", "SAGA_MAIL_FROM": "nobody"})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("saga: ")]
    assert [line.split(":")[1] for line in lines] == [" bad setting SAGA_SMTP_PORT", " bad setting SAGA_MAIL_FROM"]


def test_the_library_raises_a_configuration_error_naming_the_setting_instead_of_exiting() -> None:
    with pytest.raises(ConfigurationError, match="^bad setting SAGA_DATABASE_URL: Value error, must be a PostgreSQL"):
        load(Settings, database_url="mysql://localhost/x")
    with pytest.raises(ConfigurationError, match="bad setting SAGA_RECOVERY_INTERVAL:"):
        load(Settings, recovery_interval="soon")
