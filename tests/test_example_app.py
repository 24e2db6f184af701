"""`examples/shop`, a Celery app of its own with one saga type, passes its own tests: end to end through real
workers, and the crash-test kit's SIGKILL at every step boundary, as a user of the library would run them."""

from __future__ import annotations

import re
import subprocess
import sys

from devstack.servers import Services
from tests.conftest import ROOT

SHOP = ROOT / "examples" / "shop"


def test_the_shop_example_passes_its_own_crash_tests(servers: Services) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic",
         f"--saga-database-url={servers.database_url}", f"--saga-broker-url={servers.broker_url}"],
        cwd=SHOP, capture_output=True, text=True, timeout=600, check=False,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    # Two end-to-end sagas, one refused input, four forward crash points and two while undoing: pytest's summary
    # line says exactly that many passed ("19 passed" or "1 failed, 9 passed" must not do).
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.match(r"(\d+) passed\b", summary)
    assert passed and int(passed[1]) == 9 and not re.search(r"\b(failed|errors?)\b", summary), summary
