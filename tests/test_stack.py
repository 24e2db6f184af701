"""The testing kit's Stack, as a user's test session meets it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from devstack.servers import Services
from saga.testing import Stack
from tests.conftest import ROOT, TEST_DIR

# A session whose test module imported the app, and read its settings, before the stack started.
EARLY_APP = textwrap.dedent("""
    import json, sys
    from workers.app import app
    assert "saga.on_error" in app.tasks  # finalizes the app: its broker setting is read here
    from saga.testing import Stack
    from pathlib import Path
    stack = Stack(data_dir=Path(sys.argv[1]), database_server_url=sys.argv[2], broker_url=sys.argv[3],
                  app="workers.app", broker_env="SAGA_BROKER_URL").start()
    try:
        app.send_task("early.ping", queue="early")
        sent = [json.loads(m)["headers"]["task"] for m in stack.redis().lrange("early", 0, -1)]
        print(sent)
        assert sent == ["early.ping"], "the message did not reach the stack's broker"
    finally:
        stack.stop()
""")


def test_a_stack_points_an_app_that_read_its_settings_before_it_started(servers: Services) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EARLY_APP, str(TEST_DIR / "early"), servers.database_url,
         servers.broker_url], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_revive_starts_again_a_worker_that_exited_by_itself(workers: Stack) -> None:
    """What a supervisor does for the fault tests: only a worker that died is started again, the same way."""
    assert workers.revive() == []  # nothing exited
    [victim] = [p for p in workers.workers() if p.name == "w1"]
    victim.kill()
    assert workers.revive() == ["w1"]
    [again] = [p for p in workers.workers() if p.name == "w1"]
    assert again.popen.pid != victim.popen.pid and again.alive()
